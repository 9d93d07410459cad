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

/// A target entry a verified role lists but that points at nothing usable: no sha256 of
/// 32 bytes, or no length. Docker refuses such a target; so does the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableTarget {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct RoleReport {
    pub role: String,
    pub version: u64,
    pub expires: String,
    /// Key IDs whose signatures verified.
    pub signed_by: Vec<String>,
    /// Targets this role signs (for targets roles), within its delegated paths, each with
    /// a 32-byte sha256 and a length.
    pub targets: Vec<SignedTarget>,
    /// Targets within its paths that have no usable sha256 or length.
    pub unusable: Vec<UnusableTarget>,
}

/// A delegation below `targets` that does not verify in a way Notary skips (expired, under
/// its threshold, signed by keys it does not list, no keys), or one under such a role. It
/// vouches for nothing: the targets it lists are untrusted, every other role still counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRole {
    pub role: String,
    pub reason: String,
    /// Target names its file lists within its paths (unverified): what it would have
    /// vouched for, so that a check of one of them can say why it is not trusted.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct VerifiedRepo {
    /// Whether the root was checked against pinned keys (else trusted as given).
    pub pinned: bool,
    pub roles: Vec<RoleReport>,
    /// Delegations that do not verify and were left out, with why.
    pub skipped: Vec<SkippedRole>,
    pub warnings: Vec<String>,
}

impl VerifiedRepo {
    /// The skipped role named `role`, if it was skipped.
    pub fn skipped_role(&self, role: &str) -> Option<&SkippedRole> {
        self.skipped.iter().find(|s| s.role == role)
    }
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
    verify_repository_with(gun, files, at, pins, Listing::Targets)
}

/// What a verification lists of each targets role besides its signatures and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Every target, usable or not ([`RoleReport::targets`], [`RoleReport::unusable`]).
    Targets,
    /// No targets (the reports' lists stay empty): for signing, which reads the roles'
    /// text itself, so that a role of 100,000 targets is checked without a map of them.
    /// The same checks pass or fail.
    RolesOnly,
}

/// As [`verify_repository`], listing what `listing` says.
pub fn verify_repository_with(
    gun: &str,
    files: &RepoFiles,
    at: OffsetDateTime,
    pins: &[String],
    listing: Listing,
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
    out.roles.push(report(
        "root",
        &root.common,
        signed_by,
        Vec::new(),
        Vec::new(),
    ));

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
    out.roles.push(report(
        "timestamp",
        &ts.common,
        signed_by,
        Vec::new(),
        Vec::new(),
    ));

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
    // Delegation files the snapshot does not list: Notary never reads them (it has no
    // checksum for them), so neither is anything taken from them.
    let mut unlisted = BTreeSet::new();
    for (role, bytes) in files {
        if matches!(role.as_str(), "root" | "snapshot" | "timestamp") {
            continue;
        }
        let Some(m) = snap.meta.get(role) else {
            if role == "targets" {
                return Err(fail("snapshot", "targets.json is not listed"));
            }
            unlisted.insert(role.clone());
            continue;
        };
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
    out.roles.push(report(
        "snapshot",
        &snap.common,
        signed_by,
        Vec::new(),
        Vec::new(),
    ));

    // Targets, then delegations breadth first, each signed by the keys its parent names.
    let TargetsFile {
        doc: mut targets,
        msg,
        signatures,
    } = read_targets("targets", get("targets")?, listing)?;
    check_common("targets", &targets.common, at)?;
    let signed_by = check_role_signed("targets", &msg, &signatures, &root, &root_keys)?;
    drop((msg, signatures));
    let all_paths = vec![String::new()];
    let (listed, unusable) = listed_targets(&mut targets, &all_paths);
    out.roles.push(report(
        "targets",
        &targets.common,
        signed_by,
        listed,
        unusable,
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
            // As Notary: a threshold below 1 or a key ID without its key makes the parent
            // invalid; a delegation with no keys at all is valid, and signs nothing.
            check_delegation_keys(&parent, name, d.threshold, &d.keyids, &keys)?;
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
            if unlisted.contains(name) {
                skip(
                    &mut out,
                    files,
                    name,
                    "the snapshot does not list it".into(),
                    &paths,
                );
                continue;
            }
            // A file that is not well formed fails the repository, as in Notary.
            let TargetsFile {
                doc: mut child,
                msg,
                signatures,
            } = read_targets(name, bytes, listing)?;
            if child.common.version < 1 {
                return Err(fail(
                    name,
                    format!("version {} is below 1", child.common.version),
                ));
            }
            if signatures.is_empty() {
                return Err(fail(name, "no signatures"));
            }
            // Signatures, then expiry (Notary's order): a failure skips this delegation and
            // everything under it, as Notary skips them; the rest of the repository stands.
            let role_keys: BTreeMap<String, TufKey> = d
                .keyids
                .iter()
                .filter_map(|id| Some((id.clone(), keys.get(id)?.clone())))
                .collect();
            let checked = if d.keyids.is_empty() {
                Err("it has no keys (a delegation whose keys were all removed)".to_string())
            } else {
                check_signed(&msg, &signatures, &role_keys, d.threshold)
                    .map_err(|e| format!("signatures: {e}"))
            }
            .and_then(|signed_by| match child.common.expires_at() {
                Ok(t) if t < at => Err(format!("expired at {}", child.common.expires)),
                Ok(_) => Ok(signed_by),
                Err(e) => Err(e),
            });
            let signed_by = match checked {
                Ok(s) => s,
                Err(reason) => {
                    skip(&mut out, files, name, reason, &paths);
                    continue;
                }
            };
            let all = child.targets.len();
            let (listed, unusable) = listed_targets(&mut child, &paths);
            if listed.len() + unusable.len() < all {
                out.warnings.push(format!(
                    "{name}: {} target(s) outside its delegated paths ignored",
                    all - listed.len() - unusable.len()
                ));
            }
            out.roles
                .push(report(name, &child.common, signed_by, listed, unusable));
            queue.push_back((name.clone(), child, paths));
        }
    }
    // A published file no parent delegates (a removed signer's, which the server keeps
    // listing) is not trusted for anything; Notary never walks to it either. Nor is one the
    // snapshot does not list.
    for role in files.keys() {
        if !role.starts_with("targets/") || out.skipped_role(role).is_some() {
            continue;
        }
        if unlisted.contains(role) {
            out.warnings.push(format!(
                "{role} is published but neither listed in the snapshot nor delegated: ignored"
            ));
        } else if !seen.contains(role) {
            out.warnings
                .push(format!("{role} is published but not delegated: ignored"));
        }
    }
    Ok(out)
}

/// Records `name` as skipped for `reason`, with the published roles under it (Notary does
/// not walk below a role it skipped), and what each lists within `paths`.
fn skip(out: &mut VerifiedRepo, files: &RepoFiles, name: &str, reason: String, paths: &[String]) {
    let listed = |role: &str| -> Vec<String> {
        files
            .get(role)
            .and_then(|b| RawEnvelope::parse(b).ok())
            .and_then(|e| serde_json::from_str::<TargetsDoc>(e.signed.get()).ok())
            .map(|doc| {
                doc.targets
                    .into_keys()
                    .filter(|t| paths.iter().any(|p| t.starts_with(p.as_str())))
                    .collect()
            })
            .unwrap_or_default()
    };
    out.skipped.push(SkippedRole {
        role: name.into(),
        reason,
        targets: listed(name),
    });
    let prefix = format!("{name}/");
    for below in files.keys().filter(|r| r.starts_with(&prefix)) {
        if out.skipped_role(below).is_none() {
            out.skipped.push(SkippedRole {
                role: below.clone(),
                reason: format!("it is under {name}, which is skipped"),
                targets: listed(below),
            });
        }
    }
}

/// Every hash of every target must be base64 (Notary fails to read the role otherwise).
fn check_target_hashes(role: &str, doc: &TargetsDoc) -> Result<(), VerifyError> {
    for (name, m) in &doc.targets {
        m.check_base64()
            .map_err(|e| fail(role, format!("malformed: target {name:?}: {e}")))?;
    }
    Ok(())
}

/// [`check_target_hashes`] over the text of a targets map, each entry read and dropped in
/// turn (a later entry of one name replaces an earlier one in a map, so only the last of a
/// name counts, as there).
fn check_target_hashes_text(role: &str, targets: &str) -> Result<(), VerifyError> {
    let malformed = |e: serde_json::Error| fail(role, format!("malformed: {e}"));
    // Why each failing name fails; only a name's last entry counts (a later good one clears
    // it). Looked up by name: every entry failing costs n log n, not n². An entry that is no
    // target at all fails the role, as in a typed map.
    let mut bad: BTreeMap<String, String> = BTreeMap::new();
    let mut unreadable = None;
    super::cjson::for_each_member(targets, |name, raw| match serde_json::from_str::<FileMeta>(
        raw.get(),
    )
    .map(|m| m.check_base64())
    {
        Err(e) => {
            unreadable.get_or_insert(e);
        }
        Ok(Err(e)) => {
            bad.insert(name.0.into_owned(), e);
        }
        Ok(Ok(())) if !bad.is_empty() => {
            bad.remove(name.0.as_ref());
        }
        Ok(Ok(())) => {}
    })
    .map_err(malformed)?;
    if let Some(e) = unreadable {
        return Err(malformed(e));
    }
    match bad.into_iter().next() {
        Some((name, e)) => Err(fail(role, format!("malformed: target {name:?}: {e}"))),
        None => Ok(()),
    }
}

fn typed<T: serde::de::DeserializeOwned>(role: &str, env: &Envelope) -> Result<T, VerifyError> {
    let expected = expected_type(role);
    match env.doc_type() {
        Some(t) if t == expected => {}
        Some(t) => return Err(fail(role, format!("_type is {t:?}, expected {expected:?}"))),
        None => return Err(fail(role, "no _type")),
    }
    // From the tree itself, not a copy of it (a 100,000-target role is a big tree).
    T::deserialize(&env.signed).map_err(|e| fail(role, format!("malformed: {e}")))
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

/// A delegation entry as Notary checks it in its parent: threshold at least 1, every key ID
/// listed in the parent's keys. No key IDs at all is allowed (the role then verifies
/// nothing and is skipped).
fn check_delegation_keys(
    parent: &str,
    name: &str,
    threshold: i64,
    keyids: &[String],
    keys: &BTreeMap<String, TufKey>,
) -> Result<(), VerifyError> {
    if threshold < 1 {
        return Err(fail(
            parent,
            format!("{name} threshold {threshold} is below 1"),
        ));
    }
    if let Some(id) = keyids.iter().find(|id| !keys.contains_key(*id)) {
        return Err(fail(
            parent,
            format!("{name} names key {id}, which is not listed"),
        ));
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
    let msg = env.signed_bytes().map_err(|e| fail(role, e))?;
    check_role_signed(role, &msg, &env.signatures, root, root_keys)
}

fn check_role_signed(
    role: &str,
    msg: &[u8],
    signatures: &[Signature],
    root: &RootDoc,
    root_keys: &BTreeMap<String, TufKey>,
) -> Result<Vec<String>, VerifyError> {
    let r = role_of(root, role)?;
    let keys: BTreeMap<String, TufKey> = r
        .keyids
        .iter()
        .filter_map(|id| Some((id.clone(), root_keys.get(id)?.clone())))
        .collect();
    check_signed(msg, signatures, &keys, r.threshold).map_err(|e| fail(role, e))
}

/// A targets role (top-level or delegated) read from its text, never as a tree: its typed
/// document, the canonical bytes of `signed` and the signatures (a role of 100,000 targets
/// would be a tree of some 90 MiB).
struct TargetsFile<'a> {
    doc: TargetsDoc,
    /// The file's own bytes when its `signed` is canonical, as Notary writes it.
    msg: std::borrow::Cow<'a, [u8]>,
    signatures: Vec<Signature>,
}

fn read_targets<'a>(
    role: &str,
    bytes: &'a [u8],
    listing: Listing,
) -> Result<TargetsFile<'a>, VerifyError> {
    let raw = RawEnvelope::parse(bytes).map_err(|e| fail(role, e))?;
    let text = raw.signed.get();
    let expected = expected_type(role);
    let doc_type = raw
        .doc_type()
        .map_err(|e| fail(role, format!("malformed: {e}")))?;
    match doc_type.as_deref() {
        Some(t) if t == expected => {}
        Some(t) => return Err(fail(role, format!("_type is {t:?}, expected {expected:?}"))),
        None => return Err(fail(role, "no _type")),
    }
    let malformed = |e: serde_json::Error| fail(role, format!("malformed: {e}"));
    let doc = match listing {
        Listing::Targets => {
            let doc: TargetsDoc = serde_json::from_str(text).map_err(malformed)?;
            check_target_hashes(role, &doc)?;
            doc
        }
        Listing::RolesOnly => {
            let head: TargetsHead = serde_json::from_str(text).map_err(malformed)?;
            let members = super::cjson::members(text).map_err(malformed)?;
            if let Some(targets) = super::cjson::last(&members, "targets") {
                check_target_hashes_text(role, targets.get())?;
            }
            TargetsDoc {
                common: head.common(),
                targets: BTreeMap::new(),
                delegations: head.delegations,
            }
        }
    };
    let msg = super::cjson::canonical(text).map_err(|e| fail(role, e))?;
    Ok(TargetsFile {
        doc,
        msg,
        signatures: raw.signatures,
    })
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
    check_signed(&env.signed_bytes()?, &env.signatures, keys, threshold)
}

/// As [`check_signatures`], for `signed`'s canonical bytes `msg` and its `signatures`.
pub fn check_signed(
    msg: &[u8],
    signatures: &[Signature],
    keys: &BTreeMap<String, TufKey>,
    threshold: i64,
) -> Result<Vec<String>, String> {
    if signatures.is_empty() {
        return Err("no signatures".into());
    }
    let mut valid = BTreeSet::new();
    let mut bad = Vec::new();
    for s in signatures {
        let Some(key) = keys.get(&s.keyid) else {
            continue;
        };
        match key.verify(&s.method, msg, &s.sig) {
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

/// The targets of `doc` within `paths`, usable or not; the map moves out of `doc` (its
/// names into the lists, each entry freed as it is read: a role may list 1,000,000).
fn listed_targets(
    doc: &mut TargetsDoc,
    paths: &[String],
) -> (Vec<SignedTarget>, Vec<UnusableTarget>) {
    let targets = std::mem::take(&mut doc.targets);
    let mut usable = Vec::with_capacity(targets.len());
    let mut unusable = Vec::new();
    for (name, m) in targets
        .into_iter()
        .filter(|(name, _)| paths.iter().any(|p| name.starts_with(p.as_str())))
    {
        match m.usable_target() {
            Ok((sha256_hex, length)) => usable.push(SignedTarget {
                name,
                sha256_hex,
                length,
            }),
            Err(reason) => unusable.push(UnusableTarget { name, reason }),
        }
    }
    usable.shrink_to_fit();
    (usable, unusable)
}

fn report(
    role: &str,
    c: &Common,
    signed_by: Vec<String>,
    targets: Vec<SignedTarget>,
    unusable: Vec<UnusableTarget>,
) -> RoleReport {
    RoleReport {
        role: role.into(),
        version: c.version.max(0) as u64,
        expires: c.expires.clone(),
        signed_by,
        targets,
        unusable,
    }
}

#[cfg(test)]
mod tests {
    //! Mutated repositories made in memory with P-256 test keys (a self-signed root
    //! certificate as Notary makes them), verified as Notary would decide, or, where a test
    //! name says so, more strictly on purpose.

    use super::*;
    use crate::tuf::cert::{assemble, root_tbs};
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::ecdsa::{signature::Signer, Signature as EcSig, SigningKey};
    use p256::pkcs8::EncodePublicKey;
    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};
    use time::format_description::well_known::Rfc3339;
    use time::Duration;

    const GUN: &str = "example.com/app";
    const ROOT: usize = 0;
    const TARGETS: usize = 1;
    const SNAPSHOT: usize = 2;
    const TIMESTAMP: usize = 3;
    const RELEASES: usize = 4;
    const ALICE: usize = 5;
    const STRANGER: usize = 6;

    struct K {
        sk: SigningKey,
        tuf: TufKey,
        id: String,
    }

    fn spki(sk: &SigningKey) -> Vec<u8> {
        sk.verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    fn plain_key(seed: u8) -> K {
        let sk = SigningKey::from_slice(&[seed; 32]).unwrap();
        let tuf = TufKey::ecdsa(spki(&sk));
        let id = tuf.key_id();
        K { sk, tuf, id }
    }

    fn root_key(seed: u8, cn: &str) -> K {
        let sk = SigningKey::from_slice(&[seed; 32]).unwrap();
        let now = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let tbs = root_tbs(cn, &spki(&sk), now).unwrap();
        let sig: EcSig = sk
            .sign_prehash(&Sha256::digest(der::Encode::to_der(&tbs).unwrap()))
            .unwrap();
        let cert = assemble(tbs, &sig.to_bytes()).unwrap();
        let tuf = TufKey::ecdsa_x509(&cert);
        let id = tuf.key_id();
        K { sk, tuf, id }
    }

    fn keys_with_root_cn(cn: &str) -> Vec<K> {
        let mut v = vec![root_key(1, cn)];
        v.extend((2..=7).map(plain_key));
        v
    }

    fn when(days: i64) -> String {
        (OffsetDateTime::now_utc() + Duration::days(days))
            .replace_nanosecond(0)
            .unwrap()
            .format(&Rfc3339)
            .unwrap()
    }

    fn meta(content: &[u8]) -> Value {
        json!({"hashes": {"sha256": B64.encode(Sha256::digest(content))}, "length": content.len()})
    }

    /// The signed parts of a repository, who signs each, and how it is assembled.
    struct Repo {
        signed: BTreeMap<String, Value>,
        signers: BTreeMap<String, Vec<usize>>,
        method: String,
        /// Roles left out of the snapshot's meta.
        unlisted: Vec<String>,
        /// (role, from, to): text replaced in a role's file after it was signed.
        served: Vec<(String, String, String)>,
        /// (role, delta): added to the length the snapshot gives a role.
        length_delta: Vec<(String, i64)>,
    }

    /// root, targets (v1, delegating releases and alice), targets/releases (v2),
    /// targets/alice (v2 and a1), all valid for a year.
    fn repo(k: &[K]) -> Repo {
        let id = |i: usize| k[i].id.clone();
        let mut signed = BTreeMap::new();
        signed.insert(
            "root".to_string(),
            json!({"_type": "Root", "consistent_snapshot": false, "expires": when(365), "version": 1,
                "keys": {id(ROOT): k[ROOT].tuf.to_value(), id(TARGETS): k[TARGETS].tuf.to_value(),
                         id(SNAPSHOT): k[SNAPSHOT].tuf.to_value(), id(TIMESTAMP): k[TIMESTAMP].tuf.to_value()},
                "roles": {"root": {"keyids": [id(ROOT)], "threshold": 1},
                          "targets": {"keyids": [id(TARGETS)], "threshold": 1},
                          "snapshot": {"keyids": [id(SNAPSHOT)], "threshold": 1},
                          "timestamp": {"keyids": [id(TIMESTAMP)], "threshold": 1}}}),
        );
        signed.insert(
            "targets".to_string(),
            json!({"_type": "Targets", "expires": when(365), "version": 1, "targets": {"v1": meta(b"one")},
                "delegations": {"keys": {id(RELEASES): k[RELEASES].tuf.to_value(), id(ALICE): k[ALICE].tuf.to_value()},
                    "roles": [
                        {"name": "targets/releases", "keyids": [id(RELEASES)], "threshold": 1, "paths": [""]},
                        {"name": "targets/alice", "keyids": [id(ALICE)], "threshold": 1, "paths": [""]}]}}),
        );
        signed.insert(
            "targets/releases".to_string(),
            json!({"_type": "Targets", "expires": when(365), "version": 1, "targets": {"v2": meta(b"two")},
                "delegations": {"keys": {}, "roles": []}}),
        );
        signed.insert(
            "targets/alice".to_string(),
            json!({"_type": "Targets", "expires": when(365), "version": 1,
                "targets": {"v2": meta(b"two"), "a1": meta(b"alice")},
                "delegations": {"keys": {}, "roles": []}}),
        );
        let signers = [
            ("root", ROOT),
            ("targets", TARGETS),
            ("snapshot", SNAPSHOT),
            ("timestamp", TIMESTAMP),
            ("targets/releases", RELEASES),
            ("targets/alice", ALICE),
        ]
        .into_iter()
        .map(|(r, i)| (r.to_string(), vec![i]))
        .collect();
        Repo {
            signed,
            signers,
            method: "ecdsa".into(),
            unlisted: Vec::new(),
            served: Vec::new(),
            length_delta: Vec::new(),
        }
    }

    impl Repo {
        fn sign(&self, k: &[K], role: &str, signed: &Value) -> Vec<u8> {
            let msg = crate::tuf::cjson::to_vec(signed).unwrap();
            let signatures = self
                .signers
                .get(role)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|i| {
                    let sig: EcSig = k[i].sk.sign(&msg);
                    Signature {
                        keyid: k[i].id.clone(),
                        method: self.method.clone(),
                        sig: sig.to_bytes().to_vec(),
                    }
                })
                .collect();
            Envelope {
                signed: signed.clone(),
                signatures,
            }
            .to_bytes()
            .unwrap()
        }

        /// Signs every role, then a snapshot over them and a timestamp over that.
        fn files(&self, k: &[K]) -> RepoFiles {
            let mut files = RepoFiles::new();
            for (role, signed) in &self.signed {
                let mut bytes = self.sign(k, role, signed);
                for (_, from, to) in self.served.iter().filter(|(r, _, _)| r == role) {
                    let text = String::from_utf8(bytes).unwrap();
                    assert!(text.contains(from.as_str()), "{from} not in {role}");
                    bytes = text.replace(from.as_str(), to).into_bytes();
                }
                files.insert(role.clone(), bytes);
            }
            let mut snap_meta = serde_json::Map::new();
            for (role, bytes) in &files {
                if !self.unlisted.contains(role) {
                    let mut m = meta(bytes);
                    for (_, d) in self.length_delta.iter().filter(|(r, _)| r == role) {
                        m["length"] = json!(bytes.len() as i64 + d);
                    }
                    snap_meta.insert(role.clone(), m);
                }
            }
            let snap =
                json!({"_type": "Snapshot", "expires": when(365), "version": 1, "meta": snap_meta});
            let snap = self.sign(k, "snapshot", &snap);
            let ts = json!({"_type": "Timestamp", "expires": when(14), "version": 1,
                "meta": {"snapshot": meta(&snap)}});
            files.insert("timestamp".into(), self.sign(k, "timestamp", &ts));
            files.insert("snapshot".into(), snap);
            files
        }

        fn role(&mut self, role: &str) -> &mut Value {
            self.signed.get_mut(role).unwrap()
        }
    }

    /// A targets map read entry by entry (signing's mode): a name's last entry counts, the
    /// first failing name in order is reported, and a map of 100,000 failing entries is read
    /// in n log n (a quadratic scan of the failures so far took minutes here).
    #[test]
    fn target_hashes_from_text_last_entry_counts() {
        let good = r#"{"hashes":{"sha256":"AA=="},"length":1}"#;
        let bad = r#"{"hashes":{"sha256":"not base64!"},"length":1}"#;
        let map = |entries: &[(&str, &str)]| {
            let inner: Vec<String> = entries.iter().map(|(n, m)| format!("{n:?}:{m}")).collect();
            format!("{{{}}}", inner.join(","))
        };
        assert!(check_target_hashes_text("targets", &map(&[("a", bad), ("a", good)])).is_ok());
        let e = check_target_hashes_text("targets", &map(&[("a", good), ("a", bad)])).unwrap_err();
        assert!(e.reason.contains("target \"a\""), "{e}");
        let e = check_target_hashes_text("targets", &map(&[("z", bad), ("b", bad), ("c", good)]))
            .unwrap_err();
        assert!(e.reason.contains("target \"b\""), "{e}");
        assert!(check_target_hashes_text("targets", "[]").is_err());
        let names: Vec<String> = (0..100_000).map(|i| format!("t{i:06}")).collect();
        let many: Vec<(&str, &str)> = names.iter().rev().map(|n| (n.as_str(), bad)).collect();
        let e = check_target_hashes_text("targets", &map(&many)).unwrap_err();
        assert!(e.reason.contains("target \"t000000\""), "{e}");
    }

    /// Verified as inspect does; and as signing does (no targets listed), which must pass or
    /// fail alike, with the same roles, skipped roles and warnings.
    fn verify(files: &RepoFiles) -> Result<VerifiedRepo, VerifyError> {
        let now = OffsetDateTime::now_utc();
        let full = verify_repository(GUN, files, now, &[]);
        let roles_only = verify_repository_with(GUN, files, now, &[], Listing::RolesOnly);
        match (&full, roles_only) {
            (Ok(f), Ok(r)) => {
                let names = |v: &VerifiedRepo| {
                    let roles = v
                        .roles
                        .iter()
                        .map(|r| (r.role.clone(), r.version, r.signed_by.clone()));
                    (roles.collect::<Vec<_>>(), v.skipped.clone(), v.pinned)
                };
                assert_eq!(names(f), names(&r));
                assert!(r
                    .roles
                    .iter()
                    .all(|x| x.targets.is_empty() && x.unusable.is_empty()));
                let outside = |w: &&String| w.contains("outside its delegated paths");
                let warnings = |v: &VerifiedRepo| -> Vec<String> {
                    v.warnings.iter().filter(|w| !outside(w)).cloned().collect()
                };
                assert_eq!(warnings(f), warnings(&r));
            }
            (Err(f), Err(r)) => assert_eq!(f, &r),
            (f, r) => panic!("verified as inspect does: {f:?}; as signing does: {r:?}"),
        }
        full
    }

    fn targets_of<'a>(v: &'a VerifiedRepo, role: &str) -> Vec<&'a str> {
        v.roles
            .iter()
            .filter(|r| r.role == role)
            .flat_map(|r| r.targets.iter().map(|t| t.name.as_str()))
            .collect()
    }

    #[test]
    fn the_unmutated_repository_verifies() {
        let k = keys_with_root_cn(GUN);
        let v = verify(&repo(&k).files(&k)).unwrap();
        assert_eq!(targets_of(&v, "targets"), ["v1"]);
        assert_eq!(targets_of(&v, "targets/releases"), ["v2"]);
        assert_eq!(targets_of(&v, "targets/alice"), ["a1", "v2"]);
        assert!(v.skipped.is_empty(), "{:?}", v.skipped);
        let t = &v
            .roles
            .iter()
            .find(|r| r.role == "targets")
            .unwrap()
            .targets[0];
        assert_eq!(t.sha256_hex, crate::tuf::keys::hex(&Sha256::digest(b"one")));
        assert_eq!(t.length, 3);
    }

    #[test]
    fn a_target_without_a_usable_sha256_or_length_is_unusable_not_a_digest() {
        let k = keys_with_root_cn(GUN);
        let short = B64.encode([7u8; 16]);
        let long = B64.encode([7u8; 48]);
        for (entry, why) in [
            (json!({"hashes": {}, "length": 3}), "no sha256"),
            (
                json!({"hashes": {"sha512": B64.encode([1u8; 64])}, "length": 3}),
                "no sha256",
            ),
            (json!({"length": 3}), "no sha256"),
            (
                json!({"hashes": {"sha256": short}, "length": 3}),
                "16 bytes, not 32",
            ),
            (
                json!({"hashes": {"sha256": long}, "length": 3}),
                "48 bytes, not 32",
            ),
            (
                json!({"hashes": {"sha256": B64.encode([7u8; 32])}}),
                "no length",
            ),
            (
                json!({"hashes": {"sha256": B64.encode([7u8; 32])}, "length": -1}),
                "negative",
            ),
        ] {
            let mut r = repo(&k);
            r.role("targets")["targets"]["v1"] = entry.clone();
            let v = verify(&r.files(&k)).unwrap_or_else(|e| panic!("{entry}: {e}"));
            let targets = v.roles.iter().find(|r| r.role == "targets").unwrap();
            assert!(targets.targets.is_empty(), "{entry}: {:?}", targets.targets);
            assert_eq!(targets.unusable.len(), 1, "{entry}");
            assert_eq!(targets.unusable[0].name, "v1");
            assert!(
                targets.unusable[0].reason.contains(why),
                "{entry}: {}",
                targets.unusable[0].reason
            );
            // Other roles' targets are unaffected.
            assert_eq!(targets_of(&v, "targets/releases"), ["v2"]);
        }
    }

    #[test]
    fn a_sha256_that_is_not_base64_fails_the_repository_as_notary_does() {
        let k = keys_with_root_cn(GUN);
        for role in ["targets", "targets/alice"] {
            let mut r = repo(&k);
            r.role(role)["targets"]["bad"] =
                json!({"hashes": {"sha256": "not base64!"}, "length": 3});
            let e = verify(&r.files(&k)).unwrap_err();
            assert_eq!(e.role, role);
            assert!(e.reason.contains("not base64"), "{e}");
        }
    }

    fn skipped_for(edit: impl FnOnce(&mut Repo), k: &[K], role: &str, why: &str) -> VerifiedRepo {
        let mut r = repo(k);
        edit(&mut r);
        let v = verify(&r.files(k)).unwrap_or_else(|e| panic!("{role} {why}: {e}"));
        let s = v
            .skipped_role(role)
            .unwrap_or_else(|| panic!("{role} not skipped ({why}): {:?}", v.skipped));
        assert!(s.reason.contains(why), "{}", s.reason);
        assert!(targets_of(&v, role).is_empty());
        // The other roles verify, with their targets.
        assert_eq!(targets_of(&v, "targets"), ["v1"]);
        v
    }

    #[test]
    fn a_failing_delegation_is_skipped_and_the_others_verify_as_in_notary() {
        let k = keys_with_root_cn(GUN);
        // Expired.
        let v = skipped_for(
            |r| r.role("targets/alice")["expires"] = json!(when(-1)),
            &k,
            "targets/alice",
            "expired at",
        );
        assert_eq!(targets_of(&v, "targets/releases"), ["v2"]);
        let s = v.skipped_role("targets/alice").unwrap();
        assert_eq!(s.targets, ["a1", "v2"]);
        // Signed by a key it does not list.
        skipped_for(
            |r| {
                r.signers.insert("targets/alice".into(), vec![STRANGER]);
            },
            &k,
            "targets/alice",
            "0 valid signature(s) of the 1 required",
        );
        // Under its threshold.
        skipped_for(
            |r| r.role("targets")["delegations"]["roles"][1]["threshold"] = json!(2),
            &k,
            "targets/alice",
            "1 valid signature(s) of the 2 required",
        );
        // No keys at all: notary writes `null` for a delegation whose keys were removed.
        for none in [json!([]), json!(null)] {
            skipped_for(
                |r| r.role("targets")["delegations"]["roles"][1]["keyids"] = none,
                &k,
                "targets/alice",
                "no keys",
            );
        }
        // targets/releases itself.
        skipped_for(
            |r| r.role("targets/releases")["expires"] = json!(when(-1)),
            &k,
            "targets/releases",
            "expired",
        );
    }

    #[test]
    fn roles_under_a_skipped_delegation_are_skipped_too() {
        let k = keys_with_root_cn(GUN);
        let v = skipped_for(
            |r| {
                let alice = r.role("targets/alice");
                alice["expires"] = json!(when(-1));
                alice["delegations"] = json!({"keys": {k[STRANGER].id.clone(): k[STRANGER].tuf.to_value()},
                    "roles": [{"name": "targets/alice/sub", "keyids": [k[STRANGER].id.clone()], "threshold": 1, "paths": [""]}]});
                r.signed.insert(
                    "targets/alice/sub".into(),
                    json!({"_type": "Targets", "expires": when(365), "version": 1,
                        "targets": {"s1": meta(b"sub")}, "delegations": {"keys": {}, "roles": []}}),
                );
                r.signers.insert("targets/alice/sub".into(), vec![STRANGER]);
            },
            &k,
            "targets/alice",
            "expired",
        );
        let sub = v.skipped_role("targets/alice/sub").unwrap();
        assert!(sub.reason.contains("under targets/alice"), "{}", sub.reason);
        assert_eq!(sub.targets, ["s1"]);
        assert!(v.warnings.iter().all(|w| !w.contains("targets/alice/sub")));
    }

    #[test]
    fn targets_itself_failing_still_fails_everything() {
        let k = keys_with_root_cn(GUN);
        let mut r = repo(&k);
        r.role("targets")["expires"] = json!(when(-1));
        let e = verify(&r.files(&k)).unwrap_err();
        assert_eq!(e.role, "targets");
        assert!(e.reason.contains("expired"), "{e}");
        let mut r = repo(&k);
        r.signers.insert("targets".into(), vec![STRANGER]);
        assert_eq!(verify(&r.files(&k)).unwrap_err().role, "targets");
    }

    #[test]
    fn a_delegation_with_no_signatures_or_a_bad_entry_fails_everything_as_in_notary() {
        let k = keys_with_root_cn(GUN);
        let mut r = repo(&k);
        r.signers.insert("targets/alice".into(), vec![]);
        let e = verify(&r.files(&k)).unwrap_err();
        assert_eq!(
            (e.role.as_str(), e.reason.as_str()),
            ("targets/alice", "no signatures")
        );
        // A threshold below 1, or a key ID without its key, makes the parent invalid.
        let mut r = repo(&k);
        r.role("targets")["delegations"]["roles"][1]["threshold"] = json!(0);
        assert_eq!(verify(&r.files(&k)).unwrap_err().role, "targets");
        let mut r = repo(&k);
        r.role("targets")["delegations"]["roles"][1]["keyids"] = json!(["ab".repeat(32)]);
        assert!(verify(&r.files(&k))
            .unwrap_err()
            .reason
            .contains("which is not listed"));
    }

    #[test]
    fn signature_methods_are_compared_lower_cased_as_in_notary() {
        let k = keys_with_root_cn(GUN);
        let mut r = repo(&k);
        r.method = "ECDSA".into();
        let v = verify(&r.files(&k)).unwrap();
        assert!(v.skipped.is_empty());
        assert_eq!(targets_of(&v, "targets/releases"), ["v2"]);
        r.method = "EdDSA".into();
        assert!(verify(&r.files(&k))
            .unwrap_err()
            .reason
            .contains("does not fit key type"));
    }

    #[test]
    fn a_root_certificate_for_a_wildcard_of_the_gun_is_accepted_as_in_notary() {
        for cn in ["example.com/*", "example.com/ap*", "example.*"] {
            let k = keys_with_root_cn(cn);
            verify(&repo(&k).files(&k)).unwrap_or_else(|e| panic!("{cn}: {e}"));
        }
        for cn in ["other.com/*", "example.com/app/*", "example.com/ap"] {
            let k = keys_with_root_cn(cn);
            let e = verify(&repo(&k).files(&k)).unwrap_err();
            assert!(e.reason.contains("is not the GUN"), "{cn}: {e}");
        }
    }

    #[test]
    fn stricter_than_notary_a_root_certificate_cn_of_stars_only_is_refused() {
        for cn in ["*", "**"] {
            let k = keys_with_root_cn(cn);
            let e = verify(&repo(&k).files(&k)).unwrap_err();
            assert_eq!(e.role, "root");
            assert!(e.reason.contains("is not the GUN"), "{cn}: {e}");
        }
    }

    #[test]
    fn a_published_file_neither_listed_nor_delegated_is_ignored_as_in_notary() {
        let k = keys_with_root_cn(GUN);
        let mut r = repo(&k);
        r.signed.insert(
            "targets/stray".into(),
            json!({"_type": "Targets", "expires": when(365), "version": 1,
                "targets": {"v1": meta(b"evil")}, "delegations": {"keys": {}, "roles": []}}),
        );
        r.unlisted.push("targets/stray".into());
        let v = verify(&r.files(&k)).unwrap();
        assert!(v.skipped.is_empty());
        assert!(
            v.warnings
                .iter()
                .any(|w| w.contains("targets/stray") && w.contains("ignored")),
            "{:?}",
            v.warnings
        );
        // Delegated but not in the snapshot: Notary never reads it; it vouches for nothing.
        let mut r = repo(&k);
        r.unlisted.push("targets/alice".into());
        let v = verify(&r.files(&k)).unwrap();
        let s = v.skipped_role("targets/alice").unwrap();
        assert!(s.reason.contains("snapshot does not list"), "{}", s.reason);
        // targets itself must be listed.
        let mut r = repo(&k);
        r.unlisted.push("targets".into());
        assert_eq!(verify(&r.files(&k)).unwrap_err().role, "snapshot");
    }

    #[test]
    fn stricter_than_notary_snapshot_meta_lengths_must_be_exact() {
        let k = keys_with_root_cn(GUN);
        for (role, d) in [("targets/alice", 1), ("targets", 1), ("root", -1)] {
            let mut r = repo(&k);
            r.length_delta.push((role.into(), d));
            let e = verify(&r.files(&k)).unwrap_err();
            assert_eq!(e.role, "snapshot", "{role}: {e}");
            assert!(e.reason.contains("length is"), "{role}: {e}");
        }
    }

    /// Go reads numbers as float64: a served integer above 2^53 that rounds to the signed
    /// one verifies in notary; here the signature covers the exact integer.
    #[test]
    fn stricter_than_notary_an_integer_above_2_53_served_other_than_signed_is_refused() {
        let k = keys_with_root_cn(GUN);
        let mut r = repo(&k);
        r.role("targets/alice")["targets"]["big"] = json!({"hashes": {"sha256": B64.encode([1u8; 32])}, "length": 9_007_199_254_740_992_i64});
        r.served.push((
            "targets/alice".into(),
            "9007199254740992".into(),
            "9007199254740993".into(),
        ));
        let v = verify(&r.files(&k)).unwrap();
        let s = v.skipped_role("targets/alice").unwrap();
        assert!(s.reason.contains("0 valid signature(s)"), "{}", s.reason);
        // The same in targets fails the repository.
        let mut r = repo(&k);
        r.role("targets")["targets"]["big"] = json!({"hashes": {"sha256": B64.encode([1u8; 32])}, "length": 9_007_199_254_740_992_i64});
        r.served.push((
            "targets".into(),
            "9007199254740992".into(),
            "9007199254740993".into(),
        ));
        assert_eq!(verify(&r.files(&k)).unwrap_err().role, "targets");
    }
}
