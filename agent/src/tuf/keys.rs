//! TUF key objects as Notary writes them, their IDs, and signature verification for every
//! key type and method Notary verifies.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use der::{Decode, Encode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use super::cjson;

pub const ECDSA: &str = "ecdsa";
pub const ECDSA_X509: &str = "ecdsa-x509";
pub const RSA: &str = "rsa";
pub const RSA_X509: &str = "rsa-x509";
pub const ED25519: &str = "ed25519";

const OID_EC_PUBLIC_KEY: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_RSA: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Notary refuses RSA keys shorter than this.
const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("malformed key object: {0}")]
    Malformed(String),
    #[error("unsupported key type {0:?}")]
    UnsupportedType(String),
    #[error("signature method {method:?} does not fit key type {keytype:?}")]
    MethodMismatch { method: String, keytype: String },
    #[error("unknown signature method {0:?}")]
    UnknownMethod(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("certificate: {0}")]
    Certificate(String),
}

/// A public key in Notary's key object form: `{"keytype": T, "keyval": {"private": null,
/// "public": base64(public)}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TufKey {
    pub keytype: String,
    /// Decoded `keyval.public`: DER SPKI (`ecdsa`, `rsa`), PEM certificate text (`*-x509`),
    /// or the raw 32 bytes (`ed25519`).
    pub public: Vec<u8>,
}

impl TufKey {
    /// An `ecdsa` key from a DER SubjectPublicKeyInfo.
    pub fn ecdsa(spki_der: Vec<u8>) -> Self {
        TufKey {
            keytype: ECDSA.into(),
            public: spki_der,
        }
    }

    /// An `ecdsa-x509` key from a DER certificate, PEM-encoded as Go does.
    pub fn ecdsa_x509(cert_der: &[u8]) -> Self {
        TufKey {
            keytype: ECDSA_X509.into(),
            public: pem_encode("CERTIFICATE", cert_der).into_bytes(),
        }
    }

    pub fn to_value(&self) -> Value {
        json!({"keytype": self.keytype, "keyval": {"private": null, "public": B64.encode(&self.public)}})
    }

    /// Parses a key object. Extra fields are refused, as they would change the key ID.
    pub fn from_value(v: &Value) -> Result<Self, KeyError> {
        let obj = v
            .as_object()
            .ok_or_else(|| KeyError::Malformed("not an object".into()))?;
        let keytype = obj
            .get("keytype")
            .and_then(Value::as_str)
            .ok_or_else(|| KeyError::Malformed("no keytype".into()))?;
        let keyval = obj
            .get("keyval")
            .and_then(Value::as_object)
            .ok_or_else(|| KeyError::Malformed("no keyval".into()))?;
        let public = keyval
            .get("public")
            .and_then(Value::as_str)
            .ok_or_else(|| KeyError::Malformed("no keyval.public".into()))?;
        let public = B64
            .decode(public)
            .map_err(|e| KeyError::Malformed(format!("keyval.public is not base64: {e}")))?;
        Ok(TufKey {
            keytype: keytype.to_string(),
            public,
        })
    }

    /// The key ID: lowercase hex SHA-256 of the canonical JSON of the key object.
    pub fn key_id(&self) -> String {
        // A key object holds only strings and null, so it always has a canonical form.
        let bytes = cjson::to_vec(&self.to_value()).unwrap_or_default();
        hex(&Sha256::digest(&bytes))
    }

    pub fn is_x509(&self) -> bool {
        self.keytype == ECDSA_X509 || self.keytype == RSA_X509
    }

    /// The leaf certificate of an `*-x509` key.
    pub fn certificate(&self) -> Result<Certificate, KeyError> {
        if !self.is_x509() {
            return Err(KeyError::Certificate(format!(
                "{} key has no certificate",
                self.keytype
            )));
        }
        let chain = Certificate::load_pem_chain(&self.public)
            .map_err(|e| KeyError::Certificate(format!("cannot parse PEM certificate: {e}")))?;
        chain
            .into_iter()
            .next()
            .ok_or_else(|| KeyError::Certificate("no certificate in PEM".into()))
    }

    /// DER SubjectPublicKeyInfo of an ECDSA or RSA key (from the certificate for x509 keys).
    pub fn spki_der(&self) -> Result<Vec<u8>, KeyError> {
        match self.keytype.as_str() {
            ECDSA | RSA => Ok(self.public.clone()),
            ECDSA_X509 | RSA_X509 => self
                .certificate()?
                .tbs_certificate
                .subject_public_key_info
                .to_der()
                .map_err(|e| KeyError::Certificate(e.to_string())),
            other => Err(KeyError::UnsupportedType(other.to_string())),
        }
    }

    /// The canonical key ID: for a certificate key, the ID of the plain key built from the
    /// certificate's public key (what Notary key files and `notary key list` show).
    pub fn canonical_id(&self) -> Result<String, KeyError> {
        match self.keytype.as_str() {
            ECDSA_X509 => Ok(TufKey {
                keytype: ECDSA.into(),
                public: self.spki_der()?,
            }
            .key_id()),
            RSA_X509 => Ok(TufKey {
                keytype: RSA.into(),
                public: self.spki_der()?,
            }
            .key_id()),
            _ => Ok(self.key_id()),
        }
    }

    /// Verifies `sig` over `msg` with `method`, with Notary's rules.
    /// The method name is compared lower-cased, as Notary lower-cases it when it reads a
    /// signature (`"ECDSA"` is `"ecdsa"`).
    pub fn verify(&self, method: &str, msg: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        let mismatch = || KeyError::MethodMismatch {
            method: method.into(),
            keytype: self.keytype.clone(),
        };
        let lower = method.to_ascii_lowercase();
        match lower.as_str() {
            "ecdsa" => {
                if self.keytype != ECDSA && self.keytype != ECDSA_X509 {
                    return Err(mismatch());
                }
                verify_ecdsa(&self.spki_der()?, msg, sig)
            }
            "rsapss" | "rsapkcs1v15" => {
                if self.keytype != RSA && self.keytype != RSA_X509 {
                    return Err(mismatch());
                }
                verify_rsa(&self.spki_der()?, lower == "rsapss", msg, sig)
            }
            "eddsa" => {
                if self.keytype != ED25519 {
                    return Err(mismatch());
                }
                verify_ed25519(&self.public, msg, sig)
            }
            _ => Err(KeyError::UnknownMethod(method.to_string())),
        }
    }
}

fn verify_ecdsa(spki_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), KeyError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| KeyError::Malformed(format!("public key: {e}")))?;
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
        return Err(KeyError::Malformed("not an EC public key".into()));
    }
    let curve = spki
        .algorithm
        .parameters_oid()
        .map_err(|e| KeyError::Malformed(format!("EC curve: {e}")))?;
    let point = spki.subject_public_key.raw_bytes();
    // Notary hashes with SHA-256 for every curve and wants raw r||s at the curve's size.
    let digest = Sha256::digest(msg);
    if curve == OID_P256 {
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
            .map_err(|_| KeyError::Malformed("bad P-256 point".into()))?;
        let sig = p256::ecdsa::Signature::from_slice(sig).map_err(|_| KeyError::BadSignature)?;
        key.verify_prehash(&digest, &sig)
            .map_err(|_| KeyError::BadSignature)
    } else if curve == OID_P384 {
        let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
            .map_err(|_| KeyError::Malformed("bad P-384 point".into()))?;
        let sig = p384::ecdsa::Signature::from_slice(sig).map_err(|_| KeyError::BadSignature)?;
        key.verify_prehash(&digest, &sig)
            .map_err(|_| KeyError::BadSignature)
    } else {
        Err(KeyError::UnsupportedType(format!("EC curve {curve}")))
    }
}

fn verify_rsa(spki_der: &[u8], pss: bool, msg: &[u8], sig: &[u8]) -> Result<(), KeyError> {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    use rsa::traits::PublicKeyParts;
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| KeyError::Malformed(format!("public key: {e}")))?;
    if spki.algorithm.oid != OID_RSA {
        return Err(KeyError::Malformed("not an RSA public key".into()));
    }
    let key = rsa::RsaPublicKey::from_public_key_der(spki_der)
        .map_err(|e| KeyError::Malformed(format!("RSA key: {e}")))?;
    if key.n().bits() < MIN_RSA_BITS {
        return Err(KeyError::Malformed(format!(
            "RSA key of {} bits is too short",
            key.n().bits()
        )));
    }
    if pss {
        let sig = rsa::pss::Signature::try_from(sig).map_err(|_| KeyError::BadSignature)?;
        rsa::pss::VerifyingKey::<Sha256>::new(key)
            .verify(msg, &sig)
            .map_err(|_| KeyError::BadSignature)
    } else {
        let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(|_| KeyError::BadSignature)?;
        rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
            .verify(msg, &sig)
            .map_err(|_| KeyError::BadSignature)
    }
}

fn verify_ed25519(public: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), KeyError> {
    let public: [u8; 32] = public
        .try_into()
        .map_err(|_| KeyError::Malformed("ed25519 public key is not 32 bytes".into()))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
        .map_err(|_| KeyError::Malformed("bad ed25519 point".into()))?;
    let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| KeyError::BadSignature)?;
    key.verify_strict(msg, &sig)
        .map_err(|_| KeyError::BadSignature)
}

/// DER SubjectPublicKeyInfo of a P-256 public key given as an uncompressed SEC1 point.
pub fn p256_spki_from_point(point: &[u8]) -> Result<Vec<u8>, KeyError> {
    use p256::pkcs8::EncodePublicKey;
    let key = p256::PublicKey::from_sec1_bytes(point)
        .map_err(|_| KeyError::Malformed("not a P-256 point".into()))?;
    key.to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| KeyError::Malformed(e.to_string()))
}

/// PEM exactly as Go's `pem.Encode` writes it: 64-column base64 lines, `\n` endings.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// One PEM block: its label, DER body and Go-style headers.
pub struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Decodes every PEM block in `text`, tolerating Go-style headers (`role: targets`) as
/// Notary and Docker write them.
pub fn pem_decode(text: &str) -> Result<Vec<PemBlock>, KeyError> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut headers = Vec::new();
        let mut b64 = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l == end {
                closed = true;
                break;
            }
            match l.split_once(':') {
                Some((k, v)) if b64.is_empty() => {
                    headers.push((k.trim().to_string(), v.trim().to_string()))
                }
                _ => b64.push_str(l),
            }
        }
        if !closed {
            return Err(KeyError::Malformed(format!(
                "PEM block {label} has no END line"
            )));
        }
        let der = B64
            .decode(&b64)
            .map_err(|e| KeyError::Malformed(format!("PEM block {label}: {e}")))?;
        out.push(PemBlock {
            label: label.to_string(),
            der,
            headers,
        });
    }
    Ok(out)
}

/// A TUF key from a PEM public key (`PUBLIC KEY`: ecdsa or rsa) or certificate
/// (`CERTIFICATE`: ecdsa-x509 or rsa-x509), as `docker trust signer add` accepts them.
pub fn key_from_pem(text: &str) -> Result<TufKey, KeyError> {
    let blocks = pem_decode(text)?;
    let PemBlock { label, der, .. } = blocks
        .into_iter()
        .next()
        .ok_or_else(|| KeyError::Malformed("no PEM block".into()))?;
    let spki_der = match label.as_str() {
        "PUBLIC KEY" => der.clone(),
        "CERTIFICATE" => Certificate::from_der(&der)
            .map_err(|e| KeyError::Certificate(e.to_string()))?
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| KeyError::Certificate(e.to_string()))?,
        other => {
            return Err(KeyError::Malformed(format!(
                "expected a PUBLIC KEY or CERTIFICATE, found {other}"
            )))
        }
    };
    let spki = spki::SubjectPublicKeyInfoRef::from_der(&spki_der)
        .map_err(|e| KeyError::Malformed(e.to_string()))?;
    let (plain, x509) = if spki.algorithm.oid == OID_EC_PUBLIC_KEY {
        (ECDSA, ECDSA_X509)
    } else if spki.algorithm.oid == OID_RSA {
        (RSA, RSA_X509)
    } else {
        return Err(KeyError::UnsupportedType(format!(
            "public key algorithm {}",
            spki.algorithm.oid
        )));
    };
    Ok(if label == "CERTIFICATE" {
        TufKey {
            keytype: x509.into(),
            public: pem_encode("CERTIFICATE", &der).into_bytes(),
        }
    } else {
        TufKey {
            keytype: plain.into(),
            public: spki_der,
        }
    })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses lowercase or uppercase hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_layout_is_go_layout() {
        let pem = pem_encode("CERTIFICATE", &[0u8; 100]);
        let lines: Vec<&str> = pem.split('\n').collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[3].len(), 8);
        assert_eq!(lines[4], "-----END CERTIFICATE-----");
        assert!(pem.ends_with("-----\n"));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abFF"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex("0"), None);
    }

    #[test]
    fn ecdsa_sign_verify_and_method_rules() {
        use p256::ecdsa::{signature::hazmat::PrehashSigner, Signature, SigningKey};
        use p256::pkcs8::EncodePublicKey;
        let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let spki = sk
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        let key = TufKey::ecdsa(spki);
        let msg = b"{\"a\":1}";
        let sig: Signature = sk.sign_prehash(&Sha256::digest(msg)).unwrap();
        let raw = sig.to_bytes();
        assert_eq!(key.verify("ecdsa", msg, &raw), Ok(()));
        assert_eq!(
            key.verify("ecdsa", b"other", &raw),
            Err(KeyError::BadSignature)
        );
        // DER is not accepted where raw r||s is required.
        let der = sig.to_der();
        assert_eq!(
            key.verify("ecdsa", msg, der.as_bytes()),
            Err(KeyError::BadSignature)
        );
        assert!(matches!(
            key.verify("rsapss", msg, &raw),
            Err(KeyError::MethodMismatch { .. })
        ));
        assert!(matches!(
            key.verify("bogus", msg, &raw),
            Err(KeyError::UnknownMethod(_))
        ));
    }

    #[test]
    fn ed25519_verify() {
        use ed25519_dalek::{Signer, SigningKey};
        let sk = SigningKey::from_bytes(&[9u8; 32]);
        let key = TufKey {
            keytype: ED25519.into(),
            public: sk.verifying_key().to_bytes().to_vec(),
        };
        let sig = sk.sign(b"msg").to_bytes();
        assert_eq!(key.verify("eddsa", b"msg", &sig), Ok(()));
        assert_eq!(
            key.verify("eddsa", b"msh", &sig),
            Err(KeyError::BadSignature)
        );
    }
}
