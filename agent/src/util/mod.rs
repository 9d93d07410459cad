//! Leaves every layer may use: durable file writes, durations, PIN files, bounded HTTP
//! bodies.

pub mod duration;
pub mod http;
pub mod metrics;
pub mod pin_file;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Documents up to this size are parsed, canonicalised or edited in place (tens of
/// microseconds); larger ones on a blocking thread, so a 100,000-tag targets file never
/// stalls the async runtime.
const INLINE_BYTES: usize = 64 * 1024;

/// Runs CPU work on `size` bytes of input inline when small, else off the async runtime.
pub async fn cpu<R, F>(size: usize, f: F) -> crate::error::Result<R>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    if size <= INLINE_BYTES {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(crate::error::Error::internal)
    }
}

/// Keeps one element per key, the last given, sorted by key (a stable sort, then the last
/// of each run): n log n where removing earlier ones as they come would be n².
pub fn last_of_each<T, K: Ord + ?Sized>(items: &mut Vec<T>, key: impl Fn(&T) -> &K) {
    items.sort_by(|a, b| key(a).cmp(key(b)));
    items.reverse();
    items.dedup_by(|a, b| key(a) == key(b));
    items.reverse();
}

/// Writes `bytes` to `path` through a new temporary file in the same directory (mode
/// `mode`), synced, then renamed over `path`, and the directory synced: after a crash the
/// file is either the old one or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}
