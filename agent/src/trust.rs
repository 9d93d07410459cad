//! Docker Content Trust operations against a notary-server, built on the TUF core, the
//! keyring and the notary HTTP client: init, sign a tag, inspect.
//!
//! Trust data is verified on every fetch. The first root seen for a GUN is cached (trust on
//! first use, as the notary client does); a later root must be the same or be signed by a
//! threshold of the cached root's keys.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::guard::{Guard, Receipt};
use crate::keys::{make_root_cert, KeyEntry};
use crate::notary::{NotaryClient, ServerOpts};
use crate::tuf::keys::{TufKey, ECDSA_X509};
use crate::tuf::metadata::{parse_key_map, valid_delegation_name, Envelope, RootDoc, TargetsDoc};
use crate::tuf::verify::{self, check_signatures, RepoFiles, VerifiedRepo};

/// Default lifetimes Notary gives new versions of each role.
const ROOT_LIFETIME: time::Duration = time::Duration::days(10 * 365);
const TARGETS_LIFETIME: time::Duration = time::Duration::days(3 * 365);

/// Where the agent keeps trust data it has seen (the TOFU cache).
#[derive(Clone)]
pub struct TrustContext {
    dir: PathBuf,
    /// The configured default server.
    pub server: Option<ServerOpts>,
    pinning: crate::config::Pinning,
    /// One change at a time per repository: two concurrent signs would both build version
    /// n+1 and the server would refuse one ("a newer version is already available").
    locks: GunLocks,
}

type GunLocks =
    std::sync::Arc<std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>>;

impl TrustContext {
    pub fn new(dir: PathBuf, server: Option<ServerOpts>, pinning: crate::config::Pinning) -> Self {
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
    fn gun_dir(&self, gun: &str) -> PathBuf {
        self.dir.join("repos").join(cache_name(gun))
    }

    /// Where releases before this layout kept a file of `gun`: `<dir>/tuf/<gun>/<rel>`,
    /// where `a/b`'s files and `a`'s delegation `targets/b` could collide. Only read.
    fn legacy_path(&self, gun: &str, rel: &str) -> PathBuf {
        self.dir.join("tuf").join(gun).join(rel)
    }

    fn root_path(&self, gun: &str) -> PathBuf {
        self.gun_dir(gun).join("root.json")
    }

    /// The directory whose root.json [`TrustContext::cached_root`] reads.
    fn cached_root_dir(&self, gun: &str) -> PathBuf {
        if std::fs::symlink_metadata(self.root_path(gun)).is_ok() {
            self.gun_dir(gun)
        } else {
            self.legacy_path(gun, "")
        }
    }

    fn cached_root(&self, gun: &str) -> Option<Vec<u8>> {
        read_cached(&self.root_path(gun), &self.legacy_path(gun, "root.json"))
    }

    /// Caches `bytes` as the trusted root, unless a newer one is cached already.
    fn save_root(&self, gun: &str, bytes: &[u8]) -> Result<()> {
        if let Some(old) = self.cached_root(gun) {
            if version_of(&old) > version_of(bytes) {
                return Ok(());
            }
        }
        write_atomic(&self.root_path(gun), bytes)
    }

    /// Saves the trusted root (and the seen versions) off the async runtime: the writes
    /// are synced to disk.
    async fn persist(
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
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    fn versions_path(&self, gun: &str) -> PathBuf {
        self.gun_dir(gun).join("versions.json")
    }

    /// The highest version of each role seen verified for `gun` (rollback protection).
    fn versions(&self, gun: &str) -> BTreeMap<String, i64> {
        read_cached(
            &self.versions_path(gun),
            &self.legacy_path(gun, "versions.json"),
        )
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
    }

    fn save_versions(&self, gun: &str, v: &BTreeMap<String, i64>) -> Result<()> {
        let bytes = serde_json::to_vec(v).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&self.versions_path(gun), &bytes)
    }
}

/// A cached file: at `path`, else (a cache from before the per-GUN directories) at
/// `legacy` if that is a regular file. Later writes go to `path` only.
fn read_cached(path: &Path, legacy: &Path) -> Option<Vec<u8>> {
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
const MAX_CACHE_NAME: usize = 200;

/// A GUN or role name as one file name, injectively: bytes outside `[A-Za-z0-9_.-]`, and a
/// leading `.`, as `%XX` (so `/` cannot make a directory and no name is `.`, `..` or
/// hidden; `%` itself is escaped); the empty name as `%`. A result over
/// [`MAX_CACHE_NAME`] bytes is cut and ends in `~` and the SHA-256 of the name (`~` is
/// otherwise escaped).
fn cache_name(name: &str) -> String {
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
fn version_of(bytes: &[u8]) -> i64 {
    Envelope::parse(bytes)
        .ok()
        .and_then(|e| e.signed.get("version").and_then(Value::as_i64))
        .unwrap_or(0)
}

/// Writes through a new temporary file in the same directory, synced, then renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::util::write_atomic(path, bytes, 0o600)
        .map_err(|e| Error::Internal(format!("trust cache {}: {e}", path.display())))
}

/// A repository as fetched and verified.
pub struct Repo {
    pub files: RepoFiles,
    pub verified: VerifiedRepo,
    /// The root was already trusted (cached from before, or pinned), not first seen now.
    pub trusted: bool,
}

impl Repo {
    /// Signing on trust data first seen now would let a malicious server choose what the
    /// user's keys sign: ask for an explicit yes.
    fn require_trusted(&self, client: &NotaryClient, gun: &str) -> Result<()> {
        if self.trusted || client.trust_on_first_use {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "this agent has never seen {gun}'s root and none is pinned: signing now would trust whatever the server sent. \
             Pin the root ([trust.pinning.certs] in agent.toml) or repeat with --trust-on-first-use"
        )))
    }
}

/// Most delegation files a snapshot may make the agent fetch.
const MAX_DELEGATIONS: usize = 10_000;

impl Repo {
    fn doc(&self, role: &str) -> Result<Envelope> {
        let bytes = self
            .files
            .get(role)
            .ok_or_else(|| Error::Internal(format!("{role} not fetched")))?;
        Envelope::parse(bytes).map_err(|e| Error::Internal(format!("{role}: {e}")))
    }

    fn root(&self) -> Result<RootDoc> {
        serde_json::from_value(self.doc("root")?.signed).map_err(|e| Error::Internal(e.to_string()))
    }
}

/// A GUN as Docker names it: non-empty, no whitespace or control characters, no `..`.
pub fn check_gun(gun: &str) -> Result<()> {
    crate::keys::check_gun(gun)?;
    if gun
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(Error::InvalidArgument(format!("invalid GUN {gun:?}")));
    }
    Ok(())
}

/// Fetches and verifies the repository, or None when the server has no trust data for it.
pub async fn fetch(client: &NotaryClient, ctx: &TrustContext, gun: &str) -> Result<Option<Repo>> {
    // One consistent view while others publish: the timestamp first, then every other file
    // by the hash its parent pins (`<role>.<sha256>.json`), as TUF clients do.
    let Some(timestamp) = client.get_role(gun, "timestamp").await? else {
        return match client.get_role(gun, "root").await? {
            None => Ok(None),
            Some(_) => Err(Error::Unavailable(format!(
                "trust server has root.json but no timestamp.json for {gun}"
            ))),
        };
    };
    let mut files = RepoFiles::new();
    let snapshot = get_pinned(client, gun, "snapshot", &timestamp).await?;
    for role in ["root", "targets"] {
        files.insert(role.into(), get_pinned(client, gun, role, &snapshot).await?);
    }
    // Delegation files the snapshot lists.
    let listed: Vec<String> = Envelope::parse(&snapshot)
        .map_err(|e| Error::Unavailable(format!("snapshot: {e}")))?
        .signed
        .get("meta")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter(|k| k.starts_with("targets/"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if listed.len() > MAX_DELEGATIONS {
        return Err(Error::Unavailable(format!(
            "snapshot lists {} delegations, over the {MAX_DELEGATIONS} this agent fetches",
            listed.len()
        )));
    }
    for role in listed {
        if !valid_delegation_name(&role) {
            return Err(Error::Unavailable(format!(
                "snapshot lists an invalid role {role:?}"
            )));
        }
        let bytes = get_pinned(client, gun, &role, &snapshot).await?;
        files.insert(role, bytes);
    }
    files.insert("timestamp".into(), timestamp);
    files.insert("snapshot".into(), snapshot);
    let cached = ctx.cached_root(gun);
    let pins = ctx.pinning.for_gun(gun);
    let trusted = cached.is_some() || !pins.is_empty() || ctx.pinning.ca_for_gun(gun).is_some();
    // A root newer than the cached one by several versions: the versions between must each
    // have been signed by the one before (Notary keeps them as <N>.root.json).
    let mut chain = Vec::new();
    if let Some(old) = &cached {
        let (from, to) = (version_of(old), version_of(&files["root"]));
        if old != &files["root"] && to > from + 1 && check_rotation(old, &files["root"]).is_err() {
            for v in from + 1..to {
                let step = client
                    .get_role(gun, &format!("{v}.root"))
                    .await?
                    .ok_or_else(|| {
                        Error::Refused(format!(
                            "root version {v} of {gun} is missing on the server"
                        ))
                    })?;
                chain.push(step);
            }
        }
    }
    let gun_owned = gun.to_string();
    let (files, verified) =
        tokio::task::spawn_blocking(move || -> Result<(RepoFiles, VerifiedRepo)> {
            if let Some(old) = &cached {
                if old != &files["root"] {
                    let mut prev = old.clone();
                    for step in chain.iter().chain(std::iter::once(&files["root"])) {
                        check_rotation(&prev, step)?;
                        check_self_signed(step)?;
                        prev = step.clone();
                    }
                }
            }
            let v = verify::verify_repository(&gun_owned, &files, OffsetDateTime::now_utc(), &pins)
                .map_err(|e| {
                    Error::Refused(format!("trust data for {gun_owned} does not verify: {e}"))
                })?;
            Ok((files, v))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    check_ca_pin(
        &ctx.pinning,
        gun,
        &files["root"],
        &verified,
        OffsetDateTime::now_utc(),
    )?;
    // Rollback protection: no role older than seen before, no delegation silently dropped.
    let mut seen = ctx.versions(gun);
    let delegated: Vec<String> = Envelope::parse(&files["targets"])
        .ok()
        .and_then(|e| serde_json::from_value::<TargetsDoc>(e.signed).ok())
        .map(|t| t.delegations.roles.into_iter().map(|d| d.name).collect())
        .unwrap_or_default();
    for (role, &before) in &seen {
        match files.get(role) {
            Some(bytes) if version_of(bytes) < before => {
                return Err(Error::Refused(format!(
                    "the server's {role} of {gun} is version {}, older than version {before} seen before: refusing a rollback",
                    version_of(bytes)
                )))
            }
            None if delegated.contains(role) && before > 0 => {
                return Err(Error::Refused(format!(
                    "the server no longer lists {role} of {gun} (version {before} seen before): refusing a rollback"
                )))
            }
            _ => {}
        }
    }
    for (role, bytes) in &files {
        let v = version_of(bytes);
        let e = seen.entry(role.clone()).or_insert(v);
        *e = (*e).max(v);
    }
    ctx.persist(gun, files["root"].clone(), Some(seen)).await?;
    Ok(Some(Repo {
        files,
        verified,
        trusted,
    }))
}

/// `role` as pinned by `parent`'s meta: fetched by its sha256 (`<role>.<hex>.json`), else by
/// name when the server keeps no such copy. Verification checks the bytes either way.
async fn get_pinned(
    client: &NotaryClient,
    gun: &str,
    role: &str,
    parent: &[u8],
) -> Result<Vec<u8>> {
    let hex = Envelope::parse(parent)
        .ok()
        .and_then(|e| {
            e.signed
                .get("meta")?
                .get(role)?
                .get("hashes")?
                .get("sha256")?
                .as_str()
                .map(str::to_string)
        })
        .and_then(|b| B64.decode(b).ok())
        .map(|h| crate::tuf::keys::hex(&h));
    if let Some(hex) = hex {
        if let Some(bytes) = client.get_role(gun, &format!("{role}.{hex}")).await? {
            return Ok(bytes);
        }
    }
    client
        .get_role(gun, role)
        .await?
        .ok_or_else(|| Error::Unavailable(format!("trust server has no {role}.json for {gun}")))
}

/// The keys of a root document's root role, and its threshold.
fn root_role_keys(root: &RootDoc) -> std::result::Result<(BTreeMap<String, TufKey>, i64), String> {
    let keys = parse_key_map(&root.keys)?;
    let role = root.roles.get("root").ok_or("root has no root role")?;
    let own = role
        .keyids
        .iter()
        .filter_map(|id| Some((id.clone(), keys.get(id)?.clone())))
        .collect();
    Ok((own, role.threshold))
}

/// The key IDs `root` gives `role`; a root without that role is refused, naming it.
fn role_keyids<'a>(root: &'a RootDoc, role: &str) -> Result<&'a Vec<String>> {
    root.roles
        .get(role)
        .map(|r| &r.keyids)
        .ok_or_else(|| Error::InvalidArgument(format!("the root has no {role} role")))
}

/// A root must carry a threshold of signatures by its own root keys.
fn check_self_signed(bytes: &[u8]) -> Result<()> {
    let env = Envelope::parse(bytes).map_err(|e| Error::Refused(format!("root: {e}")))?;
    let root: RootDoc = serde_json::from_value(env.signed.clone())
        .map_err(|e| Error::Refused(format!("root: {e}")))?;
    let (own, threshold) = root_role_keys(&root).map_err(Error::Refused)?;
    check_signatures(&env, &own, threshold)
        .map(|_| ())
        .map_err(|e| {
            Error::Refused(format!(
                "root version {} is not signed by its own root keys: {e}",
                root.common.version
            ))
        })
}

/// A root other than the cached one must be signed by a threshold of the cached root's
/// root keys (Notary's rotation rule); its own threshold is checked with the repository.
fn check_rotation(old: &[u8], new: &[u8]) -> Result<()> {
    let refuse = |why: String| {
        Error::Refused(format!(
            "the server's root differs from the trusted one and {why}; refusing (possible attack, or the repository was re-created)"
        ))
    };
    let old_env = Envelope::parse(old).map_err(|e| Error::Internal(format!("cached root: {e}")))?;
    let old_root: RootDoc =
        serde_json::from_value(old_env.signed).map_err(|e| Error::Internal(e.to_string()))?;
    let (keys, threshold) =
        root_role_keys(&old_root).map_err(|e| Error::Internal(format!("cached root: {e}")))?;
    let new_env = Envelope::parse(new).map_err(|e| refuse(format!("is unreadable ({e})")))?;
    check_signatures(&new_env, &keys, threshold)
        .map_err(|e| refuse(format!("is not signed by the trusted root keys ({e})")))?;
    let new_version = new_env
        .signed
        .get("version")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if new_version <= old_root.common.version {
        return Err(refuse(format!(
            "has version {new_version}, not above {}",
            old_root.common.version
        )));
    }
    Ok(())
}

fn expires(lifetime: time::Duration) -> Result<String> {
    (OffsetDateTime::now_utc() + lifetime)
        .format(&Rfc3339)
        .map_err(|e| Error::Internal(e.to_string()))
}

fn unsigned(signed: Value) -> Vec<u8> {
    // A Value of strings, numbers and objects always serialises.
    serde_json::to_vec(&json!({"signed": signed, "signatures": []})).unwrap_or_default()
}

/// Keys of `role`/`gun` on the agent's tokens.
fn held<'a>(
    keys: &'a [KeyEntry],
    role: &str,
    gun: &str,
) -> impl Iterator<Item = &'a KeyEntry> + 'a {
    let (role, gun) = (role.to_string(), gun.to_string());
    keys.iter().filter(move |k| {
        k.role == role && (role == "root" || k.gun.as_deref() == Some(gun.as_str()))
    })
}

/// All listings of the key with canonical ID `canonical`.
fn listings(keys: &[KeyEntry], canonical: &str) -> Vec<KeyEntry> {
    keys.iter()
        .filter(|k| k.canonical_id == canonical)
        .cloned()
        .collect()
}

/// Signs `document` for a publish this agent makes (the guard holds its version as pending
/// until [`publish`] settles it); the receipt joins `receipts`.
async fn sign_doc(
    guard: &Guard,
    keys: Vec<KeyEntry>,
    document: Vec<u8>,
    role: &str,
    gun: &str,
    previous: Option<&[u8]>,
    receipts: &mut Vec<Receipt>,
) -> Result<crate::guard::Signed> {
    let previous = previous.map(<[u8]>::to_vec);
    // A root signed by an old root key names the key by the previous root's certificate.
    let previous_root = if role == "root" {
        previous.clone()
    } else {
        None
    };
    let s = guard
        .sign_for_publish(keys, document, role, gun, previous_root, previous)
        .await?;
    receipts.push(s.receipt.clone());
    Ok(s)
}

/// Publishes `files` in one update; once the server took them, the versions signed for them
/// are settled in the ledger. A failed publish leaves them pending: a retry may sign those
/// versions again.
async fn publish(
    guard: &Guard,
    client: &NotaryClient,
    gun: &str,
    files: Vec<(String, Vec<u8>)>,
    receipts: &[Receipt],
) -> Result<()> {
    client.publish(gun, files).await?;
    if let Err(e) = guard.published(receipts).await {
        // Published all the same; the versions stay pending (still never below them).
        tracing::error!(gun, "published, but the ledger could not record it: {e}");
    }
    Ok(())
}

pub struct InitResult {
    pub root: KeyEntry,
    pub targets: KeyEntry,
    pub timestamp_key_id: String,
    pub snapshot_key_id: String,
}

/// `dct trust init`: root and targets keys on a token (reused when present), snapshot and
/// timestamp managed by the server; publishes root v1 and targets v1.
pub async fn init(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    root_key: &str,
    token: &str,
    local_snapshot: bool,
) -> Result<InitResult> {
    check_gun(gun)?;
    if client.get_role(gun, "root").await?.is_some() {
        return Err(Error::Refused(format!(
            "{gun} already has trust data on the server"
        )));
    }
    if ctx.cached_root(gun).is_some() {
        return Err(Error::Refused(format!(
            "this agent already trusts a root for {gun} but the server has none: the repository was deleted, \
             or this is an attack. To start over, delete {}",
            ctx.cached_root_dir(gun).display()
        )));
    }
    let (keys, _) = guard.keys().all_keys().await;

    // Root: the named key, else a root key with a certificate for this GUN, else a new one.
    let root = if !root_key.is_empty() {
        let found = guard.keys().find_key(root_key).await?;
        if found[0].role != "root" {
            return Err(Error::InvalidArgument(format!(
                "key {root_key} is a {} key, not a root key",
                found[0].role
            )));
        }
        found
            .into_iter()
            .find(|k| k.keytype == ECDSA_X509 && k.gun.as_deref() == Some(gun))
            .map(Ok)
    } else {
        held(&keys, "root", gun)
            .find(|k| k.keytype == ECDSA_X509 && k.gun.as_deref() == Some(gun))
            .cloned()
            .map(Ok)
    };
    let root = match root {
        Some(r) => r?,
        None if !root_key.is_empty() => {
            // The named root key has no certificate for this GUN yet: make one on its token.
            let key = guard.keys().find_key(root_key).await?.remove(0);
            let t = guard.keys().token(&key.token)?.clone();
            let gun_s = gun.to_string();
            t.run(move |b| make_root_cert(b, &key, &gun_s)).await?
        }
        None => {
            guard
                .keys()
                .token(token)?
                .generate("root".into(), Some(gun.into()))
                .await?
        }
    };
    let targets = match held(&keys, "targets", gun).next() {
        Some(k) => k.clone(),
        None => {
            guard
                .keys()
                .token(token)?
                .generate("targets".into(), Some(gun.into()))
                .await?
        }
    };
    let timestamp = client.get_server_key(gun, "timestamp").await?;
    // The snapshot key: the server's (docker's default), or one on a token.
    let local_snap = if local_snapshot {
        Some(match held(&keys, "snapshot", gun).next() {
            Some(k) => k.clone(),
            None => {
                guard
                    .keys()
                    .token(token)?
                    .generate("snapshot".into(), Some(gun.into()))
                    .await?
            }
        })
    } else {
        None
    };
    let snapshot = match &local_snap {
        Some(k) => k.tuf_key(),
        None => client.get_server_key(gun, "snapshot").await?,
    };
    let (ts_id, sn_id) = (timestamp.key_id(), snapshot.key_id());

    let root_doc = json!({
        "_type": "Root", "consistent_snapshot": false, "expires": expires(ROOT_LIFETIME)?, "version": 1,
        "keys": {
            &root.key_id: root.tuf_key().to_value(), &targets.key_id: targets.tuf_key().to_value(),
            &ts_id: timestamp.to_value(), &sn_id: snapshot.to_value(),
        },
        "roles": {
            "root": {"keyids": [&root.key_id], "threshold": 1},
            "targets": {"keyids": [&targets.key_id], "threshold": 1},
            "snapshot": {"keyids": [&sn_id], "threshold": 1},
            "timestamp": {"keyids": [&ts_id], "threshold": 1},
        },
    });
    let targets_doc = json!({
        "_type": "Targets", "expires": expires(TARGETS_LIFETIME)?, "version": 1,
        "targets": {}, "delegations": {"keys": {}, "roles": []},
    });
    let (all, _) = guard.keys().all_keys().await;
    let mut receipts = Vec::new();
    let root_signed = sign_doc(
        guard,
        listings(&all, &root.canonical_id),
        unsigned(root_doc),
        "root",
        gun,
        None,
        &mut receipts,
    )
    .await?;
    let targets_signed = sign_doc(
        guard,
        listings(&all, &targets.canonical_id),
        unsigned(targets_doc),
        "targets",
        gun,
        None,
        &mut receipts,
    )
    .await?;
    let mut files = vec![
        ("root".to_string(), root_signed.document.clone()),
        ("targets".to_string(), targets_signed.document),
    ];
    // A snapshot key held here signs snapshot v1; otherwise the server makes it.
    if let Some(sk) = &local_snap {
        let meta =
            |b: &[u8]| json!({"hashes": {"sha256": B64.encode(sha2_256(b))}, "length": b.len()});
        let snap = json!({
            "_type": "Snapshot", "expires": expires(TARGETS_LIFETIME)?, "version": 1,
            "meta": {"root": meta(&files[0].1), "targets": meta(&files[1].1)},
        });
        let s = sign_doc(
            guard,
            listings(&all, &sk.canonical_id),
            unsigned(snap),
            "snapshot",
            gun,
            None,
            &mut receipts,
        )
        .await?;
        files.push(("snapshot".into(), s.document));
    }
    publish(guard, client, gun, files, &receipts).await?;
    ctx.persist(gun, root_signed.document.clone(), None).await?;
    tracing::info!(gun, root = %root.key_id, targets = %targets.key_id, "initialised trust data");
    Ok(InitResult {
        root,
        targets,
        timestamp_key_id: ts_id,
        snapshot_key_id: sn_id,
    })
}

pub struct SignResult {
    pub roles: Vec<String>,
    pub initialized: bool,
}

/// A tag to sign: the manifest's sha256 and size.
pub struct TagTarget {
    pub tag: String,
    pub sha256: [u8; 32],
    pub length: u64,
}

/// `dct trust sign`: adds each tag -> (sha256, length) to every delegation that is a
/// direct child of targets, allows the tag and whose key the agent holds; else to targets.
/// Every role changed is signed once, and all is published in one update (the server makes
/// snapshot and timestamp; a snapshot key held here signs the snapshot).
pub async fn sign_tags(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    tags: &[TagTarget],
    token: &str,
) -> Result<SignResult> {
    check_gun(gun)?;
    let (repo, initialized) = fetch_or_init(guard, client, ctx, gun, token).await?;
    repo.require_trusted(client, gun)?;
    let (keys, _) = guard.keys().all_keys().await;
    let by_id = |id: &str| {
        keys.iter()
            .find(|k| k.key_id == id || k.canonical_id == id)
            .cloned()
    };
    // The targets role is parsed once and edited in place: a 100,000-tag role is large.
    let mut targets_signed = Some(repo.doc("targets")?.signed);
    let delegations: crate::tuf::metadata::Delegations = match targets_signed
        .as_ref()
        .and_then(|t| t.get("delegations"))
    {
        Some(d) => serde_json::from_value(d.clone()).map_err(|e| Error::Internal(e.to_string()))?,
        None => Default::default(),
    };

    // Delegations we may sign: direct children of targets whose key we hold.
    let held: Vec<(&crate::tuf::metadata::DelegationRole, KeyEntry)> = delegations
        .roles
        .iter()
        .filter(|d| {
            d.name
                .strip_prefix("targets/")
                .is_some_and(|rest| !rest.contains('/'))
        })
        .filter_map(|d| Some((d, d.keyids.iter().find_map(|id| by_id(id))?)))
        .collect();
    let targets_key = || {
        let root = repo.root()?;
        root.roles
            .get("targets")
            .and_then(|r| r.keyids.iter().find_map(|id| by_id(id)))
            .ok_or_else(|| {
                Error::Refused(format!(
                    "no key of this agent may sign {gun}: neither the targets key nor a delegation key is on its tokens"
                ))
            })
    };

    // Each role's new `signed`, with every tag it takes.
    let mut edits: Vec<Edit> = Vec::new();
    let mut add = |role: &str, key: &KeyEntry, t: &TagTarget| -> Result<()> {
        let i = match edits.iter().position(|e| e.role == role) {
            Some(i) => i,
            None => {
                let mut signed = match (role, targets_signed.take()) {
                    ("targets", Some(t)) => t,
                    (_, t) => {
                        targets_signed = t;
                        repo.signed_or_new(role)?
                    }
                };
                if !signed["targets"].is_object() {
                    signed["targets"] = json!({});
                }
                edits.push(Edit {
                    role: role.to_string(),
                    key: key.clone(),
                    signed,
                });
                edits.len() - 1
            }
        };
        edits[i].signed["targets"][t.tag.as_str()] =
            json!({"hashes": {"sha256": B64.encode(t.sha256)}, "length": t.length});
        Ok(())
    };
    let mut targets_key_cached: Option<KeyEntry> = None;
    for t in tags {
        let mut placed = false;
        for (d, k) in &held {
            if d.paths.iter().any(|p| t.tag.starts_with(p.as_str())) {
                add(&d.name, k, t)?;
                placed = true;
            }
        }
        if !placed {
            let k = match &targets_key_cached {
                Some(k) => k.clone(),
                None => {
                    let k = targets_key()?;
                    targets_key_cached = Some(k.clone());
                    k
                }
            };
            add("targets", &k, t)?;
        }
    }
    let roles: Vec<String> = edits.iter().map(|e| e.role.clone()).collect();
    commit(guard, client, gun, &repo, &keys, edits).await?;
    tracing::info!(gun, tags = tags.len(), roles = ?roles, "signed tags");
    Ok(SignResult { roles, initialized })
}

/// A new version of one role, to be signed by `key`.
struct Edit {
    role: String,
    key: KeyEntry,
    signed: Value,
}

impl Repo {
    /// A role's current `signed`, or an empty targets role for a delegation with no file yet.
    fn signed_or_new(&self, role: &str) -> Result<Value> {
        Ok(match self.files.get(role) {
            Some(_) => self.doc(role)?.signed,
            None => {
                json!({"_type": "Targets", "version": 0, "targets": {}, "delegations": {"keys": {}, "roles": []}})
            }
        })
    }
}

/// The repository, initialised first when the server has no trust data for it (as docker
/// trust does); the flag says whether it was.
async fn fetch_or_init(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    token: &str,
) -> Result<(Repo, bool)> {
    if let Some(r) = fetch(client, ctx, gun).await? {
        return Ok((r, false));
    }
    init(guard, client, ctx, gun, "", token, false).await?;
    let r = fetch(client, ctx, gun)
        .await?
        .ok_or_else(|| Error::Unavailable(format!("{gun} vanished after init")))?;
    Ok((r, true))
}

/// Signs each edited role as its next version (Notary's default expiry) and publishes them
/// in one update; a snapshot key held here (not server-managed) signs the new snapshot.
async fn commit(
    guard: &Guard,
    client: &NotaryClient,
    gun: &str,
    repo: &Repo,
    keys: &[KeyEntry],
    edits: Vec<Edit>,
) -> Result<()> {
    commit_with(guard, client, gun, repo, keys, Default::default(), edits).await
}

/// Files signed before a commit (e.g. a new root), and the receipts of the signatures the
/// agent made for them.
type Presigned = (Vec<(String, Vec<u8>)>, Vec<Receipt>);

/// As [`commit`], publishing `signed` (already signed files, e.g. a new root) too.
async fn commit_with(
    guard: &Guard,
    client: &NotaryClient,
    gun: &str,
    repo: &Repo,
    keys: &[KeyEntry],
    (signed, mut receipts): Presigned,
    edits: Vec<Edit>,
) -> Result<()> {
    let mut updates = signed;
    // A root that expires within six months is re-signed with this publish when its keys
    // are here, so the repository never expires under its users.
    if !updates.iter().any(|(r, _)| r == "root") {
        let current = repo.root()?;
        let held = held_root_keys(&current, keys);
        if !held.is_empty() && root_due(&current.common.expires, OffsetDateTime::now_utc()) {
            match sign_next_root(
                guard,
                keys,
                gun,
                repo.doc("root")?.signed,
                &held,
                &repo.files["root"],
                &mut receipts,
            )
            .await
            {
                Ok(doc) => {
                    tracing::info!(gun, "root expires within six months: re-signed");
                    updates.push(("root".into(), doc));
                }
                // The root key is here but locked: publish the rest, and say so.
                Err(Error::Locked { token }) => {
                    tracing::warn!(gun, %token, "root expires within six months; unlock its key to re-sign it")
                }
                Err(e) => return Err(e),
            }
        }
    }
    for Edit {
        role,
        key,
        mut signed,
    } in edits
    {
        let version = signed.get("version").and_then(Value::as_i64).unwrap_or(0);
        signed["version"] = json!(version + 1);
        signed["expires"] = json!(expires(TARGETS_LIFETIME)?);
        let previous = repo.files.get(&role).map(Vec::as_slice);
        let s = sign_doc(
            guard,
            listings(keys, &key.canonical_id),
            unsigned(signed),
            &role,
            gun,
            previous,
            &mut receipts,
        )
        .await?;
        updates.push((role, s.document));
    }
    // The snapshot key of the root being published, else of the current one.
    let root: RootDoc = match updates.iter().find(|(r, _)| r == "root") {
        Some((_, bytes)) => {
            serde_json::from_value(Envelope::parse(bytes).map_err(Error::Internal)?.signed)
                .map_err(|e| Error::Internal(e.to_string()))?
        }
        None => repo.root()?,
    };
    let snap_key = root.roles.get("snapshot").and_then(|r| {
        r.keyids.iter().find_map(|id| {
            keys.iter()
                .find(|k| &k.key_id == id || &k.canonical_id == id)
        })
    });
    if let Some(key) = snap_key {
        let mut snap = repo.doc("snapshot")?.signed;
        for (role, bytes) in &updates {
            snap["meta"][role] =
                json!({"hashes": {"sha256": B64.encode(sha2_256(bytes))}, "length": bytes.len()});
        }
        let version = snap.get("version").and_then(Value::as_i64).unwrap_or(0);
        snap["version"] = json!(version + 1);
        snap["expires"] = json!(expires(TARGETS_LIFETIME)?);
        let s = sign_doc(
            guard,
            listings(keys, &key.canonical_id),
            unsigned(snap),
            "snapshot",
            gun,
            repo.files.get("snapshot").map(Vec::as_slice),
            &mut receipts,
        )
        .await?;
        updates.push(("snapshot".into(), s.document));
    }
    publish(guard, client, gun, updates, &receipts).await
}

fn sha2_256(b: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(b).into()
}

/// A tag as `docker trust inspect` shows it.
pub struct SignedTag {
    pub tag: String,
    pub sha256_hex: String,
    pub length: u64,
    pub signers: Vec<String>,
}

pub struct Inspection {
    pub tags: Vec<SignedTag>,
    /// Delegation signers (not `releases`) and their key IDs.
    pub signers: Vec<(String, Vec<String>)>,
    /// Root keys: (certificate key ID, canonical ID).
    pub root_keys: Vec<(String, String)>,
    pub repository_keys: Vec<String>,
}

/// `dct trust inspect`: the signed tags and who signed them, as docker resolves them (a tag
/// in targets/releases, else in targets; signers are the roles holding the same digest).
pub async fn inspect(client: &NotaryClient, ctx: &TrustContext, gun: &str) -> Result<Inspection> {
    check_gun(gun)?;
    let repo = fetch(client, ctx, gun)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no trust data for {gun} on the trust server")))?;
    let mut by_role: BTreeMap<&str, BTreeMap<&str, (&str, u64)>> = BTreeMap::new();
    for r in &repo.verified.roles {
        for t in &r.targets {
            by_role
                .entry(r.role.as_str())
                .or_default()
                .insert(t.name.as_str(), (t.sha256_hex.as_str(), t.length));
        }
    }
    let empty = BTreeMap::new();
    let released = by_role.get("targets/releases").unwrap_or(&empty);
    let base = by_role.get("targets").unwrap_or(&empty);
    let mut names: Vec<&str> = released.keys().chain(base.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    let mut tags = Vec::new();
    for name in names {
        let Some(&(digest, length)) = released.get(name).or_else(|| base.get(name)) else {
            continue;
        };
        let mut signers: Vec<String> = by_role
            .iter()
            .filter(|(role, t)| {
                **role != "targets/releases" && t.get(name).map(|x| x.0) == Some(digest)
            })
            .map(|(role, _)| {
                if *role == "targets" {
                    "Repo Admin".to_string()
                } else {
                    role.trim_start_matches("targets/").to_string()
                }
            })
            .collect();
        signers.sort();
        tags.push(SignedTag {
            tag: name.into(),
            sha256_hex: digest.into(),
            length,
            signers,
        });
    }
    let targets: TargetsDoc = serde_json::from_value(repo.doc("targets")?.signed)
        .map_err(|e| Error::Internal(e.to_string()))?;
    let signers = targets
        .delegations
        .roles
        .iter()
        .filter(|d| d.name != "targets/releases")
        .map(|d| {
            (
                d.name.trim_start_matches("targets/").to_string(),
                d.keyids.clone(),
            )
        })
        .collect();
    let root = repo.root()?;
    let root_keys_map = parse_key_map(&root.keys).map_err(Error::Internal)?;
    let root_keys = role_keyids(&root, "root")?
        .iter()
        .map(|id| {
            let canonical = root_keys_map
                .get(id)
                .and_then(|k| k.canonical_id().ok())
                .unwrap_or_default();
            (id.clone(), canonical)
        })
        .collect();
    let repository_keys = role_keyids(&root, "targets")?.clone();
    Ok(Inspection {
        tags,
        signers,
        root_keys,
        repository_keys,
    })
}

/// The client for a request's server options, falling back to the config's.
pub fn client(req: Option<ServerOpts>, default: &Option<ServerOpts>) -> Result<NotaryClient> {
    // The user's first-use choice holds whichever server is used.
    let tofu = req.as_ref().is_some_and(|o| o.trust_on_first_use);
    let mut opts = match req.filter(|o| !o.url.is_empty()) {
        Some(mut o) => {
            if o.ca_pem.is_none() {
                o.ca_pem = default.as_ref().and_then(|d| d.ca_pem.clone());
            }
            o
        }
        None => default.clone().ok_or_else(|| {
            Error::InvalidArgument(
                "no trust server: pass --server URL (or DCT_SERVER / DOCKER_CONTENT_TRUST_SERVER), or set [trust] server in agent.toml".into(),
            )
        })?,
    };
    opts.trust_on_first_use = tofu;
    NotaryClient::new(&opts)
}

/// The roles this agent can sign among targets and its direct-child delegations, with the
/// key for each.
fn signable(repo: &Repo, keys: &[KeyEntry]) -> Result<Vec<(String, KeyEntry)>> {
    let by_id = |id: &String| {
        keys.iter()
            .find(|k| &k.key_id == id || &k.canonical_id == id)
            .cloned()
    };
    let mut out = Vec::new();
    if let Some(k) = repo
        .root()?
        .roles
        .get("targets")
        .and_then(|r| r.keyids.iter().find_map(by_id))
    {
        out.push(("targets".to_string(), k));
    }
    let targets: TargetsDoc = serde_json::from_value(repo.doc("targets")?.signed)
        .map_err(|e| Error::Internal(e.to_string()))?;
    for d in targets.delegations.roles {
        if let Some(k) = d.keyids.iter().find_map(by_id) {
            out.push((d.name, k));
        }
    }
    Ok(out)
}

/// `dct trust revoke`: removes `tag` (or every tag) from the roles this agent can sign.
pub async fn revoke(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    tag: Option<&str>,
) -> Result<Vec<String>> {
    check_gun(gun)?;
    let repo = fetch(client, ctx, gun)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no trust data for {gun} on the trust server")))?;
    let (keys, _) = guard.keys().all_keys().await;
    repo.require_trusted(client, gun)?;
    let mut edits = Vec::new();
    for (role, key) in signable(&repo, &keys)? {
        if !repo.files.contains_key(&role) {
            continue;
        }
        let mut signed = repo.signed_or_new(&role)?;
        let Some(targets) = signed.get_mut("targets").and_then(Value::as_object_mut) else {
            continue;
        };
        let changed = match tag {
            Some(t) => targets.remove(t).is_some(),
            None => {
                let had = !targets.is_empty();
                targets.clear();
                had
            }
        };
        if changed {
            edits.push(Edit { role, key, signed });
        }
    }
    if edits.is_empty() {
        return Err(Error::NotFound(match tag {
            Some(t) => format!("{gun}:{t} is not signed in any role this agent can sign"),
            None => format!("{gun} has no signed tags in roles this agent can sign"),
        }));
    }
    let roles: Vec<String> = edits.iter().map(|e| e.role.clone()).collect();
    commit(guard, client, gun, &repo, &keys, edits).await?;
    tracing::info!(gun, tag = tag.unwrap_or("*"), roles = ?roles, "revoked");
    Ok(roles)
}

/// Docker's signer names: `^[a-z0-9][a-z0-9_-]*$`, and not `releases`.
fn check_signer_name(name: &str) -> Result<()> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name != "releases"
        && name.len() < 200;
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid signer name {name:?}: lowercase letters, digits, '_' and '-', not starting with '_' or '-', and not \"releases\""
        )))
    }
}

/// The targets role's edit, for changes to delegations (only the targets key may make them).
fn targets_edit(repo: &Repo, keys: &[KeyEntry], gun: &str) -> Result<Edit> {
    let (role, key) = signable(repo, keys)?
        .into_iter()
        .find(|(r, _)| r == "targets")
        .ok_or_else(|| Error::Refused(format!("the targets key of {gun} is not on this agent's tokens; only it can change signers")))?;
    Ok(Edit {
        signed: repo.signed_or_new(&role)?,
        role,
        key,
    })
}

fn add_keyid(roles: &mut Vec<Value>, name: &str, id: &str) {
    match roles.iter_mut().find(|r| r["name"] == name) {
        Some(r) => {
            let ids = r["keyids"].as_array_mut();
            if let Some(ids) = ids {
                if !ids.iter().any(|x| x == id) {
                    ids.push(json!(id));
                }
            }
        }
        None => roles.push(json!({"name": name, "keyids": [id], "threshold": 1, "paths": [""]})),
    }
}

/// `dct trust signer add`: `targets/NAME` with the key, and the key added to
/// `targets/releases`, both with all paths, as docker lays them out. Initialises the
/// repository first when it has no trust data.
pub async fn signer_add(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    name: &str,
    key: TufKey,
    token: &str,
) -> Result<(String, bool)> {
    check_gun(gun)?;
    check_signer_name(name)?;
    let (repo, initialized) = fetch_or_init(guard, client, ctx, gun, token).await?;
    repo.require_trusted(client, gun)?;
    let (keys, _) = guard.keys().all_keys().await;
    let mut edit = targets_edit(&repo, &keys, gun)?;
    let id = key.key_id();
    let d = &mut edit.signed["delegations"];
    if !d.is_object() {
        *d = json!({"keys": {}, "roles": []});
    }
    d["keys"][&id] = key.to_value();
    if !d["roles"].is_array() {
        d["roles"] = json!([]);
    }
    if let Some(roles) = d["roles"].as_array_mut() {
        add_keyid(roles, &format!("targets/{name}"), &id);
        add_keyid(roles, "targets/releases", &id);
    }
    commit(guard, client, gun, &repo, &keys, vec![edit]).await?;
    tracing::info!(gun, signer = name, key = %id, "added signer");
    Ok((id, initialized))
}

/// `dct trust signer remove`: drops `targets/NAME` and its keys from `targets/releases`
/// (and `releases` itself when no key is left in it).
pub async fn signer_remove(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    name: &str,
) -> Result<()> {
    check_gun(gun)?;
    check_signer_name(name)?;
    let repo = fetch(client, ctx, gun)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no trust data for {gun} on the trust server")))?;
    let (keys, _) = guard.keys().all_keys().await;
    repo.require_trusted(client, gun)?;
    let mut edit = targets_edit(&repo, &keys, gun)?;
    let role = format!("targets/{name}");
    let d = &mut edit.signed["delegations"];
    let roles = d["roles"]
        .as_array_mut()
        .ok_or_else(|| Error::NotFound(format!("{gun} has no signers")))?;
    let pos = roles
        .iter()
        .position(|r| r["name"] == role.as_str())
        .ok_or_else(|| Error::NotFound(format!("{gun} has no signer {name}")))?;
    let removed = roles.remove(pos);
    let gone: Vec<Value> = removed["keyids"].as_array().cloned().unwrap_or_default();
    for r in roles.iter_mut().filter(|r| r["name"] == "targets/releases") {
        if let Some(ids) = r["keyids"].as_array_mut() {
            ids.retain(|id| !gone.contains(id));
        }
    }
    roles.retain(|r| {
        r["name"] != "targets/releases" || r["keyids"].as_array().is_some_and(|a| !a.is_empty())
    });
    let used: Vec<Value> = roles
        .iter()
        .flat_map(|r| r["keyids"].as_array().cloned().unwrap_or_default())
        .collect();
    if let Some(k) = d["keys"].as_object_mut() {
        k.retain(|id, _| used.contains(&json!(id)));
    }
    commit(guard, client, gun, &repo, &keys, vec![edit]).await?;
    tracing::info!(gun, signer = name, "removed signer");
    Ok(())
}

/// Canonical IDs of `root`'s root keys that are on this agent's tokens. Root keys are
/// listed by certificate ID; a key imported without its certificate knows only its
/// canonical ID, so both sides are compared by canonical ID.
fn held_root_keys(root: &RootDoc, keys: &[KeyEntry]) -> Vec<String> {
    let Ok(listed) = parse_key_map(&root.keys) else {
        return Vec::new();
    };
    root.roles
        .get("root")
        .map(|r| r.keyids.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|id| listed.get(id)?.canonical_id().ok())
        .filter(|c| keys.iter().any(|k| &k.canonical_id == c))
        .collect()
}

/// The next root version: ten more years, signed by each of `signers` (key IDs on this
/// agent's tokens) in turn.
async fn sign_next_root(
    guard: &Guard,
    all: &[KeyEntry],
    gun: &str,
    mut root: Value,
    signers: &[String],
    previous: &[u8],
    receipts: &mut Vec<Receipt>,
) -> Result<Vec<u8>> {
    let version = root["version"].as_i64().unwrap_or(0);
    root["version"] = json!(version + 1);
    root["expires"] = json!(expires(ROOT_LIFETIME)?);
    let mut doc = unsigned(root);
    for id in signers {
        let canonical = all
            .iter()
            .find(|k| &k.key_id == id || &k.canonical_id == id)
            .map(|k| k.canonical_id.clone())
            .unwrap_or_default();
        doc = sign_doc(
            guard,
            listings(all, &canonical),
            doc,
            "root",
            gun,
            Some(previous),
            receipts,
        )
        .await?
        .document;
    }
    Ok(doc)
}

/// Whether a root expiring at `expires` must be re-signed now: within six months, as the
/// notary client does on every publish.
fn root_due(expires: &str, now: OffsetDateTime) -> bool {
    OffsetDateTime::parse(expires, &Rfc3339)
        .map(|e| e - now < time::Duration::days(183))
        .unwrap_or(true)
}

/// `dct trust key rotate`: a new key for `role`. targets: made on a token, listed in a new
/// root, and targets re-signed with it. snapshot/timestamp: rotated on the server
/// (`server_managed`; always for timestamp) or, for snapshot, made on a token. root: a new
/// root key with its certificate, the new root signed by the old and the new root keys so
/// that clients trusting the old root follow it. Every new root is signed by the root keys
/// this agent holds.
pub async fn rotate(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    role: &str,
    server_managed: bool,
    token: &str,
) -> Result<String> {
    check_gun(gun)?;
    let repo = fetch(client, ctx, gun)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no trust data for {gun} on the trust server")))?;
    let (keys, _) = guard.keys().all_keys().await;
    repo.require_trusted(client, gun)?;
    let mut root = repo.doc("root")?.signed;
    let root_signers = held_root_keys(&repo.root()?, &keys);
    if root_signers.is_empty() {
        return Err(Error::Refused(format!(
            "the root key of {gun} is not on this agent's tokens; rotation needs it"
        )));
    }
    let mut edits = Vec::new();
    let (new_id, new_key): (String, TufKey) = match (role, server_managed) {
        ("targets", false) => {
            let k = guard
                .keys()
                .token(token)?
                .generate("targets".into(), Some(gun.into()))
                .await?;
            let signed = repo.signed_or_new("targets")?;
            edits.push(Edit {
                role: "targets".into(),
                key: k.clone(),
                signed,
            });
            (k.key_id.clone(), k.tuf_key())
        }
        ("snapshot", false) => {
            let k = guard
                .keys()
                .token(token)?
                .generate("snapshot".into(), Some(gun.into()))
                .await?;
            (k.key_id.clone(), k.tuf_key())
        }
        ("snapshot" | "timestamp", true) | ("timestamp", false) => {
            let k = client.rotate_server_key(gun, role).await?;
            (k.key_id(), k)
        }
        ("root", false) => {
            let k = guard
                .keys()
                .token(token)?
                .generate("root".into(), Some(gun.into()))
                .await?;
            (k.key_id.clone(), k.tuf_key())
        }
        (r, true) => {
            return Err(Error::InvalidArgument(format!(
                "only snapshot and timestamp keys can be server-managed, not {r}"
            )))
        }
        (r, _) => {
            return Err(Error::InvalidArgument(format!(
                "cannot rotate {r:?}: expected root, targets, snapshot or timestamp"
            )))
        }
    };
    // The new root: the role lists only the new key; keys no role uses any more are dropped.
    root["roles"][role]["keyids"] = json!([&new_id]);
    root["roles"][role]["threshold"] = json!(1);
    root["keys"][&new_id] = new_key.to_value();
    let used: Vec<Value> = ["root", "targets", "snapshot", "timestamp"]
        .iter()
        .flat_map(|r| {
            root["roles"][r]["keyids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    if let Some(k) = root["keys"].as_object_mut() {
        k.retain(|id, _| used.contains(&json!(id)));
    }
    let (all, _) = guard.keys().all_keys().await;
    let mut signers: Vec<String> = root_signers.clone();
    if role == "root" {
        signers.push(new_id.clone());
    }
    let mut receipts = Vec::new();
    let doc = sign_next_root(
        guard,
        &all,
        gun,
        root,
        &signers,
        &repo.files["root"],
        &mut receipts,
    )
    .await?;
    commit_with(
        guard,
        client,
        gun,
        &repo,
        &all,
        (vec![("root".into(), doc)], receipts),
        edits,
    )
    .await?;
    tracing::info!(gun, role, key = %new_id, "rotated key");
    Ok(new_id)
}

/// Notary's CA pinning: when a CA is pinned for `gun`, a threshold of the root keys whose
/// signatures verified must have certificates that chain to it.
fn check_ca_pin(
    pinning: &crate::config::Pinning,
    gun: &str,
    root_bytes: &[u8],
    verified: &VerifiedRepo,
    at: OffsetDateTime,
) -> Result<()> {
    let Some(path) = pinning.ca_for_gun(gun) else {
        return Ok(());
    };
    let pem = std::fs::read(&path)
        .map_err(|e| check_failed("root", format!("pinned CA {}: {e}", path.display())))?;
    let cas = x509_cert::Certificate::load_pem_chain(&pem)
        .map_err(|e| check_failed("root", format!("pinned CA {}: {e}", path.display())))?;
    let root: RootDoc = Envelope::parse(root_bytes)
        .ok()
        .and_then(|e| serde_json::from_value(e.signed).ok())
        .ok_or_else(|| check_failed("root", "root.json is unreadable".into()))?;
    let keys = parse_key_map(&root.keys).map_err(|e| check_failed("root", e))?;
    let role = root
        .roles
        .get("root")
        .ok_or_else(|| check_failed("root", "root.json has no root role".into()))?;
    let signed_by: Vec<&String> = verified
        .roles
        .iter()
        .filter(|r| r.role == "root")
        .flat_map(|r| r.signed_by.iter())
        .collect();
    let mut chained = 0;
    let mut why = Vec::new();
    for id in role.keyids.iter().filter(|id| signed_by.contains(id)) {
        let Some(k) = keys.get(id) else { continue };
        let chain = match x509_cert::Certificate::load_pem_chain(&k.public) {
            Ok(c) => c,
            Err(_) => {
                why.push(format!("key {id} has no certificate"));
                continue;
            }
        };
        match crate::tuf::cert::chains_to(&chain, &cas, at.into()) {
            Ok(()) => chained += 1,
            Err(e) => why.push(e),
        }
    }
    if chained < role.threshold.max(1) as usize {
        return Err(check_failed(
            "root",
            format!(
                "the root of {gun} is not signed by certificates of the pinned CA {}: {}",
                path.display(),
                why.join("; ")
            ),
        ));
    }
    Ok(())
}

/// `dct trust verify`: what to require of a tag.
pub struct VerifyOpts {
    pub tag: String,
    /// The digest the tag must point at (hex).
    pub digest: Option<String>,
    /// Signer names (delegations `targets/NAME`, or "Repo Admin" / "targets"); the tag must
    /// be signed by one of them when given.
    pub signers: Vec<String>,
    /// From the trust data cached by an earlier online check, not the server.
    pub offline: bool,
    /// Check expiry as of this time (offline only); default now.
    pub at: Option<OffsetDateTime>,
}

/// A tag that passed.
pub struct Verdict {
    pub sha256_hex: String,
    pub length: u64,
    /// targets/releases or targets: where docker resolved it.
    pub role: String,
    pub signers: Vec<String>,
    /// Root keys: (certificate key ID, canonical ID).
    pub root_keys: Vec<(String, String)>,
    /// How the root is trusted: "pinned", "cached" (trusted earlier) or "first use".
    pub trust: &'static str,
}

fn check_failed(check: &str, why: String) -> Error {
    Error::Refused(format!("{check}: {why}"))
}

impl TrustContext {
    /// A role file of `gun`'s, named by its escaped role name (delegation names have `/`).
    fn metadata_path(&self, gun: &str, role: &str) -> PathBuf {
        self.gun_dir(gun)
            .join("metadata")
            .join(format!("{}.json", cache_name(role)))
    }

    /// Keeps verified trust data for offline checks.
    async fn save_metadata(&self, gun: &str, files: &RepoFiles) -> Result<()> {
        let paths: Vec<(PathBuf, Vec<u8>)> = files
            .iter()
            .map(|(role, bytes)| (self.metadata_path(gun, role), bytes.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            for (p, b) in paths {
                write_atomic(&p, &b)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// The trust data saved by the last online check of `gun`.
    fn load_metadata(&self, gun: &str) -> Result<RepoFiles> {
        // A cache from before the per-GUN directories is read whole, never mixed with this one.
        let legacy = std::fs::symlink_metadata(self.gun_dir(gun).join("metadata")).is_err();
        let read = |role: &str| {
            let path = self.metadata_path(gun, role);
            let bytes = if legacy {
                read_cached(
                    &path,
                    &self.legacy_path(gun, &format!("metadata/{role}.json")),
                )
            } else {
                std::fs::read(&path).ok()
            };
            bytes.ok_or_else(|| {
                check_failed(
                    "offline",
                    format!("no cached trust data for {gun} (check it once online first)"),
                )
            })
        };
        let mut files = RepoFiles::new();
        for role in ["root", "targets", "snapshot", "timestamp"] {
            files.insert(role.to_string(), read(role)?);
        }
        let listed: Vec<String> = files
            .get("snapshot")
            .and_then(|b| Envelope::parse(b).ok())
            .and_then(|e| {
                e.signed
                    .get("meta")?
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
            })
            .unwrap_or_default();
        for role in listed.into_iter().filter(|r| r.starts_with("targets/")) {
            if valid_delegation_name(&role) {
                files.insert(role.clone(), read(&role)?);
            }
        }
        Ok(files)
    }
}

/// Is `gun:tag` signed as docker resolves it (targets/releases, else targets), under a
/// trusted root, every role unexpired, by one of `signers`, pointing at `digest`? Every
/// failure is a refusal naming the check.
pub async fn verify_tag(
    client: Option<&NotaryClient>,
    ctx: &TrustContext,
    gun: &str,
    opts: &VerifyOpts,
) -> Result<Verdict> {
    check_gun(gun)?;
    let pins = ctx.pinning.for_gun(gun);
    let tofu = !ctx.pinning.disable_tofu;
    let was_cached = ctx.cached_root(gun).is_some();
    let ca_pinned = ctx.pinning.ca_for_gun(gun).is_some();
    if !tofu && pins.is_empty() && !ca_pinned {
        return Err(check_failed(
            "root",
            format!("no root keys are pinned for {gun} and trust on first use is disabled"),
        ));
    }
    let verified = if opts.offline {
        // The cache is a handful of small files; read once, verified off the runtime.
        let files = ctx.load_metadata(gun)?;
        let root = files["root"].clone();
        let at = opts.at.unwrap_or_else(OffsetDateTime::now_utc);
        let gun_owned = gun.to_string();
        let pins2 = pins.clone();
        let v = tokio::task::spawn_blocking(move || {
            verify::verify_repository(&gun_owned, &files, at, &pins2)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| {
            check_failed(
                "trust data",
                format!("cached trust data for {gun} does not verify: {e}"),
            )
        })?;
        check_ca_pin(&ctx.pinning, gun, &root, &v, at)?;
        v
    } else {
        let client = client.ok_or_else(|| {
            Error::InvalidArgument("no trust server: pass --server URL or --offline".into())
        })?;
        let repo = fetch(client, ctx, gun).await.map_err(|e| match e {
            Error::Refused(m) => check_failed("trust data", m),
            other => other,
        })?;
        let repo = repo.ok_or_else(|| {
            check_failed(
                "tag",
                format!("{gun} has no trust data on the trust server"),
            )
        })?;
        ctx.save_metadata(gun, &repo.files).await?;
        repo.verified
    };
    let trust = if !pins.is_empty() || ca_pinned {
        "pinned"
    } else if was_cached {
        "cached"
    } else {
        "first use"
    };

    // Where each role signs the tag.
    let signed_in: Vec<(&str, &verify::SignedTarget)> = verified
        .roles
        .iter()
        .filter_map(|r| {
            r.targets
                .iter()
                .find(|t| t.name == opts.tag)
                .map(|t| (r.role.as_str(), t))
        })
        .collect();
    let resolved = signed_in
        .iter()
        .find(|(r, _)| *r == "targets/releases")
        .or_else(|| signed_in.iter().find(|(r, _)| *r == "targets"));
    let Some((role, target)) = resolved else {
        let elsewhere: Vec<&str> = signed_in.iter().map(|(r, _)| *r).collect();
        return Err(check_failed(
            "tag",
            if elsewhere.is_empty() {
                format!("{gun}:{} is not signed", opts.tag)
            } else {
                format!(
                    "{gun}:{} is signed only in {}, which docker does not resolve (targets/releases or targets)",
                    opts.tag,
                    elsewhere.join(", ")
                )
            },
        ));
    };
    let signer_name = |r: &str| {
        if r == "targets" {
            "Repo Admin".to_string()
        } else {
            r.trim_start_matches("targets/").to_string()
        }
    };
    let mut signers: Vec<String> = signed_in
        .iter()
        .filter(|(r, t)| *r != "targets/releases" && t.sha256_hex == target.sha256_hex)
        .map(|(r, _)| signer_name(r))
        .collect();
    signers.sort();
    if !opts.signers.is_empty() {
        let wanted = |s: &String| {
            opts.signers.iter().any(|w| {
                w == s || (s == "Repo Admin" && w == "targets") || format!("targets/{s}") == *w
            })
        };
        if !signers.iter().any(wanted) {
            return Err(check_failed(
                "signer",
                format!(
                    "{gun}:{} is signed by {}, not by {}",
                    opts.tag,
                    if signers.is_empty() {
                        "no named signer".to_string()
                    } else {
                        signers.join(", ")
                    },
                    opts.signers.join(" or ")
                ),
            ));
        }
    }
    if let Some(want) = &opts.digest {
        if !want.eq_ignore_ascii_case(&target.sha256_hex) {
            return Err(check_failed(
                "digest",
                format!(
                    "{gun}:{} is signed for sha256:{}, not sha256:{}",
                    opts.tag, target.sha256_hex, want
                ),
            ));
        }
    }
    let root_keys = verified
        .roles
        .iter()
        .find(|r| r.role == "root")
        .map(|r| {
            r.signed_by
                .iter()
                .map(|id| (id.clone(), String::new()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Verdict {
        sha256_hex: target.sha256_hex.clone(),
        length: target.length,
        role: role.to_string(),
        signers,
        root_keys,
        trust,
    })
}

/// A root key made in a ceremony, with the token it lives on.
pub struct CeremonyKey {
    pub key: KeyEntry,
    pub token: crate::keys::TokenInfo,
    /// SHA-256 of the DER root certificate.
    pub cert_sha256: String,
    /// The token a wrapped copy went into (the key is then wrappable, still sensitive).
    pub backup: Option<String>,
    /// The encrypted Notary key file of a key made in memory and imported onto its token.
    pub backup_file: Option<Vec<u8>>,
}

/// How the root keys of a ceremony are backed up: token -> backup token (wrapped copies),
/// and tokens whose key is made in memory, written to an encrypted key file with
/// `passphrase` and imported (for YubiKeys, which cannot wrap).
#[derive(Default)]
pub struct RootBackups {
    pub wrapped: std::collections::HashMap<String, String>,
    pub files: Vec<String>,
    pub passphrase: Option<zeroize::Zeroizing<Vec<u8>>>,
}

/// Where a ceremony's root gets the server's timestamp and snapshot keys.
pub enum ServerKeys<'a> {
    /// From the trust server.
    Fetch(&'a NotaryClient),
    /// As given (fetched beforehand; the ceremony machine is offline).
    Given {
        timestamp: &'a [u8],
        snapshot: &'a [u8],
    },
}

/// What `dct ceremony root init` made: the unsigned root, its keys, the targets key.
pub struct CeremonyInit {
    pub root_json: Vec<u8>,
    pub root_keys: Vec<CeremonyKey>,
    pub targets: KeyEntry,
    pub timestamp_key_id: String,
    pub snapshot_key_id: String,
}

/// Root keys of an M-of-N root: one per token in `tokens`, each with its Notary root
/// certificate for `gun` made on its token; the targets key on `targets_token`; the
/// server's timestamp and snapshot keys. Returns root.json version 1, unsigned.
pub async fn ceremony_root_init(
    guard: &Guard,
    server_keys: ServerKeys<'_>,
    gun: &str,
    threshold: usize,
    tokens: &[String],
    targets_token: &str,
    backups: &RootBackups,
) -> Result<CeremonyInit> {
    check_gun(gun)?;
    check_root_size(threshold, tokens.len())?;
    let mut distinct = tokens.to_vec();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != tokens.len() {
        return Err(Error::InvalidArgument(
            "each root key goes on its own token: name each token once".into(),
        ));
    }
    // Look everything up before making anything.
    for t in tokens {
        guard.keys().token(t)?;
    }
    for from in &backups.files {
        if !tokens.contains(from) {
            return Err(Error::InvalidArgument(format!(
                "backup file for {from:?}: no root key is made on that token"
            )));
        }
        if backups.wrapped.contains_key(from) {
            return Err(Error::InvalidArgument(format!(
                "{from:?}: a wrapped backup or a backup file, not both"
            )));
        }
        if backups.passphrase.as_ref().is_none_or(|p| p.len() < 8) {
            return Err(Error::InvalidArgument(
                "a backup file needs a passphrase of at least 8 characters".into(),
            ));
        }
    }
    for (from, to) in &backups.wrapped {
        if !tokens.contains(from) {
            return Err(Error::InvalidArgument(format!(
                "backup of {from:?}: no root key is made on that token"
            )));
        }
        if from == to {
            return Err(Error::InvalidArgument(format!(
                "backup of {from:?} into itself"
            )));
        }
        guard.keys().token(to)?;
    }
    let (timestamp, snapshot) = match server_keys {
        ServerKeys::Fetch(client) => (
            client.get_server_key(gun, "timestamp").await?,
            client.get_server_key(gun, "snapshot").await?,
        ),
        ServerKeys::Given {
            timestamp,
            snapshot,
        } => {
            let parse = |role: &str, bytes: &[u8]| {
                serde_json::from_slice::<Value>(bytes)
                    .ok()
                    .and_then(|v| TufKey::from_value(&v).ok())
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "the {role} key is not a TUF key as notary-server serves it"
                        ))
                    })
            };
            (parse("timestamp", timestamp)?, parse("snapshot", snapshot)?)
        }
    };
    let root_keys = make_root_keys(guard, gun, tokens, backups).await?;
    let targets_label = if targets_token.is_empty() {
        &tokens[0]
    } else {
        targets_token
    };
    let targets = guard
        .keys()
        .token(targets_label)?
        .generate("targets".into(), Some(gun.into()))
        .await?;
    guard.keys().invalidate();
    let (ts_id, sn_id) = (timestamp.key_id(), snapshot.key_id());
    let mut keys = serde_json::Map::new();
    for k in &root_keys {
        keys.insert(k.key.key_id.clone(), k.key.tuf_key().to_value());
    }
    keys.insert(targets.key_id.clone(), targets.tuf_key().to_value());
    keys.insert(ts_id.clone(), timestamp.to_value());
    keys.insert(sn_id.clone(), snapshot.to_value());
    let root_ids: Vec<&String> = root_keys.iter().map(|k| &k.key.key_id).collect();
    let root_doc = json!({
        "_type": "Root", "consistent_snapshot": false, "expires": expires(ROOT_LIFETIME)?, "version": 1,
        "keys": keys,
        "roles": {
            "root": {"keyids": root_ids, "threshold": threshold},
            "targets": {"keyids": [&targets.key_id], "threshold": 1},
            "snapshot": {"keyids": [&sn_id], "threshold": 1},
            "timestamp": {"keyids": [&ts_id], "threshold": 1},
        },
    });
    Ok(CeremonyInit {
        root_json: unsigned(root_doc),
        root_keys,
        targets,
        timestamp_key_id: ts_id,
        snapshot_key_id: sn_id,
    })
}

/// Where a root's signatures stand: the root keys whose signatures verify, the threshold,
/// and the root keys it lists.
pub fn root_signatures(bytes: &[u8]) -> Result<(Vec<String>, i64, Vec<String>)> {
    let env = Envelope::parse(bytes).map_err(|e| Error::InvalidArgument(format!("root: {e}")))?;
    let root: RootDoc = serde_json::from_value(env.signed.clone())
        .map_err(|e| Error::InvalidArgument(format!("root: {e}")))?;
    let (own, threshold) = root_role_keys(&root).map_err(Error::InvalidArgument)?;
    let listed = own.keys().cloned().collect();
    let valid = if env.signatures.is_empty() {
        Vec::new()
    } else {
        verify::check_signatures(&env, &own, 0).map_err(Error::InvalidArgument)?
    };
    Ok((valid, threshold, listed))
}

/// `dct trust init --root-from DIR`: publishes a root signed in a ceremony, with targets
/// version 1 signed by the targets key it names (which must be on this agent's tokens).
pub async fn init_from_root(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    root_bytes: Vec<u8>,
) -> Result<InitResult> {
    check_gun(gun)?;
    if client.get_role(gun, "root").await?.is_some() {
        return Err(Error::Refused(format!(
            "{gun} already has trust data on the server"
        )));
    }
    check_self_signed(&root_bytes)?;
    let root: RootDoc = Envelope::parse(&root_bytes)
        .ok()
        .and_then(|e| serde_json::from_value(e.signed).ok())
        .ok_or_else(|| Error::InvalidArgument("root.json is unreadable".into()))?;
    for role in ["root", "targets", "snapshot", "timestamp"] {
        role_keyids(&root, role)?;
    }
    let listed = parse_key_map(&root.keys).map_err(Error::InvalidArgument)?;
    for id in role_keyids(&root, "root")? {
        let cert = listed
            .get(id)
            .and_then(|k| k.certificate().ok())
            .ok_or_else(|| Error::InvalidArgument(format!("root key {id} has no certificate")))?;
        crate::tuf::cert::check_root_cert(&cert, gun, std::time::SystemTime::now())
            .map_err(|e| Error::Refused(format!("root key {id}: {e}")))?;
    }
    // The timestamp and snapshot keys: notary-server hands out a new one on every request
    // until a root is published, and accepts any it made; it refuses others on publish.
    let (keys, _) = guard.keys().all_keys().await;
    let targets = role_keyids(&root, "targets")?
        .iter()
        .find_map(|id| {
            keys.iter()
                .find(|k| &k.key_id == id || &k.canonical_id == id)
        })
        .cloned()
        .ok_or_else(|| {
            Error::Refused("the root's targets key is not on this agent's tokens".into())
        })?;
    let targets_doc = json!({
        "_type": "Targets", "expires": expires(TARGETS_LIFETIME)?, "version": 1,
        "targets": {}, "delegations": {"keys": {}, "roles": []},
    });
    let mut receipts = Vec::new();
    let targets_signed = sign_doc(
        guard,
        listings(&keys, &targets.canonical_id),
        unsigned(targets_doc),
        "targets",
        gun,
        None,
        &mut receipts,
    )
    .await?;
    let files = vec![
        ("root".to_string(), root_bytes.clone()),
        ("targets".to_string(), targets_signed.document),
    ];
    publish(guard, client, gun, files, &receipts).await?;
    ctx.persist(gun, root_bytes, None).await?;
    let root_ids = role_keyids(&root, "root")?;
    let root_key = keys
        .iter()
        .find(|k| root_ids.contains(&k.key_id))
        .cloned()
        .unwrap_or_else(|| targets.clone());
    Ok(InitResult {
        root: root_key,
        timestamp_key_id: role_keyids(&root, "timestamp")?.join(","),
        snapshot_key_id: role_keyids(&root, "snapshot")?.join(","),
        targets,
    })
}

/// `dct ceremony root rotate`: root version n+1 of `gun` with new root keys (one per token in
/// `tokens`, certificates made there) and threshold `threshold`; everything else as the
/// current root has it. Returns (the current root, the new root unsigned, the new keys).
pub async fn ceremony_root_rotate(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    threshold: usize,
    tokens: &[String],
) -> Result<(Vec<u8>, Vec<u8>, Vec<CeremonyKey>)> {
    check_gun(gun)?;
    check_root_size(threshold, tokens.len())?;
    let repo = fetch(client, ctx, gun)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no trust data for {gun} on the trust server")))?;
    repo.require_trusted(client, gun)?;
    let current = repo.files["root"].clone();
    let mut root = repo.doc("root")?.signed;
    let new_keys = make_root_keys(guard, gun, tokens, &RootBackups::default()).await?;
    guard.keys().invalidate();
    // The old root keys leave the key map (the previous root keeps them for the chain).
    let old_ids: Vec<String> = root["roles"]["root"]["keyids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if let Some(map) = root["keys"].as_object_mut() {
        for id in &old_ids {
            map.remove(id);
        }
        for k in &new_keys {
            map.insert(k.key.key_id.clone(), k.key.tuf_key().to_value());
        }
    }
    let ids: Vec<&String> = new_keys.iter().map(|k| &k.key.key_id).collect();
    root["roles"]["root"] = json!({"keyids": ids, "threshold": threshold});
    let version = root["version"].as_i64().unwrap_or(0);
    root["version"] = json!(version + 1);
    root["expires"] = json!(expires(ROOT_LIFETIME)?);
    Ok((current, unsigned(root), new_keys))
}

/// Signatures on `new` by the root keys of `previous` (a rotation needs a threshold of
/// them): (keys whose signatures verify, previous threshold).
pub fn rotation_signatures(previous: &[u8], new: &[u8]) -> Result<(Vec<String>, i64)> {
    let old = Envelope::parse(previous)
        .map_err(|e| Error::InvalidArgument(format!("previous root: {e}")))?;
    let old: RootDoc = serde_json::from_value(old.signed)
        .map_err(|e| Error::InvalidArgument(format!("previous root: {e}")))?;
    let (old_keys, threshold) = root_role_keys(&old).map_err(Error::InvalidArgument)?;
    let env = Envelope::parse(new).map_err(|e| Error::InvalidArgument(format!("root: {e}")))?;
    let valid = if env.signatures.is_empty() {
        Vec::new()
    } else {
        verify::check_signatures(&env, &old_keys, 0).map_err(Error::InvalidArgument)?
    };
    Ok((valid, threshold))
}

/// `dct trust publish-root`: publishes a new root (signed by a threshold of the current
/// root's keys and of its own) as the next version of `gun`.
pub async fn publish_root(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    root_bytes: Vec<u8>,
) -> Result<()> {
    check_gun(gun)?;
    let repo = fetch(client, ctx, gun)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no trust data for {gun} on the trust server")))?;
    repo.require_trusted(client, gun)?;
    check_rotation(&repo.files["root"], &root_bytes)?;
    check_self_signed(&root_bytes)?;
    if version_of(&root_bytes) != version_of(&repo.files["root"]) + 1 {
        return Err(Error::Refused(format!(
            "the new root is version {}, the server's is {}: make it from the current root",
            version_of(&root_bytes),
            version_of(&repo.files["root"])
        )));
    }
    let (keys, _) = guard.keys().all_keys().await;
    commit_with(
        guard,
        client,
        gun,
        &repo,
        &keys,
        (vec![("root".into(), root_bytes.clone())], Vec::new()),
        Vec::new(),
    )
    .await?;
    ctx.persist(gun, root_bytes, None).await
}

/// 1 <= threshold <= keys <= 16.
fn check_root_size(threshold: usize, n: usize) -> Result<()> {
    if n == 0 || n > 16 || threshold == 0 || threshold > n {
        return Err(Error::InvalidArgument(format!(
            "a root of {threshold} of {n} keys: need 1 <= threshold <= keys <= 16 (one --token per key)"
        )));
    }
    Ok(())
}

/// One root key per token, each with its root certificate for `gun` made on its token; a
/// key with an entry in `backups` is made wrappable and copied, wrapped, into that token.
async fn make_root_keys(
    guard: &Guard,
    gun: &str,
    tokens: &[String],
    backups: &RootBackups,
) -> Result<Vec<CeremonyKey>> {
    let mut out = Vec::new();
    for t in tokens {
        let token = guard.keys().token(t)?.clone();
        let backup = backups.wrapped.get(t).cloned();
        let mut backup_file = None;
        let key = match &backup {
            None if backups.files.contains(t) => {
                let pass = backups.passphrase.clone().unwrap_or_default();
                let (key, file) = import_with_backup_file(&token, gun, pass).await?;
                backup_file = Some(file);
                key
            }
            None => token.generate("root".into(), Some(gun.into())).await?,
            Some(_) => {
                let g = gun.to_string();
                token
                    .run(move |b| {
                        let k = b.generate_wrappable("root", None)?;
                        make_root_cert(b, &k, &g)
                    })
                    .await?
            }
        };
        if let Some(to) = &backup {
            let dest = guard.keys().token(to)?.clone();
            crate::keys::backup_key(&token, &dest, &key).await?;
        }
        let info = token.run(|b| Ok(b.info())).await?;
        let cert = key
            .tuf_key()
            .certificate()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let der = der::Encode::to_der(&cert).map_err(|e| Error::Internal(e.to_string()))?;
        out.push(CeremonyKey {
            key,
            token: info,
            cert_sha256: crate::tuf::keys::hex(&sha2_256(&der)),
            backup,
            backup_file,
        });
    }
    Ok(out)
}

/// A root key made in the agent's memory (zeroized after), written to a Notary key file
/// encrypted with `passphrase`, and imported onto `token` with its root certificate made
/// there. Returns the key as the token lists it, and the file.
async fn import_with_backup_file(
    token: &crate::keys::Token,
    gun: &str,
    passphrase: zeroize::Zeroizing<Vec<u8>>,
) -> Result<(KeyEntry, Vec<u8>)> {
    // PBKDF2 and key generation are CPU work: off the async runtime.
    let (imported, file) = tokio::task::spawn_blocking(move || {
        let sk = p256::SecretKey::random(&mut rand_core::OsRng);
        let secret = zeroize::Zeroizing::new(<[u8; 32]>::from(sk.to_bytes()));
        let point = sk.public_key().to_sec1_bytes().to_vec();
        let file = crate::tuf::keyfile::write(&secret, "root", None, &passphrase)
            .map_err(|e| Error::Internal(format!("key file: {e}")))?;
        let imported = crate::tuf::keyfile::ImportedKey {
            secret,
            point,
            role: Some("root".into()),
            gun: None,
        };
        Ok::<_, Error>((imported, file.as_bytes().to_vec()))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    let g = gun.to_string();
    let key = token
        .run(move |b| {
            let k = b.import("root", None, &imported)?;
            make_root_cert(b, &k, &g)
        })
        .await?;
    Ok((key, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn root_is_due_within_six_months() {
        let now = datetime!(2026-11-22 0:00 UTC);
        assert!(root_due("2027-03-01T00:00:00Z", now));
        assert!(!root_due("2027-07-01T00:00:00Z", now));
        assert!(root_due("2026-01-01T00:00:00Z", now));
        assert!(root_due("not a time", now));
    }

    #[test]
    fn cache_names_are_one_component_and_injective() {
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

    fn ctx(dir: &Path) -> TrustContext {
        TrustContext::new(dir.to_path_buf(), None, crate::config::Pinning::default())
    }

    #[test]
    fn a_gun_and_a_role_of_another_gun_no_longer_share_a_file() {
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
    fn a_cache_in_the_old_layout_is_still_read() {
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
