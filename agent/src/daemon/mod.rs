//! The daemon: the composition root, imported by nothing. Reads the config, starts the
//! token threads and the guard, and serves the Unix-socket listener: a private directory
//! (0700), a socket (0600), a peer-uid check on every connection before any RPC runs, and a
//! clean shutdown that removes the socket. Shared with `socket_group` (for
//! `allowed_uids`): the directory 0750 and the socket 0660, both of that group; never any
//! access for others, and the peer-uid check all the same.

pub mod activation;
pub mod config;
pub mod metrics;

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dct_proto::dct::v1::agent_server::AgentServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::daemon::config::{Config, SocketAccess};
use crate::guard::Guard;
use crate::keys::options::Pkcs11Config;
use crate::keys::pkcs11::{Modules, Pkcs11Backend, BACKEND};
use crate::keys::{Keyring, Token};
use crate::rpc::limits::limits;
use crate::rpc::service::AgentService;
use crate::util::pin_file::read_pin_file;

/// The largest answer the agent sends unless requests may be larger still (twice
/// `max_request_bytes`): room for listing a role of 1,000,000 tags.
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// Starts one worker thread per configured token. A token that is absent now is not an
/// error: requests say so, and it is picked up when it appears.
pub fn start_tokens(
    config: &[Pkcs11Config],
    files: &[crate::keys::options::FileConfig],
    cards: &[crate::keys::options::PivConfig],
) -> Result<Vec<Token>, String> {
    let mut modules = Modules::default();
    let mut tokens = Vec::new();
    for t in config {
        let ctx = modules.get(&t.module).map_err(|e| e.to_string())?;
        let backend = Pkcs11Backend::new(ctx, t.module.clone(), t.token.clone());
        tokens.push(
            Token::spawn(t.token.clone(), BACKEND, Box::new(backend), t.sessions())
                .map_err(|e| e.to_string())?
                .with_ttl(t.ttl()),
        );
    }
    for f in files {
        let backend = crate::keys::file::FileBackend::new(f.path(), f.label());
        tokens.push(
            Token::spawn(f.label(), crate::keys::file::BACKEND, Box::new(backend), 1)
                .map_err(|e| e.to_string())?
                .with_ttl(f.ttl()),
        );
    }
    for c in cards {
        let backend = crate::keys::piv::PivBackend::new(c)?;
        tokens.push(
            Token::spawn(c.label(), crate::keys::piv::BACKEND, Box::new(backend), 1)
                .map_err(|e| e.to_string())?
                .with_ttl(c.ttl()),
        );
    }
    Ok(tokens)
}

/// The guard over `tokens`: the policy, the version ledger (its checkpoint, then the audit
/// log after it), the audit log, the confirmation program. Refuses to start rather than
/// sign without its memory of what was signed.
pub fn open_guard(config: &Config, tokens: Vec<Token>) -> Result<Guard, String> {
    let confirmer = crate::guard::confirm::Confirmer::new(&config.confirm)?;
    let policy = crate::guard::policy::Policy::new(config.policy.clone())?;
    let ledger = std::sync::Arc::new(crate::guard::ledger::Ledger::open(&config.ledger())?);
    let audit = crate::guard::audit::Audit::open(
        &config.audit_log(),
        ledger.clone(),
        config.accept_ledger_gap,
    )?;
    let (keys, rights) = Keyring::new(tokens);
    Ok(Guard::new(keys, rights, policy, ledger, audit, confirmer))
}

/// Unlocks the tokens that have a `pin_file`: one attempt each, never repeated. A failure
/// is logged (without the PIN) and leaves the token locked for `dct unlock`.
async fn unlock_from_pin_files(config: &Config, guard: &Guard) {
    let keys = guard.keys();
    let pin_files = config
        .pkcs11
        .iter()
        .map(|t| (t.token.clone(), &t.pin_file))
        .chain(config.piv.iter().map(|c| (c.label(), &c.pin_file)));
    for (label, pin_file) in pin_files {
        let Some(path) = pin_file else { continue };
        let pin = match read_pin_file(path) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(token = %label, "not unlocked: {e}");
                continue;
            }
        };
        let Ok(token) = keys.token(&label) else {
            continue;
        };
        let outcome = match token.run(move |b| b.login(&pin, false)).await {
            Ok(state) => {
                token.note_unlocked();
                tracing::info!(token = %label, "unlocked from its PIN file ({})", state.describe());
                format!("token {}, from its PIN file", label)
            }
            Err(e) => {
                tracing::error!(token = %label, "not unlocked from its PIN file: {e}");
                format!("token {}, from its PIN file: {e}", label)
            }
        };
        let event = crate::guard::audit::Event {
            outcome,
            ..crate::guard::audit::Event::new("unlock")
        };
        if let Err(e) = guard.audit().record(event).await {
            tracing::error!("audit log: {e}");
        }
    }
}

/// Locks tokens whose unlock TTL ran out (checked every second), and audits it.
async fn watch_ttls(guard: Guard) {
    let tokens: Vec<Token> = guard
        .keys()
        .tokens()
        .iter()
        .filter(|t| t.ttl().idle.is_some() || t.ttl().hard.is_some())
        .cloned()
        .collect();
    if tokens.is_empty() {
        return;
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        for t in &tokens {
            if let Some(why) = t.enforce_ttl().await {
                let event = crate::guard::audit::Event {
                    outcome: format!("token {}: {why} expired", t.label),
                    ..crate::guard::audit::Event::new("lock")
                };
                if let Err(e) = guard.audit().record(event).await {
                    tracing::error!("audit log: {e}");
                }
            }
        }
    }
}

/// Makes the socket's directory (0700) or checks an existing one is ours and private.
/// Shared (`access`): 0750 and of the socket's group; an existing one must be ours and not
/// looser than that, and is then given that group and mode.
fn prepare_dir(dir: &Path, access: Option<&SocketAccess>) -> Result<(), String> {
    match std::fs::DirBuilder::new()
        .recursive(false)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    check_dir(dir, access)
}

/// The socket's directory belongs to the agent's user and nobody else may enter it (with
/// `access`: only its group may pass, and the directory is given to that group).
fn check_dir(dir: &Path, access: Option<&SocketAccess>) -> Result<(), String> {
    let want = if access.is_some() {
        SocketAccess::DIR_MODE
    } else {
        0o700
    };
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let uid = nix::unistd::getuid().as_raw();
    if meta.uid() != uid {
        return Err(format!(
            "socket directory {} belongs to uid {}, not to us ({uid})",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    match access {
        None if mode & 0o077 != 0 => Err(format!(
            "socket directory {} has mode {mode:o}; it must be private: chmod 700 {}",
            dir.display(),
            dir.display()
        )),
        None => Ok(()),
        Some(_) if mode & !want != 0 => Err(format!(
            "socket directory {} has mode {mode:o}; shared with socket_group it may be at most \
             {want:o} (no group write, nothing for others): chmod {want:o} {}",
            dir.display(),
            dir.display()
        )),
        Some(a) => {
            // The group first, then its access: nobody else passes in between.
            nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(a.gid)))
                .map_err(|e| format!("cannot give {} to group {}: {e}", dir.display(), a.gid))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(want))
                .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))?;
            warn_unreachable(dir, a.gid);
            Ok(())
        }
    }
}

/// Warns when a directory above the shared socket's keeps the group out (e.g. a 0700
/// $XDG_RUNTIME_DIR): the agent cannot fix that, the administrator can.
fn warn_unreachable(dir: &Path, gid: u32) {
    for d in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(d) else {
            continue;
        };
        let mode = meta.permissions().mode();
        let passes = mode & 0o001 != 0 || (meta.gid() == gid && mode & 0o010 != 0);
        if !passes {
            tracing::warn!(
                "group {gid} cannot pass {} (mode {:o}): the users of allowed_uids will not reach \
                 the socket; put it elsewhere (socket = ...)",
                d.display(),
                mode & 0o777
            );
            return;
        }
    }
}

pub struct Listener {
    path: PathBuf,
    listener: UnixListener,
    /// Made by the agent (removed at shutdown), not passed by socket activation (whose
    /// socket belongs to systemd and outlives the agent).
    owned: bool,
}

/// Binds the socket, refusing to take over one where another agent answers. `access`
/// (`Config::socket_access`) shares it with a group; None keeps it private.
pub fn bind(path: &Path, access: Option<&SocketAccess>) -> Result<Listener, String> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    prepare_dir(dir, access)?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another dct-agent is already serving at {}",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    // Bound, listening and private under a temporary name first, then renamed into place:
    // the path never names a socket that refuses connections (bound, not yet listening)
    // or has the default mode.
    let tmp = dir.join(format!(".agent.sock.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|e| format!("cannot listen on {}: {e}", tmp.display()))?;
    let placed = place_socket(&tmp, path, access.copied());
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Listener {
        path: path.to_path_buf(),
        listener,
        owned: true,
    })
}

/// Gives the new socket its group and mode, then moves it to `path`.
fn place_socket(tmp: &Path, path: &Path, access: Option<SocketAccess>) -> Result<(), String> {
    let mode = match access {
        Some(a) => {
            nix::unistd::chown(tmp, None, Some(nix::unistd::Gid::from_raw(a.gid)))
                .map_err(|e| format!("cannot give {} to group {}: {e}", tmp.display(), a.gid))?;
            tracing::info!(
                "socket shared with group {} (mode {:o}; allowed_uids checked on every connection)",
                a.gid,
                a.mode
            );
            a.mode
        }
        None => 0o600,
    };
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", tmp.display()))?;
    std::fs::rename(tmp, path)
        .map_err(|e| format!("cannot move the socket to {}: {e}", path.display()))
}

impl Listener {
    /// Serves until `shutdown` completes, then removes the socket.
    pub async fn serve(
        self,
        config: &Config,
        tokens: Vec<Token>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), String> {
        let guard = open_guard(config, tokens)?;
        unlock_from_pin_files(config, &guard).await;
        let ttl_watch = tokio::spawn(watch_ttls(guard.clone()));
        // One shutdown signal for every listener.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let signer = match &config.notary_signer {
            Some(ns) => {
                let (ns, keys, limit) = (ns.clone(), guard.clone(), config.max_request_bytes());
                let builder = limits(
                    tonic::transport::Server::builder(),
                    config.request_timeout(),
                    config.max_concurrent_requests(),
                );
                let stop = stopped(stop_rx.clone());
                Some(tokio::spawn(async move {
                    crate::rpc::notary_signer::serve(&ns, builder, keys, limit, stop).await
                }))
            }
            None => None,
        };
        let metrics = match &config.metrics {
            Some(m) => Some(tokio::spawn(
                metrics::serve(m, guard.clone(), stopped(stop_rx.clone())).await?,
            )),
            None => None,
        };
        let main = self.serve_agent(config, guard.clone(), stopped(stop_rx.clone()));
        tokio::pin!(main);
        let result = tokio::select! {
            r = &mut main => r,
            _ = shutdown => {
                let _ = stop_tx.send(true);
                (&mut main).await
            }
        };
        let _ = stop_tx.send(true);
        ttl_watch.abort();
        if let Some(m) = metrics {
            let _ = m.await;
        }
        if let Some(signer) = signer {
            match signer.await {
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("notary-signer API: {e}")),
                Ok(Ok(())) => {}
            }
        }
        // Nothing signs any more: the ledger's checkpoint says so.
        guard.shutdown();
        result
    }

    async fn serve_agent(
        self,
        config: &Config,
        guard: Guard,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), String> {
        let own_uid = nix::unistd::getuid().as_raw();
        let allowed = config.allowed_uids.clone();
        let audit = guard.audit().clone();
        let (path, owned) = (self.path.clone(), self.owned);
        let incoming = UnixListenerStream::new(self.listener).filter(move |conn| match conn {
            Ok(stream) => match stream.peer_cred() {
                Ok(cred) if cred.uid() == own_uid || allowed.contains(&cred.uid()) => true,
                Ok(cred) => {
                    tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused connection from another user");
                    let peer = crate::guard::audit::Peer::Local {
                        uid: cred.uid(),
                        pid: cred.pid(),
                    };
                    let event = crate::guard::audit::Event {
                        outcome: format!(
                            "connection refused: uid {} is not the agent's ({own_uid}) nor in allowed_uids",
                            cred.uid()
                        ),
                        ..crate::guard::audit::Event::new("refuse")
                    };
                    let audit = audit.clone();
                    tokio::spawn(crate::guard::audit::PEER.scope(peer, async move {
                        if let Err(e) = audit.record(event).await {
                            tracing::error!("audit log: {e}");
                        }
                    }));
                    false
                }
                Err(e) => {
                    tracing::warn!("refused connection: cannot read peer credentials: {e}");
                    false
                }
            },
            Err(_) => true,
        });
        let limit = config.max_request_bytes();
        let trust = crate::trust::TrustContext::new(
            config.trust_dir(),
            config.trust_server()?,
            config.pinning()?,
        );
        // Answers may be larger than requests: `dct trust inspect` of a role of 1,000,000
        // tags (the most one role may hold; its file is up to notary's 100 MiB download cap)
        // is an answer of about 96 MB.
        let answers = limit.saturating_mul(2).max(MAX_ANSWER_BYTES);
        let service = AgentServer::new(AgentService::new(guard, trust))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(answers);
        let result = limits(
            tonic::transport::Server::builder(),
            config.request_timeout(),
            config.max_concurrent_requests(),
        )
        .layer(crate::guard::audit::PeerLayer)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
        if owned {
            let _ = std::fs::remove_file(&path);
        }
        result.map_err(|e| format!("server: {e}"))
    }
}
