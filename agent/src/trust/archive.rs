//! Trust data archives: what it takes to verify a repository's DCT signatures after its
//! notary-server is gone. `dct trust export` writes one (every role file as served, every
//! root version from the first, the pins it was verified under); `dct trust verify --from`
//! checks a tag against it with no network.
//!
//! The archive is not trusted for itself: its roots must chain version by version (each
//! signed by the one before), and the current root must match the verifying agent's own
//! pins when it has any. Only an agent with no pins for the repository (and trust on first
//! use allowed) falls back to the archive's recorded pins, and says so ("archive").

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::cache::{version_of, TrustContext};
use super::fetch::{check_rotation, check_self_signed, fetch};
use super::gate::check_failed;
use crate::error::{Error, Result};
use crate::trust::notary::NotaryClient;
use crate::tuf::verify::RepoFiles;

/// The archive format's name and version.
pub const FORMAT: &str = "dct-trust-archive/1";

/// Root versions an archive may hold.
const MAX_ROOTS: i64 = 1_000;

/// A repository's trust data, as written to the archive file (JSON).
#[derive(Serialize, Deserialize)]
pub struct Archive {
    pub format: String,
    pub gun: String,
    /// When it was exported (RFC 3339): expiry is judged as of then unless asked otherwise.
    pub exported_at: String,
    /// The trust server it came from.
    pub server: String,
    /// Root versions 1 .. current-1, oldest first (base64 of the files as served); the
    /// current root is `files["root"]`.
    pub root_chain: Vec<String>,
    /// Every role file as served (base64), by role name.
    pub files: BTreeMap<String, String>,
    /// The root key IDs the exporting agent trusted for the GUN: its pins, else the keys
    /// that signed the root it had cached.
    pub pins: Vec<String>,
}

/// What an export wrote.
pub struct Exported {
    pub archive: Vec<u8>,
    pub roles: usize,
    pub root_versions: usize,
}

/// Fetches `gun`'s trust data, verified under the pins or the cached root (never on first
/// use), with every earlier root version, as an archive.
pub async fn export(client: &NotaryClient, ctx: &TrustContext, gun: &str) -> Result<Exported> {
    let repo = fetch(client, ctx, gun)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{gun} has no trust data on the trust server")))?;
    if !repo.trusted {
        return Err(Error::Refused(format!(
            "this agent has never seen {gun}'s root and none is pinned: an archive of it would \
             vouch for whatever the server sent. Pin the root ([trust.pinning.certs]) or verify \
             it once (dct trust verify) first"
        )));
    }
    let current = repo.file("root")?.clone();
    let newest = version_of(&current);
    if !(1..=MAX_ROOTS).contains(&newest) {
        return Err(Error::Refused(format!(
            "{gun}'s root has version {newest}; an archive holds versions 1 to {MAX_ROOTS}"
        )));
    }
    let mut chain = Vec::new();
    for v in 1..newest {
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
    check_chain(&chain, &current)?;
    ctx.save_metadata(gun, &repo.files).await?;
    // The root keys this agent trusts for the GUN: its pins, else those of the root it
    // verified under its cache (the keys that signed the current root).
    let mut pins = ctx.pinning.for_gun(gun);
    if pins.is_empty() {
        pins = repo
            .verified
            .roles
            .iter()
            .filter(|r| r.role == "root")
            .flat_map(|r| r.signed_by.iter().cloned())
            .collect();
    }
    let archive = Archive {
        format: FORMAT.into(),
        gun: gun.into(),
        exported_at: OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .map_err(Error::internal)?,
        server: client.base_url().to_string(),
        root_chain: chain.iter().map(|b| B64.encode(b)).collect(),
        files: repo
            .files
            .iter()
            .map(|(role, bytes)| (role.clone(), B64.encode(bytes)))
            .collect(),
        pins,
    };
    let mut bytes = serde_json::to_vec_pretty(&archive).map_err(Error::internal)?;
    bytes.push(b'\n');
    Ok(Exported {
        archive: bytes,
        roles: archive.files.len(),
        root_versions: chain.len() + 1,
    })
}

/// Each root signed by the one before it (a threshold of the old root's keys and of its
/// own), and self-signed.
fn check_chain(chain: &[Vec<u8>], current: &[u8]) -> Result<()> {
    let all: Vec<&[u8]> = chain
        .iter()
        .map(Vec::as_slice)
        .chain(std::iter::once(current))
        .collect();
    let mut previous: Option<&[u8]> = None;
    for (i, root) in all.iter().enumerate() {
        check_self_signed(root)?;
        if version_of(root) != i as i64 + 1 {
            return Err(Error::Refused(format!(
                "root version {} is out of order in the chain (expected {})",
                version_of(root),
                i + 1
            )));
        }
        if let Some(before) = previous {
            check_rotation(before, root)?;
        }
        previous = Some(root);
    }
    Ok(())
}

/// An archive read back and its roots checked: the files to verify, the pins to verify
/// them under, as of when.
pub struct Opened {
    pub files: RepoFiles,
    pub pins: Vec<String>,
    /// "pinned" (the agent's own pins or CA) or "archive" (the archive's recorded pins).
    pub trust: &'static str,
    pub exported_at: OffsetDateTime,
}

/// Reads `bytes` as an archive of `gun` and checks its root chain; the pins are the
/// agent's own where it has any.
pub fn open(ctx: &TrustContext, gun: &str, bytes: &[u8]) -> Result<Opened> {
    let bad = |why: String| check_failed("archive", why);
    let a: Archive =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a trust archive: {e}")))?;
    if a.format != FORMAT {
        return Err(bad(format!(
            "format {:?}; this agent reads {FORMAT}",
            a.format
        )));
    }
    if a.gun != gun {
        return Err(bad(format!("it holds {}, not {gun}", a.gun)));
    }
    let exported_at = OffsetDateTime::parse(&a.exported_at, &Rfc3339)
        .map_err(|e| bad(format!("exported_at {:?}: {e}", a.exported_at)))?;
    let decode = |what: &str, b: &str| {
        B64.decode(b)
            .map_err(|e| bad(format!("{what} is not base64: {e}")))
    };
    let mut files = RepoFiles::new();
    for (role, b) in &a.files {
        files.insert(role.clone(), decode(role, b)?);
    }
    for role in ["root", "targets", "snapshot", "timestamp"] {
        if !files.contains_key(role) {
            return Err(bad(format!("it has no {role}")));
        }
    }
    let chain = a
        .root_chain
        .iter()
        .enumerate()
        .map(|(i, b)| decode(&format!("root version {}", i + 1), b))
        .collect::<Result<Vec<_>>>()?;
    let current = files.get("root").cloned().unwrap_or_default();
    check_chain(&chain, &current).map_err(|e| bad(e.to_string()))?;
    let own = ctx.pinning.for_gun(gun);
    let (pins, trust) = if !own.is_empty() || ctx.pinning.ca_for_gun(gun).is_some() {
        (own, "pinned")
    } else if ctx.pinning.disable_tofu {
        return Err(check_failed(
            "root",
            format!(
                "no root keys are pinned for {gun} and trust on first use is disabled: the \
                 archive's own pins are not taken"
            ),
        ));
    } else if a.pins.is_empty() {
        return Err(check_failed(
            "root",
            format!(
                "no root keys are pinned for {gun}, here or in the archive: pin its root \
                 ([trust.pinning.certs]) to verify the archive"
            ),
        ));
    } else {
        (a.pins, "archive")
    };
    Ok(Opened {
        files,
        pins,
        trust,
        exported_at,
    })
}
