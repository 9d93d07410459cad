//! The one seam between key storage and everything else.
//!
//! A backend owns a token and is driven from its own worker thread ([`Token`]): hardware
//! calls block, so they never run on the async runtime, and a backend keeps its session
//! open across requests.

pub mod file;
pub mod pkcs11;

use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use der::Encode;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::error::{Error, PinState, Result};
use crate::tuf::cert;

/// A key as the agent shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The ID signatures use: the certificate key ID for a root key with a certificate,
    /// else the canonical ID.
    pub key_id: String,
    pub canonical_id: String,
    pub role: String,
    pub gun: Option<String>,
    /// `ecdsa` or `ecdsa-x509`.
    pub keytype: String,
    /// TUF `keyval.public` (DER SPKI or PEM certificate).
    pub public: Vec<u8>,
    /// DER SPKI of the key itself.
    pub spki: Vec<u8>,
    pub uri: String,
    pub backend: &'static str,
    pub token: String,
    /// Backend-specific handle (PKCS#11 CKA_ID).
    pub handle: Vec<u8>,
}

impl KeyEntry {
    pub fn tuf_key(&self) -> crate::tuf::keys::TufKey {
        crate::tuf::keys::TufKey {
            keytype: self.keytype.clone(),
            public: self.public.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TokenInfo {
    pub backend: &'static str,
    pub label: String,
    pub module: String,
    pub present: bool,
    pub unlocked: bool,
    pub pin: PinState,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub key_count: u32,
    pub error: Option<String>,
}

/// What every key store implements. Methods block; they run on the token's worker thread.
pub trait KeyBackend: Send + 'static {
    fn info(&mut self) -> TokenInfo;
    /// One login attempt with a PIN the user gave. Never retried.
    fn login(&mut self, pin: &SecretString, force: bool) -> Result<PinState>;
    fn logout(&mut self) -> Result<()>;
    fn list_keys(&mut self) -> Result<Vec<KeyEntry>>;
    /// The listing for resolving a key on the signing path: may be a few seconds old. The
    /// private key lookup at signing stays authoritative.
    fn list_keys_cached(&mut self) -> Result<Vec<KeyEntry>> {
        self.list_keys()
    }
    /// Generates a P-256 key on the token, non-extractable, labelled with role and GUN.
    fn generate(&mut self, role: &str, gun: Option<&str>) -> Result<KeyEntry>;
    /// Puts an existing P-256 key on the token (sensitive, non-extractable from then on).
    fn import(
        &mut self,
        role: &str,
        gun: Option<&str>,
        key: &crate::tuf::keyfile::ImportedKey,
    ) -> Result<KeyEntry>;
    /// Signs a SHA-256 digest; returns raw r||s.
    fn sign_digest(&mut self, key: &KeyEntry, digest: &[u8; 32]) -> Result<Vec<u8>>;
    /// Stores a certificate for `key` on the token; returns the key as it now lists.
    fn store_certificate(&mut self, key: &KeyEntry, gun: &str, cert_der: &[u8])
        -> Result<KeyEntry>;
}

type Job = Box<dyn FnOnce(&mut dyn KeyBackend) + Send>;

/// Handle to a token's worker thread.
#[derive(Clone)]
pub struct Token {
    pub label: String,
    pub backend: &'static str,
    tx: mpsc::SyncSender<Job>,
}

/// Requests queued per token before new ones are refused.
const QUEUE_DEPTH: usize = 4096;

impl Token {
    pub fn spawn(
        label: String,
        backend_name: &'static str,
        mut backend: Box<dyn KeyBackend>,
    ) -> Result<Token> {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name(format!("token-{label}"))
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(backend.as_mut());
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start token thread: {e}")))?;
        Ok(Token {
            label,
            backend: backend_name,
            tx,
        })
    }

    /// Runs `f` on the token's thread and waits for it without blocking the runtime.
    pub async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn KeyBackend) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |b| {
            let _ = tx.send(f(b));
        });
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => Error::ResourceExhausted(format!(
                "token {:?} is busy: too many queued requests",
                self.label
            )),
            mpsc::TrySendError::Disconnected(_) => {
                Error::Internal(format!("token {:?} worker stopped", self.label))
            }
        })?;
        rx.await
            .map_err(|_| Error::Internal(format!("token {:?} worker stopped", self.label)))?
    }

    /// Generates a key; for a root key with a GUN, also makes its Notary root certificate
    /// on the token (signed by the new key) and stores it there. One job, so nothing else
    /// runs on the token in between.
    pub async fn generate(&self, role: String, gun: Option<String>) -> Result<KeyEntry> {
        self.run(move |b| {
            let key = b.generate(&role, if role == "root" { None } else { gun.as_deref() })?;
            match (role.as_str(), gun) {
                ("root", Some(gun)) => make_root_cert(b, &key, &gun),
                _ => Ok(key),
            }
        })
        .await
    }
}

/// Builds the root certificate for `gun`, has the token sign it, stores it.
pub fn make_root_cert(b: &mut dyn KeyBackend, key: &KeyEntry, gun: &str) -> Result<KeyEntry> {
    let tbs = cert::root_tbs(gun, &key.spki, SystemTime::now())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let tbs_der = tbs.to_der().map_err(|e| Error::Internal(e.to_string()))?;
    let digest: [u8; 32] = Sha256::digest(&tbs_der).into();
    let sig = b.sign_digest(key, &digest)?;
    let der = cert::assemble(tbs, &sig).map_err(|e| Error::Internal(e.to_string()))?;
    b.store_certificate(key, gun, &der)
}

/// Role names a key may be generated for.
pub fn check_role(role: &str) -> Result<()> {
    if crate::tuf::metadata::valid_role_name(role) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid role {role:?}: expected root, targets, snapshot, timestamp or targets/NAME ([-a-z0-9_/])"
        )))
    }
}

/// A GUN: non-empty, printable, no spaces, at most 255 bytes.
pub fn check_gun(gun: &str) -> Result<()> {
    if gun.is_empty() || gun.len() > 255 || gun.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidArgument(format!("invalid GUN {gun:?}")));
    }
    Ok(())
}

/// The configured tokens, and key lookup and signing across them.
#[derive(Clone)]
pub struct Keyring {
    tokens: Arc<Vec<Token>>,
}

impl Keyring {
    pub fn new(tokens: Vec<Token>) -> Self {
        Keyring {
            tokens: Arc::new(tokens),
        }
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The token a request names, or the only one when it names none.
    pub fn token(&self, label: &str) -> Result<&Token> {
        if label.is_empty() {
            return match self.tokens.as_slice() {
                [t] => Ok(t),
                [] => Err(Error::Unavailable(
                    "the agent has no tokens configured ([[pkcs11]] in agent.toml)".into(),
                )),
                _ => Err(Error::InvalidArgument(format!(
                    "several tokens are configured; name one with --token ({})",
                    self.labels()
                ))),
            };
        }
        self.tokens
            .iter()
            .find(|t| t.label == label)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no token {label:?} configured (have: {})",
                    self.labels()
                ))
            })
    }

    fn labels(&self) -> String {
        self.tokens
            .iter()
            .map(|t| t.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every key on every token, with the tokens that could not be read.
    /// As [`Keyring::all_keys`], from the tokens' recent listings (the signing path).
    pub async fn all_keys_cached(&self) -> (Vec<KeyEntry>, Vec<String>) {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for t in self.tokens.iter() {
            match t.run(|b| b.list_keys_cached()).await {
                Ok(k) => keys.extend(k),
                Err(e) => errors.push(format!("{}: {e}", t.label)),
            }
        }
        (keys, errors)
    }

    pub async fn all_keys(&self) -> (Vec<KeyEntry>, Vec<String>) {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for t in self.tokens.iter() {
            match t.run(|b| b.list_keys()).await {
                Ok(k) => keys.extend(k),
                Err(e) => errors.push(format!("{}: {e}", t.label)),
            }
        }
        (keys, errors)
    }

    /// The listings of one key, found by key ID, canonical ID or a unique prefix of either.
    pub async fn find_key(&self, wanted: &str) -> Result<Vec<KeyEntry>> {
        if wanted.len() < 4 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!(
                "{wanted:?} is not a key ID (hex, at least 4 digits)"
            )));
        }
        let wanted = wanted.to_ascii_lowercase();
        let matches = |keys: &[KeyEntry]| {
            keys.iter()
                .any(|k| k.key_id.starts_with(&wanted) || k.canonical_id.starts_with(&wanted))
        };
        // The recent listing first; a miss (a key made by another process just now) looks again.
        let (mut keys, mut errors) = self.all_keys_cached().await;
        if !matches(&keys) {
            (keys, errors) = self.all_keys().await;
        }
        let exact: Vec<KeyEntry> = keys
            .iter()
            .filter(|k| k.key_id == wanted || k.canonical_id == wanted)
            .cloned()
            .collect();
        let matches = if exact.is_empty() {
            keys.into_iter()
                .filter(|k| k.key_id.starts_with(&wanted) || k.canonical_id.starts_with(&wanted))
                .collect()
        } else {
            exact
        };
        let mut canon: Vec<&str> = matches.iter().map(|k| k.canonical_id.as_str()).collect();
        canon.dedup();
        match canon.len() {
            0 => {
                let mut msg = format!("no key {wanted} on the agent's tokens (see dct key list)");
                if !errors.is_empty() {
                    msg.push_str(&format!("; unreadable: {}", errors.join("; ")));
                }
                Err(Error::NotFound(msg))
            }
            1 => {
                // Put the listing whose key_id was asked for first.
                let mut m = matches;
                m.sort_by_key(|k| k.key_id != wanted);
                Ok(m)
            }
            _ => Err(Error::InvalidArgument(format!(
                "key ID prefix {wanted} is ambiguous"
            ))),
        }
    }

    /// Signs a SHA-256 digest with `key` on its token; raw r||s.
    pub async fn sign_digest(&self, key: &KeyEntry, digest: [u8; 32]) -> Result<Vec<u8>> {
        let token = self.token(&key.token)?.clone();
        let key = key.clone();
        token.run(move |b| b.sign_digest(&key, &digest)).await
    }
}
