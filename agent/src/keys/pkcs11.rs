//! PKCS#11 backend (cryptoki): SoftHSM2, YubiKey through ykcs11, OpenSC, network HSMs.
//!
//! Keys are P-256, generated on the token as sensitive and non-extractable. Each key's
//! public and private objects carry `CKA_LABEL = "dct:<role>:<gun>"` (`"dct:root:"` for a
//! root key) and `CKA_ID` = the 32 bytes of its canonical key ID; a root certificate is a
//! public `CKO_CERTIFICATE` with the same `CKA_ID`. Public objects are readable without a
//! PIN, so keys list while the token is locked. One session per token, opened on first use
//! and reopened after a device error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use der::{Decode, Encode};
use secrecy::SecretString;
use x509_cert::Certificate;

use super::{KeyBackend, KeyDetail, KeyEntry, TokenInfo};
use crate::error::{Error, PinState, Result};
use crate::tuf::keys::{self as tufkeys, hex, TufKey};

pub const BACKEND: &str = "pkcs11";
const LABEL_PREFIX: &str = "dct:";
/// DER OID of prime256v1, the CKA_EC_PARAMS of a P-256 key.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Loads and initialises each module once per process; tokens of one module share it.
#[derive(Default)]
pub struct Modules(HashMap<PathBuf, Pkcs11>);

impl Modules {
    pub fn get(&mut self, path: &Path) -> Result<Pkcs11> {
        if let Some(ctx) = self.0.get(path) {
            return Ok(ctx.clone());
        }
        let ctx = Pkcs11::new(path).map_err(|e| {
            Error::Unavailable(format!(
                "cannot load PKCS#11 module {}: {e}",
                path.display()
            ))
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "cannot initialise PKCS#11 module {}: {e}",
                    path.display()
                )))
            }
        }
        self.0.insert(path.to_path_buf(), ctx.clone());
        Ok(ctx)
    }
}

pub struct Pkcs11Backend {
    ctx: Pkcs11,
    module: PathBuf,
    label: String,
    session: Option<Session>,
    /// Private key handles by (CKA_ID, CKA_LABEL), valid while logged in; shared with the
    /// signing sessions (a token object's handle is the application's, not a session's).
    handles: Handles,
    /// A session-only RSA key for receiving a wrapped backup.
    transport: Option<ObjectHandle>,
    /// The PIN, kept while logged in only when the token holds keys that want it again
    /// before each signature (CKA_ALWAYS_AUTHENTICATE: a PIV slot with PIN policy
    /// "always", reached through ykcs11 or OpenSC). Shared with the signing sessions.
    pin: PinHolder,
}

/// A private key's handle and whether it wants the PIN before each use
/// (CKA_ALWAYS_AUTHENTICATE), read once when the handle is found.
type PrivateKey = (ObjectHandle, bool);

type PinHolder = std::sync::Arc<std::sync::Mutex<Option<SecretString>>>;

/// Private key handles by (CKA_ID, CKA_LABEL), found once for all of the token's sessions:
/// a key the agent just made signs on every session without a search of the token, and a
/// key found by one session is not searched for again by the others. A handle gone stale
/// is looked up again where it is used.
#[derive(Clone, Default)]
struct Handles(std::sync::Arc<std::sync::Mutex<HandleMap>>);

/// (CKA_ID, CKA_LABEL) to the private key's handle.
type HandleMap = HashMap<(Vec<u8>, Vec<u8>), PrivateKey>;

impl Handles {
    fn map(&self) -> std::sync::MutexGuard<'_, HandleMap> {
        // Only whole inserts, lookups and clears happen under the lock.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn get(&self, k: &(Vec<u8>, Vec<u8>)) -> Option<PrivateKey> {
        self.map().get(k).copied()
    }
    fn insert(&self, k: (Vec<u8>, Vec<u8>), v: PrivateKey) {
        self.map().insert(k, v);
    }
    fn clear(&self) {
        self.map().clear();
    }
}

impl Pkcs11Backend {
    pub fn new(ctx: Pkcs11, module: PathBuf, label: String) -> Self {
        Pkcs11Backend {
            ctx,
            module,
            label,
            session: None,
            handles: Handles::default(),
            transport: None,
            pin: PinHolder::default(),
        }
    }

    fn find_slot(&self) -> Result<Slot> {
        find_slot(&self.ctx, &self.module, &self.label)
    }

    /// Opens further sessions on this token for signing on other threads (the pool).
    pub fn session_factory(&self) -> super::SessionFactory {
        let (ctx, module, label) = (self.ctx.clone(), self.module.clone(), self.label.clone());
        let pin = self.pin.clone();
        let handles = self.handles.clone();
        std::sync::Arc::new(move || {
            let slot = find_slot(&ctx, &module, &label)?;
            let session = ctx
                .open_ro_session(slot)
                .map_err(|e| Error::Unavailable(format!("token {label:?}: {e}")))?;
            Ok(Box::new(SignSession {
                session,
                label: label.clone(),
                handles: handles.clone(),
                pin: pin.clone(),
            }) as Box<dyn super::SignSession>)
        })
    }

    fn session(&mut self) -> Result<&Session> {
        if self.session.is_none() {
            let slot = self.find_slot()?;
            let s = self
                .ctx
                .open_rw_session(slot)
                .map_err(|e| self.unavailable(e))?;
            self.handles.clear();
            self.session = Some(s);
        }
        // Set just above.
        self.session
            .as_ref()
            .ok_or_else(|| Error::Internal("no session".into()))
    }

    fn slot(&self) -> Option<Slot> {
        self.session
            .as_ref()
            .and_then(|s| s.get_session_info().ok())
            .map(|i| i.slot_id())
    }

    fn logged_in(&self) -> bool {
        self.session
            .as_ref()
            .and_then(|s| s.get_session_info().ok())
            .map(|i| {
                matches!(
                    i.session_state(),
                    SessionState::RoUser | SessionState::RwUser
                )
            })
            .unwrap_or(false)
    }

    fn pin_state(&self) -> PinState {
        let slot = match self.slot().map(Ok).unwrap_or_else(|| self.find_slot()) {
            Ok(s) => s,
            Err(_) => return PinState::default(),
        };
        match self.ctx.get_token_info(slot) {
            Ok(t) => PinState {
                tries_left: None,
                count_low: t.user_pin_count_low(),
                final_try: t.user_pin_final_try(),
                locked: t.user_pin_locked(),
            },
            Err(_) => PinState::default(),
        }
    }

    fn unavailable(&self, e: CkError) -> Error {
        Error::Unavailable(format!("token {:?}: {e}", self.label))
    }

    /// Maps a PKCS#11 error; drops the session when the device went away, so the next
    /// call reconnects.
    fn map_err(&mut self, e: CkError) -> Error {
        let (err, gone) = classify(&self.label, e);
        if gone || matches!(err, Error::Locked { .. }) {
            self.handles.clear();
        }
        if gone {
            self.session = None;
        }
        err
    }

    fn require_login(&mut self) -> Result<()> {
        self.session()?;
        if self.logged_in() {
            Ok(())
        } else {
            self.handles.clear();
            Err(Error::Locked {
                token: self.label.clone(),
            })
        }
    }

    fn uri(&self, id: &[u8]) -> String {
        let mut s = format!("pkcs11:token={};id=", pct(self.label.as_bytes()));
        for b in id {
            s.push_str(&format!("%{b:02x}"));
        }
        s.push_str(";type=private");
        s
    }

    fn entry(&self, role: &str, gun: Option<&str>, spki: Vec<u8>, id: Vec<u8>) -> KeyEntry {
        let key = TufKey::ecdsa(spki.clone());
        let id_hex = key.key_id();
        KeyEntry {
            key_id: id_hex.clone(),
            canonical_id: id_hex,
            role: role.into(),
            gun: gun.map(str::to_string),
            keytype: key.keytype,
            public: key.public,
            spki,
            uri: self.uri(&id),
            backend: BACKEND,
            token: self.label.clone(),
            handle: id,
            detail: KeyDetail::None,
        }
    }

    fn with_cert(&self, mut e: KeyEntry, cert_der: &[u8]) -> Result<KeyEntry> {
        let cert = Certificate::from_der(cert_der).map_err(|err| {
            Error::Internal(format!(
                "certificate on token for key {}: {err}",
                e.canonical_id
            ))
        })?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|err| Error::Internal(err.to_string()))?;
        if spki != e.spki {
            return Err(Error::Internal(format!(
                "certificate with CKA_ID of key {} is for another key",
                e.canonical_id
            )));
        }
        let key = TufKey::ecdsa_x509(cert_der);
        e.key_id = key.key_id();
        e.keytype = key.keytype;
        e.public = key.public;
        e.gun = crate::tuf::cert::subject_cn(&cert);
        Ok(e)
    }

    /// The private key of `key` (see [`lookup_private`]), cached per session.
    fn private_handle(&mut self, key: &KeyEntry) -> Result<PrivateKey> {
        let cache_key = (key.handle.clone(), private_label(key));
        if let Some(h) = self.handles.get(&cache_key) {
            return Ok(h);
        }
        self.require_login()?;
        self.session()?;
        let Some(session) = self.session.as_ref() else {
            return Err(Error::Internal("no session".into()));
        };
        let found = lookup_private(session, &self.label, key);
        let h = match found {
            Ok(h) => (h, always_authenticate(session, h)),
            Err(LookupError::Ck(e)) => return Err(self.map_err(e)),
            Err(LookupError::Final(e)) => return Err(e),
        };
        self.handles.insert(cache_key, h);
        Ok(h)
    }
}

impl Pkcs11Backend {
    /// Adds the public object beside private key `priv_h`; if the token refuses it, removes
    /// the private one too, so a key is never left half made.
    fn add_public_half(&mut self, priv_h: ObjectHandle, public: &[Attribute]) -> Result<()> {
        let session = self.session()?;
        if let Err(e) = session.create_object(public) {
            let _ = session.destroy_object(priv_h);
            return Err(self.map_err(e));
        }
        Ok(())
    }

    /// A new P-256 key pair on the token; `wrappable` lets the private key leave wrapped.
    fn generate_key(&mut self, role: &str, gun: Option<&str>, wrappable: bool) -> Result<KeyEntry> {
        self.require_login()?;
        let label = key_label(role, gun);
        let mut tmp_id = [0u8; 32];
        getrandom::getrandom(&mut tmp_id).map_err(Error::internal)?;
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(tmp_id.to_vec()),
        ];
        // Sensitive always; extractable only when a backup is asked for, and then only in
        // wrapped form (a sensitive key never leaves the token in plaintext).
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(wrappable),
            Attribute::Sign(true),
            Attribute::Label(label),
            Attribute::Id(tmp_id.to_vec()),
        ];
        let r = self
            .session()?
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private);
        let (pub_h, priv_h) = r.map_err(|e| self.map_err(e))?;
        let point = self
            .session()?
            .get_attributes(pub_h, &[AttributeType::EcPoint]);
        let point = match point.map_err(|e| self.map_err(e))?.into_iter().next() {
            Some(Attribute::EcPoint(p)) => p,
            _ => {
                return Err(Error::Internal(
                    "token returned no EC point for the new key".into(),
                ))
            }
        };
        let spki = tufkeys::p256_spki_from_point(ec_point(&point)).map_err(Error::internal)?;
        // CKA_ID becomes the canonical key ID, so other PKCS#11 tools show the same ID.
        let canonical = tufkeys::unhex(&TufKey::ecdsa(spki.clone()).key_id()).unwrap_or_default();
        // Private first; if the public object then refuses, put the private one back, so
        // both halves always share one CKA_ID.
        let label = self.label.clone();
        let session = self.session()?;
        let id = match session.update_attributes(priv_h, &[Attribute::Id(canonical.clone())]) {
            Err(e) => {
                tracing::warn!(token = %label, "token keeps the random CKA_ID: {e}");
                tmp_id.to_vec()
            }
            Ok(()) => match session.update_attributes(pub_h, &[Attribute::Id(canonical.clone())]) {
                Ok(()) => canonical,
                Err(e) => {
                    tracing::warn!(token = %label, "token keeps the random CKA_ID: {e}");
                    let back = session.update_attributes(priv_h, &[Attribute::Id(tmp_id.to_vec())]);
                    if let Err(e) = back {
                        let _ = session.destroy_object(priv_h);
                        let _ = session.destroy_object(pub_h);
                        return Err(Error::Internal(format!(
                            "token {label:?}: cannot label the new key: {e}"
                        )));
                    }
                    tmp_id.to_vec()
                }
            },
        };
        self.handles
            .insert((id.clone(), key_label(role, gun)), (priv_h, false));
        Ok(self.entry(role, gun, spki, id))
    }

    fn list_keys_uncached(&mut self) -> Result<Vec<KeyEntry>> {
        let session = self.session()?;
        let pubs = session.find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
        ]);
        let certs = session.find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
        ]);
        let (pubs, certs) = match (pubs, certs) {
            (Ok(p), Ok(c)) => (p, c),
            (Err(e), _) | (_, Err(e)) => return Err(self.map_err(e)),
        };
        let mut by_id: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
        for h in certs {
            let attrs = self
                .session()?
                .get_attributes(h, &[AttributeType::Id, AttributeType::Value]);
            let attrs = attrs.map_err(|e| self.map_err(e))?;
            let (mut id, mut value) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Id(v) => id = Some(v),
                    Attribute::Value(v) => value = Some(v),
                    _ => {}
                }
            }
            if let (Some(id), Some(value)) = (id, value) {
                by_id.entry(id).or_default().push(value);
            }
        }
        let mut out = Vec::new();
        for h in pubs {
            let attrs = self.session()?.get_attributes(
                h,
                &[
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::EcPoint,
                ],
            );
            let attrs = attrs.map_err(|e| self.map_err(e))?;
            let (mut label, mut id, mut point) = (None, None, None);
            for a in attrs {
                match a {
                    Attribute::Label(v) => label = Some(v),
                    Attribute::Id(v) => id = Some(v),
                    Attribute::EcPoint(v) => point = Some(v),
                    _ => {}
                }
            }
            let (Some(label), Some(id), Some(point)) = (label, id, point) else {
                continue;
            };
            let Ok(spki) = tufkeys::p256_spki_from_point(ec_point(&point)) else {
                continue;
            };
            let certs = by_id.get(&id).map(Vec::as_slice).unwrap_or_default();
            let (role, gun, named_by_cert) = match parse_label(&String::from_utf8_lossy(&label)) {
                Some((role, gun)) => (role, gun, false),
                // A key we did not label (a PIV card through ykcs11 or OpenSC): its
                // certificate names its role and GUN, if it is one of ours.
                None => match certs.iter().find_map(|c| cert_named(c, &spki)) {
                    Some((role, gun)) => (role, gun, true),
                    None => continue,
                },
            };
            let mut entry = self.entry(&role, gun.as_deref(), spki, id.clone());
            if named_by_cert {
                entry.detail = KeyDetail::CertificateNamed;
            }
            if role == "root" && !certs.is_empty() {
                for c in certs {
                    // A stray certificate must not hide the token's other keys.
                    match self.with_cert(entry.clone(), c) {
                        Ok(e) => out.push(e),
                        Err(e) => tracing::warn!(token = %self.label, "skipping certificate: {e}"),
                    }
                }
            } else {
                out.push(entry);
            }
        }
        super::sort_keys(&mut out);
        Ok(out)
    }
}

impl KeyBackend for Pkcs11Backend {
    fn info(&mut self) -> TokenInfo {
        let mut info = TokenInfo {
            backend: BACKEND,
            label: self.label.clone(),
            module: self.module.display().to_string(),
            ..Default::default()
        };
        if let Err(e) = self.session() {
            info.error = Some(e.to_string());
            return info;
        }
        info.present = true;
        info.unlocked = self.logged_in();
        info.pin = self.pin_state();
        if let Some(t) = self.slot().and_then(|s| self.ctx.get_token_info(s).ok()) {
            info.manufacturer = t.manufacturer_id().trim_end().into();
            info.model = t.model().trim_end().into();
            info.serial = t.serial_number().trim_end().into();
        }
        match self.list_keys() {
            Ok(k) => info.key_count = k.len() as u32,
            Err(e) => info.error = Some(e.to_string()),
        }
        info
    }

    fn login(&mut self, pin: &SecretString, force: bool) -> Result<PinState> {
        self.session()?;
        if self.logged_in() {
            return Ok(self.pin_state());
        }
        let before = self.pin_state();
        if before.locked {
            return Err(Error::PinLocked {
                token: self.label.clone(),
            });
        }
        if before.final_try && !force {
            return Err(Error::FinalTry {
                token: self.label.clone(),
            });
        }
        let result = self.session()?.login(UserType::User, Some(pin));
        self.handles.clear();
        match result {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                let always = self.session()?.find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::AlwaysAuthenticate(true),
                ]);
                if always.is_ok_and(|v| !v.is_empty()) {
                    if let Ok(mut p) = self.pin.lock() {
                        *p = Some(pin.clone());
                    }
                }
                Ok(self.pin_state())
            }
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(Error::WrongPin {
                token: self.label.clone(),
                state: self.pin_state(),
            }),
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Error::PinLocked {
                token: self.label.clone(),
            }),
            Err(CkError::Pkcs11(RvError::PinLenRange | RvError::PinInvalid, _)) => {
                Err(Error::InvalidArgument(format!(
                    "the PIN has a length or characters token {:?} does not accept",
                    self.label
                )))
            }
            Err(e) => Err(self.map_err(e)),
        }
    }

    fn logout(&mut self) -> Result<()> {
        self.handles.clear();
        // Forgetting the PIN must not be skipped because another thread panicked while
        // holding the lock (fail closed): clearing an Option is sound on poisoned data.
        *self
            .pin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        if self.session.is_none() || !self.logged_in() {
            return Ok(());
        }
        let r = self.session()?.logout();
        match r {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => Ok(()),
            Err(e) => Err(self.map_err(e)),
        }
    }

    fn list_keys(&mut self) -> Result<Vec<KeyEntry>> {
        self.list_keys_uncached()
    }
    fn generate(&mut self, role: &str, gun: Option<&str>) -> Result<KeyEntry> {
        self.generate_key(role, gun, false)
    }

    fn generate_wrappable(&mut self, role: &str, gun: Option<&str>) -> Result<KeyEntry> {
        self.generate_key(role, gun, true)
    }

    fn transport_key(&mut self) -> Result<(Vec<u8>, Vec<u8>)> {
        self.require_login()?;
        let public = [
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::Encrypt(true),
            Attribute::Wrap(true),
            Attribute::ModulusBits(3072_u64.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
        ];
        let private = [
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Decrypt(true),
            Attribute::Unwrap(true),
        ];
        let r = self
            .session()?
            .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private);
        let (pub_h, priv_h) = r.map_err(|e| self.map_err(e))?;
        let attrs = self.session()?.get_attributes(
            pub_h,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        );
        let attrs = attrs.map_err(|e| self.map_err(e))?;
        let (mut n, mut e) = (Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Modulus(m) => n = m,
                Attribute::PublicExponent(x) => e = x,
                _ => {}
            }
        }
        let _ = self.session()?.destroy_object(pub_h);
        if let Some(old) = self.transport.replace(priv_h) {
            let _ = self.session()?.destroy_object(old);
        }
        Ok((n, e))
    }

    fn wrap_for(
        &mut self,
        key: &KeyEntry,
        modulus: &[u8],
        exponent: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let (ec, _) = self.private_handle(key)?;
        let rsa = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(false),
            Attribute::Wrap(true),
            Attribute::Modulus(modulus.to_vec()),
            Attribute::PublicExponent(exponent.to_vec()),
        ];
        let rsa = self.session()?.create_object(&rsa);
        let rsa = rsa.map_err(|e| self.map_err(e))?;
        let aes = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::ValueLen(32_u64.into()),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::Wrap(true),
        ];
        let aes = self.session()?.generate_key(&Mechanism::AesKeyGen, &aes);
        let aes = match aes {
            Ok(h) => h,
            Err(e) => {
                let _ = self.session()?.destroy_object(rsa);
                return Err(self.map_err(e));
            }
        };
        let session = self.session()?;
        let wrapped = session
            .wrap_key(&oaep(), rsa, aes)
            .and_then(|wa| Ok((wa, session.wrap_key(&Mechanism::AesKeyWrapPad, aes, ec)?)));
        let _ = session.destroy_object(aes);
        let _ = session.destroy_object(rsa);
        wrapped.map_err(|e| self.map_err(e))
    }

    fn unwrap_from(
        &mut self,
        key: &KeyEntry,
        wrapped_aes: &[u8],
        wrapped_key: &[u8],
    ) -> Result<KeyEntry> {
        self.require_login()?;
        let transport = self.transport.take().ok_or_else(|| {
            Error::Internal(format!("token {:?} has no transport key", self.label))
        })?;
        let gun = if key.role == "root" {
            None
        } else {
            key.gun.as_deref()
        };
        let label = key_label(&key.role, gun);
        let aes_t = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Unwrap(true),
        ];
        let session = self.session()?;
        let aes = session.unwrap_key(&oaep(), transport, wrapped_aes, &aes_t);
        let _ = session.destroy_object(transport);
        let aes = aes.map_err(|e| self.map_err(e))?;
        let private = private_half(label.clone(), key.handle.clone());
        let session = self.session()?;
        let ec = session.unwrap_key(&Mechanism::AesKeyWrapPad, aes, wrapped_key, &private);
        let _ = session.destroy_object(aes);
        let priv_h = ec.map_err(|e| self.map_err(e))?;
        let spki = spki::SubjectPublicKeyInfoRef::from_der(&key.spki).map_err(Error::internal)?;
        let public = public_half(
            spki.subject_public_key.raw_bytes(),
            label,
            key.handle.clone(),
        );
        self.add_public_half(priv_h, &public)?;
        let entry = self.entry(&key.role, gun, key.spki.clone(), key.handle.clone());
        // A root key's certificates travel with it.
        if key.role == "root" && key.keytype == crate::tuf::keys::ECDSA_X509 {
            if let (Ok(cert), Some(g)) = (key.tuf_key().certificate(), key.gun.as_deref()) {
                let der = der::Encode::to_der(&cert).map_err(Error::internal)?;
                return self.store_certificate(&entry, g, &der);
            }
        }
        Ok(entry)
    }

    fn import(
        &mut self,
        role: &str,
        gun: Option<&str>,
        key: &crate::tuf::keyfile::ImportedKey,
    ) -> Result<KeyEntry> {
        self.require_login()?;
        let spki = tufkeys::p256_spki_from_point(&key.point)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let canonical = TufKey::ecdsa(spki.clone()).key_id();
        if self
            .list_keys()?
            .iter()
            .any(|k| k.canonical_id == canonical)
        {
            return Err(Error::InvalidArgument(format!(
                "key {canonical} is already on token {:?}",
                self.label
            )));
        }
        let id = tufkeys::unhex(&canonical).unwrap_or_default();
        let label = key_label(role, gun);
        let mut private = private_half(label.clone(), id.clone());
        private.push(Attribute::EcParams(P256_PARAMS.to_vec()));
        private.push(Attribute::Value(key.secret.to_vec()));
        let public = public_half(&key.point, label, id.clone());
        let priv_h = self.session()?.create_object(&private);
        let priv_h = priv_h.map_err(|e| self.map_err(e))?;
        self.add_public_half(priv_h, &public)?;
        Ok(self.entry(role, gun, spki, id))
    }

    fn delete(&mut self, key: &KeyEntry) -> Result<()> {
        if key.detail == KeyDetail::CertificateNamed {
            return Err(Error::InvalidArgument(format!(
                "key {} was not made by the agent; delete it with the token's own tool",
                key.key_id
            )));
        }
        self.require_login()?;
        let objects = self
            .session()?
            .find_objects(&[Attribute::Id(key.handle.clone())]);
        let objects = objects.map_err(|e| self.map_err(e))?;
        for h in objects {
            // Only this agent's objects: the key's two halves and its certificates.
            let label = self
                .session()?
                .get_attributes(h, &[AttributeType::Label])
                .ok()
                .and_then(|a| match a.first() {
                    Some(Attribute::Label(l)) => Some(l.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            if !label.starts_with(LABEL_PREFIX.as_bytes()) {
                continue;
            }
            let r = self.session()?.destroy_object(h);
            r.map_err(|e| self.map_err(e))?;
        }
        self.handles.clear();
        Ok(())
    }

    fn session_factory(&self) -> Option<super::SessionFactory> {
        Some(Pkcs11Backend::session_factory(self))
    }

    fn sign_digest(
        &mut self,
        _grant: &super::SignGrant,
        key: &KeyEntry,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>> {
        let h = self.private_handle(key)?;
        let pin = self.pin.clone();
        let r = ecdsa(self.session()?, h, digest, &pin);
        let sig = match r {
            Ok(s) => s,
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)) => {
                // The handle went stale (another application changed the token): look it up again.
                self.handles.clear();
                let h = self.private_handle(key)?;
                let r = ecdsa(self.session()?, h, digest, &pin);
                r.map_err(|e| self.map_err(e))?
            }
            Err(e) => return Err(self.map_err(e)),
        };
        check_sig_len(sig)
    }

    fn store_certificate(
        &mut self,
        key: &KeyEntry,
        gun: &str,
        cert_der: &[u8],
    ) -> Result<KeyEntry> {
        self.require_login()?;
        // Check it is this key's certificate before anything is written to the token.
        let mut base = key.clone();
        base.gun = None;
        let listed = self.with_cert(base, cert_der)?;
        let cert = Certificate::from_der(cert_der).map_err(Error::internal)?;
        let subject = cert
            .tbs_certificate
            .subject
            .to_der()
            .map_err(Error::internal)?;
        let template = [
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(format!("{LABEL_PREFIX}cert:{gun}").into_bytes()),
            Attribute::Id(key.handle.clone()),
            Attribute::Subject(subject),
            Attribute::Value(cert_der.to_vec()),
        ];
        let r = self.session()?.create_object(&template);
        r.map_err(|e| self.map_err(e))?;
        Ok(listed)
    }
}

/// The slot holding the token labelled `label`.
fn find_slot(ctx: &Pkcs11, module: &Path, label: &str) -> Result<Slot> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| Error::Unavailable(format!("token {label:?}: {e}")))?;
    for slot in slots {
        if let Ok(info) = ctx.get_token_info(slot) {
            if info.label().trim_end() == label {
                return Ok(slot);
            }
        }
    }
    Err(Error::Unavailable(format!(
        "token {label:?} not found in PKCS#11 module {} (is it plugged in and initialised?)",
        module.display()
    )))
}

/// What a PKCS#11 error means to the caller, and whether the session is gone (the device
/// went away or the session was closed) and must be reopened.
fn classify(label: &str, e: CkError) -> (Error, bool) {
    match e {
        CkError::Pkcs11(RvError::UserNotLoggedIn, _) => (
            Error::Locked {
                token: label.to_string(),
            },
            false,
        ),
        CkError::Pkcs11(
            RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::TokenNotPresent
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed,
            _,
        ) => (
            Error::Unavailable(format!(
                "token {label:?}: {e}; will reconnect on the next request"
            )),
            true,
        ),
        other => (Error::Internal(format!("token {label:?}: {other}")), false),
    }
}

/// A private-key lookup that failed: a PKCS#11 error to classify, or a final answer.
enum LookupError {
    Ck(CkError),
    Final(Error),
}

/// The private key of `key`, found by CKA_ID *and* its label. Public objects can be made
/// or relabelled without the PIN, private ones cannot: so the private key's own label, not
/// the public one we listed, decides the role and GUN it signs for.
fn lookup_private(
    session: &Session,
    token: &str,
    key: &KeyEntry,
) -> std::result::Result<ObjectHandle, LookupError> {
    let id = key.handle.as_slice();
    let mut template = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Id(id.to_vec()),
    ];
    // A key named by its certificate has the module's own label (ykcs11: "Private key
    // for Digital Signature"); on a PIV card only the management key writes certificates.
    let cert_named = key.detail == KeyDetail::CertificateNamed;
    if !cert_named {
        template.push(Attribute::Label(private_label(key)));
    }
    match session
        .find_objects(&template)
        .map_err(LookupError::Ck)?
        .as_slice()
    {
        // A certificate (public, writable with the user PIN on generic tokens) must not
        // rename one of our labelled keys: its private label decides, as for every key.
        [h] if cert_named && private_is_ours(session, *h) => {
            Err(LookupError::Final(Error::Refused(format!(
                "key {} on token {token:?} carries the agent's label; a certificate may not give it another role or GUN",
                hex(id)
            ))))
        }
        [h] => Ok(*h),
        [] => Err(LookupError::Final(Error::NotFound(format!(
            "no private {} key {} on token {token:?} (its public object may have been altered)",
            key.role,
            hex(id),
        )))),
        _ => Err(LookupError::Final(Error::Internal(format!(
            "token {token:?} holds several private keys with CKA_ID {}; refusing to guess",
            hex(id)
        )))),
    }
}

/// (role, GUN) from a certificate of ours over `spki`.
fn cert_named(der: &[u8], spki: &[u8]) -> Option<(String, Option<String>)> {
    let cert = Certificate::from_der(der).ok()?;
    let cert_spki = cert.tbs_certificate.subject_public_key_info.to_der().ok()?;
    if cert_spki != spki {
        return None;
    }
    crate::tuf::cert::key_role(&cert)
}

/// The label the private half of `key` must carry.
fn private_label(key: &KeyEntry) -> Vec<u8> {
    let gun = if key.role == "root" {
        None
    } else {
        key.gun.as_deref()
    };
    key_label(&key.role, gun)
}

/// One raw ECDSA signature. A key that wants the PIN before each use
/// (CKA_ALWAYS_AUTHENTICATE) gets a context-specific login between C_SignInit and the
/// signature, with the PIN the user gave at unlock; without it, the token says not logged in.
fn ecdsa(
    session: &Session,
    (h, always): PrivateKey,
    digest: &[u8],
    pin_holder: &PinHolder,
) -> cryptoki::error::Result<Vec<u8>> {
    if !always {
        return session.sign(&Mechanism::Ecdsa, h, digest);
    }
    let pin = pin_holder.lock().ok().and_then(|p| p.clone());
    let Some(pin) = pin else {
        return Err(CkError::Pkcs11(
            RvError::UserNotLoggedIn,
            cryptoki::context::Function::Login,
        ));
    };
    session.sign_init(&Mechanism::Ecdsa, h)?;
    if let Err(e) = session.login(UserType::ContextSpecific, Some(&pin)) {
        // The PIN no longer works (changed elsewhere): forget it, so no later signature
        // spends another try on it.
        if matches!(
            e,
            CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired,
                _
            )
        ) {
            *pin_holder
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        return Err(e);
    }
    session.sign_update(digest)?;
    session.sign_final()
}

fn private_is_ours(session: &Session, h: ObjectHandle) -> bool {
    match session
        .get_attributes(h, &[AttributeType::Label])
        .as_deref()
    {
        Ok([Attribute::Label(l)]) => l.starts_with(LABEL_PREFIX.as_bytes()),
        // Unreadable: treat as ours, i.e. refuse.
        _ => true,
    }
}

fn always_authenticate(session: &Session, h: ObjectHandle) -> bool {
    session
        .get_attributes(h, &[AttributeType::AlwaysAuthenticate])
        .is_ok_and(|a| matches!(a.as_slice(), [Attribute::AlwaysAuthenticate(true)]))
}

fn check_sig_len(sig: Vec<u8>) -> Result<Vec<u8>> {
    if sig.len() != 64 {
        return Err(Error::Internal(format!(
            "token returned a {}-byte ECDSA signature, not 64",
            sig.len()
        )));
    }
    Ok(sig)
}

/// A pooled signing session: its own PKCS#11 session (the login is the application's, so
/// it follows unlock and lock of the token); private-key handles shared with the token.
struct SignSession {
    session: Session,
    label: String,
    handles: Handles,
    pin: PinHolder,
}

impl SignSession {
    fn logged_in(&self) -> bool {
        self.session
            .get_session_info()
            .map(|i| {
                matches!(
                    i.session_state(),
                    SessionState::RoUser | SessionState::RwUser
                )
            })
            .unwrap_or(false)
    }
}

impl super::SignSession for SignSession {
    fn sign_digest(
        &mut self,
        _grant: &super::SignGrant,
        key: &KeyEntry,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>> {
        let cache_key = (key.handle.clone(), private_label(key));
        for attempt in 0..2 {
            let h = match self.handles.get(&cache_key) {
                Some(h) => h,
                None => {
                    let h = match lookup_private(&self.session, &self.label, key) {
                        Ok(h) => (h, always_authenticate(&self.session, h)),
                        Err(LookupError::Ck(e)) => return Err(classify(&self.label, e).0),
                        // Private objects are invisible while logged out.
                        Err(LookupError::Final(_)) if !self.logged_in() => {
                            return Err(Error::Locked {
                                token: self.label.clone(),
                            })
                        }
                        Err(LookupError::Final(e)) => return Err(e),
                    };
                    self.handles.insert(cache_key.clone(), h);
                    h
                }
            };
            match ecdsa(&self.session, h, digest, &self.pin) {
                Ok(sig) => return check_sig_len(sig),
                Err(CkError::Pkcs11(
                    RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid,
                    _,
                )) if attempt == 0 => self.handles.clear(),
                Err(e) => {
                    if matches!(e, CkError::Pkcs11(RvError::UserNotLoggedIn, _)) {
                        self.handles.clear();
                    }
                    return Err(classify(&self.label, e).0);
                }
            }
        }
        Err(Error::Internal(format!(
            "token {:?}: key handle keeps going stale",
            self.label
        )))
    }

    fn usable(&self) -> bool {
        self.session.get_session_info().is_ok()
    }
}

/// The attributes of a key's private half as the agent keeps it: on the token, private,
/// sensitive, not extractable, for signing.
fn private_half(label: Vec<u8>, id: Vec<u8>) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Label(label),
        Attribute::Id(id),
    ]
}

/// The public half of a P-256 key with uncompressed point `point`.
fn public_half(point: &[u8], label: Vec<u8>, id: Vec<u8>) -> Vec<Attribute> {
    // CKA_EC_POINT is the DER OCTET STRING around the point.
    let mut octets = vec![0x04, point.len() as u8];
    octets.extend_from_slice(point);
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::EcPoint(octets),
        Attribute::Label(label),
        Attribute::Id(id),
    ]
}

/// RSA-OAEP with SHA-1 (the one OAEP every PKCS#11 token does) for the transport key.
fn oaep() -> Mechanism<'static> {
    use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
    use cryptoki::mechanism::MechanismType;
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ))
}

/// `dct:<role>:<gun>`, the CKA_LABEL of both halves of a key (`dct:root:` for root).
fn key_label(role: &str, gun: Option<&str>) -> Vec<u8> {
    format!("{LABEL_PREFIX}{role}:{}", gun.unwrap_or_default()).into_bytes()
}

/// `dct:<role>:<gun>` -> (role, gun). Roles hold no `:`; GUNs may (`host:5000/app`).
fn parse_label(label: &str) -> Option<(String, Option<String>)> {
    let rest = label.strip_prefix(LABEL_PREFIX)?;
    let (role, gun) = rest.split_once(':')?;
    let ours =
        crate::tuf::metadata::valid_role_name(role) || role == super::chains::NOTATION_CA_ROLE;
    if role == "cert" || !ours {
        return None;
    }
    Some((role.to_string(), (!gun.is_empty()).then(|| gun.to_string())))
}

/// CKA_EC_POINT is a DER OCTET STRING around the point; some tokens return the bare point.
fn ec_point(v: &[u8]) -> &[u8] {
    match v {
        [0x04, len, rest @ ..] if *len as usize == rest.len() && rest.first() == Some(&0x04) => {
            rest
        }
        _ => v,
    }
}

/// RFC 7512 percent-encoding of a URI attribute value.
fn pct(v: &[u8]) -> String {
    v.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        assert_eq!(parse_label("dct:root:"), Some(("root".into(), None)));
        assert_eq!(
            parse_label("dct:targets:host:5000/app"),
            Some(("targets".into(), Some("host:5000/app".into())))
        );
        assert_eq!(
            parse_label("dct:targets/ci:g"),
            Some(("targets/ci".into(), Some("g".into())))
        );
        assert_eq!(parse_label("dct:cert:g"), None);
        assert_eq!(parse_label("other"), None);
    }

    #[test]
    fn ec_point_unwraps_octet_string() {
        let mut wrapped = vec![0x04, 65, 0x04];
        wrapped.extend([1u8; 64]);
        assert_eq!(ec_point(&wrapped).len(), 65);
        assert_eq!(ec_point(&wrapped[2..]).len(), 65);
    }
}
