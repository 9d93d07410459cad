//! X.509 certificate chains kept for keys (Notation signs with a key and hands verifiers
//! its chain), in the agent's state directory, beside the version ledger:
//! `notation/chains/<canonical ID>.pem` (leaf first) and `notation/ca/<canonical ID>.pem`
//! (a signing CA's own certificate).
//!
//! Why the state directory rather than the token: one place for every backend (PKCS#11,
//! PIV, ykcs11); a PIV slot's certificate is the agent's marker naming the key's role
//! (`OU=dct-agent:<role>`), which a Notation leaf would replace; and a PKCS#11
//! certificate object of ours is read as a Notary root certificate. Certificates are
//! public: a changed file cannot make a signature verify, and each is checked against its
//! key when loaded.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use der::{Decode, EncodePem};
use x509_cert::Certificate;

use super::KeyEntry;
use crate::error::{Error, Result};

/// The role of a Notation signing CA's key: it signs certificates, nothing else.
pub const NOTATION_CA_ROLE: &str = "notation-ca";

#[derive(Clone, Debug)]
pub struct Chains {
    dir: PathBuf,
}

/// A key's chain, checked.
pub struct Chain {
    /// DER, leaf first.
    pub der: Vec<Vec<u8>>,
    pub leaf: Certificate,
}

impl Chain {
    /// The leaf's subject.
    pub fn subject(&self) -> String {
        self.leaf.tbs_certificate.subject.to_string()
    }

    /// When the leaf expires (RFC 3339).
    pub fn expires(&self) -> String {
        let t = time::OffsetDateTime::from(
            self.leaf
                .tbs_certificate
                .validity
                .not_after
                .to_system_time(),
        );
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    }
}

fn parse_pem_chain(text: &str, path: &Path) -> Result<Vec<Certificate>> {
    let certs = Certificate::load_pem_chain(text.as_bytes())
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Internal(format!(
            "{}: no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn to_pem(certs: &[Certificate]) -> Result<String> {
    let mut out = String::new();
    for c in certs {
        out.push_str(
            &c.to_pem(der::pem::LineEnding::LF)
                .map_err(Error::internal)?,
        );
    }
    Ok(out)
}

fn spki_der(c: &Certificate) -> Result<Vec<u8>> {
    use der::Encode;
    c.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(Error::internal)
}

impl Chains {
    /// Chains under `state_dir/notation`.
    pub fn new(state_dir: &Path) -> Chains {
        Chains {
            dir: state_dir.join("notation"),
        }
    }

    fn chain_path(&self, key: &KeyEntry) -> PathBuf {
        self.dir
            .join("chains")
            .join(format!("{}.pem", key.canonical_id))
    }

    fn ca_path(&self, key: &KeyEntry) -> PathBuf {
        self.dir
            .join("ca")
            .join(format!("{}.pem", key.canonical_id))
    }

    fn write(path: &Path, text: &str) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::Internal(format!("{}: {e}", parent.display())))?;
        }
        crate::util::write_atomic(path, text.as_bytes(), 0o644)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
    }

    /// Keeps `ca` as the certificate of the signing CA whose key is `key`.
    pub fn save_ca(&self, key: &KeyEntry, ca: &Certificate) -> Result<()> {
        if spki_der(ca)? != key.spki {
            return Err(Error::InvalidArgument(format!(
                "the CA certificate does not match key {}",
                key.key_id
            )));
        }
        Self::write(&self.ca_path(key), &to_pem(std::slice::from_ref(ca))?)
    }

    /// The certificate of the signing CA whose key is `key`.
    pub fn ca(&self, key: &KeyEntry) -> Result<Certificate> {
        let path = self.ca_path(key);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Error::InvalidArgument(format!(
                "key {} is not a signing CA of this agent (no {}); make one with \
                 `dct notation ca init`",
                key.key_id,
                path.display()
            ))
        })?;
        let ca = parse_pem_chain(&text, &path)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("no certificate".into()))?;
        if spki_der(&ca)? != key.spki {
            return Err(Error::InvalidArgument(format!(
                "{} does not match key {}",
                path.display(),
                key.key_id
            )));
        }
        Ok(ca)
    }

    /// Writes the transcript of a signing CA's making beside its certificate: what was made,
    /// on which token, when, and the certificate's fingerprint (to compare with what
    /// verifiers are given). Returns its path.
    pub fn write_ca_transcript(
        &self,
        key: &KeyEntry,
        ca: &Certificate,
        token: &super::TokenInfo,
    ) -> Result<PathBuf> {
        use der::Encode;
        use sha2::Digest;
        let der = ca.to_der().map_err(Error::internal)?;
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let v = &ca.tbs_certificate.validity;
        let text = format!(
            "dct-agent: Notation signing CA made {now}\n\
             Key: {} (canonical {}), role {}, ECDSA P-256, generated on the token, non-extractable\n\
             Token: {} ({} {} serial {}, backend {})\n\
             Certificate: {}, serial {}, valid {} to {}\n\
             basicConstraints critical cA true pathLen 0; keyUsage critical keyCertSign cRLSign\n\
             Signed by the key itself on the token, through the agent's guard (audited)\n\
             Certificate SHA-256: {}\n",
            key.key_id,
            key.canonical_id,
            key.role,
            token.label,
            token.manufacturer,
            token.model,
            token.serial,
            key.backend,
            ca.tbs_certificate.subject,
            ca.tbs_certificate.serial_number,
            v.not_before,
            v.not_after,
            crate::tuf::keys::hex(&sha2::Sha256::digest(&der)),
        );
        let path = self
            .dir
            .join("ca")
            .join(format!("{}.transcript.txt", key.canonical_id));
        Self::write(&path, &text)?;
        Ok(path)
    }

    /// Every signing CA certificate this agent made.
    pub fn all_cas(&self) -> Result<Vec<Certificate>> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.dir.join("ca")) else {
            return Ok(out);
        };
        let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pem"))
        {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
            out.extend(parse_pem_chain(&text, &path)?.into_iter().take(1));
        }
        Ok(out)
    }

    /// Keeps `chain` (DER, leaf first) for `key`, after checking that the leaf is the
    /// key's and each certificate is issued by the next.
    pub fn save(&self, key: &KeyEntry, chain: &[Vec<u8>]) -> Result<()> {
        let certs = chain
            .iter()
            .map(|d| Certificate::from_der(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidArgument(format!("certificate chain: {e}")))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Error::InvalidArgument("an empty certificate chain".into()))?;
        if spki_der(leaf)? != key.spki {
            return Err(Error::InvalidArgument(format!(
                "the certificate ({}) is not for key {}: its public key differs",
                leaf.tbs_certificate.subject, key.key_id
            )));
        }
        for pair in certs.windows(2) {
            if let [child, issuer] = pair {
                crate::tuf::cert::verify_issued(child, issuer).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "certificate {} is not issued by {}: {e}",
                        child.tbs_certificate.subject, issuer.tbs_certificate.subject
                    ))
                })?;
            }
        }
        Self::write(&self.chain_path(key), &to_pem(&certs)?)
    }

    /// The chain kept for `key`, if any, as it is (no validity check: for listings).
    pub fn find(&self, key: &KeyEntry) -> Result<Option<Chain>> {
        let path = self.chain_path(key);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let certs = parse_pem_chain(&text, &path)?;
        let der = certs
            .iter()
            .map(|c| {
                use der::Encode;
                c.to_der().map_err(Error::internal)
            })
            .collect::<Result<Vec<_>>>()?;
        let leaf = certs
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("no certificate".into()))?;
        Ok(Some(Chain { der, leaf }))
    }

    /// The chain for signing with `key` now: present, the leaf the key's, in its validity.
    pub fn for_signing(&self, key: &KeyEntry) -> Result<Chain> {
        let chain = self.find(key)?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "key {} has no certificate chain for Notation; issue one with \
                 `dct notation cert issue {} --ca CA-KEYID` (or import one with \
                 `dct notation cert import`)",
                key.key_id, key.key_id
            ))
        })?;
        usable(key, &chain)?;
        Ok(chain)
    }

    /// Keeps `chain` for `key` as [`Chains::save`] does, refusing one the key could not
    /// sign with now (expired, not yet valid, not the key's); returns it.
    pub fn import(&self, key: &KeyEntry, chain: &[Vec<u8>]) -> Result<Chain> {
        let leaf = chain
            .first()
            .map(|d| Certificate::from_der(d))
            .transpose()
            .map_err(|e| Error::InvalidArgument(format!("certificate chain: {e}")))?
            .ok_or_else(|| Error::InvalidArgument("an empty certificate chain".into()))?;
        let c = Chain {
            der: chain.to_vec(),
            leaf,
        };
        usable(key, &c)?;
        self.save(key, chain)?;
        Ok(c)
    }
}

/// Whether `key` can sign with `chain` now: the leaf is the key's and in its validity.
fn usable(key: &KeyEntry, chain: &Chain) -> Result<()> {
    if spki_der(&chain.leaf)? != key.spki {
        return Err(Error::InvalidArgument(format!(
            "the certificate ({}) is not for key {}: its public key differs; issue one for \
             the key with `dct notation cert issue`",
            chain.subject(),
            key.key_id
        )));
    }
    let v = &chain.leaf.tbs_certificate.validity;
    let now = SystemTime::now();
    if now > v.not_after.to_system_time() {
        return Err(Error::InvalidArgument(format!(
            "the certificate of key {} ({}) expired at {}; issue a new one with \
             `dct notation cert issue`",
            key.key_id,
            chain.subject(),
            chain.expires()
        )));
    }
    if now < v.not_before.to_system_time() {
        return Err(Error::InvalidArgument(format!(
            "the certificate of key {} is not valid before {}",
            key.key_id, v.not_before
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Decode, Encode};
    use p256::ecdsa::{signature::hazmat::PrehashSigner, Signature, SigningKey};
    use p256::pkcs8::EncodePublicKey;
    use sha2::Digest;
    use std::time::Duration;

    fn entry(sk: &SigningKey, id: &str) -> KeyEntry {
        let spki = sk
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        KeyEntry {
            key_id: id.repeat(32),
            canonical_id: id.repeat(32),
            role: "targets".into(),
            gun: None,
            keytype: "ecdsa".into(),
            public: spki.clone(),
            spki,
            uri: String::new(),
            backend: "pkcs11",
            token: "t".into(),
            handle: vec![],
            detail: super::super::KeyDetail::None,
        }
    }

    fn sign(sk: &SigningKey, tbs: x509_cert::TbsCertificate) -> Certificate {
        let sig: Signature = sk
            .sign_prehash(&sha2::Sha256::digest(tbs.to_der().unwrap()))
            .unwrap();
        Certificate::from_der(&crate::tuf::cert::assemble(tbs, &sig.to_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn chains_checked_when_kept_and_before_signing() {
        let dir = tempfile::tempdir().unwrap();
        let chains = Chains::new(dir.path());
        let ca_sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let sk = SigningKey::from_slice(&[8u8; 32]).unwrap();
        let other_sk = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let (ca_key, key, other) = (
            entry(&ca_sk, "0c"),
            entry(&sk, "1e"),
            entry(&other_sk, "2f"),
        );
        let now = SystemTime::now();
        let day = Duration::from_secs(86400);
        let ca = sign(
            &ca_sk,
            crate::tuf::cert::notation_ca_tbs("CA", &ca_key.spki, now - 30 * day, 365 * day)
                .unwrap(),
        );
        chains.save_ca(&ca_key, &ca).unwrap();
        assert!(chains.save_ca(&key, &ca).is_err());
        assert_eq!(chains.all_cas().unwrap().len(), 1);

        let e = chains.for_signing(&key).err().unwrap().to_string();
        assert!(e.contains("has no certificate chain"), "{e}");

        let leaf = |from: SystemTime, to: SystemTime| {
            let c = sign(
                &ca_sk,
                crate::tuf::cert::notation_leaf_tbs("Leaf", &ca, &key.spki, from, to).unwrap(),
            );
            vec![c.to_der().unwrap(), ca.to_der().unwrap()]
        };
        // Not the key's: refused when kept.
        let e = chains
            .save(&other, &leaf(now, now + day))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not for key"), "{e}");
        // A broken link: refused.
        let mut broken = leaf(now, now + day);
        broken[1] = broken[0].clone();
        assert!(chains.save(&key, &broken).is_err());

        chains.save(&key, &leaf(now - 2 * day, now + day)).unwrap();
        let c = chains.for_signing(&key).unwrap();
        assert_eq!(c.subject(), "CN=Leaf");
        assert_eq!(c.der.len(), 2);

        let e = chains
            .import(&key, &leaf(now - 20 * day, now - 10 * day))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("expired"), "{e}");
        assert_eq!(chains.for_signing(&key).unwrap().subject(), "CN=Leaf");
        chains
            .save(&key, &leaf(now - 20 * day, now - 10 * day))
            .unwrap();
        let e = chains.for_signing(&key).err().unwrap().to_string();
        assert!(e.contains("expired"), "{e}");
        assert!(chains.find(&key).unwrap().is_some(), "listed all the same");
    }
}
