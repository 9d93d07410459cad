//! Connecting to the agent over its Unix socket, and turning gRPC errors into messages
//! with a next step.

use std::future::Future;
use std::path::PathBuf;

use dct_proto::dct::v1::agent_client::AgentClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Response, Status};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
/// The reason of a [`Failure::partial`].
pub const PARTIAL: &str = "partial";

#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    pub hint: Option<String>,
    /// The agent's machine-readable reason (`refused`, `locked`, ...; see
    /// `dct_proto::REASON_KEY`), when the failure came from the agent.
    pub reason: Option<String>,
}

impl Failure {
    pub fn failed(m: impl Into<String>) -> Self {
        Failure {
            code: EXIT_FAILED,
            message: m.into(),
            hint: None,
            reason: None,
        }
    }
    /// A partial success whose `--json` document is already printed (it says what
    /// failed): only the message goes to standard error, and the exit status says it.
    pub fn partial(m: impl Into<String>) -> Self {
        Failure {
            code: EXIT_FAILED,
            message: m.into(),
            hint: None,
            reason: Some(PARTIAL.into()),
        }
    }
    pub fn usage(m: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: m.into(),
            hint: None,
            reason: None,
        }
    }
}

/// `$XDG_RUNTIME_DIR/dct-agent/agent.sock`, else `/tmp/dct-agent-<uid>/agent.sock`: the
/// agent's default (both from dct-wire).
pub fn default_socket_path() -> PathBuf {
    dct_wire::socket::default_socket_path(nix::unistd::getuid().as_raw())
}

/// Which agent to talk to: its socket, and the user (besides our own) whose agent we trust
/// there.
pub struct Target {
    pub socket: PathBuf,
    /// `--agent-uid` / `DCT_AGENT_UID`: an agent run by this uid is accepted too (a shared
    /// agent, its `allowed_uids` naming us). Without it only an agent of our own uid is.
    pub agent_uid: Option<u32>,
}

/// Whether the socket's server may be talked to: our own uid, or the one we were told.
pub fn trusted_peer(peer: u32, own: u32, expected: Option<u32>) -> bool {
    peer == own || expected == Some(peer)
}

/// Why there is no connection.
pub enum Connect {
    /// Nothing answers at the socket.
    Unreachable(Failure),
    /// Something answers, served by a uid we do not trust.
    Refused(Failure),
}

pub struct Client {
    inner: AgentClient<Channel>,
}

impl Client {
    pub async fn connect(target: &Target) -> Result<Client, Failure> {
        Self::try_connect(target).await.map_err(|e| match e {
            Connect::Unreachable(f) | Connect::Refused(f) => f,
        })
    }

    /// As [`Client::connect`], telling an agent that is not there from one refused.
    pub async fn try_connect(target: &Target) -> Result<Client, Connect> {
        let path = target.socket.clone();
        let expected = target.agent_uid;
        let unreachable = |e: String| Failure {
            code: EXIT_UNREACHABLE,
            message: format!("agent not running at {} ({e})", path.display()),
            hint: Some(
                "start it with `dct-agent` (or point --socket / DCT_SOCKET at its socket)".into(),
            ),
            reason: None,
        };
        // The URI is required by the API but unused: the connector dials the socket.
        let endpoint = Endpoint::try_from("http://dct-agent.invalid")
            .map_err(|e| Connect::Unreachable(unreachable(e.to_string())))?;
        let p = path.clone();
        // The uid of a server refused for not being the agent we trust.
        let refused = std::sync::Arc::new(std::sync::OnceLock::<u32>::new());
        let refused_in = refused.clone();
        // Set once a trusted agent's socket accepted us (a failure after is its doing).
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepted_in = accepted.clone();
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                let refused = refused_in.clone();
                let accepted = accepted_in.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(&p).await?;
                    // Talk only to an agent of our own user, or of the user we were told to
                    // trust: never send a PIN or trust a signature from a listener someone
                    // else put at this path. Checked on every (re)connection.
                    let peer = stream.peer_cred()?.uid();
                    let own = nix::unistd::getuid().as_raw();
                    if !trusted_peer(peer, own, expected) {
                        let _ = refused.set(peer);
                        let named = expected
                            .map(|u| format!(" nor by --agent-uid {u}"))
                            .unwrap_or_default();
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!(
                                "the socket is served by uid {peer}, not by us (uid {own}){named}; \
                                 refusing to use it"
                            ),
                        ));
                    }
                    accepted.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = s.to_string();
                    src = s.source();
                }
                match refused.get() {
                    Some(peer) => Connect::Refused(Failure {
                        code: EXIT_UNREACHABLE,
                        message: format!("agent at {}: {msg}", path.display()),
                        hint: Some(format!(
                            "if the agent of uid {peer} is the one you mean to use (a shared agent whose \
                             allowed_uids names you), say so: --agent-uid {peer} or DCT_AGENT_UID={peer}"
                        )),
                        reason: Some("unexpected_agent_uid".into()),
                    }),
                    None if accepted.load(std::sync::atomic::Ordering::SeqCst) => {
                        Connect::Unreachable(closed(&msg))
                    }
                    None => Connect::Unreachable(unreachable(msg)),
                }
            })?;
        watch_notices(channel.clone()).await;
        Ok(Client {
            inner: AgentClient::new(channel).max_decoding_message_size(usize::MAX),
        })
    }

    pub async fn call<T, F, Fut>(&mut self, f: F) -> Result<T, Failure>
    where
        F: FnOnce(AgentClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        f(self.inner.clone())
            .await
            .map(Response::into_inner)
            .map_err(failure)
    }
}

/// Shows the agent's notices ("touch your YubiKey") on stderr while this command runs. The
/// stream is open before the command's request goes out, so none is missed. An agent that
/// cannot watch (busy, older) is not an error.
async fn watch_notices(channel: Channel) {
    let mut watcher = AgentClient::new(channel);
    let req = dct_proto::dct::v1::WatchRequest {};
    let opened = tokio::time::timeout(std::time::Duration::from_secs(2), watcher.watch(req)).await;
    if let Ok(Ok(stream)) = opened {
        let mut stream = stream.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(n)) = stream.message().await {
                eprintln!("dct: {}", n.message);
            }
        });
    }
}

/// The agent closed a connection before answering: an agent refuses uids that are neither
/// its own nor in its allowed_uids without a word.
fn closed(why: &str) -> Failure {
    Failure {
        code: EXIT_UNREACHABLE,
        message: format!("the agent closed the connection ({why})"),
        hint: Some(format!(
            "a shared agent serves only its own user and those its allowed_uids names \
             (you are uid {}); or it stopped",
            nix::unistd::getuid()
        )),
        reason: Some("connection_closed".into()),
    }
}

/// One mapping from agent status to a message and a next step, decided on the agent's
/// machine-readable reason (never on message text).
pub fn failure(s: Status) -> Failure {
    let msg = s.message().to_string();
    let reason = s
        .metadata()
        .get(dct_proto::REASON_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let hint = match (s.code(), reason.as_deref()) {
        // Not the agent's: the transport refused a message over its size limit (an answer
        // when the agent could not encode it, else the request).
        (Code::OutOfRange, None) if msg.contains("encoded message") => {
            return Failure {
                code: EXIT_FAILED,
                message: format!("the agent's answer is too large to send: {msg}"),
                hint: Some(
                    "answers may be up to twice max_request_bytes in agent.toml (at least 256 MiB)"
                        .into(),
                ),
                reason: Some("too_large".into()),
            };
        }
        (Code::OutOfRange, None) => {
            return Failure {
                code: EXIT_FAILED,
                message: format!("request too large for the agent: {msg}"),
                hint: Some("the agent's limit is max_request_bytes in agent.toml".into()),
                reason: Some("too_large".into()),
            };
        }
        // The agent maps its own errors elsewhere: Unavailable is the transport.
        (Code::Unavailable, _) => {
            return Failure {
                code: EXIT_UNREACHABLE,
                message: format!("agent connection lost: {msg}"),
                hint: Some("is dct-agent still running?".into()),
                reason: Some("connection_lost".into()),
            };
        }
        // Not the agent's: the connection closed before any answer (tonic's own status).
        // Which of the two the client sees depends on when the close lands (before or
        // during the first request); neither carries an agent's reason.
        (Code::Unknown, None) if msg == "transport error" => return closed(&msg),
        // Not the agent's: a method it does not have (an agent older than this dct).
        (Code::Unimplemented, None) => {
            return Failure {
                code: EXIT_FAILED,
                message: format!(
                    "the agent does not know this request ({msg}): it is older than this dct"
                ),
                hint: Some("restart dct-agent from the same release as dct".into()),
                reason: Some("unimplemented".into()),
            };
        }
        (Code::Cancelled, None) => return closed(&msg),
        (_, Some("not_found")) => Some("see `dct key list` and `dct status`".to_string()),
        // A busy token's queue, or a size limit the message names.
        (_, Some("resource_exhausted")) => {
            Some("a busy token passes: try again shortly; a size limit is named above".to_string())
        }
        _ => None,
    };
    Failure {
        code: EXIT_FAILED,
        message: msg,
        hint,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A method the agent does not have (an older agent) is named as such, so that
    /// `dct trust sign` can fall back to the one-request form.
    #[test]
    fn an_unknown_method_is_told_apart() {
        let f = failure(Status::unimplemented(""));
        assert_eq!(f.reason.as_deref(), Some("unimplemented"));
        assert!(f.message.contains("older than this dct"), "{}", f.message);
        // The agent's own errors keep their reasons.
        let mut s = Status::unimplemented("no such thing");
        s.metadata_mut()
            .insert(dct_proto::REASON_KEY, "refused".parse().unwrap());
        assert_eq!(failure(s).reason.as_deref(), Some("refused"));
    }

    #[test]
    fn only_our_own_or_the_named_agent_uid_is_trusted() {
        assert!(trusted_peer(1000, 1000, None));
        assert!(!trusted_peer(0, 1000, None));
        assert!(trusted_peer(0, 1000, Some(0)));
        assert!(!trusted_peer(1001, 1000, Some(0)));
        assert!(trusted_peer(1000, 1000, Some(0)));
    }
}
