//! The agent's default socket.

use std::path::PathBuf;

/// `$XDG_RUNTIME_DIR/dct-agent/agent.sock`, else `/tmp/dct-agent-<uid>/agent.sock`, where
/// `uid` is the caller's own user: the agent serves there, and the CLI looks there.
pub fn default_socket_path(uid: u32) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("dct-agent").join("agent.sock"),
        None => PathBuf::from(format!("/tmp/dct-agent-{uid}")).join("agent.sock"),
    }
}
