//! Socket activation (systemd's `LISTEN_FDS` protocol): the listening socket is made by
//! systemd (`dct-agent.socket`) or `systemd-socket-activate`, and the agent starts on the
//! first connection.
//!
//! A passed socket gets the checks of one the agent makes itself: a Unix stream socket
//! with a path, owned by the agent's user, in a directory of its own that nobody else may
//! enter, and the socket itself not open to others (a looser mode is tightened to 0600,
//! which only its owner can do). The peer-uid check on every connection is the listener's,
//! as for a socket of its own. Anything else is refused: the agent does not start.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use super::config::SocketAccess;
use super::Listener;

/// The passed listening socket, if the agent was started by socket activation; an error
/// when a socket was passed that the agent must not serve on.
pub fn passed_listener(access: Option<&SocketAccess>) -> Option<Result<Listener, String>> {
    let fds = std::env::var("LISTEN_FDS").ok()?;
    // The protocol: the variables are for the process whose pid they name; a child that
    // inherited them must not take fd 3 for a socket.
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !for_us {
        tracing::warn!("LISTEN_FDS is set for another process (LISTEN_PID); not socket-activated");
        return None;
    }
    Some(take(&fds, access))
}

fn take(fds: &str, access: Option<&SocketAccess>) -> Result<Listener, String> {
    if fds.trim() != "1" {
        return Err(format!(
            "socket activation passed {fds} sockets; the agent serves exactly one (ListenStream= once in dct-agent.socket)"
        ));
    }
    let mut passed = listenfd::ListenFd::from_env();
    let std_listener = passed
        .take_unix_listener(0)
        .map_err(|e| {
            format!("socket activation: the passed socket is not a Unix stream socket: {e}")
        })?
        .ok_or("socket activation: no socket was passed")?;
    let path: PathBuf = std_listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()))
        .ok_or("socket activation: the passed socket has no path (abstract or unnamed sockets are refused: their access cannot be checked)")?;
    check_path(&path, access)?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("socket activation: {e}"))?;
    let listener = tokio::net::UnixListener::from_std(std_listener)
        .map_err(|e| format!("socket activation: {e}"))?;
    tracing::info!("socket-activated on {}", path.display());
    Ok(Listener {
        path,
        listener,
        owned: false,
    })
}

/// The socket's owner, mode and directory, as for a socket the agent makes.
fn check_path(path: &std::path::Path, access: Option<&SocketAccess>) -> Result<(), String> {
    let uid = nix::unistd::getuid().as_raw();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| format!("socket {} has no directory", path.display()))?;
    super::check_dir(dir, access)?;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("passed socket {}: {e}", path.display()))?;
    if meta.uid() != uid {
        return Err(format!(
            "passed socket {} belongs to uid {}, not to the agent's user ({uid}); set SocketUser= in the unit",
            path.display(),
            meta.uid()
        ));
    }
    // Shared with a group (socket_group): its group and mode as for a socket of the
    // agent's own; else private.
    if let Some(a) = access {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(a.gid)))
            .map_err(|e| format!("cannot give {} to group {}: {e}", path.display(), a.gid))?;
        return std::fs::set_permissions(path, std::fs::Permissions::from_mode(a.mode))
            .map_err(|e| format!("cannot chmod {}: {e}", path.display()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            format!(
                "passed socket {} is open to others and cannot be made private: {e}",
                path.display()
            )
        })?;
        tracing::warn!(
            "passed socket {} was open to others; made it 0600 (set SocketMode=0600 in the unit)",
            path.display()
        );
    }
    Ok(())
}
