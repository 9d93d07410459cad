//! Fetching a repository from notary-server and verifying it against the cached root or
//! the pins (root rotations checked against the old root's keys).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::Value;
use time::OffsetDateTime;

use super::cache::{version_of, TrustContext};
use super::gate::check_ca_pin;
use crate::error::{Error, Result};
use crate::trust::notary::NotaryClient;
use crate::tuf::keys::TufKey;
use crate::tuf::metadata::{parse_key_map, valid_delegation_name, Delegations, Envelope, RootDoc};
use crate::tuf::verify::{self, check_signatures, Listing, RepoFiles, VerifiedRepo};

/// A repository as fetched and verified.
pub struct Repo {
    pub files: RepoFiles,
    pub verified: VerifiedRepo,
    /// The root was already trusted (cached from before, or pinned), not first seen now.
    pub trusted: bool,
    /// The targets role's delegations, read once off the async runtime (the role itself may
    /// be 100,000 targets).
    pub delegations: crate::tuf::metadata::Delegations,
}

impl Repo {
    /// Signing on trust data first seen now would let a malicious server choose what the
    /// user's keys sign: ask for an explicit yes.
    pub(crate) fn require_trusted(&self, client: &NotaryClient, gun: &str) -> Result<()> {
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
pub(crate) const MAX_DELEGATIONS: usize = 10_000;

impl Repo {
    /// The bytes of `role` as fetched.
    pub(crate) fn file(&self, role: &str) -> Result<&Vec<u8>> {
        file(&self.files, role)
    }

    pub(crate) fn doc(&self, role: &str) -> Result<Envelope> {
        Envelope::parse(self.file(role)?).map_err(|e| Error::Internal(format!("{role}: {e}")))
    }

    pub(crate) fn root(&self) -> Result<RootDoc> {
        serde_json::from_value(self.doc("root")?.signed).map_err(Error::internal)
    }
}

/// The bytes of `role` in `files`, which the agent fetched or loaded itself (so a missing
/// role is an internal error, named).
pub(crate) fn file<'a>(files: &'a RepoFiles, role: &str) -> Result<&'a Vec<u8>> {
    files
        .get(role)
        .ok_or_else(|| Error::Internal(format!("{role} not fetched")))
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
    fetch_with(client, ctx, gun, Listing::Targets).await
}

/// As [`fetch`], the verified roles listing their targets or not (`Listing::RolesOnly`:
/// to sign, which reads a role's targets from its text).
pub async fn fetch_with(
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    listing: Listing,
) -> Result<Option<Repo>> {
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
        let root = file(&files, "root")?;
        let (from, to) = (version_of(old), version_of(root));
        if old != root && to > from.saturating_add(1) && check_rotation(old, root).is_err() {
            for v in from.saturating_add(1)..to {
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
    // Verification, and what the rollback check reads from the files (each role's version,
    // the delegations), off the async runtime: a role may be 100,000 targets.
    let (files, verified, versions, delegations) =
        tokio::task::spawn_blocking(move || -> Result<Checked> {
            if let Some(old) = &cached {
                let root = file(&files, "root")?;
                if old != root {
                    let mut prev = old.clone();
                    for step in chain.iter().chain(std::iter::once(root)) {
                        check_rotation(&prev, step)?;
                        check_self_signed(step)?;
                        prev = step.clone();
                    }
                }
            }
            let now = OffsetDateTime::now_utc();
            let v = verify::verify_repository_with(&gun_owned, &files, now, &pins, listing)
                .map_err(|e| {
                    Error::Refused(format!("trust data for {gun_owned} does not verify: {e}"))
                })?;
            let versions = files
                .iter()
                .map(|(r, b)| (r.clone(), version_of(b)))
                .collect();
            // Verified above, so it reads.
            let delegations = crate::tuf::metadata::RawEnvelope::parse(file(&files, "targets")?)
                .and_then(|f| f.delegations())
                .map_err(|e| Error::Internal(format!("targets: {e}")))?;
            Ok((files, v, versions, delegations))
        })
        .await
        .map_err(Error::internal)??;
    check_ca_pin(
        &ctx.pinning,
        gun,
        file(&files, "root")?,
        &verified,
        OffsetDateTime::now_utc(),
    )?;
    // Rollback protection: no role older than seen before, no delegation silently dropped.
    let mut seen = ctx.versions(gun);
    for (role, &before) in &seen {
        match versions.get(role) {
            Some(&now) if now < before => {
                return Err(Error::Refused(format!(
                    "the server's {role} of {gun} is version {now}, older than version {before} seen before: refusing a rollback"
                )))
            }
            None if delegations.roles.iter().any(|d| &d.name == role) && before > 0 => {
                return Err(Error::Refused(format!(
                    "the server no longer lists {role} of {gun} (version {before} seen before): refusing a rollback"
                )))
            }
            _ => {}
        }
    }
    for (role, &v) in &versions {
        let e = seen.entry(role.clone()).or_insert(v);
        *e = (*e).max(v);
    }
    ctx.persist(gun, file(&files, "root")?.clone(), Some(seen))
        .await?;
    Ok(Some(Repo {
        files,
        verified,
        trusted,
        delegations,
    }))
}

/// A fetched repository as verified off the runtime: its files, the verification, each
/// role's version and the delegations the targets role lists.
type Checked = (RepoFiles, VerifiedRepo, BTreeMap<String, i64>, Delegations);

/// `role` as pinned by `parent`'s meta: fetched by its sha256 (`<role>.<hex>.json`), else by
/// name when the server keeps no such copy. Verification checks the bytes either way.
pub(crate) async fn get_pinned(
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
pub(crate) fn root_role_keys(
    root: &RootDoc,
) -> std::result::Result<(BTreeMap<String, TufKey>, i64), String> {
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
pub(crate) fn role_keyids<'a>(root: &'a RootDoc, role: &str) -> Result<&'a Vec<String>> {
    root.roles
        .get(role)
        .map(|r| &r.keyids)
        .ok_or_else(|| Error::InvalidArgument(format!("the root has no {role} role")))
}

/// A root must carry a threshold of signatures by its own root keys.
pub(crate) fn check_self_signed(bytes: &[u8]) -> Result<()> {
    let env = Envelope::parse(bytes).map_err(|e| Error::Refused(format!("root: {e}")))?;
    let root = <RootDoc as serde::Deserialize>::deserialize(&env.signed)
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
pub(crate) fn check_rotation(old: &[u8], new: &[u8]) -> Result<()> {
    let refuse = |why: String| {
        Error::Refused(format!(
            "the server's root differs from the trusted one and {why}; refusing (possible attack, or the repository was re-created)"
        ))
    };
    let old_env = Envelope::parse(old).map_err(|e| Error::Internal(format!("cached root: {e}")))?;
    let old_root: RootDoc = serde_json::from_value(old_env.signed).map_err(Error::internal)?;
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
