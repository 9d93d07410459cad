//! Notary / Docker private key files (`~/.docker/trust/private/<canonical-id>.key`):
//! PEM `ENCRYPTED PRIVATE KEY` (PBES2: PBKDF2-HMAC-SHA1, AES-256-CBC) with `role` and `gun`
//! headers, or unencrypted `PRIVATE KEY` / `EC PRIVATE KEY`. Only P-256 keys, the kind
//! Notary makes, are accepted. Secrets live only in zeroizing buffers.

use der::asn1::{AnyRef, BitStringRef, OctetStringRef};
use der::{Decode, Sequence};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use spki::AlgorithmIdentifierRef;
use zeroize::Zeroizing;

use super::keys::{pem_decode, KeyError, PemBlock};

const OID_EC: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// PrivateKeyInfo, decoded by hand: Go writes `version = 1` without the public key, a
/// shape the `pkcs8` crate refuses and OpenSSL and Go accept.
#[derive(Sequence)]
struct PrivateKeyInfo<'a> {
    version: u8,
    algorithm: AlgorithmIdentifierRef<'a>,
    private_key: OctetStringRef<'a>,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    attributes: Option<AnyRef<'a>>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    public_key: Option<BitStringRef<'a>>,
}

/// A decrypted P-256 key and what its file says of it.
pub struct ImportedKey {
    /// The private scalar, zeroized on drop.
    pub secret: Zeroizing<[u8; 32]>,
    /// Uncompressed SEC1 public point.
    pub point: Vec<u8>,
    pub role: Option<String>,
    pub gun: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFileError {
    #[error("{0}")]
    Format(String),
    #[error("wrong passphrase (or a damaged key file)")]
    WrongPassphrase,
    #[error("the key file is encrypted: a passphrase is needed")]
    NeedPassphrase,
}

impl From<KeyError> for KeyFileError {
    fn from(e: KeyError) -> Self {
        KeyFileError::Format(e.to_string())
    }
}

/// Whether `text` holds an encrypted key (so a passphrase must be asked for).
pub fn is_encrypted(text: &str) -> bool {
    text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || text.contains("DEK-Info:")
}

/// Reads a key file. `passphrase` is needed for encrypted files.
pub fn read(text: &str, passphrase: Option<&[u8]>) -> Result<ImportedKey, KeyFileError> {
    let blocks = pem_decode(text)?;
    let PemBlock {
        label,
        der,
        headers,
    } = blocks
        .into_iter()
        .find(|b| b.label.ends_with("PRIVATE KEY"))
        .ok_or_else(|| KeyFileError::Format("no private key in the file".into()))?;
    let der = Zeroizing::new(der);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let secret = match label.as_str() {
        "ENCRYPTED PRIVATE KEY" => {
            let pass = passphrase.ok_or(KeyFileError::NeedPassphrase)?;
            let enc = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
                .map_err(|e| KeyFileError::Format(format!("not an encrypted PKCS#8 key: {e}")))?;
            check_kdf(&enc.encryption_algorithm)?;
            let doc = enc
                .decrypt(pass)
                .map_err(|_| KeyFileError::WrongPassphrase)?;
            from_pkcs8(doc.as_bytes()).map_err(|e| match e {
                // A wrong passphrase usually decrypts to garbage that fails to parse.
                KeyFileError::Format(_) => KeyFileError::WrongPassphrase,
                other => other,
            })?
        }
        "PRIVATE KEY" => from_pkcs8(&der)?,
        "EC PRIVATE KEY" => match header("DEK-Info") {
            Some(dek) => {
                let pass = passphrase.ok_or(KeyFileError::NeedPassphrase)?;
                let plain = decrypt_legacy(&der, &dek, pass)?;
                sec1_secret(&plain).map_err(|_| KeyFileError::WrongPassphrase)?
            }
            None => sec1_secret(&der)?,
        },
        other => {
            return Err(KeyFileError::Format(format!(
                "unsupported key block {other}"
            )))
        }
    };
    let sk = p256::SecretKey::from_slice(secret.as_slice())
        .map_err(|_| KeyFileError::Format("not a valid P-256 private key".into()))?;
    let point = sk.public_key().to_encoded_point(false).as_bytes().to_vec();
    Ok(ImportedKey {
        secret,
        point,
        role: header("role"),
        gun: header("gun"),
    })
}

/// Decrypts a legacy `DEK-Info: AES-{128,192,256}-CBC,<IV hex>` block: the key is
/// OpenSSL's EVP_BytesToKey with MD5 over the passphrase and the IV's first 8 bytes, one
/// round, as Go's x509.DecryptPEMBlock does; PKCS#7 padding.
fn decrypt_legacy(
    der: &[u8],
    dek_info: &str,
    pass: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    use md5::{Digest, Md5};
    let (cipher, iv_hex) = dek_info
        .split_once(',')
        .ok_or_else(|| KeyFileError::Format(format!("bad DEK-Info {dek_info:?}")))?;
    let key_len = match cipher.trim() {
        "AES-128-CBC" => 16,
        "AES-192-CBC" => 24,
        "AES-256-CBC" => 32,
        other => {
            return Err(KeyFileError::Format(format!(
                "legacy cipher {other} is not supported (AES-CBC only)"
            )))
        }
    };
    let iv: [u8; 16] = crate::tuf::keys::unhex(iv_hex.trim())
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| KeyFileError::Format("bad DEK-Info IV".into()))?;
    let mut key = Zeroizing::new(Vec::with_capacity(48));
    let mut prev: Option<Zeroizing<Vec<u8>>> = None;
    while key.len() < key_len {
        let mut h = Md5::new();
        if let Some(p) = &prev {
            h.update(p.as_slice());
        }
        h.update(pass);
        h.update(&iv[..8]);
        let d = Zeroizing::new(h.finalize().to_vec());
        key.extend_from_slice(&d);
        prev = Some(d);
    }
    // The rounds make 16 or 32 bytes; the cipher takes the first `key_len`. (The cut tail
    // stays in the capacity, which Zeroizing clears with the rest.)
    key.truncate(key_len);
    let key = key.as_slice();
    let mut buf = Zeroizing::new(der.to_vec());
    let bad = |_| KeyFileError::WrongPassphrase;
    let n = match key_len {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .map_err(|_| KeyFileError::WrongPassphrase)?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map(|p| p.len())
            .map_err(bad)?,
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, &iv)
            .map_err(|_| KeyFileError::WrongPassphrase)?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map(|p| p.len())
            .map_err(bad)?,
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, &iv)
            .map_err(|_| KeyFileError::WrongPassphrase)?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map(|p| p.len())
            .map_err(bad)?,
    };
    buf.truncate(n);
    Ok(buf)
}

/// Key files set their own key-derivation cost: accept only PBKDF2 with a bounded count
/// (Notary uses 2048), so a crafted file cannot stall or exhaust the agent.
fn check_kdf(scheme: &pkcs8::pkcs5::EncryptionScheme<'_>) -> Result<(), KeyFileError> {
    use pkcs8::pkcs5::{pbes2::Kdf, EncryptionScheme};
    const MAX_ITERATIONS: u32 = 1_000_000;
    match scheme {
        EncryptionScheme::Pbes2(p) => match &p.kdf {
            Kdf::Pbkdf2(k) if k.iteration_count <= MAX_ITERATIONS => Ok(()),
            Kdf::Pbkdf2(k) => Err(KeyFileError::Format(format!(
                "PBKDF2 with {} iterations, over the {MAX_ITERATIONS} accepted",
                k.iteration_count
            ))),
            _ => Err(KeyFileError::Format(
                "only PBKDF2-based encryption is accepted".into(),
            )),
        },
        _ => Err(KeyFileError::Format(
            "only PBES2 encryption is accepted".into(),
        )),
    }
}

fn from_pkcs8(der: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let pki = PrivateKeyInfo::from_der(der)
        .map_err(|e| KeyFileError::Format(format!("PrivateKeyInfo: {e}")))?;
    let _ = (pki.version, pki.attributes, pki.public_key);
    if pki.algorithm.oid != OID_EC {
        return Err(KeyFileError::Format(format!(
            "only EC keys can be imported, found {}",
            pki.algorithm.oid
        )));
    }
    let curve = pki
        .algorithm
        .parameters_oid()
        .map_err(|e| KeyFileError::Format(format!("EC curve: {e}")))?;
    if curve != OID_P256 {
        return Err(KeyFileError::Format(format!(
            "only P-256 keys can be imported, found curve {curve}"
        )));
    }
    sec1_secret(pki.private_key.as_bytes())
}

fn sec1_secret(der: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let sk = p256::SecretKey::from_sec1_der(der)
        .map_err(|_| KeyFileError::Format("bad EC private key".into()))?;
    let mut out = Zeroizing::new([0u8; 32]);
    let mut bytes = sk.to_bytes();
    out.copy_from_slice(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes[..]);
    Ok(out)
}

/// Writes a P-256 key as notary does: PEM `ENCRYPTED PRIVATE KEY` with `gun` and `role`
/// headers (sorted, as Go writes them), PBES2 with PBKDF2-HMAC-SHA1 (2048 iterations, 8-byte
/// salt) and AES-256-CBC, around a version-1 PrivateKeyInfo holding Go's ECPrivateKey
/// (curve and public key included).
pub fn write(
    secret: &[u8; 32],
    role: &str,
    gun: Option<&str>,
    passphrase: &[u8],
) -> Result<Zeroizing<String>, KeyFileError> {
    use der::Encode;
    use pkcs8::pkcs5::pbes2::{
        EncryptionScheme as Cipher, Kdf, Parameters, Pbkdf2Params, Pbkdf2Prf,
    };
    use pkcs8::pkcs5::EncryptionScheme;
    let sk = p256::SecretKey::from_slice(secret)
        .map_err(|_| KeyFileError::Format("not a P-256 key".into()))?;
    let sec1 = sk
        .to_sec1_der()
        .map_err(|e| KeyFileError::Format(e.to_string()))?;
    let curve = AnyRef::from(&OID_P256);
    let pki = PrivateKeyInfo {
        version: 1,
        algorithm: AlgorithmIdentifierRef {
            oid: OID_EC,
            parameters: Some(curve),
        },
        private_key: OctetStringRef::new(&sec1).map_err(|e| KeyFileError::Format(e.to_string()))?,
        attributes: None,
        public_key: None,
    };
    let plain = Zeroizing::new(
        pki.to_der()
            .map_err(|e| KeyFileError::Format(e.to_string()))?,
    );
    let mut salt = [0u8; 8];
    let mut iv = [0u8; 16];
    getrandom::getrandom(&mut salt)
        .and_then(|_| getrandom::getrandom(&mut iv))
        .map_err(|e| KeyFileError::Format(e.to_string()))?;
    let scheme = EncryptionScheme::Pbes2(Parameters {
        kdf: Kdf::Pbkdf2(Pbkdf2Params {
            salt: &salt,
            iteration_count: 2048,
            key_length: None,
            prf: Pbkdf2Prf::HmacWithSha1,
        }),
        encryption: Cipher::Aes256Cbc { iv: &iv },
    });
    let data = scheme
        .encrypt(passphrase, &plain)
        .map_err(|e| KeyFileError::Format(e.to_string()))?;
    let der = pkcs8::EncryptedPrivateKeyInfo {
        encryption_algorithm: scheme,
        encrypted_data: &data,
    }
    .to_der()
    .map_err(|e| KeyFileError::Format(e.to_string()))?;
    let body = super::keys::pem_encode("ENCRYPTED PRIVATE KEY", &der);
    let mut headers = String::new();
    if let Some(g) = gun {
        headers.push_str(&format!("gun: {g}\n"));
    }
    headers.push_str(&format!("role: {role}\n\n"));
    // Go puts the headers right after the BEGIN line.
    let (first, rest) = body.split_once('\n').unwrap_or((&body, ""));
    Ok(Zeroizing::new(format!("{first}\n{headers}{rest}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ciphertexts from `openssl enc -aes-N-cbc -K <EVP_BytesToKey(md5, pass, iv[..8])>`.
    #[test]
    fn legacy_aes_cbc_of_every_key_length_decrypts() {
        let iv = "00112233445566778899AABBCCDDEEFF";
        let plain = b"sixteen-byte-msg and more text..";
        for (cipher, hex) in [
            ("AES-128-CBC", "d93ce73672d3a3a6fcd9bb17e88233e46cb3c5c1e5382a758e37d3c94db608598835f3984617978c419dcbc21e6aade8"),
            ("AES-192-CBC", "60e59089d2cb112cb78c6306d13605aed783df5b1a9cdd2ce8702a2da95d5d17a42c3eb81ad669b9f6e8f398c49152e6"),
            ("AES-256-CBC", "8aada39be9bfeed527aea3d1aafb38bbae9ad0b5d33c15752fb07de456b075eab64c82f9386541145c3f8c92a19dd153"),
        ] {
            let der = crate::tuf::keys::unhex(hex).unwrap();
            let dek = format!("{cipher},{iv}");
            let out = decrypt_legacy(&der, &dek, b"legacy-pass").unwrap();
            assert_eq!(out.as_slice(), plain, "{cipher}");
            assert!(matches!(
                decrypt_legacy(&der, &dek, b"wrong-pass"),
                Err(KeyFileError::WrongPassphrase)
            ));
        }
    }
}
