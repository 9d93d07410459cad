//! The audit log: every key use and every refusal, one JSON line each, each line carrying the
//! SHA-256 of the line before it, so a changed, removed or reordered record breaks the chain
//! (the chain is dct-wire's `dct_wire::audit`, which `dct audit verify` checks too).
//!
//! One writer thread owns the file. Records queued while it writes are written together and
//! made durable with one `fdatasync` (group commit), and each caller is answered only after
//! its record is on disk: a signature leaves the agent only once its record is durable, and if
//! the log cannot be written the signature is withheld and the request refused.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use dct_wire::audit::{line_hash, ZERO_HASH};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::ledger::{Ledger, Mark, MarkState, Update};
use crate::error::{Error, Result};

/// Who made a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// A process on the Unix socket.
    Local { uid: u32, pid: Option<i32> },
    /// A client of the TLS listener, by its certificate's subject.
    Tls { subject: String },
    /// The agent itself (start-up unlock, health checks).
    Agent,
}

tokio::task_local! {
    /// The peer of the request being served (set per request by the listeners).
    pub static PEER: Peer;
}

/// The peer of the request this task serves.
pub fn current_peer() -> Peer {
    PEER.try_with(Clone::clone).unwrap_or(Peer::Agent)
}

/// One thing that happened.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Event {
    /// sign, refuse, create_key, delete_key, unlock, lock
    pub action: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub role: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gun: String,
    /// SHA-256 (hex) of the bytes signed (the canonical `signed` part).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// The document's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// "ok", or what went wrong / the rule that refused.
    pub outcome: String,
    /// How the version ledger takes this signature (see [`Event::update`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<MarkState>,
    /// For an OCI signature: the kind and the digest it vouches for
    /// (`cosign-simplesigning sha256:...`); `role` holds the policy word, `gun` the
    /// repository.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub artifact: String,
}

impl Event {
    pub fn new(action: &'static str) -> Event {
        Event {
            action,
            outcome: "ok".into(),
            ..Default::default()
        }
    }

    /// The ledger change this record makes once it is durable: a signature, or a publish
    /// the server acknowledged.
    pub fn update(&self) -> Option<Update> {
        if self.action != "sign" && self.action != "publish" {
            return None;
        }
        update_of(
            &self.key_id,
            &self.gun,
            &self.role,
            self.version?,
            &self.sha256,
            &self.outcome,
            self.ledger,
        )
    }
}

/// A ledger update from a record's fields (as written, or as read back from the log). A
/// signature recorded before the ledger existed (no `ledger` field) counts as published.
fn update_of(
    key_id: &str,
    gun: &str,
    role: &str,
    version: u64,
    sha256: &str,
    outcome: &str,
    state: Option<MarkState>,
) -> Option<Update> {
    if !outcome.starts_with("ok") || key_id.is_empty() || role.is_empty() {
        return None;
    }
    let state = state.unwrap_or(MarkState::Published);
    if state == MarkState::Untracked {
        return None;
    }
    let digest: [u8; 32] = crate::tuf::keys::unhex(sha256)?.try_into().ok()?;
    Some(Update {
        slot: (key_id.to_string(), gun.to_string(), role.to_string()),
        mark: Mark { version, digest },
        state,
    })
}

/// A record as written: the event, when, who, its place in the chain.
#[derive(Serialize)]
struct Record<'a> {
    seq: u64,
    time: String,
    peer: &'a Peer,
    #[serde(flatten)]
    event: &'a Event,
    /// SHA-256 (hex) of the previous line (without its newline); zeros for the first.
    prev: &'a str,
}

type Ack = tokio::sync::oneshot::Sender<Result<()>>;

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<(Vec<(Peer, Event)>, Ack)>,
    /// Jobs sent and not yet taken by the writer (at most [`QUEUE`]). A counted unbounded
    /// channel, not `sync_channel(QUEUE)`, which would allocate every slot (2.5 MiB) at once.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    path: PathBuf,
    state: std::sync::Arc<std::sync::Mutex<State>>,
}

/// Where the log stands, for `dct status` and `dct audit verify`.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub records: u64,
    pub last_hash: String,
    /// Why records cannot be written, once they cannot.
    pub error: Option<String>,
}

/// Where the chain stands: the last record's number and hash.
struct Tail {
    seq: u64,
    hash: String,
}

/// Records queued before callers are refused.
const QUEUE: usize = 65536;

impl Audit {
    /// Opens (or creates, 0600 in a 0700 directory) the log at `path` and starts its
    /// writer. A log that cannot be opened or whose last record is damaged does not stop
    /// the agent, but every record fails, so nothing is signed until it is fixed.
    pub fn open(
        path: &Path,
        ledger: Arc<Ledger>,
        accept_gap: bool,
    ) -> std::result::Result<Audit, String> {
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let opened = open_log(path);
        if let Ok((_, tail)) = &opened {
            replay(path, &ledger, accept_gap)?;
            ledger.set_covered(tail.seq, &tail.hash);
        }
        // The ledger must be writable before anything is signed.
        ledger.checkpoint(false)?;
        match &opened {
            Ok((_, tail)) => {
                tracing::info!("audit log {} (record {})", path.display(), tail.seq)
            }
            Err(e) => tracing::error!("audit log: {e}; signing is refused until it is fixed"),
        }
        let state = std::sync::Arc::new(std::sync::Mutex::new(match &opened {
            Ok((_, tail)) => State {
                records: tail.seq,
                last_hash: tail.hash.clone(),
                error: None,
            },
            Err(e) => State {
                error: Some(e.clone()),
                ..Default::default()
            },
        }));
        let (p, st, q) = (path.to_path_buf(), state.clone(), queued.clone());
        let spawned = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer(rx, q, opened, p, st, ledger));
        if let Err(e) = spawned {
            return Err(format!("cannot start the audit writer: {e}"));
        }
        Ok(Audit {
            tx,
            queued,
            path: path.to_path_buf(),
            state,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state(&self) -> State {
        // A poisoned lock still holds the last state written (fail closed: an error seen
        // is never forgotten because a thread panicked).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Appends `events` (as the current peer's) and waits until they are on disk.
    pub async fn record_many(&self, events: Vec<Event>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let peer = current_peer();
        let batch = events.into_iter().map(|e| (peer.clone(), e)).collect();
        let (ack, done) = tokio::sync::oneshot::channel();
        use std::sync::atomic::Ordering;
        if self.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::ResourceExhausted(
                "the audit log is falling behind; try again".into(),
            ));
        }
        if self.tx.send((batch, ack)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Internal(
                "the audit writer stopped; nothing is signed".into(),
            ));
        }
        done.await
            .map_err(|_| Error::Internal("the audit writer stopped; nothing is signed".into()))?
    }

    pub async fn record(&self, event: Event) -> Result<()> {
        self.record_many(vec![event]).await
    }

    /// Records a refusal; the refusal stands whether or not the record could be written.
    pub async fn refused(&self, mut event: Event, why: &Error) {
        event.action = "refuse";
        event.outcome = why.to_string();
        if let Err(e) = self.record(event).await {
            tracing::error!("audit log: {e}");
        }
    }
}

fn open_log(path: &Path) -> std::result::Result<(std::fs::File, Tail), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    let tail = if meta.is_file() {
        last_record(&mut f, meta.len())
            .map_err(|e| format!("{}: {e}; run dct audit verify", path.display()))?
    } else {
        // A device (e.g. a pipe to a log collector): no chain to continue.
        Tail {
            seq: 0,
            hash: ZERO_HASH.into(),
        }
    };
    Ok((f, tail))
}

/// The last record of the file: its seq and hash.
fn last_record(f: &mut std::fs::File, len: u64) -> std::result::Result<Tail, String> {
    if len == 0 {
        return Ok(Tail {
            seq: 0,
            hash: ZERO_HASH.into(),
        });
    }
    // Records are short; the last one is within the final 64 KiB.
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let Some((b'\n', body)) = buf.split_last() else {
        return Err("the last record is incomplete".into());
    };
    // The part after the body's last newline, if it has one.
    let mut parts = body.rsplitn(2, |&b| b == b'\n');
    let line = match (parts.next(), parts.next()) {
        (Some(line), Some(_)) => line,
        _ if start == 0 => body,
        _ => return Err("the last record is too long".into()),
    };
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("the last record is not JSON: {e}"))?;
    let seq = v
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or("the last record has no seq".to_string())?;
    Ok(Tail {
        seq,
        hash: line_hash(line),
    })
}

fn writer(
    rx: mpsc::Receiver<(Vec<(Peer, Event)>, Ack)>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    opened: std::result::Result<(std::fs::File, Tail), String>,
    path: PathBuf,
    state: std::sync::Arc<std::sync::Mutex<State>>,
    ledger: Arc<Ledger>,
) {
    let set_state = |f: &dyn Fn(&mut State)| {
        f(&mut state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    };
    let (mut file, mut tail) = match opened {
        Ok(x) => (Some(x.0), x.1),
        Err(e) => {
            // Refuse everything, saying why.
            while let Ok((_, ack)) = rx.recv() {
                queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                let _ = ack.send(Err(Error::Unavailable(format!(
                    "audit log unusable ({e}); nothing is signed"
                ))));
            }
            return;
        }
    };
    while let Ok(first) = rx.recv() {
        // Take everything queued now: one write and one sync for all of it.
        let mut jobs = vec![first];
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        queued.fetch_sub(jobs.len(), std::sync::atomic::Ordering::AcqRel);
        let Some(f) = file.as_mut() else {
            for (_, ack) in jobs {
                let _ = ack.send(Err(Error::Unavailable(
                    "the audit log failed earlier; restart the agent once it is fixed".into(),
                )));
            }
            continue;
        };
        let mut out = Vec::new();
        let mut next = Tail {
            seq: tail.seq,
            hash: tail.hash.clone(),
        };
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        for (batch, _) in &jobs {
            for (peer, event) in batch {
                let rec = Record {
                    seq: next.seq + 1,
                    time: now.clone(),
                    peer,
                    event,
                    prev: &next.hash,
                };
                let line = match serde_json::to_vec(&rec) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("audit record: {e}");
                        continue;
                    }
                };
                next = Tail {
                    seq: next.seq + 1,
                    hash: line_hash(&line),
                };
                out.extend_from_slice(&line);
                out.push(b'\n');
            }
        }
        let write_started = std::time::Instant::now();
        let written = f.write_all(&out).and_then(|()| f.sync_data());
        let m = crate::util::metrics::metrics();
        match written {
            Ok(()) => {
                m.audit_write_seconds
                    .observe(write_started.elapsed().as_secs_f64());
                m.audit_records.inc_by(next.seq.saturating_sub(tail.seq));
                // Durable: the ledger takes the signatures before anyone hears of them.
                for (batch, _) in &jobs {
                    for (_, event) in batch {
                        if let Some(u) = event.update() {
                            ledger.apply(&u, None);
                        }
                    }
                }
                ledger.set_covered(next.seq, &next.hash);
                set_state(&|s| {
                    s.records = next.seq;
                    s.last_hash = next.hash.clone();
                });
                tail = next;
                for (_, ack) in jobs {
                    let _ = ack.send(Ok(()));
                }
                if ledger.checkpoint_due() {
                    if let Err(e) = ledger.checkpoint(false) {
                        tracing::error!("{e}");
                    }
                }
            }
            Err(e) => {
                m.audit_failures.inc();
                // The file may now end in part of a record: stop writing to it.
                tracing::error!("audit log {}: {e}; signing stops", path.display());
                let why = format!("cannot write: {e}");
                set_state(&|s| s.error = Some(why.clone()));
                file = None;
                for (_, ack) in jobs {
                    let _ = ack.send(Err(Error::Unavailable(format!(
                        "cannot write the audit log {}: {e}; nothing is signed",
                        path.display()
                    ))));
                }
            }
        }
    }
}

/// Applies every signature the log at `path` records to `ledger` (a max per slot, so records
/// the checkpoint already holds change nothing). A log that does not hold the record the
/// checkpoint was taken at, where the checkpoint was not written at a clean shutdown, may
/// lack signatures made since: refused unless `accept_gap`.
fn replay(path: &Path, ledger: &Ledger, accept_gap: bool) -> std::result::Result<(), String> {
    let covered = ledger.covered();
    let text = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => std::fs::read_to_string(path)
            .map_err(|e| format!("audit log {}: {e}", path.display()))?,
        _ => String::new(),
    };
    let mut found = covered.records == 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let seq = v.get("seq").and_then(serde_json::Value::as_u64);
        if !found && seq == Some(covered.records) && line_hash(line.as_bytes()) == covered.hash {
            found = true;
        }
        let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or("");
        let action = field("action");
        if action != "sign" && action != "publish" {
            continue;
        }
        let Some(version) = v.get("version").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        let state = v
            .get("ledger")
            .and_then(|s| serde_json::from_value::<MarkState>(s.clone()).ok());
        if let Some(u) = update_of(
            field("key_id"),
            field("gun"),
            field("role"),
            version,
            field("sha256"),
            field("outcome"),
            state,
        ) {
            ledger.apply(&u, None);
        }
    }
    if !found && !covered.clean && !accept_gap {
        return Err(format!(
            "the audit log {} does not hold record {} that the version ledger {} was last \
             checkpointed at, and the agent did not stop cleanly then: signatures made since \
             may be missing from both. Put that log back, or start once with \
             --accept-ledger-gap to go on with what the ledger holds",
            path.display(),
            covered.records,
            ledger.path().display()
        ));
    }
    Ok(())
}

/// `$XDG_STATE_HOME/dct/audit.log`, else `~/.local/state/dct/audit.log` (dct-wire's: the
/// CLI looks there too).
pub fn default_path() -> PathBuf {
    dct_wire::audit::default_path()
}

/// A tower layer that runs each request with [`PEER`] set from its connection: the Unix
/// socket's peer credentials, or the TLS client certificate's subject.
#[derive(Clone, Copy, Default)]
pub struct PeerLayer;

impl<S> tower::Layer<S> for PeerLayer {
    type Service = PeerService<S>;
    fn layer(&self, inner: S) -> PeerService<S> {
        PeerService { inner }
    }
}

#[derive(Clone)]
pub struct PeerService<S> {
    inner: S,
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for PeerService<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let peer = peer_of(req.extensions());
        let fut = self.inner.call(req);
        Box::pin(PEER.scope(peer, fut))
    }
}

/// Subjects of the client certificates seen lately, by certificate: a connection sends the
/// same certificate with every request, and parsing it each time was 4% of the agent's CPU
/// samples under notary-server's load (perf). Bounded: cleared when full.
static SUBJECTS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<Vec<u8>, String>>> =
    std::sync::LazyLock::new(Default::default);
const SUBJECTS_MAX: usize = 256;

/// The subject of a client certificate (DER), as the audit log names the peer.
fn tls_subject(der_bytes: &[u8]) -> String {
    // A poisoned cache is only a cache: recover it.
    let mut cache = SUBJECTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = cache.get(der_bytes) {
        return s.clone();
    }
    use der::Decode;
    let subject = x509_cert::Certificate::from_der(der_bytes)
        .map(|c| c.tbs_certificate.subject.to_string())
        .unwrap_or_else(|_| "unparsable client certificate".into());
    if cache.len() >= SUBJECTS_MAX {
        cache.clear();
    }
    cache.insert(der_bytes.to_vec(), subject.clone());
    subject
}

fn peer_of(ext: &tonic::codegen::http::Extensions) -> Peer {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
    if let Some(cred) = ext.get::<UdsConnectInfo>().and_then(|u| u.peer_cred) {
        return Peer::Local {
            uid: cred.uid(),
            pid: cred.pid(),
        };
    }
    if let Some(certs) = ext
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|t| t.peer_certs())
    {
        let subject = certs
            .first()
            .map(|c| tls_subject(c.as_ref()))
            .unwrap_or_else(|| "unparsable client certificate".into());
        return Peer::Tls { subject };
    }
    Peer::Agent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(content: &[u8]) -> std::result::Result<Tail, String> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(content).unwrap();
        last_record(&mut f, content.len() as u64)
    }

    #[test]
    fn last_record_reads_the_final_line() {
        let t = tail_of(b"{\"seq\":1}\n{\"seq\":2}\n").unwrap();
        assert_eq!(t.seq, 2);
        assert_eq!(t.hash, line_hash(b"{\"seq\":2}"));
        assert_eq!(tail_of(b"{\"seq\":7}\n").unwrap().seq, 7);
        assert_eq!(tail_of(b"").unwrap().seq, 0);
    }

    #[test]
    fn last_record_refuses_odd_tails_without_panicking() {
        assert_eq!(
            tail_of(b"{\"seq\":1}").err().unwrap(),
            "the last record is incomplete"
        );
        assert!(tail_of(b"\n").is_err());
        assert!(tail_of(b"{\"seq\":1}\n\n").is_err());
        assert_eq!(
            tail_of(b"[1]\n").err().unwrap(),
            "the last record has no seq"
        );
    }
}
