//! Trust data seen before: the TOFU cache of roots and the highest versions seen, one
//! directory per GUN (collision-free names), and one lock per repository.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::publish::sha2_256;
use crate::error::{Error, Result};
use crate::trust::notary::ServerOpts;

/// Where the agent keeps trust data it has seen (the TOFU cache).
#[derive(Clone)]
pub struct TrustContext {
    dir: PathBuf,
    /// The configured default server.
    pub server: Option<ServerOpts>,
    pub(crate) pinning: crate::trust::Pinning,
    /// One change at a time per repository: two concurrent signs would both build version
    /// n+1 and the server would refuse one ("a newer version is already available").
    locks: GunLocks,
}

pub(crate) type GunLocks =
    std::sync::Arc<std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>>;

impl TrustContext {
    /// The agent's state directory: the trust cache's parent, where the version ledger
    /// and the Notation certificates ([`crate::keys::chains`]) are kept.
    pub fn state_dir(&self) -> PathBuf {
        self.dir
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| self.dir.clone())
    }

    pub fn new(dir: PathBuf, server: Option<ServerOpts>, pinning: crate::trust::Pinning) -> Self {
        TrustContext {
            dir,
            server,
            pinning,
            locks: Default::default(),
        }
    }

    /// Holds the repository's lock for the guard's lifetime.
    pub async fn lock(&self, gun: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            // A poisoned map only means another request panicked while inserting: the map
            // itself is still sound.
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(gun.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// The directory of `gun`'s cached trust data: `<dir>/repos/<GUN, escaped>`, one path
    /// component per GUN, so that no GUN's files (nor a role file of its, see
    /// [`TrustContext::metadata_path`]) can land in another's.
    pub(crate) fn gun_dir(&self, gun: &str) -> PathBuf {
        self.dir.join("repos").join(cache_name(gun))
    }

    /// Where releases before this layout kept a file of `gun`: `<dir>/tuf/<gun>/<rel>`,
    /// where `a/b`'s files and `a`'s delegation `targets/b` could collide. Only read.
    pub(crate) fn legacy_path(&self, gun: &str, rel: &str) -> PathBuf {
        self.dir.join("tuf").join(gun).join(rel)
    }

    pub(crate) fn root_path(&self, gun: &str) -> PathBuf {
        self.gun_dir(gun).join("root.json")
    }

    /// The directory whose root.json [`TrustContext::cached_root`] reads.
    pub(crate) fn cached_root_dir(&self, gun: &str) -> PathBuf {
        if std::fs::symlink_metadata(self.root_path(gun)).is_ok() {
            self.gun_dir(gun)
        } else {
            self.legacy_path(gun, "")
        }
    }

    pub(crate) fn cached_root(&self, gun: &str) -> Option<Vec<u8>> {
        read_cached(&self.root_path(gun), &self.legacy_path(gun, "root.json"))
    }

    /// Caches `bytes` as the trusted root, unless a newer one is cached already.
    pub(crate) fn save_root(&self, gun: &str, bytes: &[u8]) -> Result<()> {
        if let Some(old) = self.cached_root(gun) {
            if version_of(&old) > version_of(bytes) {
                return Ok(());
            }
        }
        write_atomic(&self.root_path(gun), bytes)
    }

    /// Saves the trusted root (and the seen versions) off the async runtime: the writes
    /// are synced to disk.
    pub(crate) async fn persist(
        &self,
        gun: &str,
        root: Vec<u8>,
        versions: Option<BTreeMap<String, i64>>,
    ) -> Result<()> {
        let (ctx, gun) = (self.clone(), gun.to_string());
        tokio::task::spawn_blocking(move || {
            ctx.save_root(&gun, &root)?;
            match versions {
                Some(v) => ctx.save_versions(&gun, &v),
                None => Ok(()),
            }
        })
        .await
        .map_err(Error::internal)?
    }

    pub(crate) fn versions_path(&self, gun: &str) -> PathBuf {
        self.gun_dir(gun).join("versions.json")
    }

    /// The highest version of each role seen verified for `gun` (rollback protection).
    pub(crate) fn versions(&self, gun: &str) -> BTreeMap<String, i64> {
        read_cached(
            &self.versions_path(gun),
            &self.legacy_path(gun, "versions.json"),
        )
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
    }

    pub(crate) fn save_versions(&self, gun: &str, v: &BTreeMap<String, i64>) -> Result<()> {
        let bytes = serde_json::to_vec(v).map_err(Error::internal)?;
        write_atomic(&self.versions_path(gun), &bytes)
    }
}

/// A cached file: at `path`, else (a cache from before the per-GUN directories) at
/// `legacy` if that is a regular file. Later writes go to `path` only.
pub(crate) fn read_cached(path: &Path, legacy: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::symlink_metadata(legacy)
            .ok()
            .filter(|m| m.is_file())
            .and_then(|_| std::fs::read(legacy).ok()),
        Err(_) => None,
    }
}

/// Longest cache file or directory name [`cache_name`] makes (file systems allow 255 bytes).
pub(crate) const MAX_CACHE_NAME: usize = 200;

/// A GUN or role name as one file name, injectively: bytes outside `[A-Za-z0-9_.-]`, and a
/// leading `.`, as `%XX` (so `/` cannot make a directory and no name is `.`, `..` or
/// hidden; `%` itself is escaped); the empty name as `%`. A result over
/// [`MAX_CACHE_NAME`] bytes is cut and ends in `~` and the SHA-256 of the name (`~` is
/// otherwise escaped).
pub(crate) fn cache_name(name: &str) -> String {
    use std::fmt::Write as _;
    if name.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.len() > MAX_CACHE_NAME {
        let digest = crate::tuf::keys::hex(&sha2_256(name.as_bytes()));
        // Only ASCII was pushed, so any byte offset is a char boundary.
        out.truncate(MAX_CACHE_NAME - 1 - digest.len());
        out.push('~');
        out.push_str(&digest);
    }
    out
}

/// `signed.version` of a metadata file (0 when unreadable).
pub(crate) fn version_of(bytes: &[u8]) -> i64 {
    // Read from the text: a tree of a 100,000-target role is some 90 MiB.
    let Ok(file) = crate::tuf::metadata::RawEnvelope::parse(bytes) else {
        return 0;
    };
    crate::tuf::cjson::members(file.signed.get())
        .ok()
        .and_then(|m| {
            let v = crate::tuf::cjson::last(&m, "version")?;
            serde_json::from_str::<Value>(v.get()).ok()?.as_i64()
        })
        .unwrap_or(0)
}

/// Writes through a new temporary file in the same directory, synced, then renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::util::write_atomic(path, bytes, 0o600)
        .map_err(|e| Error::Internal(format!("trust cache {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_of_reads_the_version_from_the_text() {
        let doc = |signed: &str| format!(r#"{{"signed":{signed},"signatures":[]}}"#);
        assert_eq!(
            version_of(doc(r#"{"_type":"Targets","version":7,"targets":{}}"#).as_bytes()),
            7
        );
        assert_eq!(
            version_of(doc(r#"{"version":2,"version":9}"#).as_bytes()),
            9
        );
        assert_eq!(version_of(doc(r#"{"_type":"Targets"}"#).as_bytes()), 0);
        assert_eq!(version_of(doc(r#"{"version":"7"}"#).as_bytes()), 0);
        assert_eq!(version_of(b"not json"), 0);
    }

    #[test]
    pub(crate) fn cache_names_are_one_component_and_injective() {
        let names = [
            "",
            "%",
            "%2F",
            "a",
            "A",
            "a/b",
            "a%2Fb",
            "a_2Fb",
            "a/b/metadata/targets",
            "a/b/metadata",
            "targets/root",
            "targets%2Froot",
            "root",
            "root.json",
            ".",
            "..",
            ".hidden",
            "%2E",
            "a.b",
            "host:5000/app",
            "host%3A5000/app",
            "ünï/cödé",
            "~",
        ];
        let mut seen = std::collections::BTreeMap::new();
        for n in names {
            let c = cache_name(n);
            assert!(
                !c.is_empty() && c != "." && c != ".." && !c.starts_with('.'),
                "{n:?} -> {c:?}"
            );
            assert!(
                !c.contains('/') && !c.contains('\\') && !c.contains('\0'),
                "{n:?} -> {c:?}"
            );
            if let Some(other) = seen.insert(c.clone(), n) {
                panic!("{n:?} and {other:?} both map to {c:?}");
            }
        }
        assert_eq!(
            cache_name("registry.example.com/team/app"),
            "registry.example.com%2Fteam%2Fapp"
        );
        assert_eq!(cache_name("targets/releases"), "targets%2Freleases");
        // Long names stay under the file name limit, and distinct.
        let (long1, long2) = ("a/".repeat(200), format!("{}b", "a/".repeat(199)));
        let (c1, c2) = (cache_name(&long1), cache_name(&long2));
        assert!(c1.len() <= MAX_CACHE_NAME && c2.len() <= MAX_CACHE_NAME);
        assert_ne!(c1, c2);
        assert!(c1.contains('~'));
    }

    pub(crate) fn ctx(dir: &Path) -> TrustContext {
        TrustContext::new(dir.to_path_buf(), None, crate::trust::Pinning::default())
    }

    #[test]
    pub(crate) fn a_gun_and_a_role_of_another_gun_no_longer_share_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path());
        // Before: `a/b/metadata/targets`'s root.json was `a/b`'s delegation targets/root.
        let paths = [
            ctx.root_path("a/b/metadata/targets"),
            ctx.versions_path("a/b/metadata/targets"),
            ctx.metadata_path("a/b/metadata/targets", "root"),
            ctx.metadata_path("a/b", "targets/root"),
            ctx.metadata_path("a/b", "targets/versions"),
            ctx.metadata_path("a/b", "targets/metadata/root"),
            ctx.root_path("a/b"),
            ctx.metadata_path("a/b", "root"),
        ];
        let unique: std::collections::BTreeSet<_> = paths.iter().collect();
        assert_eq!(unique.len(), paths.len(), "{paths:?}");
        for p in &paths {
            let rel = p.strip_prefix(dir.path().join("repos")).unwrap();
            assert!(rel.components().count() <= 3, "{}", p.display());
        }
    }

    #[test]
    pub(crate) fn a_cache_in_the_old_layout_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path());
        let gun = "registry.example.com/app";
        let old = dir.path().join("tuf").join(gun);
        std::fs::create_dir_all(old.join("metadata")).unwrap();
        std::fs::write(old.join("root.json"), b"old root").unwrap();
        std::fs::write(old.join("versions.json"), br#"{"targets":7}"#).unwrap();
        for role in ["root", "targets", "snapshot", "timestamp"] {
            std::fs::write(old.join(format!("metadata/{role}.json")), role).unwrap();
        }
        assert_eq!(ctx.cached_root(gun).as_deref(), Some(&b"old root"[..]));
        assert_eq!(ctx.versions(gun).get("targets"), Some(&7));
        let files = ctx.load_metadata(gun).unwrap();
        assert_eq!(
            files.get("snapshot").map(Vec::as_slice),
            Some(&b"snapshot"[..])
        );
        assert_eq!(ctx.cached_root_dir(gun), ctx.legacy_path(gun, ""));
        // Writes go to the new layout, which then wins; the old files stay as they were.
        ctx.save_root(gun, b"new root").unwrap();
        assert_eq!(ctx.cached_root(gun).as_deref(), Some(&b"new root"[..]));
        assert_eq!(std::fs::read(old.join("root.json")).unwrap(), b"old root");
        assert_eq!(ctx.cached_root_dir(gun), ctx.gun_dir(gun));
        // Only a regular file counts, not a directory or a symlink where root.json was.
        let other = "registry.example.com/other";
        let old_other = dir.path().join("tuf").join(other);
        std::fs::create_dir_all(old_other.join("root.json")).unwrap();
        assert_eq!(ctx.cached_root(other), None);
        std::fs::remove_dir(old_other.join("root.json")).unwrap();
        std::os::unix::fs::symlink(old.join("root.json"), old_other.join("root.json")).unwrap();
        assert_eq!(ctx.cached_root(other), None);
    }
}
