//! Notices for the person at the keyboard while a request runs, e.g. "touch your YubiKey".
//!
//! Backends run on their own threads and post here; every `dct` that is watching (the
//! `Watch` stream) shows them. A notice carries no secret: a token label, a key ID and a
//! sentence.

use std::sync::OnceLock;

use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: &'static str,
    pub token: String,
    pub key_id: String,
    pub message: String,
}

/// Notices kept for a slow watcher before it misses some.
const BACKLOG: usize = 64;

fn channel() -> &'static broadcast::Sender<Notice> {
    static CHANNEL: OnceLock<broadcast::Sender<Notice>> = OnceLock::new();
    CHANNEL.get_or_init(|| broadcast::channel(BACKLOG).0)
}

/// Posts a notice to every watcher (none watching: dropped). Callable from any thread.
pub fn post(notice: Notice) {
    tracing::info!(token = %notice.token, key_id = %notice.key_id, "{}", notice.message);
    let _ = channel().send(notice);
}

/// A new watcher: sees the notices posted from now on.
pub fn subscribe() -> broadcast::Receiver<Notice> {
    channel().subscribe()
}
