//! The one seam between key storage and everything else.
//!
//! A backend owns a token and is driven from its own worker thread ([`Token`]): hardware
//! calls block, so they never run on the async runtime, and a backend keeps its session
//! open across requests.

pub mod chains;
pub mod file;
pub mod notices;
pub mod options;
pub mod piv;
pub mod pkcs11;

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use der::Encode;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::error::{Error, PinState, Result};
use crate::tuf::cert;

/// A key as the agent shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Backend-specific handle (PKCS#11 CKA_ID, PIV slot).
    pub handle: Vec<u8>,
    /// What the backend knows of the key beyond its ID (PIV: slot, PIN and touch policy,
    /// origin), typed; [`KeyDetail::describe`] words it for people.
    pub detail: KeyDetail,
}

/// Backend facts about a key, typed so that no caller parses a display string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeyDetail {
    #[default]
    None,
    /// A PKCS#11 key found by its certificate (a PIV card's slot certificate through
    /// ykcs11 or OpenSC), not by the agent's label: the agent does not delete it.
    CertificateNamed,
    /// A key in a PIV slot. The policies and origin are known when the card reports its
    /// slot metadata (YubiKey 5.3+).
    Piv {
        /// The card's serial number.
        serial: u32,
        slot: String,
        /// "never", "once" or "always".
        pin_policy: Option<String>,
        /// "never", "always" or "cached".
        touch_policy: Option<String>,
        /// Generated on the card (true) or imported (false).
        generated: Option<bool>,
    },
}

impl KeyDetail {
    /// For people: "slot 9c, PIN always, touch always, generated on the card".
    pub fn describe(&self) -> String {
        match self {
            KeyDetail::None => String::new(),
            KeyDetail::CertificateNamed => "named by its certificate (PIV)".into(),
            KeyDetail::Piv {
                slot,
                serial: _,
                pin_policy,
                touch_policy,
                generated,
            } => {
                let mut s = format!("slot {slot}");
                if let (Some(p), Some(t)) = (pin_policy, touch_policy) {
                    s.push_str(&format!(", PIN {p}, touch {t}"));
                }
                s.push_str(match generated {
                    Some(true) => ", generated on the card",
                    Some(false) => ", imported",
                    None => "",
                });
                s
            }
        }
    }

    /// (PIN policy, touch policy) of a PIV key whose card reported them.
    pub fn piv_policies(&self) -> Option<(String, String)> {
        match self {
            KeyDetail::Piv {
                pin_policy: Some(p),
                touch_policy: Some(t),
                ..
            } => Some((p.clone(), t.clone())),
            _ => None,
        }
    }
}

/// Choices for a new key that only some backends have (PIV: slot, PIN and touch policy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    pub slot: Option<String>,
    pub pin_policy: Option<String>,
    pub touch_policy: Option<String>,
}

impl KeyOptions {
    pub fn is_empty(&self) -> bool {
        *self == KeyOptions::default()
    }
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
    /// Generates a P-256 key on the token, non-extractable, labelled with role and GUN.
    fn generate(&mut self, role: &str, gun: Option<&str>) -> Result<KeyEntry>;
    /// Generates a key with backend-specific options; for a root key with a GUN, also its
    /// Notary root certificate (signed on the token) stored beside it.
    fn generate_with(
        &mut self,
        role: &str,
        gun: Option<&str>,
        opts: &KeyOptions,
    ) -> Result<KeyEntry> {
        if !opts.is_empty() {
            return Err(Error::InvalidArgument(
                "slot, PIN policy and touch policy apply only to YubiKeys over PIV ([[piv]] tokens)"
                    .into(),
            ));
        }
        let key = self.generate(role, if role == "root" { None } else { gun })?;
        match (role, gun) {
            ("root", Some(gun)) => make_root_cert(self, &key, gun),
            _ => Ok(key),
        }
    }
    /// The card's attestation of a key generated on it: (attestation certificate, the
    /// card's attestation certificate), DER.
    fn attest(&mut self, key: &KeyEntry) -> Result<(Vec<u8>, Vec<u8>)> {
        Err(Error::InvalidArgument(format!(
            "key {} is on a {} token; attestations come from YubiKeys over PIV ([[piv]] tokens)",
            key.key_id, key.backend
        )))
    }
    /// Puts an existing P-256 key on the token (sensitive, non-extractable from then on).
    fn import(
        &mut self,
        role: &str,
        gun: Option<&str>,
        key: &crate::tuf::keyfile::ImportedKey,
    ) -> Result<KeyEntry>;
    /// Signs a SHA-256 digest; returns raw r||s. Only code of this module can make the
    /// [`SignGrant`] it takes: outside `keys`, the one way to a signature is
    /// [`Token::sign_many`], which asks for the guard's [`SigningRights`].
    fn sign_digest(
        &mut self,
        grant: &SignGrant,
        key: &KeyEntry,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>>;
    /// Stores a certificate for `key` on the token; returns the key as it now lists.
    fn store_certificate(&mut self, key: &KeyEntry, gun: &str, cert_der: &[u8])
        -> Result<KeyEntry>;
    /// As [`KeyBackend::generate`], but the private key may leave the token wrapped (for a
    /// backup into another token); it stays sensitive.
    fn generate_wrappable(&mut self, role: &str, gun: Option<&str>) -> Result<KeyEntry> {
        let _ = (role, gun);
        Err(Error::InvalidArgument(
            "this backend cannot make keys for wrapped backups".into(),
        ))
    }
    /// A session-only RSA key to receive a wrapped key: (modulus, public exponent).
    fn transport_key(&mut self) -> Result<(Vec<u8>, Vec<u8>)> {
        Err(Error::InvalidArgument(
            "this backend cannot receive wrapped keys".into(),
        ))
    }
    /// Wraps `key` for a transport key: (AES key wrapped with RSA-OAEP, key wrapped with
    /// the AES key).
    fn wrap_for(
        &mut self,
        key: &KeyEntry,
        modulus: &[u8],
        exponent: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let _ = (key, modulus, exponent);
        Err(Error::InvalidArgument(
            "this backend cannot wrap keys".into(),
        ))
    }
    /// Unwraps a key wrapped by [`KeyBackend::wrap_for`] under this token's transport key.
    fn unwrap_from(
        &mut self,
        key: &KeyEntry,
        wrapped_aes: &[u8],
        wrapped_key: &[u8],
    ) -> Result<KeyEntry> {
        let _ = (key, wrapped_aes, wrapped_key);
        Err(Error::InvalidArgument(
            "this backend cannot unwrap keys".into(),
        ))
    }
    /// Deletes the key (both halves and any certificates).
    fn delete(&mut self, key: &KeyEntry) -> Result<()> {
        Err(Error::InvalidArgument(format!(
            "the {} backend cannot delete key {}",
            key.backend, key.key_id
        )))
    }
    /// Opens further sessions that sign on their own threads, for backends whose tokens
    /// sign in parallel (PKCS#11). `None`: everything runs on the token's one thread.
    fn session_factory(&self) -> Option<SessionFactory> {
        None
    }
}

/// A further session on a token, owned by one pool thread.
pub trait SignSession: Send {
    /// Signs a SHA-256 digest; returns raw r||s (see [`KeyBackend::sign_digest`]).
    fn sign_digest(
        &mut self,
        grant: &SignGrant,
        key: &KeyEntry,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>>;
    /// False once the session is gone (device removed, closed): the pool opens a new one.
    fn usable(&self) -> bool;
}

pub type SessionFactory = Arc<dyn Fn() -> Result<Box<dyn SignSession>> + Send + Sync>;

/// One signing request: the key and the digest.
pub type SignItem = (KeyEntry, [u8; 32]);

struct PoolJob {
    items: Vec<SignItem>,
    reply: tokio::sync::oneshot::Sender<Vec<Result<Vec<u8>>>>,
}

/// Signing threads of one token, each with its own session, fed from one queue.
struct SignPool {
    queue: Arc<JobQueue>,
    threads: usize,
}

/// The pool's queue: many signing threads take from it, and a job wakes exactly one of them
/// (a condition variable's `notify_one`). A `Mutex<mpsc::Receiver>` shared by the threads
/// woke two per job: the one that took it, and the next one waiting for the lock, only to
/// park again in `recv`.
struct JobQueue {
    state: std::sync::Mutex<QueueState>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: std::collections::VecDeque<PoolJob>,
    /// Threads still taking jobs (none: the pool stopped, jobs are refused).
    threads: usize,
    /// The pool was dropped: threads finish the queue and stop.
    closed: bool,
}

impl JobQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Only whole pushes and pops happen under the lock: a poisoned queue is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job` for one signing thread, as `SyncSender::try_send` would.
    fn try_send(&self, job: PoolJob) -> std::result::Result<(), mpsc::TrySendError<PoolJob>> {
        let mut st = self.lock();
        if st.threads == 0 {
            return Err(mpsc::TrySendError::Disconnected(job));
        }
        if st.jobs.len() >= QUEUE_DEPTH {
            return Err(mpsc::TrySendError::Full(job));
        }
        st.jobs.push_back(job);
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job; None once the pool is dropped and the queue empty.
    fn recv(&self) -> Option<PoolJob> {
        let mut st = self.lock();
        loop {
            if let Some(job) = st.jobs.pop_front() {
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Counts a signing thread out of its queue when it ends, even by a panic; the last one out
/// drops the queued jobs, so their callers hear "stopped" instead of waiting.
struct Leaving(Arc<JobQueue>);

impl Drop for Leaving {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.threads = st.threads.saturating_sub(1);
        if st.threads == 0 {
            st.jobs.clear();
        }
    }
}

impl Drop for SignPool {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

impl SignPool {
    fn start(label: &str, threads: usize, factory: SessionFactory) -> Result<SignPool> {
        let queue = Arc::new(JobQueue {
            state: std::sync::Mutex::default(),
            ready: std::sync::Condvar::new(),
        });
        // Made first: if a thread cannot start, dropping it stops the ones that did.
        let pool = SignPool {
            queue: queue.clone(),
            threads,
        };
        for n in 0..threads {
            let (queue, factory) = (queue.clone(), factory.clone());
            queue.lock().threads += 1;
            let leaving = Leaving(queue.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("sign-{label}-{n}"))
                .spawn(move || {
                    let _leaving = leaving;
                    let mut session: Option<Box<dyn SignSession>> = None;
                    while let Some(job) = queue.recv() {
                        // The session is checked only after a failure (a per-job check costs a
                        // token call, and SoftHSM2 takes a lock for it that the other signing
                        // sessions wait on): a signature that failed on a session that is gone
                        // (token replugged, session closed) is made again on a new one.
                        let mut sigs: Vec<Result<Vec<u8>>> = Vec::new();
                        for attempt in 0..2 {
                            if attempt == 1 {
                                if !sigs.iter().any(|r| r.is_err())
                                    || session.as_ref().is_none_or(|s| s.usable())
                                {
                                    break;
                                }
                                session = None;
                            }
                            let s = match session.as_mut() {
                                Some(s) => s,
                                None => match factory() {
                                    Ok(s) => session.insert(s),
                                    Err(e) if attempt == 0 => {
                                        let msg = e.to_string();
                                        sigs = job
                                            .items
                                            .iter()
                                            .map(|_| Err(Error::Unavailable(msg.clone())))
                                            .collect();
                                        break;
                                    }
                                    // No new session for the retry: the signatures made stand,
                                    // the failures keep their first error.
                                    Err(_) => break,
                                },
                            };
                            if attempt == 0 {
                                sigs = job
                                    .items
                                    .iter()
                                    .map(|(key, digest)| s.sign_digest(&SignGrant(()), key, digest))
                                    .collect();
                            } else {
                                for ((key, digest), sig) in job.items.iter().zip(sigs.iter_mut()) {
                                    if sig.is_err() {
                                        *sig = s.sign_digest(&SignGrant(()), key, digest);
                                    }
                                }
                            }
                        }
                        let _ = job.reply.send(sigs);
                    }
                });
            // A thread that did not start is counted out as its closure is dropped.
            spawned.map_err(|e| Error::Internal(format!("cannot start signing thread: {e}")))?;
        }
        Ok(pool)
    }
}

type Job = Box<dyn FnOnce(&mut dyn KeyBackend) + Send>;

/// Handle to a token's worker thread.
#[derive(Clone)]
pub struct Token {
    pub label: String,
    pub backend: &'static str,
    tx: mpsc::SyncSender<Job>,
    pool: Option<Arc<SignPool>>,
    ttl: Ttl,
    clock: Arc<std::sync::Mutex<UnlockClock>>,
}

/// How long a token stays unlocked: since its last use (idle) and since it was unlocked
/// (hard). None: no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ttl {
    pub idle: Option<std::time::Duration>,
    pub hard: Option<std::time::Duration>,
}

#[derive(Debug, Default)]
struct UnlockClock {
    unlocked_at: Option<std::time::Instant>,
    last_used: Option<std::time::Instant>,
}

impl UnlockClock {
    fn unlocked_now() -> UnlockClock {
        let now = std::time::Instant::now();
        UnlockClock {
            unlocked_at: Some(now),
            last_used: Some(now),
        }
    }
}

/// Requests queued per token before new ones are refused.
const QUEUE_DEPTH: usize = 4096;

impl Token {
    /// Starts the token's worker thread and, when the backend can open further sessions
    /// and `sessions` > 1, a pool of that many signing threads (each with a session).
    pub fn spawn(
        label: String,
        backend_name: &'static str,
        mut backend: Box<dyn KeyBackend>,
        sessions: usize,
    ) -> Result<Token> {
        let pool = match backend.session_factory() {
            Some(f) if sessions > 1 => Some(Arc::new(SignPool::start(&label, sessions, f)?)),
            _ => None,
        };
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
            pool,
            ttl: Ttl::default(),
            clock: Arc::default(),
        })
    }

    /// Sets the token's unlock TTLs.
    pub fn with_ttl(mut self, ttl: Ttl) -> Token {
        self.ttl = ttl;
        self
    }

    pub fn ttl(&self) -> Ttl {
        self.ttl
    }

    /// The token was just unlocked: its TTLs start now.
    pub fn note_unlocked(&self) {
        self.reset_clock(UnlockClock::unlocked_now());
    }

    pub fn note_locked(&self) {
        self.reset_clock(UnlockClock::default());
    }

    /// Replaces the whole unlock clock. A poisoned lock is recovered: the value written
    /// does not depend on what the panicking holder left, so the clock is sound again and
    /// the poison is cleared (until then [`Token::expired`] reports the token expired).
    fn reset_clock(&self, to: UnlockClock) {
        *self.clock.lock().unwrap_or_else(|p| p.into_inner()) = to;
        self.clock.clear_poison();
    }

    /// Which TTL ran out, if one did since the token was unlocked here.
    pub fn expired(&self) -> Option<String> {
        // Fails closed: a poisoned clock (a thread panicked holding it) may hold a stale
        // time, so the token counts as expired and is logged out; locking resets the clock.
        let Ok(c) = self.clock.lock() else {
            return Some("TTL state lost (a thread panicked holding it)".into());
        };
        let now = std::time::Instant::now();
        let over = |since: Option<std::time::Instant>, ttl: Option<std::time::Duration>| matches!((since, ttl), (Some(t), Some(d)) if now.duration_since(t) >= d);
        if over(c.unlocked_at, self.ttl.hard) {
            Some(format!(
                "hard TTL ({}s since unlock)",
                self.ttl.hard?.as_secs()
            ))
        } else if over(c.last_used, self.ttl.idle) {
            Some(format!("idle TTL ({}s unused)", self.ttl.idle?.as_secs()))
        } else {
            None
        }
    }

    /// Logs the token out if a TTL ran out; says which.
    pub async fn enforce_ttl(&self) -> Option<String> {
        let why = self.expired()?;
        match self.run(|b| b.logout()).await {
            Ok(()) => {
                self.note_locked();
                tracing::info!(token = %self.label, "locked: {why}");
                Some(why)
            }
            Err(e) => {
                tracing::error!(token = %self.label, "TTL expired ({why}) but logout failed: {e}");
                None
            }
        }
    }

    /// Signs digests: spread over the signing pool when there is one, else in one job on
    /// the token's thread. One result per item, in order. Only the holder of the keyring's
    /// [`SigningRights`] (the guard) can call it.
    pub async fn sign_many(
        &self,
        _rights: &SigningRights,
        items: Vec<SignItem>,
    ) -> Result<Vec<Result<Vec<u8>>>> {
        // Still expired after enforce_ttl: the logout failed; refuse rather than sign on.
        if self.enforce_ttl().await.is_some() || self.expired().is_some() {
            return Err(Error::Locked {
                token: self.label.clone(),
            });
        }
        // Recovered if poisoned: only last_used is written, and a poisoned clock has just
        // been reported expired above (only a lock or unlock clears it).
        {
            let mut c = self.clock.lock().unwrap_or_else(|p| p.into_inner());
            if c.unlocked_at.is_some() {
                c.last_used = Some(std::time::Instant::now());
            }
        }
        let Some(pool) = &self.pool else {
            return self
                .run(move |b| {
                    let grant = SignGrant(());
                    Ok(items
                        .iter()
                        .map(|(k, d)| b.sign_digest(&grant, k, d))
                        .collect())
                })
                .await;
        };
        let chunk = items.len().div_ceil(pool.threads).max(1);
        let mut waits = Vec::new();
        let mut items = items;
        while !items.is_empty() {
            let rest = items.split_off(chunk.min(items.len()));
            let (reply, rx) = tokio::sync::oneshot::channel();
            let job = PoolJob { items, reply };
            pool.queue.try_send(job).map_err(|e| self.queue_error(e))?;
            waits.push(rx);
            items = rest;
        }
        let mut out = Vec::new();
        for rx in waits {
            out.extend(rx.await.map_err(|_| self.stopped())?);
        }
        Ok(out)
    }

    fn stopped(&self) -> Error {
        Error::Internal(format!("token {:?} worker stopped", self.label))
    }

    fn queue_error<T>(&self, e: mpsc::TrySendError<T>) -> Error {
        match e {
            mpsc::TrySendError::Full(_) => Error::ResourceExhausted(format!(
                "token {:?} is busy: too many queued requests",
                self.label
            )),
            mpsc::TrySendError::Disconnected(_) => self.stopped(),
        }
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
        self.tx.try_send(job).map_err(|e| self.queue_error(e))?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Generates a key; for a root key with a GUN, also makes its Notary root certificate
    /// on the token (signed by the new key) and stores it there. One job, so nothing else
    /// runs on the token in between.
    pub async fn generate(&self, role: String, gun: Option<String>) -> Result<KeyEntry> {
        self.generate_with(role, gun, KeyOptions::default()).await
    }

    /// As [`Token::generate`], with backend-specific options.
    pub async fn generate_with(
        &self,
        role: String,
        gun: Option<String>,
        opts: KeyOptions,
    ) -> Result<KeyEntry> {
        self.run(move |b| b.generate_with(&role, gun.as_deref(), &opts))
            .await
    }
}

/// Copies `key` from token `from` into token `to`, wrapped on the way: an RSA transport key
/// made on `to`, an AES key made on `from` and wrapped to it, `key` wrapped with the AES key.
/// No plaintext of the key exists outside the tokens.
pub async fn backup_key(from: &Token, to: &Token, key: &KeyEntry) -> Result<KeyEntry> {
    let (n, e) = to.run(|b| b.transport_key()).await?;
    let k = key.clone();
    let (wa, wk) = from.run(move |b| b.wrap_for(&k, &n, &e)).await?;
    let k = key.clone();
    to.run(move |b| b.unwrap_from(&k, &wa, &wk)).await
}

/// Builds the root certificate for `gun`, has the token sign it, stores it.
pub fn make_root_cert<B: KeyBackend + ?Sized>(
    b: &mut B,
    key: &KeyEntry,
    gun: &str,
) -> Result<KeyEntry> {
    let tbs = cert::root_tbs(gun, &key.spki, SystemTime::now()).map_err(Error::internal)?;
    let tbs_der = tbs.to_der().map_err(Error::internal)?;
    let digest: [u8; 32] = Sha256::digest(&tbs_der).into();
    // The key's own certificate, made with the key (audited as the key's creation): the
    // one signature made here rather than through the guard.
    let sig = b.sign_digest(&SignGrant(()), key, &digest)?;
    let der = cert::assemble(tbs, &sig).map_err(Error::internal)?;
    b.store_certificate(key, gun, &der)
}

/// The order `dct key list` shows keys in: role, GUN, key ID.
pub fn sort_keys(keys: &mut [KeyEntry]) {
    keys.sort_by(|a, b| (&a.role, &a.gun, &a.key_id).cmp(&(&b.role, &b.gun, &b.key_id)));
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
    /// The last listing of all tokens, for resolving key IDs on the signing path without a
    /// trip to every token. The private-key lookup at signing stays authoritative.
    listing: Arc<std::sync::Mutex<Option<Listing>>>,
    /// Bumped by [`Keyring::invalidate`]: a listing begun before the bump is not kept.
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// A listing is being refreshed in the background (at most one at a time).
    refreshing: Arc<std::sync::atomic::AtomicBool>,
    /// Held while listing the tokens: requests that need a listing at the same moment (a
    /// burst after a key was made) wait for one instead of each making their own.
    lister: Arc<tokio::sync::Mutex<()>>,
}

/// The right to have a token sign a digest. [`Keyring::new`] hands out the only one, which
/// the daemon gives to the guard: nothing else can reach a backend's signing call, so every
/// signature goes through the guard's checks, confirmation and audit.
pub struct SigningRights {
    _only_from_keyring: (),
}

/// Proof, inside a backend's signing call, that the call came through this module: its
/// field is private to `keys`, so code elsewhere (a `Token::run` closure, say) cannot make
/// one and cannot reach [`KeyBackend::sign_digest`] around the guard.
///
/// ```compile_fail
/// // Outside `keys` no grant can be made, so no backend can be asked to sign directly.
/// let grant = dct_agent::keys::SignGrant(());
/// ```
pub struct SignGrant(());

#[derive(Clone)]
struct Listing {
    at: std::time::Instant,
    keys: Arc<Vec<KeyEntry>>,
    errors: Vec<String>,
    /// Where each canonical key ID is in `keys` (a signer serving thousands of
    /// repositories looks one up per request).
    by_canonical: Arc<KeyIndex>,
}

/// Canonical key ID to the places of its listings.
type KeyIndex = HashMap<String, Vec<usize>>;

impl Listing {
    fn with_canonical_id(&self, id: &str) -> Vec<KeyEntry> {
        self.by_canonical
            .get(id)
            .map(|ix| {
                ix.iter()
                    .filter_map(|&i| self.keys.get(i).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How old a listing the signing path may use.
const LISTING_FRESH: std::time::Duration = std::time::Duration::from_secs(2);

impl Keyring {
    /// The keyring over `tokens`, and the one [`SigningRights`] for it.
    pub fn new(tokens: Vec<Token>) -> (Self, SigningRights) {
        (
            Keyring {
                tokens: Arc::new(tokens),
                listing: Arc::default(),
                generation: Arc::default(),
                refreshing: Arc::default(),
                lister: Arc::default(),
            },
            SigningRights {
                _only_from_keyring: (),
            },
        )
    }

    /// Forgets the cached listing (after this agent changed a token).
    pub fn invalidate(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Never skipped on a poisoned lock: a stale listing could name a deleted key.
        *self
            .listing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// A listing of `keys` begun at `began`, kept unless the tokens changed since (the
    /// generation read when it was begun is not the current one).
    fn remember(
        &self,
        (began, generation): (std::time::Instant, u64),
        keys: Vec<KeyEntry>,
        errors: Vec<String>,
    ) -> Listing {
        let mut by_canonical = KeyIndex::new();
        for (i, k) in keys.iter().enumerate() {
            by_canonical
                .entry(k.canonical_id.clone())
                .or_default()
                .push(i);
        }
        let listing = Listing {
            at: began,
            keys: Arc::new(keys),
            errors,
            by_canonical: Arc::new(by_canonical),
        };
        if let Ok(mut l) = self.listing.lock() {
            if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
                *l = Some(listing.clone());
            }
        }
        listing
    }

    /// The listing as kept. None when there is none.
    fn cached(&self) -> Option<Listing> {
        self.listing.lock().ok()?.clone()
    }

    /// A listing begun after `since` (None: any kept listing will do): this caller's, or
    /// one made meanwhile by another that held the lister first.
    async fn listing_since(&self, since: Option<std::time::Instant>) -> Listing {
        let _one_at_a_time = self.lister.lock().await;
        if let Some(l) = self.cached() {
            if since.is_none_or(|t| l.at >= t) {
                return l;
            }
        }
        let began = (
            std::time::Instant::now(),
            self.generation.load(std::sync::atomic::Ordering::SeqCst),
        );
        let (keys, errors) = self.list_tokens().await;
        self.remember(began, keys, errors)
    }

    /// The listing to answer from: the kept one (an old one still answers while a fresh one
    /// is made in the background, one at a time: no request waits for a trip to every
    /// token); without one (none yet, or this agent changed a token), one made now, once
    /// for all who ask meanwhile.
    async fn recent(&self) -> Listing {
        match self.cached() {
            Some(l) => {
                if l.at.elapsed() >= LISTING_FRESH {
                    self.refresh_in_background();
                }
                l
            }
            None => self.listing_since(None).await,
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

    /// As [`Keyring::all_keys`], from the recent listing (see [`Keyring::recent`]).
    pub async fn all_keys_cached(&self) -> (Arc<Vec<KeyEntry>>, Vec<String>) {
        let l = self.recent().await;
        (l.keys, l.errors)
    }

    fn refresh_in_background(&self) {
        use std::sync::atomic::Ordering;
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        /// Clears the flag however the refresh ends (done, cancelled at shutdown, panicked),
        /// so a stale listing is never kept for good.
        struct Done(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let done = Done(self.refreshing.clone());
        let ring = self.clone();
        tokio::spawn(async move {
            let _done = done;
            ring.listing_since(Some(std::time::Instant::now())).await;
        });
    }

    /// The listings of the key with canonical ID `id` (lowercase hex): from the recent
    /// listing's index, else (a key made by another process just now) from a fresh one,
    /// shared with whoever else missed meanwhile.
    pub async fn by_canonical_id(&self, id: &str) -> Vec<KeyEntry> {
        let asked = std::time::Instant::now();
        let found = self.recent().await.with_canonical_id(id);
        if !found.is_empty() {
            return found;
        }
        self.listing_since(Some(asked)).await.with_canonical_id(id)
    }

    /// Every key on every token, with the tokens that could not be read.
    pub async fn all_keys(&self) -> (Vec<KeyEntry>, Vec<String>) {
        let l = self.listing_since(Some(std::time::Instant::now())).await;
        (l.keys.to_vec(), l.errors)
    }

    async fn list_tokens(&self) -> (Vec<KeyEntry>, Vec<String>) {
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
            let (fresh, e) = self.all_keys().await;
            (keys, errors) = (Arc::new(fresh), e);
        }
        let exact: Vec<KeyEntry> = keys
            .iter()
            .filter(|k| k.key_id == wanted || k.canonical_id == wanted)
            .cloned()
            .collect();
        let matches = if exact.is_empty() {
            keys.iter()
                .filter(|k| k.key_id.starts_with(&wanted) || k.canonical_id.starts_with(&wanted))
                .cloned()
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn token(ttl: Ttl) -> (tempfile::TempDir, Token) {
        let dir = tempfile::tempdir().unwrap();
        let backend = file::FileBackend::new(dir.path().to_path_buf(), "t".into());
        let token = Token::spawn("t".into(), file::BACKEND, Box::new(backend), 1)
            .unwrap()
            .with_ttl(ttl);
        (dir, token)
    }

    /// Panics in a thread that holds the token's clock lock.
    fn poison(token: &Token) {
        let clock = token.clock.clone();
        let _ = std::thread::spawn(move || {
            let _held = clock.lock().unwrap();
            panic!("poisoning the clock");
        })
        .join();
        assert!(token.clock.is_poisoned());
    }

    #[tokio::test]
    async fn a_poisoned_ttl_clock_fails_closed() {
        let ttl = Ttl {
            idle: Some(Duration::from_secs(3600)),
            hard: Some(Duration::from_secs(3600)),
        };
        let (_dir, t) = token(ttl);
        t.note_unlocked();
        assert_eq!(t.expired(), None);
        // A TTL that ran out while the clock is poisoned: reported expired (used to be
        // None, so the token stayed unlocked), and signing is refused.
        let (_dir2, short) = token(Ttl {
            idle: None,
            hard: Some(Duration::from_millis(1)),
        });
        short.note_unlocked();
        std::thread::sleep(Duration::from_millis(5));
        poison(&short);
        assert!(short.expired().is_some());
        // Even an unexpired token counts as expired once its clock is poisoned.
        poison(&t);
        let why = t.expired().expect("poisoned clock must count as expired");
        assert!(why.contains("TTL state lost"), "{why}");
        let key = KeyEntry {
            key_id: "k".into(),
            canonical_id: "k".into(),
            role: "targets".into(),
            gun: None,
            keytype: "ecdsa".into(),
            public: Vec::new(),
            spki: Vec::new(),
            uri: String::new(),
            backend: file::BACKEND,
            token: "t".into(),
            handle: Vec::new(),
            detail: KeyDetail::None,
        };
        let rights = SigningRights {
            _only_from_keyring: (),
        };
        assert!(matches!(
            t.sign_many(&rights, vec![(key, [0u8; 32])]).await,
            Err(Error::Locked { .. })
        ));
        // The refusal logged the token out and reset the clock: not poisoned, not expired.
        assert!(!t.clock.is_poisoned());
        assert_eq!(t.expired(), None);
        // note_locked / note_unlocked reset a poisoned clock (they used to skip it).
        poison(&t);
        t.note_locked();
        assert!(!t.clock.is_poisoned());
        assert!(t.clock.lock().unwrap().unlocked_at.is_none());
        poison(&t);
        t.note_unlocked();
        assert!(t.clock.lock().unwrap().unlocked_at.is_some());
        assert_eq!(t.expired(), None);
    }

    /// A session that signs until the test marks it gone, as a replugged token's would.
    struct FakeSession {
        opened: usize,
        gone: Arc<std::sync::atomic::AtomicBool>,
        checks: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl SignSession for FakeSession {
        fn sign_digest(&mut self, _: &SignGrant, _: &KeyEntry, d: &[u8; 32]) -> Result<Vec<u8>> {
            if self.gone.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::Unavailable("session handle invalid".into()));
            }
            Ok(vec![d[0], self.opened as u8])
        }
        fn usable(&self) -> bool {
            self.checks
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            !self.gone.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    async fn pool_sign(pool: &SignPool, items: Vec<SignItem>) -> Vec<Result<Vec<u8>>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        assert!(pool.queue.try_send(PoolJob { items, reply }).is_ok());
        rx.await.unwrap()
    }

    #[tokio::test]
    async fn a_pool_session_that_went_away_is_reopened_and_the_signature_made_on_the_new_one() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let opened = Arc::new(AtomicUsize::new(0));
        let gone = Arc::new(AtomicBool::new(false));
        let checks = Arc::new(AtomicUsize::new(0));
        let (o, g, c) = (opened.clone(), gone.clone(), checks.clone());
        let factory: SessionFactory = Arc::new(move || {
            // Every new session is a working one.
            g.store(false, Ordering::SeqCst);
            let n = o.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Box::new(FakeSession {
                opened: n,
                gone: g.clone(),
                checks: c.clone(),
            }) as Box<dyn SignSession>)
        });
        let pool = SignPool::start("t", 1, factory).unwrap();
        let key = KeyEntry::default();
        let first = pool_sign(&pool, vec![(key.clone(), [1; 32]), (key.clone(), [2; 32])]).await;
        assert_eq!(
            first.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [vec![1, 1], vec![2, 1]]
        );
        // Sessions are opened once, and not checked while they sign.
        pool_sign(&pool, vec![(key.clone(), [3; 32])]).await;
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        assert_eq!(checks.load(Ordering::SeqCst), 0);

        gone.store(true, Ordering::SeqCst);
        let again = pool_sign(&pool, vec![(key.clone(), [4; 32])]).await;
        assert_eq!(
            again.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [vec![4, 2]]
        );
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        assert_eq!(checks.load(Ordering::SeqCst), 1);
    }

    /// The session went away in the middle of a job and no new one opens: what was signed
    /// stands, and what failed keeps its own error.
    #[tokio::test]
    async fn when_no_new_session_opens_the_made_signatures_and_first_errors_stand() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct HalfGone;
        impl SignSession for HalfGone {
            fn sign_digest(
                &mut self,
                _: &SignGrant,
                _: &KeyEntry,
                d: &[u8; 32],
            ) -> Result<Vec<u8>> {
                match d[0] {
                    1 => Ok(vec![1]),
                    _ => Err(Error::NotFound("key handle went away".into())),
                }
            }
            fn usable(&self) -> bool {
                false
            }
        }
        let opened = Arc::new(AtomicUsize::new(0));
        let o = opened.clone();
        let factory: SessionFactory = Arc::new(move || {
            if o.fetch_add(1, Ordering::SeqCst) == 0 {
                Ok(Box::new(HalfGone) as Box<dyn SignSession>)
            } else {
                Err(Error::Unavailable("token removed".into()))
            }
        });
        let pool = SignPool::start("t", 1, factory).unwrap();
        let key = KeyEntry::default();
        let out = pool_sign(&pool, vec![(key.clone(), [1; 32]), (key, [2; 32])]).await;
        assert!(matches!(out.as_slice(), [Ok(s), Err(Error::NotFound(_))] if s == &vec![1]));
        assert_eq!(opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failure_on_a_live_session_is_returned_not_retried() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Refusing(Arc<AtomicUsize>);
        impl SignSession for Refusing {
            fn sign_digest(
                &mut self,
                _: &SignGrant,
                _: &KeyEntry,
                _: &[u8; 32],
            ) -> Result<Vec<u8>> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Err(Error::NotFound("no such key".into()))
            }
            fn usable(&self) -> bool {
                true
            }
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let factory: SessionFactory =
            Arc::new(move || Ok(Box::new(Refusing(c.clone())) as Box<dyn SignSession>));
        let pool = SignPool::start("t", 1, factory).unwrap();
        let out = pool_sign(&pool, vec![(KeyEntry::default(), [0; 32])]).await;
        assert!(matches!(out.as_slice(), [Err(Error::NotFound(_))]));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
