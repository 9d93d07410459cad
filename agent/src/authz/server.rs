//! The Docker plugin API on a Unix socket: `Plugin.Activate`, `AuthZPlugin.AuthZReq`,
//! `AuthZPlugin.AuthZRes` (HTTP/1, JSON). Each judged request is logged, and appended to
//! the audit file as a JSON line.

use std::convert::Infallible;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::check::{Decision, Judge, Judged};
use super::config::Mode;
use super::request::AuthzRequest;

/// dockerd sends request bodies up to 1 MiB, base64: a little more on the wire.
const MAX_REQUEST: usize = 2 * 1024 * 1024;

pub struct Plugin {
    judge: Judge,
    audit: Option<Mutex<std::fs::File>>,
}

impl Plugin {
    pub fn new(judge: Judge, audit_log: Option<&Path>) -> Result<Plugin, String> {
        let audit = match audit_log {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|e| format!("audit log {}: {e}", p.display()))?,
            )),
            None => None,
        };
        Ok(Plugin { judge, audit })
    }

    /// The answer to AuthZReq: `(allow, message)`.
    pub async fn authz_req(&self, req: &AuthzRequest) -> (bool, String) {
        let Judged { image, decision } = self.judge.judge(req).await;
        let (allow, msg, outcome) = match (&decision, self.judge.mode) {
            (Decision::Pass, _) => return (true, String::new()),
            (Decision::Allow, _) => (true, String::new(), "allow"),
            (Decision::Deny(why), Mode::Permissive) => {
                tracing::warn!(
                    user = req.user,
                    method = req.request_method,
                    uri = req.request_uri,
                    "permissive: enforced mode would deny: {why}"
                );
                (true, why.clone(), "would deny")
            }
            (Decision::Deny(why), _) => {
                tracing::warn!(
                    user = req.user,
                    method = req.request_method,
                    uri = req.request_uri,
                    "denied: {why}"
                );
                (false, why.clone(), "deny")
            }
        };
        if allow && msg.is_empty() {
            tracing::info!(
                user = req.user,
                uri = req.request_uri,
                image = image.as_deref().unwrap_or(""),
                "allowed"
            );
        }
        self.audit(req, image.as_deref(), outcome, &msg);
        (allow, if allow { String::new() } else { msg })
    }

    fn audit(&self, req: &AuthzRequest, image: Option<&str>, outcome: &str, why: &str) {
        let Some(file) = &self.audit else { return };
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = json!({
            "time": now,
            "user": req.user,
            "method": req.request_method,
            "uri": req.request_uri,
            "image": image,
            "decision": outcome,
            "reason": why,
        });
        // A poisoned lock only means another write panicked: the file is still usable.
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(f, "{line}") {
            tracing::error!("audit log: {e}");
        }
    }
}

/// Binds `socket` (its directory made 0700 when created here, the socket 0600) and serves
/// until `stop`.
pub async fn serve(
    socket: &Path,
    plugin: Arc<Plugin>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let listener = bind(socket)?;
    tracing::info!(
        "dct-authz serving the Docker plugin API on {}",
        socket.display()
    );
    tokio::pin!(stop);
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            () = &mut stop => break,
        };
        let Ok((stream, _)) = conn else { continue };
        let plugin = plugin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, plugin.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

fn bind(socket: &Path) -> Result<tokio::net::UnixListener, String> {
    let dir: PathBuf = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    }
    // dockerd (root) is the only client: the directory is its owner's alone.
    let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} must be a directory of this user's with mode 0700 (it is {:o}): the plugin's socket is for dockerd alone",
            dir.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
    // A socket left by an earlier run; anything else there is not ours to remove.
    if let Ok(m) = std::fs::symlink_metadata(socket) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(format!("{} exists and is not a socket", socket.display()));
        }
        let _ = std::fs::remove_file(socket);
    }
    // Bound and made private under a temporary name, then renamed into place: the path never
    // names a socket with the default mode (dockerd, or a test, may look the moment it
    // appears).
    let tmp = dir.join(format!(".dct-authz.sock.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)
        .map_err(|e| format!("cannot listen on {}: {e}", tmp.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, socket));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: {e}", socket.display()));
    }
    Ok(listener)
}

async fn answer(
    req: Request<Incoming>,
    plugin: Arc<Plugin>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/vnd.docker.plugins.v1.2+json"),
        );
        Ok(r)
    };
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"Allow": false, "Msg": "dct-authz: request unreadable", "Err": e.to_string()}),
            )
        }
    };
    tracing::debug!(path, "plugin call");
    match path.as_str() {
        "/Plugin.Activate" => reply(StatusCode::OK, json!({"Implements": ["authz"]})),
        "/AuthZPlugin.AuthZReq" => {
            let req: AuthzRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return reply(
                        StatusCode::OK,
                        json!({"Allow": false, "Msg": format!("dct-authz: unreadable request: {e}")}),
                    )
                }
            };
            let (allow, msg) = plugin.authz_req(&req).await;
            if allow {
                reply(StatusCode::OK, json!({"Allow": true}))
            } else {
                reply(StatusCode::OK, json!({"Allow": false, "Msg": msg}))
            }
        }
        // Answers are not judged: dockerd streams a pull's progress (flushed as it goes),
        // so its answer could no longer be refused. A pull by tag was checked on the way in
        // against the digest the registry serves, and whatever is stored runs only if its
        // repository digest is the signed one (the create check).
        "/AuthZPlugin.AuthZRes" => reply(StatusCode::OK, json!({"Allow": true})),
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"Err": format!("{path}: not implemented")}),
        ),
    }
}
