//! Verification of a whole Notary repository as a notary-server serves it: root, timestamp,
//! snapshot, targets and delegations, with thresholds, key IDs, `_type`, expiry against a
//! given time, and snapshot/timestamp hashes and lengths over the exact file bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::SystemTime;

use time::OffsetDateTime;

use super::cert::check_root_cert;
use super::keys::{pem_encode, TufKey};
use super::metadata::*;

/// Files as served, by role name (`root`, `targets`, `targets/releases`, ...).
pub type RepoFiles = BTreeMap<String, Vec<u8>>;

/// Which role failed and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{role}: {reason}")]
pub struct VerifyError {
    pub role: String,
    pub reason: String,
}

fn fail(role: &str, reason: impl Into<String>) -> VerifyError {
    VerifyError {
        role: role.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTarget {
    pub name: String,
    pub sha256_hex: String,
    pub length: u64,
}

#[derive(Debug, Clone)]
pub struct RoleReport {
    pub role: String,
    pub version: u64,
    pub expires: String,
    /// Key IDs whose signatures verified.
    pub signed_by: Vec<String>,
    /// Targets this role signs (for targets roles), within its delegated paths.
    pub targets: Vec<SignedTarget>,
}

#[derive(Debug, Clone, Default)]
pub struct VerifiedRepo {
    /// Whether the root was checked against pinned keys (else trusted as given).
    pub pinned: bool,
    pub roles: Vec<RoleReport>,
    pub warnings: Vec<String>,
}

/// Verifies `files` as the repository of `gun`, checking expiry as of `at`.
///
/// `pins` are root key IDs (certificate or canonical) the root must be signed by, as
/// Notary's trust pinning: when given, only pinned root keys count toward the root
/// threshold. With no pins the root is trusted as given (first use), and the result says so.
pub fn verify_repository(
    gun: &str,
    files: &RepoFiles,
    at: OffsetDateTime,
    pins: &[String],
) -> Result<VerifiedRepo, VerifyError> {
    let get = |role: &str| {
        files
            .get(role)
            .ok_or_else(|| fail(role, format!("{role}.json is missing")))
    };
    for name in files.keys() {
        if !valid_role_name(name) {
            return Err(fail(name, "not a valid role name"));
        }
    }
    let mut out = VerifiedRepo::default();

    // Root: self-signed by a threshold of its root keys, whose certificates must be valid.
    let root_bytes = get("root")?;
    let root_env = Envelope::parse(root_bytes).map_err(|e| fail("root", e))?;
    let root: RootDoc = typed("root", &root_env)?;
    check_common("root", &root.common, at)?;
    let root_keys = parse_key_map(&root.keys).map_err(|e| fail("root", e))?;
    for name in ["root", "targets", "snapshot", "timestamp"] {
        check_role_keys("root", name, role_of(&root, name)?, &root_keys)?;
    }
    let root_role = role_of(&root, "root")?;
    let mut cert_problems = Vec::new();
    let mut usable_root_keys = BTreeMap::new();
    for id in &root_role.keyids {
        // check_role_keys above made sure every root key ID is listed.
        let key = root_keys
            .get(id)
            .ok_or_else(|| fail("root", format!("root names key {id}, which is not listed")))?;
        let pinned = pins.is_empty()
            || pins
                .iter()
                .any(|p| p == id || key.canonical_id().ok().as_ref() == Some(p));
        if !pinned {
            cert_problems.push(format!("root key {id} is not pinned"));
            continue;
        }
        match check_root_key(key, gun, at.into()) {
            Ok(()) => {
                usable_root_keys.insert(id.clone(), key.clone());
            }
            Err(e) => cert_problems.push(format!("root key {id}: {e}")),
        }
    }
    let signed_by = check_signatures(&root_env, &usable_root_keys, root_role.threshold)
        .map_err(|e| fail("root", with_problems(e, &cert_problems)))?;
    out.pinned = !pins.is_empty();
    out.roles
        .push(report("root", &root.common, signed_by, Vec::new()));

    // Timestamp: signed by the timestamp keys, and pins the snapshot file.
    let ts_bytes = get("timestamp")?;
    let ts_env = Envelope::parse(ts_bytes).map_err(|e| fail("timestamp", e))?;
    let ts: MetaDoc = typed("timestamp", &ts_env)?;
    check_common("timestamp", &ts.common, at)?;
    let signed_by = check_role_signatures("timestamp", &ts_env, &root, &root_keys)?;
    let snap_bytes = get("snapshot")?;
    let snap_meta = ts
        .meta
        .get("snapshot")
        .ok_or_else(|| fail("timestamp", "no meta for snapshot"))?;
    snap_meta
        .check_sha256(snap_bytes)
        .map_err(|e| fail("timestamp", format!("snapshot.json does not match: {e}")))?;
    out.roles
        .push(report("timestamp", &ts.common, signed_by, Vec::new()));

    // Snapshot: signed by the snapshot keys, and pins root, targets and every delegation.
    let snap_env = Envelope::parse(snap_bytes).map_err(|e| fail("snapshot", e))?;
    let snap: MetaDoc = typed("snapshot", &snap_env)?;
    check_common("snapshot", &snap.common, at)?;
    let signed_by = check_role_signatures("snapshot", &snap_env, &root, &root_keys)?;
    let root_meta = snap
        .meta
        .get("root")
        .ok_or_else(|| fail("snapshot", "no meta for root"))?;
    root_meta
        .check_sha256(root_bytes)
        .map_err(|e| fail("snapshot", format!("root.json does not match: {e}")))?;
    for (role, bytes) in files {
        if matches!(role.as_str(), "root" | "snapshot" | "timestamp") {
            continue;
        }
        let m = snap
            .meta
            .get(role)
            .ok_or_else(|| fail("snapshot", format!("{role}.json is not listed")))?;
        let checked = if role == "targets" {
            m.check_sha256(bytes)
        } else {
            m.check(bytes)
        };
        checked.map_err(|e| fail("snapshot", format!("{role}.json does not match: {e}")))?;
    }
    for role in snap.meta.keys() {
        if !files.contains_key(role) {
            return Err(fail(
                "snapshot",
                format!("lists {role}.json, which is missing"),
            ));
        }
    }
    out.roles
        .push(report("snapshot", &snap.common, signed_by, Vec::new()));

    // Targets, then delegations breadth first, each signed by the keys its parent names.
    let targets_env = Envelope::parse(get("targets")?).map_err(|e| fail("targets", e))?;
    let targets: TargetsDoc = typed("targets", &targets_env)?;
    check_common("targets", &targets.common, at)?;
    let signed_by = check_role_signatures("targets", &targets_env, &root, &root_keys)?;
    let all_paths = vec![String::new()];
    out.roles.push(report(
        "targets",
        &targets.common,
        signed_by,
        listed_targets(&targets, &all_paths),
    ));

    let mut queue = VecDeque::from([("targets".to_string(), targets, all_paths)]);
    let mut seen = BTreeSet::new();
    while let Some((parent, doc, parent_paths)) = queue.pop_front() {
        let keys = parse_key_map(&doc.delegations.keys)
            .map_err(|e| fail(&parent, format!("delegation {e}")))?;
        for d in &doc.delegations.roles {
            let name = &d.name;
            if !valid_delegation_name(name)
                || name.rsplit_once('/').map(|(p, _)| p) != Some(parent.as_str())
            {
                return Err(fail(&parent, format!("invalid delegation name {name:?}")));
            }
            check_role_keys(
                &parent,
                name,
                &RoleKeys {
                    keyids: d.keyids.clone(),
                    threshold: d.threshold,
                },
                &keys,
            )?;
            if !seen.insert(name.clone()) {
                return Err(fail(&parent, format!("delegation {name} listed twice")));
            }
            // A child may only sign within its parent's paths.
            let paths: Vec<String> = d
                .paths
                .iter()
                .filter(|p| parent_paths.iter().any(|pp| p.starts_with(pp.as_str())))
                .cloned()
                .collect();
            let Some(bytes) = files.get(name) else {
                out.warnings
                    .push(format!("{name} is delegated but not published"));
                continue;
            };
            let env = Envelope::parse(bytes).map_err(|e| fail(name, e))?;
            let child: TargetsDoc = typed(name, &env)?;
            check_common(name, &child.common, at)?;
            let role_keys: BTreeMap<String, TufKey> = d
                .keyids
                .iter()
                .filter_map(|id| Some((id.clone(), keys.get(id)?.clone())))
                .collect();
            let signed_by =
                check_signatures(&env, &role_keys, d.threshold).map_err(|e| fail(name, e))?;
            let listed = listed_targets(&child, &paths);
            if listed.len() < child.targets.len() {
                out.warnings.push(format!(
                    "{name}: {} target(s) outside its delegated paths ignored",
                    child.targets.len() - listed.len()
                ));
            }
            out.roles
                .push(report(name, &child.common, signed_by, listed));
            queue.push_back((name.clone(), child, paths));
        }
    }
    // A published file no parent delegates (a removed signer's, which the server keeps
    // listing) is not trusted for anything; Notary never walks to it either.
    for role in files.keys() {
        if role.starts_with("targets/") && !seen.contains(role) {
            out.warnings
                .push(format!("{role} is published but not delegated: ignored"));
        }
    }
    Ok(out)
}

fn typed<T: serde::de::DeserializeOwned>(role: &str, env: &Envelope) -> Result<T, VerifyError> {
    let expected = expected_type(role);
    match env.doc_type() {
        Some(t) if t == expected => {}
        Some(t) => return Err(fail(role, format!("_type is {t:?}, expected {expected:?}"))),
        None => return Err(fail(role, "no _type")),
    }
    serde_json::from_value(env.signed.clone()).map_err(|e| fail(role, format!("malformed: {e}")))
}

fn check_common(role: &str, c: &Common, at: OffsetDateTime) -> Result<(), VerifyError> {
    if c.version < 1 {
        return Err(fail(role, format!("version {} is below 1", c.version)));
    }
    let expires = c.expires_at().map_err(|e| fail(role, e))?;
    if expires < at {
        return Err(fail(role, format!("expired at {}", c.expires)));
    }
    Ok(())
}

pub(crate) fn check_role_keys(
    where_: &str,
    name: &str,
    r: &RoleKeys,
    keys: &BTreeMap<String, TufKey>,
) -> Result<(), VerifyError> {
    if r.threshold < 1 {
        return Err(fail(
            where_,
            format!("{name} threshold {} is below 1", r.threshold),
        ));
    }
    if r.keyids.is_empty() {
        return Err(fail(where_, format!("{name} has no keys")));
    }
    if let Some(id) = r.keyids.iter().find(|id| !keys.contains_key(*id)) {
        return Err(fail(
            where_,
            format!("{name} names key {id}, which is not listed"),
        ));
    }
    Ok(())
}

/// The keys and threshold `root` gives the top-level role `name`.
fn role_of<'a>(root: &'a RootDoc, name: &str) -> Result<&'a RoleKeys, VerifyError> {
    root.roles
        .get(name)
        .ok_or_else(|| fail("root", format!("no {name} role")))
}

/// Verifies a top-level role's signatures against the keys root gives it.
fn check_role_signatures(
    role: &str,
    env: &Envelope,
    root: &RootDoc,
    root_keys: &BTreeMap<String, TufKey>,
) -> Result<Vec<String>, VerifyError> {
    let r = role_of(root, role)?;
    let keys: BTreeMap<String, TufKey> = r
        .keyids
        .iter()
        .filter_map(|id| Some((id.clone(), root_keys.get(id)?.clone())))
        .collect();
    check_signatures(env, &keys, r.threshold).map_err(|e| fail(role, e))
}

/// Counts distinct keys of `keys` whose signature over canonical `signed` verifies.
/// Signatures by other keys are ignored, as Notary ignores them.
pub fn check_signatures(
    env: &Envelope,
    keys: &BTreeMap<String, TufKey>,
    threshold: i64,
) -> Result<Vec<String>, String> {
    if env.signatures.is_empty() {
        return Err("no signatures".into());
    }
    let msg = env.signed_bytes()?;
    let mut valid = BTreeSet::new();
    let mut bad = Vec::new();
    for s in &env.signatures {
        let Some(key) = keys.get(&s.keyid) else {
            continue;
        };
        match key.verify(&s.method, &msg, &s.sig) {
            Ok(()) => {
                valid.insert(s.keyid.clone());
            }
            Err(e) => bad.push(format!("signature by {}: {e}", s.keyid)),
        }
    }
    if (valid.len() as i64) < threshold {
        let mut msg = format!(
            "{} valid signature(s) of the {threshold} required",
            valid.len()
        );
        if !bad.is_empty() {
            msg.push_str(&format!(" ({})", bad.join("; ")));
        }
        return Err(msg);
    }
    Ok(valid.into_iter().collect())
}

/// A root key must be a certificate for the GUN, valid at `at`, and PEM-encoded exactly as
/// Go encodes it, since verifiers re-encode it to look its signatures up.
fn check_root_key(key: &TufKey, gun: &str, at: SystemTime) -> Result<(), String> {
    if !key.is_x509() {
        return Err(format!("is {}, not a certificate", key.keytype));
    }
    let chain = x509_cert::Certificate::load_pem_chain(&key.public)
        .map_err(|e| format!("bad certificate: {e}"))?;
    let mut reencoded = String::new();
    for c in &chain {
        let der = der::Encode::to_der(c).map_err(|e| e.to_string())?;
        reencoded.push_str(&pem_encode("CERTIFICATE", &der));
    }
    if reencoded.as_bytes() != key.public.as_slice() {
        return Err("certificate PEM is not in Go's layout, so its key ID cannot match".into());
    }
    let leaf = chain.first().ok_or("no certificate")?;
    check_root_cert(leaf, gun, at)
}

fn with_problems(e: String, problems: &[String]) -> String {
    if problems.is_empty() {
        e
    } else {
        format!("{e}; {}", problems.join("; "))
    }
}

fn listed_targets(doc: &TargetsDoc, paths: &[String]) -> Vec<SignedTarget> {
    doc.targets
        .iter()
        .filter(|(name, _)| paths.iter().any(|p| name.starts_with(p.as_str())))
        .map(|(name, m)| SignedTarget {
            name: name.clone(),
            sha256_hex: m.sha256_hex().unwrap_or_default(),
            length: m.length.max(0) as u64,
        })
        .collect()
}

fn report(
    role: &str,
    c: &Common,
    signed_by: Vec<String>,
    targets: Vec<SignedTarget>,
) -> RoleReport {
    RoleReport {
        role: role.into(),
        version: c.version.max(0) as u64,
        expires: c.expires.clone(),
        signed_by,
        targets,
    }
}
