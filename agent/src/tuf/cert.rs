//! Notary root certificates: self-signed X.509 with CN = GUN, built here and signed by the
//! root key on its token, and the checks verifiers make on them.

use std::time::{Duration, SystemTime};

use der::asn1::{Any, BitString, GeneralizedTime, OctetString, SetOfVec, UtcTime};
use der::{Decode, Encode, Tag};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
/// Signature algorithms with SHA-1, which Notary refuses on root certificates.
const SHA1_SIG_OIDS: [ObjectIdentifier; 2] = [
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5"),
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.1"),
];

/// Notary's root certificate lifetime: ten years of 365 days.
pub const ROOT_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate encoding: {0}")]
    Der(#[from] der::Error),
    #[error("random serial: {0}")]
    Rng(String),
    #[error("{0}")]
    Invalid(String),
}

/// The to-be-signed part of a Notary root certificate for `gun` over the P-256 key
/// `spki_der`, valid from `not_before` for ten years, with a random 128-bit serial.
pub fn root_tbs(
    gun: &str,
    spki_der: &[u8],
    not_before: SystemTime,
) -> Result<TbsCertificate, CertError> {
    self_signed_tbs(name(&[(OID_CN, gun)])?, spki_der, not_before)
}

/// As [`root_tbs`], with subject `CN=<cn>, OU=<ou>`: the certificate that marks a slot on a
/// PIV card as holding one of the agent's keys (PIV tools list a slot by its certificate).
pub fn marker_tbs(
    cn: &str,
    ou: &str,
    spki_der: &[u8],
    not_before: SystemTime,
) -> Result<TbsCertificate, CertError> {
    self_signed_tbs(name(&[(OID_CN, cn), (OID_OU, ou)])?, spki_der, not_before)
}

fn self_signed_tbs(
    name: Name,
    spki_der: &[u8],
    not_before: SystemTime,
) -> Result<TbsCertificate, CertError> {
    let mut serial = [0u8; 16];
    getrandom::getrandom(&mut serial).map_err(|e| CertError::Rng(e.to_string()))?;
    serial[0] &= 0x7f; // positive
    if serial[0] == 0 {
        serial[0] = 1; // keep 128 bits, minimally encoded
    }
    let key_usage = KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment);
    let extensions = vec![
        extension(OID_KEY_USAGE, true, &key_usage)?,
        extension(
            OID_EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(vec![OID_CODE_SIGNING]),
        )?,
        extension(
            OID_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?,
    ];
    // Whole seconds, as X.509 times carry no fractions.
    let start = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            not_before
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial)?,
        signature: ecdsa_sha256(),
        issuer: name.clone(),
        validity: Validity {
            not_before: rfc5280_time(start)?,
            not_after: rfc5280_time(start + ROOT_CERT_VALIDITY)?,
        },
        subject: name,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki_der)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    })
}

/// A certificate subject from what the user gave: a distinguished name in RFC 4514 form
/// (`CN=Release,O=Example,ST=WA,C=US`, which Notation's `trustedIdentities` can name: it
/// wants C, ST and O), or else a bare common name.
pub fn subject_name(s: &str) -> Result<Name, CertError> {
    if !s.contains('=') {
        return name(&[(OID_CN, s)]);
    }
    use std::str::FromStr;
    let n = RdnSequence::from_str(s)
        .map_err(|e| CertError::Invalid(format!("subject {s:?}: not an RFC 4514 name ({e})")))?;
    if n.0.is_empty() {
        return Err(CertError::Invalid(format!("subject {s:?} is empty")));
    }
    Ok(n)
}

/// A random positive 128-bit serial, minimally encoded.
fn random_serial() -> Result<SerialNumber, CertError> {
    let mut serial = [0u8; 16];
    getrandom::getrandom(&mut serial).map_err(|e| CertError::Rng(e.to_string()))?;
    serial[0] &= 0x7f; // positive
    if serial[0] == 0 {
        serial[0] = 1; // keep 128 bits, minimally encoded
    }
    Ok(SerialNumber::new(&serial)?)
}

/// `t` cut to whole seconds, as X.509 times carry no fractions.
fn whole_seconds(t: SystemTime) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
}

/// The to-be-signed part of a Notation signing CA's self-signed certificate (`CN=<cn>`):
/// basicConstraints critical cA true, keyUsage critical keyCertSign and cRLSign, what
/// Notation requires of a CA certificate in its trust store.
pub fn notation_ca_tbs(
    cn: &str,
    spki_der: &[u8],
    not_before: SystemTime,
    validity: Duration,
) -> Result<TbsCertificate, CertError> {
    let name = subject_name(cn)?;
    let start = whole_seconds(not_before);
    let extensions = vec![
        extension(
            OID_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            },
        )?,
        extension(
            OID_KEY_USAGE,
            true,
            &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
        )?,
    ];
    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: random_serial()?,
        signature: ecdsa_sha256(),
        issuer: name.clone(),
        validity: Validity {
            not_before: rfc5280_time(start)?,
            not_after: rfc5280_time(start + validity)?,
        },
        subject: name,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki_der)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    })
}

/// The to-be-signed part of a Notation signing certificate (`CN=<cn>`) for the key
/// `spki_der`, issued by `issuer`: keyUsage critical digitalSignature, extendedKeyUsage
/// codeSigning, basicConstraints cA false (Notation's leaf rules). Its validity ends at
/// `not_after` or at the issuer's, whichever comes first.
pub fn notation_leaf_tbs(
    cn: &str,
    issuer: &Certificate,
    spki_der: &[u8],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<TbsCertificate, CertError> {
    notation_leaf_tbs_named(subject_name(cn)?, issuer, spki_der, not_before, not_after)
}

/// As [`notation_leaf_tbs`], for a subject already made (a request's).
pub fn notation_leaf_tbs_named(
    subject: Name,
    issuer: &Certificate,
    spki_der: &[u8],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<TbsCertificate, CertError> {
    let start = whole_seconds(not_before);
    let ca_end = issuer.tbs_certificate.validity.not_after.to_system_time();
    let end = whole_seconds(not_after.min(ca_end));
    if end <= start {
        return Err(CertError::Invalid(
            "the signing CA's certificate has expired".into(),
        ));
    }
    let extensions = vec![
        extension(
            OID_KEY_USAGE,
            true,
            &KeyUsage(KeyUsages::DigitalSignature.into()),
        )?,
        extension(
            OID_EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(vec![OID_CODE_SIGNING]),
        )?,
        extension(
            OID_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?,
    ];
    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: random_serial()?,
        signature: ecdsa_sha256(),
        issuer: issuer.tbs_certificate.subject.clone(),
        validity: Validity {
            not_before: rfc5280_time(start)?,
            not_after: rfc5280_time(end)?,
        },
        subject,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki_der)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    })
}

/// Checks a PKCS#10 request's signature (ECDSA P-256 with SHA-256, by the key it asks a
/// certificate for: proof of possession); returns its subject and the key's DER SPKI.
pub fn check_csr(der: &[u8]) -> Result<(Name, Vec<u8>), String> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use sha2::Digest;
    let req = x509_cert::request::CertReq::from_der(der)
        .map_err(|e| format!("not a PKCS#10 request: {e}"))?;
    if req.algorithm.oid != OID_ECDSA_SHA256 {
        return Err("the request is not signed ecdsa-with-SHA256 (P-256 keys only)".into());
    }
    let spki = req.info.public_key.to_der().map_err(|e| e.to_string())?;
    let key = p256::PublicKey::from_sec1_bytes(req.info.public_key.subject_public_key.raw_bytes())
        .map_err(|_| "the request's key is not a P-256 key".to_string())?;
    let info = req.info.to_der().map_err(|e| e.to_string())?;
    let sig = p256::ecdsa::Signature::from_der(req.signature.raw_bytes())
        .map_err(|_| "the request's signature is malformed".to_string())?;
    p256::ecdsa::VerifyingKey::from(key)
        .verify_prehash(&sha2::Sha256::digest(&info), &sig)
        .map_err(|_| "the request's signature does not verify".to_string())?;
    Ok((req.info.subject, spki))
}

/// The `CertificationRequestInfo` of a PKCS#10 request (`CN=<cn>`) for the key
/// `spki_der`, for a company CA to issue its Notation signing certificate.
pub fn csr_info(cn: &str, spki_der: &[u8]) -> Result<x509_cert::request::CertReqInfo, CertError> {
    Ok(x509_cert::request::CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject: subject_name(cn)?,
        public_key: SubjectPublicKeyInfoOwned::from_der(spki_der)?,
        attributes: Default::default(),
    })
}

/// The PKCS#10 request from its info and a raw r||s P-256 signature over the SHA-256 of
/// the info's DER (made by the requested key: proof of possession).
pub fn assemble_csr(
    info: x509_cert::request::CertReqInfo,
    raw_sig: &[u8],
) -> Result<Vec<u8>, CertError> {
    let sig = p256::ecdsa::Signature::from_slice(raw_sig)
        .map_err(|_| CertError::Invalid("token returned a malformed P-256 signature".into()))?;
    let req = x509_cert::request::CertReq {
        info,
        algorithm: ecdsa_sha256(),
        signature: BitString::from_bytes(sig.to_der().as_bytes())?,
    };
    Ok(req.to_der()?)
}

/// What a certificate request about to be signed says; only a request for the signing
/// key's own public key is signed.
pub fn describe_csr_info(
    info: &x509_cert::request::CertReqInfo,
    signer_spki: &[u8],
) -> Result<Vec<String>, String> {
    let spki = info.public_key.to_der().map_err(|e| e.to_string())?;
    if spki != signer_spki {
        return Err("a key signs a certificate request for its own public key only".into());
    }
    Ok(vec![
        "Certificate request (PKCS#10) for this key".to_string(),
        format!("Subject: {}", info.subject),
        format!(
            "Subject key SHA-256: {}",
            crate::tuf::keys::hex(&<sha2::Sha256 as sha2::Digest>::digest(&spki))
        ),
    ])
}

/// What a certificate about to be signed says, for a confirmation and the audit log, and
/// whether it is one the agent makes: a Notation CA certificate of the signing key itself,
/// or a Notation leaf (never a CA) for another key. Anything else is refused.
pub fn describe_notation_tbs(
    tbs: &TbsCertificate,
    signer_spki: &[u8],
) -> Result<Vec<String>, String> {
    if tbs.signature.oid != OID_ECDSA_SHA256 {
        return Err("certificates are signed ecdsa-with-SHA256".into());
    }
    let ext = |oid| tbs.extensions.iter().flatten().find(|e| e.extn_id == oid);
    let bc = ext(OID_BASIC_CONSTRAINTS)
        .filter(|e| e.critical)
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
        .ok_or("no critical basicConstraints")?;
    let ku = ext(OID_KEY_USAGE)
        .filter(|e| e.critical)
        .and_then(|e| KeyUsage::from_der(e.extn_value.as_bytes()).ok())
        .ok_or("no critical keyUsage")?;
    let own = tbs
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?
        == signer_spki;
    let kind = if own {
        if !bc.ca || tbs.issuer != tbs.subject || !ku.key_cert_sign() {
            return Err(
                "a certificate for the CA's own key must be its self-signed CA certificate".into(),
            );
        }
        "signing CA (self-signed)"
    } else {
        if bc.ca || ku.key_cert_sign() || ku.crl_sign() || !ku.digital_signature() {
            return Err(
                "a certificate for another key must be a signing leaf (digitalSignature, not a CA)"
                    .into(),
            );
        }
        "signing leaf (digitalSignature, codeSigning)"
    };
    let spki = tbs
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?;
    Ok(vec![
        format!("Certificate: {kind}"),
        format!("Subject: {}", tbs.subject),
        format!("Issuer: {}", tbs.issuer),
        format!("Serial: {}", tbs.serial_number),
        format!("Not before: {}", tbs.validity.not_before),
        format!("Not after: {}", tbs.validity.not_after),
        format!(
            "Subject key SHA-256: {}",
            crate::tuf::keys::hex(&<sha2::Sha256 as sha2::Digest>::digest(&spki))
        ),
    ])
}

/// `at` as RFC 5280 section 4.1.2.5 wants it: UTCTime for dates through 2049,
/// GeneralizedTime from 2050 on (as Go, hence Notary, encodes them). `Time::try_from`
/// always picks GeneralizedTime.
fn rfc5280_time(at: SystemTime) -> Result<Time, CertError> {
    let general = GeneralizedTime::from_system_time(at)?;
    let date = general.to_date_time();
    if date.year() <= UtcTime::MAX_YEAR {
        Ok(Time::UtcTime(UtcTime::from_date_time(date)?))
    } else {
        Ok(Time::GeneralTime(general))
    }
}

/// Assembles the certificate from its TBS part and a raw r||s P-256 signature made over the
/// SHA-256 of the TBS DER. X.509 wants the DER form of the signature, so it is converted here.
pub fn assemble(tbs: TbsCertificate, raw_sig: &[u8]) -> Result<Vec<u8>, CertError> {
    let sig = p256::ecdsa::Signature::from_slice(raw_sig)
        .map_err(|_| CertError::Invalid("token returned a malformed P-256 signature".into()))?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ecdsa_sha256(),
        signature: BitString::from_bytes(sig.to_der().as_bytes())?,
    };
    Ok(cert.to_der()?)
}

fn ecdsa_sha256() -> AlgorithmIdentifierOwned {
    // Go omits the parameters of ecdsa-with-SHA256.
    AlgorithmIdentifierOwned {
        oid: OID_ECDSA_SHA256,
        parameters: None,
    }
}

fn extension(
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, CertError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// A subject of one RDN per attribute, strings encoded as Go encodes them:
/// PrintableString when every character allows it, else UTF8String.
fn name(parts: &[(ObjectIdentifier, &str)]) -> Result<Name, CertError> {
    let mut rdns = Vec::new();
    for (oid, value) in parts {
        let printable = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c));
        let tag = if printable {
            Tag::PrintableString
        } else {
            Tag::Utf8String
        };
        let atv = AttributeTypeAndValue {
            oid: *oid,
            value: Any::new(tag, value.as_bytes())?,
        };
        rdns.push(RelativeDistinguishedName(SetOfVec::try_from(vec![atv])?));
    }
    Ok(RdnSequence(rdns))
}

/// Subject OU of the agent's own certificates for keys other than root on PIV cards.
pub const KEY_OU_PREFIX: &str = "dct-agent:";

/// The (role, GUN) a certificate beside a key names, for keys that carry no label of ours
/// (PIV slots, directly or through ykcs11 / OpenSC): `OU=dct-agent:<role>` (CN = GUN, may be
/// empty), or a Notary root certificate (only a CN, code-signing extended key usage).
pub fn key_role(cert: &Certificate) -> Option<(String, Option<String>)> {
    let (cn, ou, others) = subject_cn_ou(cert);
    if let Some(role) = ou.as_deref().and_then(|o| o.strip_prefix(KEY_OU_PREFIX)) {
        return Some((role.to_string(), cn.filter(|c| !c.is_empty())));
    }
    let code_signing = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|e| e.extn_id == OID_EXT_KEY_USAGE)
        .any(|e| {
            ExtendedKeyUsage::from_der(e.extn_value.as_bytes())
                .is_ok_and(|u| u.0.contains(&OID_CODE_SIGNING))
        });
    if ou.is_none() && others == 0 && code_signing {
        return cn
            .filter(|c| !c.is_empty())
            .map(|c| ("root".into(), Some(c)));
    }
    None
}

/// The subject's CN and OU (each if it has exactly one) and how many other attributes.
pub fn subject_cn_ou(cert: &Certificate) -> (Option<String>, Option<String>, usize) {
    let (mut cn, mut ou, mut others) = (Vec::new(), Vec::new(), 0);
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            let v = String::from_utf8_lossy(atv.value.value()).into_owned();
            match atv.oid {
                OID_CN => cn.push(v),
                OID_OU => ou.push(v),
                _ => others += 1,
            }
        }
    }
    let one = |mut v: Vec<String>| if v.len() == 1 { v.pop() } else { None };
    let extra = usize::from(cn.len() > 1) + usize::from(ou.len() > 1);
    (one(cn), one(ou), others + extra)
}

/// The subject's common name, if it has exactly one.
pub fn subject_cn(cert: &Certificate) -> Option<String> {
    let mut found = None;
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == OID_CN {
                if found.is_some() {
                    return None;
                }
                found = Some(String::from_utf8_lossy(atv.value.value()).into_owned());
            }
        }
    }
    found
}

/// Notary's rule (trustpinning `MatchCNToGun`): the CN is the GUN, or ends in `*` and what
/// comes before the stars is a prefix of the GUN (`example.com/*`). Stricter than Notary,
/// a CN of stars alone, which would name every GUN, is refused.
pub fn cn_matches_gun(cn: &str, gun: &str) -> bool {
    match cn.strip_suffix('*') {
        Some(prefix) => {
            let prefix = prefix.trim_end_matches('*');
            !prefix.is_empty() && gun.starts_with(prefix)
        }
        None => cn == gun,
    }
}

/// The checks Notary makes on a root certificate: CN matches the GUN ([`cn_matches_gun`]),
/// valid at `at`, no SHA-1.
pub fn check_root_cert(cert: &Certificate, gun: &str, at: SystemTime) -> Result<(), String> {
    match subject_cn(cert) {
        Some(cn) if cn_matches_gun(&cn, gun) => {}
        Some(cn) => return Err(format!("certificate CN {cn:?} is not the GUN {gun:?}")),
        None => return Err("certificate has no single CN".into()),
    }
    let validity = &cert.tbs_certificate.validity;
    let not_before = validity.not_before.to_system_time();
    let not_after = validity.not_after.to_system_time();
    // Notary allows a day of clock skew on NotBefore.
    if at + Duration::from_secs(24 * 3600) < not_before {
        return Err(format!(
            "certificate not valid before {}",
            validity.not_before
        ));
    }
    if at > not_after {
        return Err(format!("certificate expired at {}", validity.not_after));
    }
    if SHA1_SIG_OIDS.contains(&cert.signature_algorithm.oid) {
        return Err("certificate is signed with SHA-1".into());
    }
    Ok(())
}

/// Whether `issuer` signed `child`: names match and the signature verifies (ECDSA P-256 or
/// P-384 with SHA-256 or SHA-384, RSA PKCS#1 v1.5 with SHA-256).
pub fn verify_issued(child: &Certificate, issuer: &Certificate) -> Result<(), String> {
    use der::Encode;
    use sha2::{Digest, Sha256, Sha384};
    if child.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err("issuer name differs".into());
    }
    let tbs = child.tbs_certificate.to_der().map_err(|e| e.to_string())?;
    let sig = child.signature.raw_bytes();
    let spki = &issuer.tbs_certificate.subject_public_key_info;
    let point = spki.subject_public_key.raw_bytes();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<der::oid::ObjectIdentifier>().ok())
        .map(|o| o.to_string())
        .unwrap_or_default();
    let ecdsa = |digest: &[u8]| -> Result<(), String> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        match curve.as_str() {
            "1.2.840.10045.3.1.7" => {
                let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                    .map_err(|_| "bad P-256 issuer key".to_string())?;
                let s = p256::ecdsa::Signature::from_der(sig)
                    .map_err(|_| "bad ECDSA signature".to_string())?;
                k.verify_prehash(digest, &s)
                    .map_err(|_| "signature does not verify".into())
            }
            "1.3.132.0.34" => {
                let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
                    .map_err(|_| "bad P-384 issuer key".to_string())?;
                let s = p384::ecdsa::Signature::from_der(sig)
                    .map_err(|_| "bad ECDSA signature".to_string())?;
                k.verify_prehash(digest, &s)
                    .map_err(|_| "signature does not verify".into())
            }
            other => Err(format!("unsupported issuer curve {other}")),
        }
    };
    match child.signature_algorithm.oid.to_string().as_str() {
        "1.2.840.10045.4.3.2" => ecdsa(&Sha256::digest(&tbs)),
        "1.2.840.10045.4.3.3" => ecdsa(&Sha384::digest(&tbs)),
        "1.2.840.113549.1.1.11" => {
            use rsa::pkcs8::DecodePublicKey;
            use rsa::signature::Verifier;
            let der = spki.to_der().map_err(|e| e.to_string())?;
            let key = rsa::RsaPublicKey::from_public_key_der(&der)
                .map_err(|e| format!("RSA issuer key: {e}"))?;
            let s = rsa::pkcs1v15::Signature::try_from(sig)
                .map_err(|_| "bad RSA signature".to_string())?;
            rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
                .verify(&tbs, &s)
                .map_err(|_| "signature does not verify".into())
        }
        other => Err(format!("unsupported signature algorithm {other}")),
    }
}

fn valid_at(c: &Certificate, at: SystemTime) -> bool {
    let v = &c.tbs_certificate.validity;
    v.not_before.to_system_time() <= at + Duration::from_secs(24 * 3600)
        && at <= v.not_after.to_system_time()
}

/// Whether `chain` (leaf first, then intermediates) leads to one of `cas`, every
/// certificate valid at `at` (Notary's CA trust pinning).
pub fn chains_to(chain: &[Certificate], cas: &[Certificate], at: SystemTime) -> Result<(), String> {
    let (mut current, issuers) = chain.split_first().ok_or("no certificate")?;
    for _ in 0..8 {
        if !valid_at(current, at) {
            return Err(format!(
                "certificate {} is not valid now",
                current.tbs_certificate.subject
            ));
        }
        if let Some(ca) = cas.iter().find(|ca| verify_issued(current, ca).is_ok()) {
            if !valid_at(ca, at) {
                return Err(format!(
                    "pinned CA {} is not valid now",
                    ca.tbs_certificate.subject
                ));
            }
            return Ok(());
        }
        match issuers.iter().find(|i| verify_issued(current, i).is_ok()) {
            Some(next) => current = next,
            None => {
                return Err(format!(
                    "certificate {} is not issued by the pinned CA",
                    current.tbs_certificate.subject
                ))
            }
        }
    }
    Err("certificate chain too long".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{signature::hazmat::PrehashSigner, Signature, SigningKey};
    use p256::pkcs8::EncodePublicKey;
    use sha2::{Digest, Sha256};

    #[test]
    fn builds_a_self_signed_root_cert_that_checks() {
        let sk = SigningKey::from_slice(&[3u8; 32]).unwrap();
        let spki = sk
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        let now = SystemTime::now();
        let tbs = root_tbs("example.com/app", &spki, now).unwrap();
        let sig: Signature = sk
            .sign_prehash(&Sha256::digest(tbs.to_der().unwrap()))
            .unwrap();
        let der = assemble(tbs, &sig.to_bytes()).unwrap();
        let cert = Certificate::from_der(&der).unwrap();
        assert_eq!(subject_cn(&cert).as_deref(), Some("example.com/app"));
        assert_eq!(check_root_cert(&cert, "example.com/app", now), Ok(()));
        assert!(check_root_cert(&cert, "example.com/other", now)
            .unwrap_err()
            .contains("not the GUN"));
        let later = now + ROOT_CERT_VALIDITY + Duration::from_secs(5);
        assert!(check_root_cert(&cert, "example.com/app", later)
            .unwrap_err()
            .contains("expired"));
        assert!(cert.tbs_certificate.serial_number.as_bytes().len() <= 17);
    }

    fn spki_of(sk: &SigningKey) -> Vec<u8> {
        sk.verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    fn sign(sk: &SigningKey, tbs: TbsCertificate) -> Certificate {
        let sig: Signature = sk
            .sign_prehash(&Sha256::digest(tbs.to_der().unwrap()))
            .unwrap();
        Certificate::from_der(&assemble(tbs, &sig.to_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn notation_ca_and_leaf_as_notation_wants_them() {
        let ca_sk = SigningKey::from_slice(&[5u8; 32]).unwrap();
        let leaf_sk = SigningKey::from_slice(&[6u8; 32]).unwrap();
        let (ca_spki, leaf_spki) = (spki_of(&ca_sk), spki_of(&leaf_sk));
        let now = SystemTime::now();
        let year = Duration::from_secs(365 * 86400);
        let tbs = notation_ca_tbs("Signing CA", &ca_spki, now, 10 * year).unwrap();
        let lines = describe_notation_tbs(&tbs, &ca_spki).unwrap();
        assert!(lines[0].contains("signing CA"), "{lines:?}");
        // The CA's own certificate is not one another key may get signed.
        assert!(describe_notation_tbs(&tbs, &leaf_spki).is_err());
        let ca = sign(&ca_sk, tbs);
        verify_issued(&ca, &ca).unwrap();
        let ext = |c: &Certificate, oid| {
            c.tbs_certificate
                .extensions
                .iter()
                .flatten()
                .find(|e| e.extn_id == oid)
                .cloned()
                .unwrap()
        };
        let bc = ext(&ca, OID_BASIC_CONSTRAINTS);
        assert!(bc.critical);
        assert!(
            BasicConstraints::from_der(bc.extn_value.as_bytes())
                .unwrap()
                .ca
        );
        let ku = ext(&ca, OID_KEY_USAGE);
        assert!(ku.critical);
        let ku = KeyUsage::from_der(ku.extn_value.as_bytes()).unwrap();
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert_eq!(time_tag(&ca.tbs_certificate.validity.not_before), 0x17);

        // A leaf asked to outlive its CA ends with it.
        let tbs = notation_leaf_tbs("Release", &ca, &leaf_spki, now, now + 20 * year).unwrap();
        let lines = describe_notation_tbs(&tbs, &ca_spki).unwrap();
        assert!(lines[0].contains("signing leaf"), "{lines:?}");
        assert!(
            lines.contains(&"Subject: CN=Release".to_string()),
            "{lines:?}"
        );
        let leaf = sign(&ca_sk, tbs);
        verify_issued(&leaf, &ca).unwrap();
        assert_eq!(
            leaf.tbs_certificate.validity.not_after,
            ca.tbs_certificate.validity.not_after
        );
        let ku = ext(&leaf, OID_KEY_USAGE);
        assert!(ku.critical);
        let ku = KeyUsage::from_der(ku.extn_value.as_bytes()).unwrap();
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let eku = ext(&leaf, OID_EXT_KEY_USAGE);
        assert_eq!(
            ExtendedKeyUsage::from_der(eku.extn_value.as_bytes())
                .unwrap()
                .0,
            vec![OID_CODE_SIGNING]
        );
        assert!(
            !BasicConstraints::from_der(ext(&leaf, OID_BASIC_CONSTRAINTS).extn_value.as_bytes())
                .unwrap()
                .ca
        );
        chains_to(std::slice::from_ref(&leaf), std::slice::from_ref(&ca), now).unwrap();
        // A Notary root certificate (a key's own, not a CA) is not signed by a CA key.
        let root = root_tbs("example.com/app", &ca_spki, now).unwrap();
        assert!(describe_notation_tbs(&root, &ca_spki).is_err());
    }

    /// The DER tag of a validity time as encoded: 0x17 UTCTime, 0x18 GeneralizedTime.
    fn time_tag(t: &Time) -> u8 {
        t.to_der().unwrap()[0]
    }

    #[test]
    fn validity_times_follow_rfc5280() {
        let spki = SigningKey::from_slice(&[3u8; 32])
            .unwrap()
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        // Now (and for the next decades): both ends of a ten-year certificate in UTCTime.
        for tbs in [
            root_tbs("example.com/app", &spki, SystemTime::now()).unwrap(),
            marker_tbs(
                "example.com/app",
                "dct-agent:targets",
                &spki,
                SystemTime::now(),
            )
            .unwrap(),
        ] {
            let v = tbs.validity;
            assert_eq!(time_tag(&v.not_before), 0x17, "{v:?}");
            assert_eq!(time_tag(&v.not_after), 0x17, "{v:?}");
            assert!(matches!(v.not_before, Time::UtcTime(_)));
        }
        // 2045-01-01: notBefore UTCTime, notAfter (2054) GeneralizedTime.
        let t2045 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_366_841_600);
        let v = root_tbs("g", &spki, t2045).unwrap().validity;
        assert_eq!(time_tag(&v.not_before), 0x17);
        assert_eq!(time_tag(&v.not_after), 0x18);
        assert_eq!(v.not_before.to_system_time(), t2045);
        assert_eq!(v.not_after.to_system_time(), t2045 + ROOT_CERT_VALIDITY);
        // The boundary: 2049-12-31T23:59:59Z is the last UTCTime, 2050-01-01T00:00:00Z general.
        let y2050 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_524_608_000);
        let last = rfc5280_time(y2050 - Duration::from_secs(1)).unwrap();
        assert_eq!(time_tag(&last), 0x17);
        assert_eq!(last.to_der().unwrap()[2..15], *b"491231235959Z");
        let first = rfc5280_time(y2050).unwrap();
        assert_eq!(time_tag(&first), 0x18);
        assert_eq!(first.to_der().unwrap()[2..17], *b"20500101000000Z");
    }

    #[test]
    fn an_empty_chain_leads_nowhere() {
        assert_eq!(
            chains_to(&[], &[], SystemTime::now()),
            Err("no certificate".to_string())
        );
    }
}
