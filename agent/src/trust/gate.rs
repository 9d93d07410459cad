//! The deploy gate: a tag verified under the pins, the CA pins and the caller's options
//! (signer, digest, expiry at a given time), online or from the cache.

use std::path::PathBuf;

use time::OffsetDateTime;

use super::cache::{cache_name, read_cached, write_atomic, TrustContext};
use super::fetch::{check_gun, fetch};
use crate::error::{Error, Result};
use crate::trust::notary::NotaryClient;
use crate::tuf::metadata::{parse_key_map, valid_delegation_name, Envelope, RootDoc};
use crate::tuf::verify::{self, RepoFiles, VerifiedRepo};

/// Notary's CA pinning: when a CA is pinned for `gun`, a threshold of the root keys whose
/// signatures verified must have certificates that chain to it.
pub(crate) fn check_ca_pin(
    pinning: &crate::trust::Pinning,
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
    /// Check expiry as of this time (offline only); default now (for an archive: when it
    /// was exported).
    pub at: Option<OffsetDateTime>,
    /// From this trust archive (`dct trust export`), not the cache or the server.
    pub archive: Option<Vec<u8>>,
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
    /// Delegations left out because they do not verify: (role, why).
    pub skipped: Vec<(String, String)>,
}

pub(crate) fn check_failed(check: &str, why: String) -> Error {
    Error::Refused(format!("{check}: {why}"))
}

impl TrustContext {
    /// A role file of `gun`'s, named by its escaped role name (delegation names have `/`).
    pub(crate) fn metadata_path(&self, gun: &str, role: &str) -> PathBuf {
        self.gun_dir(gun)
            .join("metadata")
            .join(format!("{}.json", cache_name(role)))
    }

    /// Keeps verified trust data for offline checks.
    pub(crate) async fn save_metadata(&self, gun: &str, files: &RepoFiles) -> Result<()> {
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
        .map_err(Error::internal)?
    }

    /// The trust data saved by the last online check of `gun`.
    pub(crate) fn load_metadata(&self, gun: &str) -> Result<RepoFiles> {
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
    if let Some(bytes) = &opts.archive {
        // Decoding the archive and checking its root chain and every role is CPU work on
        // megabytes: off the async runtime, all of it.
        let (ctx2, gun_owned, bytes, asked_at) =
            (ctx.clone(), gun.to_string(), bytes.clone(), opts.at);
        let (v, trust, root, at) = tokio::task::spawn_blocking(move || {
            let opened = super::archive::open(&ctx2, &gun_owned, &bytes)?;
            let at = asked_at.unwrap_or(opened.exported_at);
            let root = opened.files.get("root").cloned().unwrap_or_default();
            let v = verify::verify_repository(&gun_owned, &opened.files, at, &opened.pins)
                .map_err(|e| {
                    check_failed(
                        "trust data",
                        format!("the archive of {gun_owned} does not verify: {e}"),
                    )
                })?;
            Ok::<_, Error>((v, opened.trust, root, at))
        })
        .await
        .map_err(Error::internal)??;
        check_ca_pin(&ctx.pinning, gun, &root, &v, at)?;
        return judge(gun, v, trust, opts);
    }
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
        let root = files
            .get("root")
            .cloned()
            .ok_or_else(|| check_failed("offline", format!("no cached root for {gun}")))?;
        let at = opts.at.unwrap_or_else(OffsetDateTime::now_utc);
        let gun_owned = gun.to_string();
        let pins2 = pins.clone();
        let v = tokio::task::spawn_blocking(move || {
            verify::verify_repository(&gun_owned, &files, at, &pins2)
        })
        .await
        .map_err(Error::internal)?
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
    judge(gun, verified, trust, opts)
}

/// The tag in trust data that verified: resolved as docker does, its signers and digest
/// checked against `opts`.
fn judge(
    gun: &str,
    verified: VerifiedRepo,
    trust: &'static str,
    opts: &VerifyOpts,
) -> Result<Verdict> {
    // Where each verified role signs the tag.
    let tag = opts.tag.as_str();
    let signed_in: Vec<(&str, &verify::SignedTarget)> = verified
        .roles
        .iter()
        .filter_map(|r| {
            r.targets
                .iter()
                .find(|t| t.name == tag)
                .map(|t| (r.role.as_str(), t))
        })
        .collect();
    // Skipped delegations that list the tag: they vouch for nothing.
    let skipped_with: Vec<&verify::SkippedRole> = verified
        .skipped
        .iter()
        .filter(|s| s.targets.iter().any(|t| t == tag))
        .collect();
    let why_skipped = |roles: &[&verify::SkippedRole]| {
        roles
            .iter()
            .map(|s| format!("{} lists it but is skipped: {}", s.role, s.reason))
            .collect::<Vec<_>>()
            .join("; ")
    };
    // Docker takes the tag from targets/releases, else targets. Where the role it would take
    // it from is skipped, or lists it without a usable digest, the tag is refused: never a
    // fall back to what another role says.
    let mut resolved = None;
    for role in ["targets/releases", "targets"] {
        if let Some(found) = signed_in.iter().find(|(r, _)| *r == role) {
            resolved = Some(*found);
            break;
        }
        let unusable = verified
            .roles
            .iter()
            .filter(|r| r.role == role)
            .flat_map(|r| r.unusable.iter())
            .find(|u| u.name == tag);
        if let Some(u) = unusable {
            return Err(check_failed(
                "tag",
                format!(
                    "{gun}:{tag} in {role} is unusable: {} (docker refuses it too)",
                    u.reason
                ),
            ));
        }
        if let Some(s) = skipped_with.iter().find(|s| s.role == role) {
            return Err(check_failed(
                "tag",
                format!(
                    "{gun}:{tag} is not signed by a trusted role: {role}, where docker takes it from, is skipped: {}",
                    s.reason
                ),
            ));
        }
    }
    let Some((role, target)) = resolved else {
        let elsewhere: Vec<&str> = signed_in.iter().map(|(r, _)| *r).collect();
        let mut why = if !elsewhere.is_empty() {
            format!(
                "{gun}:{tag} is signed only in {}, which docker does not resolve (targets/releases or targets)",
                elsewhere.join(", ")
            )
        } else if !skipped_with.is_empty() {
            format!("{gun}:{tag} is not signed by a trusted role")
        } else {
            format!("{gun}:{tag} is not signed")
        };
        if !skipped_with.is_empty() {
            why.push_str(&format!(" ({})", why_skipped(&skipped_with)));
        }
        return Err(check_failed("tag", why));
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
            // A wanted signer whose delegation is skipped: say why it does not count.
            let skipped_wanted: Vec<&verify::SkippedRole> = skipped_with
                .iter()
                .copied()
                .filter(|s| wanted(&signer_name(&s.role)))
                .collect();
            return Err(check_failed(
                "signer",
                format!(
                    "{gun}:{tag} is signed by {}, not by {}{}",
                    if signers.is_empty() {
                        "no named signer".to_string()
                    } else {
                        signers.join(", ")
                    },
                    opts.signers.join(" or "),
                    if skipped_wanted.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", why_skipped(&skipped_wanted))
                    }
                ),
            ));
        }
    }
    if let Some(want) = &opts.digest {
        if !want.eq_ignore_ascii_case(&target.sha256_hex) {
            return Err(check_failed(
                "digest",
                format!(
                    "{gun}:{tag} is signed for sha256:{}, not sha256:{}",
                    target.sha256_hex, want
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
        skipped: verified
            .skipped
            .iter()
            .map(|s| (s.role.clone(), s.reason.clone()))
            .collect(),
    })
}
