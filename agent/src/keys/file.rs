//! The `file` backend: a directory of Notary / Docker key files
//! (`~/.docker/trust/private`), for teams that start from software keys and move them to
//! hardware key by key (`dct key import FILE` puts one on a token).
//!
//! Keys are listed from the files (canonical ID = file name, role and GUN from the PEM
//! headers) and unlocked per passphrase: `dct unlock --token file:DIR` opens every key that
//! passphrase decrypts. Decrypted keys live only in zeroizing memory and are dropped on
//! lock. New keys (not root keys: those belong on hardware) are written in notary's format,
//! encrypted with the passphrase last given to `dct unlock` for this directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::{KeyBackend, KeyEntry, TokenInfo};
use crate::error::{Error, PinState, Result};
use crate::tuf::keyfile;
use crate::tuf::keys::{p256_spki_from_point, TufKey};

pub const BACKEND: &str = "file";

pub struct FileBackend {
    dir: PathBuf,
    label: String,
    /// Unlocked keys by canonical ID.
    unlocked: HashMap<String, Unlocked>,
    /// The passphrase new key files are encrypted with: the last one that unlocked.
    passphrase: Option<SecretString>,
}

/// An unlocked key: p256's `SigningKey` (zeroized on drop) for what the key is, and the
/// same key in OpenSSL for signing. OpenSSL's constant-time P-256 (its nistz256 code) signs a
/// digest several times faster than RustCrypto's generic arithmetic, which made software
/// keys the slowest signer here; ring, already in the build for TLS, cannot sign a digest
/// it did not hash itself. OpenSSL clears a key's scalar when the key is freed.
struct Unlocked {
    sk: p256::ecdsa::SigningKey,
    ossl: openssl::ec::EcKey<openssl::pkey::Private>,
}

impl Unlocked {
    fn new(sk: p256::ecdsa::SigningKey) -> Result<Unlocked> {
        use openssl::bn::{BigNum, BigNumContext};
        use openssl::ec::{EcGroup, EcKey, EcPoint};
        use openssl::nid::Nid;
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(Error::internal)?;
        let mut ctx = BigNumContext::new().map_err(Error::internal)?;
        let mut scalar = zeroize::Zeroizing::new([0u8; 32]);
        scalar.copy_from_slice(&sk.to_bytes());
        let mut d = BigNum::from_slice(scalar.as_slice()).map_err(Error::internal)?;
        let point = sk.verifying_key().to_encoded_point(false);
        let public =
            EcPoint::from_bytes(&group, point.as_bytes(), &mut ctx).map_err(Error::internal)?;
        let ossl = EcKey::from_private_components(&group, &d, &public);
        // The temporary copy of the scalar is zeroed before it is freed.
        d.clear();
        let ossl = ossl.map_err(Error::internal)?;
        ossl.check_key().map_err(Error::internal)?;
        Ok(Unlocked { sk, ossl })
    }

    /// Raw r||s over a SHA-256 digest.
    fn sign(&self, digest: &[u8; 32]) -> Result<Vec<u8>> {
        let sig = openssl::ecdsa::EcdsaSig::sign(digest, &self.ossl).map_err(Error::internal)?;
        let mut out = sig.r().to_vec_padded(32).map_err(Error::internal)?;
        out.extend(sig.s().to_vec_padded(32).map_err(Error::internal)?);
        Ok(out)
    }
}

/// A key file as listed: canonical ID, role, GUN, path.
struct Listed {
    id: String,
    role: String,
    gun: Option<String>,
    path: PathBuf,
}

impl FileBackend {
    pub fn new(dir: PathBuf, label: String) -> Self {
        FileBackend {
            dir,
            label,
            unlocked: HashMap::new(),
            passphrase: None,
        }
    }

    /// `*.key` files under the directory (notary 0.7 keeps them flat; older layouts nest
    /// them in root_keys/ and tuf_keys/<gun>/).
    fn files(&self) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d)
                .map_err(|e| Error::Unavailable(format!("key directory {}: {e}", d.display())))?;
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().and_then(|x| x.to_str()) != Some("key") {
                    continue;
                }
                let Some(id) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
                    continue;
                };
                if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    continue;
                }
                let Ok(text) = read_small(&p) else { continue };
                let header = |name: &str| {
                    text.lines().take(6).find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.trim() == name)
                            .map(|(_, v)| v.trim().to_string())
                    })
                };
                let role = header("role").unwrap_or_default();
                if !crate::tuf::metadata::valid_role_name(&role) {
                    continue;
                }
                out.push(Listed {
                    id,
                    role,
                    gun: header("gun"),
                    path: p,
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn entry(&self, l: &Listed) -> KeyEntry {
        // The public key is known once unlocked; until then only the ID is.
        let spki = self
            .unlocked
            .get(&l.id)
            .and_then(|k| {
                let point = k.sk.verifying_key().to_encoded_point(false);
                p256_spki_from_point(point.as_bytes()).ok()
            })
            .unwrap_or_default();
        let key = TufKey::ecdsa(spki.clone());
        KeyEntry {
            key_id: l.id.clone(),
            canonical_id: l.id.clone(),
            role: l.role.clone(),
            gun: l.gun.clone(),
            keytype: key.keytype,
            public: key.public,
            spki,
            uri: format!("file:{}", l.path.display()),
            backend: BACKEND,
            token: self.label.clone(),
            handle: l.id.clone().into_bytes(),
            detail: crate::keys::KeyDetail::None,
        }
    }
}

/// Creates `path` (never overwriting) readable by its owner only, as notary does.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| Error::Internal(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(fail)
}

fn read_small(p: &Path) -> std::io::Result<zeroize::Zeroizing<String>> {
    let meta = std::fs::metadata(p)?;
    if meta.len() > 64 * 1024 {
        return Err(std::io::Error::other("too large for a key file"));
    }
    Ok(zeroize::Zeroizing::new(std::fs::read_to_string(p)?))
}

impl KeyBackend for FileBackend {
    fn info(&mut self) -> TokenInfo {
        let mut info = TokenInfo {
            backend: BACKEND,
            label: self.label.clone(),
            module: self.dir.display().to_string(),
            model: "Notary key files".into(),
            ..Default::default()
        };
        match self.files() {
            Ok(f) => {
                info.present = true;
                info.key_count = f.len() as u32;
                info.unlocked = !self.unlocked.is_empty();
            }
            Err(e) => info.error = Some(e.to_string()),
        }
        info
    }

    fn login(&mut self, pin: &SecretString, _force: bool) -> Result<PinState> {
        let pass = pin.expose_secret().as_bytes();
        let mut opened = 0;
        for l in self.files()? {
            if self.unlocked.contains_key(&l.id) {
                continue;
            }
            let Ok(text) = read_small(&l.path) else {
                continue;
            };
            let Ok(k) = keyfile::read(&text, Some(pass)) else {
                continue;
            };
            let Ok(sk) = p256::ecdsa::SigningKey::from_slice(k.secret.as_slice()) else {
                continue;
            };
            // The file name must be the key's canonical ID, or it is not the key it claims.
            let spki = p256_spki_from_point(&k.point).map_err(Error::internal)?;
            if TufKey::ecdsa(spki).key_id() != l.id {
                tracing::warn!(file = %l.path.display(), "key file name is not its key's ID: skipped");
                continue;
            }
            self.unlocked.insert(l.id, Unlocked::new(sk)?);
            opened += 1;
        }
        // An empty directory takes the first passphrase for the keys it will hold.
        let empty = self.files()?.is_empty();
        if opened == 0 && !empty {
            return Err(Error::WrongPin {
                token: self.label.clone(),
                state: PinState::default(),
            });
        }
        tracing::info!(token = %self.label, keys = opened, "opened key files");
        self.passphrase = Some(pin.clone());
        Ok(PinState::default())
    }

    fn logout(&mut self) -> Result<()> {
        self.unlocked.clear();
        self.passphrase = None;
        Ok(())
    }

    fn list_keys(&mut self) -> Result<Vec<KeyEntry>> {
        Ok(self.files()?.iter().map(|l| self.entry(l)).collect())
    }

    fn generate(&mut self, role: &str, gun: Option<&str>) -> Result<KeyEntry> {
        if role == "root" {
            return Err(Error::InvalidArgument(format!(
                "{} does not make root keys: make them on a hardware token (--token)",
                self.label
            )));
        }
        let pass = self.passphrase.clone().ok_or_else(|| Error::Locked {
            token: self.label.clone(),
        })?;
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        let sk = loop {
            getrandom::getrandom(secret.as_mut_slice()).map_err(Error::internal)?;
            if let Ok(k) = p256::ecdsa::SigningKey::from_slice(secret.as_slice()) {
                break k;
            }
        };
        let point = sk.verifying_key().to_encoded_point(false);
        let spki = p256_spki_from_point(point.as_bytes()).map_err(Error::internal)?;
        let id = TufKey::ecdsa(spki).key_id();
        // As notary: only the canonical non-root roles carry a gun header.
        let gun = if matches!(role, "targets" | "snapshot" | "timestamp") {
            gun
        } else {
            None
        };
        let pem = keyfile::write(&secret, role, gun, pass.expose_secret().as_bytes())
            .map_err(Error::internal)?;
        let path = self.dir.join(format!("{id}.key"));
        write_new_private(&path, pem.as_bytes())?;
        self.unlocked.insert(id.clone(), Unlocked::new(sk)?);
        let listed = Listed {
            id,
            role: role.into(),
            gun: gun.map(str::to_string),
            path,
        };
        Ok(self.entry(&listed))
    }

    fn import(&mut self, _: &str, _: Option<&str>, _: &keyfile::ImportedKey) -> Result<KeyEntry> {
        Err(Error::InvalidArgument(format!(
            "{} cannot take imported keys; import into a hardware token",
            self.label
        )))
    }

    fn sign_digest(
        &mut self,
        _grant: &super::SignGrant,
        key: &KeyEntry,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>> {
        let sk = self
            .unlocked
            .get(&key.canonical_id)
            .ok_or_else(|| Error::Locked {
                token: self.label.clone(),
            })?;
        sk.sign(digest)
    }

    fn store_certificate(&mut self, _: &KeyEntry, _: &str, _: &[u8]) -> Result<KeyEntry> {
        Err(Error::InvalidArgument(format!(
            "{} cannot store a root certificate; use a root key on a hardware token",
            self.label
        )))
    }
}
