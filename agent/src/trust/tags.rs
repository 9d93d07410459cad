//! Tags: sign one or many (one published update), list them, revoke them.

use std::sync::Arc;

use serde_json::Value;

use super::cache::TrustContext;
use super::fetch::{check_gun, fetch, role_keyids, Repo};
use super::publish::{commit, fetch_or_init, malformed, Added, Edit};
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::keys::KeyEntry;
use crate::trust::notary::{NotaryClient, ServerOpts};
use crate::tuf::edit;
use crate::tuf::metadata::parse_key_map;
use crate::tuf::verify::SignedTarget;

pub struct SignResult {
    pub roles: Vec<String>,
    pub initialized: bool,
    /// The keys that signed (one listing each, in role order).
    pub signers: Vec<KeyEntry>,
    /// For each tag asked for, in order: which of `signer_sets` lists the `signers` that
    /// signed it. Tags share a handful of sets (one per combination of roles a tag went
    /// to), so a million tags hold a million indices, not a million lists.
    pub signed_by: Vec<u32>,
    /// Lists of `signers` (indices), one per combination of roles that took a tag.
    pub signer_sets: Vec<Vec<usize>>,
}

impl SignResult {
    /// The keys that signed the `i`th tag asked for.
    pub fn signers_of(&self, i: usize) -> impl Iterator<Item = &KeyEntry> {
        self.signed_by
            .get(i)
            .and_then(|&set| self.signer_sets.get(set as usize))
            .into_iter()
            .flatten()
            .filter_map(|&k| self.signers.get(k))
    }
}

/// A tag as asked for: its digest and length in hex, or the manifest itself, or neither
/// (then the registry is asked).
pub struct WantedTag {
    pub tag: String,
    pub sha256: String,
    pub length: u64,
    pub manifest: Vec<u8>,
}

/// A Docker tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid tag {tag:?}: Docker tags are [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        )))
    }
}

/// No tag given twice, found by the names in order (not a set of copies of 100,000 names).
fn no_tag_twice<'a>(names: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w.first() == w.last()) {
        Some(twice) => Err(Error::InvalidArgument(format!(
            "tag {:?} is given twice",
            twice.first().copied().unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

/// A tag whose digest (hex) and size the request gives, checked.
pub fn given_tag(tag: String, sha256_hex: &str, length: u64) -> Result<TagTarget> {
    check_tag(&tag)?;
    let sha256: [u8; 32] = crate::tuf::keys::unhex(sha256_hex)
        .and_then(|d| d.try_into().ok())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "digest {sha256_hex:?} of tag {tag:?} is not 64 hex characters"
            ))
        })?;
    Ok(TagTarget {
        tag,
        sha256,
        length,
    })
}

/// The tags to sign: `given` (already checked, see [`given_tag`]) then each wanted tag,
/// checked, its digest from the request (hex), from the manifest given, or resolved in the
/// registry (with `creds` only if it asks). No tag twice among them all, found before
/// anything is resolved.
pub async fn resolve_tags(
    gun: &str,
    given: Vec<TagTarget>,
    wanted: Vec<WantedTag>,
    ca_pem: Option<&[u8]>,
    creds: Option<&crate::oci::registry::Credentials>,
) -> Result<Vec<TagTarget>> {
    no_tag_twice(
        given
            .iter()
            .map(|t| t.tag.as_str())
            .chain(wanted.iter().map(|w| w.tag.as_str())),
    )?;
    let mut tags = given;
    tags.reserve(wanted.len());
    for w in wanted {
        if !w.sha256.is_empty() {
            tags.push(given_tag(w.tag, &w.sha256, w.length)?);
            continue;
        }
        check_tag(&w.tag)?;
        let (digest, length) = if !w.manifest.is_empty() {
            use sha2::Digest;
            (
                sha2::Sha256::digest(&w.manifest).into(),
                w.manifest.len() as u64,
            )
        } else {
            crate::oci::registry::resolve(gun, &w.tag, ca_pem, creds).await?
        };
        tags.push(TagTarget {
            tag: w.tag,
            sha256: digest,
            length,
        });
    }
    Ok(tags)
}

pub use super::publish::TagTarget;

/// `dct trust sign`: adds each tag -> (sha256, length) to every delegation that is a
/// direct child of targets, allows the tag and whose key the agent holds; else to targets.
/// Every role changed is signed once, and all is published in one update (the server makes
/// snapshot and timestamp; a snapshot key held here signs the snapshot).
pub async fn sign_tags(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    tags: &Arc<Vec<TagTarget>>,
    token: &str,
) -> Result<SignResult> {
    check_gun(gun)?;
    let (mut repo, initialized) = fetch_or_init(guard, client, ctx, gun, token).await?;
    repo.require_trusted(client, gun)?;
    let (keys, _) = guard.keys().all_keys().await;
    let by_id = |id: &str| {
        keys.iter()
            .find(|k| k.key_id == id || k.canonical_id == id)
            .cloned()
    };
    // Delegations we may sign: direct children of targets whose key we hold. (The tags are
    // added to the roles' text, see `unsigned_from_file`: a 100,000-tag role is large.)
    let held: Vec<(&crate::tuf::metadata::DelegationRole, KeyEntry)> = repo
        .delegations
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
    // The edits that add to a published file.
    let mut from_file: Vec<usize> = Vec::new();
    let mut add = |role: &str, key: &KeyEntry, at: usize| -> Result<usize> {
        let i = match edits.iter().position(|e| e.role == role) {
            Some(i) => i,
            None => {
                // A published role gets the tags in its text; a delegation not yet published
                // starts as a new (small) document.
                let signed = if repo.file_to_edit(role)? {
                    // The file is moved in once every tag is placed.
                    from_file.push(edits.len());
                    Value::Null
                } else {
                    let mut signed = repo.signed_or_new(role)?;
                    edit::object_mut(&mut signed, &["targets"]).map_err(malformed(role))?;
                    signed
                };
                edits.push(Edit {
                    role: role.to_string(),
                    key: key.clone(),
                    signed,
                    added: Added::of(tags),
                    file: None,
                });
                edits.len() - 1
            }
        };
        let e = edits
            .get_mut(i)
            .ok_or_else(|| Error::Internal(format!("no edit of {role}")))?;
        e.added.picked.push(at);
        Ok(i)
    };
    let mut targets_key_cached: Option<KeyEntry> = None;
    // Which edits (roles) took each tag: an index into `placements`, the distinct lists.
    let mut placements: Vec<Vec<usize>> = Vec::new();
    let mut placed_in: Vec<u32> = Vec::with_capacity(tags.len());
    let mut into = Vec::new();
    for (at, t) in tags.iter().enumerate() {
        into.clear();
        for (d, k) in &held {
            if d.paths.iter().any(|p| t.tag.starts_with(p.as_str())) {
                into.push(add(&d.name, k, at)?);
            }
        }
        if into.is_empty() {
            let k = match &targets_key_cached {
                Some(k) => k.clone(),
                None => {
                    let k = targets_key()?;
                    targets_key_cached = Some(k.clone());
                    k
                }
            };
            into.push(add("targets", &k, at)?);
        }
        placed_in.push(intern(&mut placements, &into)?);
    }
    // Each published file moves into its edit (a big role is not copied).
    for &i in &from_file {
        if let Some(e) = edits.get_mut(i) {
            e.file = repo.take_file(&e.role);
        }
    }
    let roles: Vec<String> = edits.iter().map(|e| e.role.clone()).collect();
    // Each edit's key as an index into the signers, one listing per key.
    let mut signers: Vec<KeyEntry> = Vec::new();
    let signer_of: Vec<usize> = edits
        .iter()
        .map(
            |e| match signers.iter().position(|k| k.key_id == e.key.key_id) {
                Some(i) => i,
                None => {
                    signers.push(e.key.clone());
                    signers.len() - 1
                }
            },
        )
        .collect();
    // Each placement's signers: a tag's set is its placement's.
    let signer_sets = placements
        .iter()
        .map(|into| {
            let mut by: Vec<usize> = Vec::with_capacity(into.len());
            for s in into.iter().filter_map(|&e| signer_of.get(e).copied()) {
                if !by.contains(&s) {
                    by.push(s);
                }
            }
            by
        })
        .collect();
    commit(guard, client, gun, &repo, &keys, edits).await?;
    tracing::info!(gun, tags = tags.len(), roles = ?roles, "signed tags");
    Ok(SignResult {
        roles,
        initialized,
        signers,
        signed_by: placed_in,
        signer_sets,
    })
}

/// The index of `list` in `lists`, added if new (lists are few: one per combination of
/// roles a tag goes to).
fn intern(lists: &mut Vec<Vec<usize>>, list: &[usize]) -> Result<u32> {
    let i = match lists.iter().position(|l| l == list) {
        Some(i) => i,
        None => {
            lists.push(list.to_vec());
            lists.len() - 1
        }
    };
    u32::try_from(i).map_err(|_| Error::Internal("too many combinations of roles".into()))
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
    let mut repo = repo;
    // The files are not needed but the root's (below): a targets role may be 90 MiB.
    repo.files.retain(|role, _| role == "root");
    let tags = signed_tags(&mut repo);
    let signers = repo
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

/// The signed tags of a verified repository as docker resolves them (a tag in
/// targets/releases, else in targets; signers are the roles holding the same digest). The
/// names and digests move out of `repo`'s targets (a role may list 1,000,000): the repository
/// is left without them.
pub(crate) fn signed_tags(repo: &mut Repo) -> Vec<SignedTag> {
    let roles = &repo.verified.roles;
    // Each role's targets by name, the last of a name counting (as a map keeps it): indices
    // in name order, not a map of every target.
    let sorted: Vec<Vec<u32>> = roles.iter().map(|r| by_name(&r.targets)).collect();
    // Role `ri`'s target `name`: its index in the role's list, and itself.
    let find = |ri: usize, name: &str| -> Option<(usize, &SignedTarget)> {
        let (role, idx) = (roles.get(ri)?, sorted.get(ri)?);
        let at = idx
            .binary_search_by(|&i| target_name(&role.targets, i).cmp(name))
            .ok()?;
        let i = *idx.get(at)? as usize;
        Some((i, role.targets.get(i)?))
    };
    let place = |role: &str| roles.iter().position(|r| r.role == role);
    let (released, base) = (place("targets/releases"), place("targets"));
    let names_of = |ri: Option<usize>| -> Vec<&str> {
        ri.and_then(|ri| Some((roles.get(ri)?, sorted.get(ri)?)))
            .map(|(role, idx)| idx.iter().map(|&i| target_name(&role.targets, i)).collect())
            .unwrap_or_default()
    };
    let mut names = names_of(released);
    names.extend(names_of(base));
    names.sort_unstable();
    names.dedup();
    // As the gate: a tag targets/releases lists without a usable digest, or lists while it
    // is skipped, is not taken from targets instead.
    let releases_blocks = |name: &str| {
        roles
            .iter()
            .filter(|r| r.role == "targets/releases")
            .any(|r| r.unusable.iter().any(|u| u.name == name))
            || repo
                .verified
                .skipped_role("targets/releases")
                .is_some_and(|s| s.targets.iter().any(|t| t == name))
    };
    // Each tag with its signers; its name and digest taken from (role, index) below.
    let mut tags = Vec::with_capacity(names.len());
    let mut from: Vec<(usize, usize)> = Vec::with_capacity(names.len());
    for name in names {
        let from_releases = released.and_then(|ri| Some((ri, find(ri, name)?)));
        if from_releases.is_none() && releases_blocks(name) {
            continue;
        }
        let Some((ri, (at, chosen))) =
            from_releases.or_else(|| base.and_then(|ri| Some((ri, find(ri, name)?))))
        else {
            continue;
        };
        let mut signers: Vec<String> = roles
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                r.role != "targets/releases"
                    && find(*i, name).is_some_and(|(_, t)| t.sha256_hex == chosen.sha256_hex)
            })
            .map(|(_, r)| {
                if r.role == "targets" {
                    "Repo Admin".to_string()
                } else {
                    r.role.trim_start_matches("targets/").to_string()
                }
            })
            .collect();
        signers.sort();
        from.push((ri, at));
        tags.push(SignedTag {
            tag: String::new(),
            sha256_hex: String::new(),
            length: chosen.length,
            signers,
        });
    }
    drop(sorted);
    for (t, (ri, at)) in tags.iter_mut().zip(from) {
        if let Some(target) = repo
            .verified
            .roles
            .get_mut(ri)
            .and_then(|r| r.targets.get_mut(at))
        {
            t.tag = std::mem::take(&mut target.name);
            t.sha256_hex = std::mem::take(&mut target.sha256_hex);
        }
    }
    tags
}

/// The name of target `i` of `targets` ("" past the end: never, the indices are its own).
fn target_name(targets: &[SignedTarget], i: u32) -> &str {
    targets.get(i as usize).map_or("", |t| t.name.as_str())
}

/// The indices of `targets` in name order, one per name: the last of a name, as a map that
/// took them in turn would keep.
fn by_name(targets: &[SignedTarget]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..targets.len())
        .filter_map(|i| u32::try_from(i).ok())
        .collect();
    idx.sort_by(|&a, &b| {
        target_name(targets, a)
            .cmp(target_name(targets, b))
            .then(b.cmp(&a))
    });
    idx.dedup_by(|later, kept| target_name(targets, *later) == target_name(targets, *kept));
    idx
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
pub(crate) fn signable(repo: &Repo, keys: &[KeyEntry]) -> Result<Vec<(String, KeyEntry)>> {
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
    for d in &repo.delegations.roles {
        if let Some(k) = d.keyids.iter().find_map(by_id) {
            out.push((d.name.clone(), k));
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
            edits.push(Edit {
                role,
                key,
                signed,
                added: Added::default(),
                file: None,
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuf::verify::{RoleReport, UnusableTarget, VerifiedRepo};

    /// Docker's view of the tags: targets/releases first, else targets, the last entry of
    /// a name counting (as a map keeps it), a tag releases lists unusably not taken from
    /// targets; signers are the other roles holding the same digest. The names and digests
    /// move out of the repository.
    #[test]
    fn signed_tags_as_docker_resolves_them() {
        let t = |name: &str, d: &str| SignedTarget {
            name: name.into(),
            sha256_hex: d.repeat(64),
            length: 1,
        };
        let role = |role: &str, targets: Vec<SignedTarget>, unusable: Vec<&str>| RoleReport {
            role: role.into(),
            version: 1,
            expires: String::new(),
            signed_by: Vec::new(),
            targets,
            unusable: unusable
                .into_iter()
                .map(|n| UnusableTarget {
                    name: n.into(),
                    reason: "no sha256".into(),
                })
                .collect(),
        };
        let mut repo = Repo {
            files: Default::default(),
            verified: VerifiedRepo {
                roles: vec![
                    role(
                        "targets",
                        vec![
                            t("c", "4"),
                            t("b", "2"),
                            t("a", "1"),
                            t("x", "5"),
                            t("b", "3"),
                        ],
                        vec![],
                    ),
                    role(
                        "targets/releases",
                        vec![t("c", "9"), t("a", "1")],
                        vec!["x"],
                    ),
                    role("targets/alice", vec![t("b", "3"), t("a", "1")], vec![]),
                ],
                ..Default::default()
            },
            trusted: true,
            delegations: Default::default(),
        };
        let tags: Vec<(String, String, Vec<String>)> = signed_tags(&mut repo)
            .into_iter()
            .map(|t| (t.tag, t.sha256_hex[..1].to_string(), t.signers))
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            tags,
            vec![
                ("a".into(), "1".into(), s(&["Repo Admin", "alice"])),
                ("b".into(), "3".into(), s(&["Repo Admin", "alice"])),
                ("c".into(), "9".into(), s(&[])),
            ]
        );
        // Moved, not copied: releases' "a" and "c", targets' last "b".
        let names = |i: usize| -> Vec<String> {
            repo.verified.roles[i]
                .targets
                .iter()
                .map(|t| t.name.clone())
                .collect()
        };
        assert_eq!(names(1), ["", ""]);
        assert_eq!(names(0), ["c", "b", "a", "x", ""]);
    }

    fn wanted(tag: &str, hex: &str) -> WantedTag {
        WantedTag {
            tag: tag.into(),
            sha256: hex.into(),
            length: 7,
            manifest: Vec::new(),
        }
    }

    /// Tags given with their digests resolve without a registry, in order; a tag given twice
    /// is refused by name before anything is resolved (the registry is never asked: the
    /// third tag has no digest and would need it).
    #[tokio::test]
    async fn tags_resolve_in_order_and_none_twice() {
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        let tags = resolve_tags(
            "example.com/app",
            Vec::new(),
            vec![wanted("v2", &a), wanted("v1", &b)],
            None,
            None,
        )
        .await
        .unwrap();
        let got: Vec<(&str, u8, u64)> = tags
            .iter()
            .map(|t| (t.tag.as_str(), t.sha256[0], t.length))
            .collect();
        assert_eq!(got, [("v2", 0xab, 7), ("v1", 0xcd, 7)]);

        let err = resolve_tags(
            "example.com/app",
            Vec::new(),
            vec![
                wanted("v1", &a),
                wanted("v2", &b),
                wanted("v3", ""),
                wanted("v1", &b),
            ],
            None,
            None,
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m == "tag \"v1\" is given twice"),
            "{err}"
        );
        let err = resolve_tags(
            "example.com/app",
            Vec::new(),
            vec![wanted("v1", "abc")],
            None,
            None,
        )
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("not 64 hex characters"), "{err}");
    }
}
