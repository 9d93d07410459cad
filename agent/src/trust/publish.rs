//! Signing roles through the guard and publishing them: the typed edit of a role, the
//! signatures, the atomic multipart update, and settling the versions once the server took it.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::cache::TrustContext;
use super::fetch::{fetch_with, Repo};
use super::init::init;
use super::rotation::{held_root_keys, root_due, sign_next_root};
use crate::error::{Error, Result};
use crate::guard::{Guard, Receipt};
use crate::keys::KeyEntry;
use crate::trust::notary::NotaryClient;
use crate::trust::TARGETS_LIFETIME;
use crate::tuf::cjson;
use crate::tuf::edit;
use crate::tuf::metadata::{Envelope, RawEnvelope, RootDoc};

pub(crate) fn expires(lifetime: time::Duration) -> Result<String> {
    (OffsetDateTime::now_utc() + lifetime)
        .format(&Rfc3339)
        .map_err(Error::internal)
}

/// The error for an edit of `role`'s document that its shape does not allow (a member that
/// must be an object or a list is not): the document came from the server.
pub(crate) fn malformed(role: &str) -> impl Fn(String) -> Error + '_ {
    move |e| Error::Refused(format!("cannot edit {role}: {e}"))
}

/// Makes `signed` (a document of `role`) its next version, expiring `lifetime` from now.
pub(crate) fn next_version(signed: &mut Value, role: &str, lifetime: time::Duration) -> Result<()> {
    let version = signed
        .get("version")
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::Refused(format!("cannot edit {role}: it has no version")))?;
    let next = version.checked_add(1).ok_or_else(|| {
        Error::Refused(format!("cannot edit {role}: version {version} is the last"))
    })?;
    edit::set(signed, &["version"], json!(next)).map_err(malformed(role))?;
    edit::set(signed, &["expires"], json!(expires(lifetime)?)).map_err(malformed(role))
}

pub(crate) fn unsigned(signed: Value) -> Vec<u8> {
    // Built by hand: `json!` would serialise `signed` into a copy of the whole tree (a
    // second 100,000-target tree for a big targets role).
    let mut envelope = serde_json::Map::new();
    envelope.insert("signed".into(), signed);
    envelope.insert("signatures".into(), Value::Array(Vec::new()));
    // A Value of strings, numbers and objects always serialises.
    serde_json::to_vec(&Value::Object(envelope)).unwrap_or_default()
}

/// Keys of `role`/`gun` on the agent's tokens.
pub(crate) fn held<'a>(
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
pub(crate) fn listings(keys: &[KeyEntry], canonical: &str) -> Vec<KeyEntry> {
    keys.iter()
        .filter(|k| k.canonical_id == canonical)
        .cloned()
        .collect()
}

/// Signs `document` for a publish this agent makes (the guard holds its version as pending
/// until [`publish`] settles it); the receipt joins `receipts`.
pub(crate) async fn sign_doc(
    guard: &Guard,
    keys: Vec<KeyEntry>,
    document: Vec<u8>,
    role: &str,
    gun: &str,
    previous: Option<&[u8]>,
    receipts: &mut Vec<Receipt>,
) -> Result<crate::guard::Signed> {
    let previous = previous.map(<[u8]>::to_vec);
    sign_doc_owned(guard, keys, document, role, gun, previous, receipts).await
}

/// As [`sign_doc`], the previous version given, not copied (a role may be 90 MiB).
pub(crate) async fn sign_doc_owned(
    guard: &Guard,
    keys: Vec<KeyEntry>,
    document: Vec<u8>,
    role: &str,
    gun: &str,
    previous: Option<Vec<u8>>,
    receipts: &mut Vec<Receipt>,
) -> Result<crate::guard::Signed> {
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
pub(crate) async fn publish(
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

/// A role of `len` bytes unsigned must stay readable once signed: Notary's clients (and
/// this agent) refuse a metadata file over `cap` (100 MiB), so a role published past it
/// could never be read or signed again. Refused before anything is signed.
fn check_role_size(role: &str, len: usize, cap: usize) -> Result<()> {
    // Room for the signatures the file gains (a few hundred bytes each).
    const SIGNATURES: usize = 64 * 1024;
    if len.saturating_add(SIGNATURES) <= cap {
        return Ok(());
    }
    let mib = |n: usize| n as f64 / (1024.0 * 1024.0);
    Err(Error::Refused(format!(
        "{role} would be {:.1} MiB, over the {:.0} MiB a Notary client reads: nothing was signed; \
         sign fewer tags into it, or give some to a delegation (dct trust signer add)",
        mib(len),
        mib(cap)
    )))
}

/// A new version of one role, to be signed by `key`.
pub(crate) struct Edit {
    pub(crate) role: String,
    pub(crate) key: KeyEntry,
    pub(crate) signed: Value,
    /// Targets to add (replacing any of the same name; of two with one name the later
    /// counts): kept as a list and written into the document's text
    /// ([`unsigned_from_file`]), so a signing of 100,000 tags builds no tree of them.
    pub(crate) added: Added,
    /// The role's published file, when the edit only adds targets to it: the new version is
    /// written from its text and `signed` is not used. Moved out of the [`Repo`]
    /// ([`Repo::take_file`]): [`commit`] takes it as the role's previous version.
    pub(crate) file: Option<Vec<u8>>,
}

/// A tag to sign: what docker resolves it to, the manifest's sha256 and size.
pub struct TagTarget {
    pub tag: String,
    pub sha256: [u8; 32],
    pub length: u64,
}

/// The targets one role takes: some of the tags of one request, by their place in it (the
/// request's list is shared, not copied per role: 100,000 tags are held once).
#[derive(Default)]
pub(crate) struct Added {
    pub(crate) tags: Arc<Vec<TagTarget>>,
    pub(crate) picked: Vec<usize>,
}

impl Added {
    /// None of `tags` yet.
    pub(crate) fn of(tags: &Arc<Vec<TagTarget>>) -> Added {
        Added {
            tags: Arc::clone(tags),
            picked: Vec::new(),
        }
    }
}

/// A new target's entry as Notary writes it.
struct Target<'a>(&'a TagTarget);
struct Hashes<'a>(&'a [u8; 32]);

impl serde::Serialize for Target<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("hashes", &Hashes(&self.0.sha256))?;
        m.serialize_entry("length", &self.0.length)?;
        m.end()
    }
}

impl serde::Serialize for Hashes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("sha256", &B64.encode(self.0))?;
        m.end()
    }
}

/// Writes `"name":` after a comma unless it is the first member.
fn member(out: &mut Vec<u8>, first: &mut bool, name: &str) -> Result<()> {
    if !*first {
        out.push(b',');
    }
    *first = false;
    serde_json::to_writer(&mut *out, name).map_err(Error::internal)?;
    out.push(b':');
    Ok(())
}

/// The next unsigned version of `role`'s published `file`, with `added` in its targets,
/// written from the file's text: its members as they are (in name order), `version` one up,
/// `expires` renewed, the targets map's entries as they are but those an added one replaces,
/// and the added ones in their places by name. Adding a tag to a role of 100,000 targets so
/// parses no tree of them, and the text is canonical when the file's was: the guard signs it
/// as it is.
pub(crate) fn unsigned_from_file(
    file: &[u8],
    added: Added,
    role: &str,
    lifetime: time::Duration,
) -> Result<Vec<u8>> {
    let Added { tags, picked } = added;
    let mut added: Vec<&TagTarget> = picked.iter().filter_map(|&i| tags.get(i)).collect();
    drop(picked);
    crate::util::last_of_each(&mut added, |t| t.tag.as_str());
    let raw = RawEnvelope::parse(file).map_err(|e| Error::Internal(format!("{role}: {e}")))?;
    let members = cjson::members(raw.signed.get()).map_err(|e| malformed(role)(e.to_string()))?;
    let version = cjson::last(&members, "version")
        .and_then(|v| serde_json::from_str::<i64>(v.get()).ok())
        .ok_or_else(|| Error::Refused(format!("cannot edit {role}: it has no version")))?;
    let next = version.checked_add(1).ok_or_else(|| {
        Error::Refused(format!("cannot edit {role}: version {version} is the last"))
    })?;
    let expires = expires(lifetime)?;
    // Each added entry is `"name":{"hashes":{"sha256":"<44>"},"length":N},`: 82 bytes
    // besides the name and N's digits (a tag needs no escapes), so the text is sized once
    // and not 10% over (a million tags).
    let entry =
        |t: &TagTarget| t.tag.len() + 82 + t.length.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut out =
        Vec::with_capacity(file.len() + 256 + added.iter().map(|t| entry(t)).sum::<usize>());
    // Members in canonical order (by name), so that the guard can take the text as its
    // canonical form without rewriting it: `expires` and `targets` added where missing.
    // Each name's last value, as a parsed map keeps it (one pass: a file of many members
    // costs n log n).
    let mut by_name: std::collections::BTreeMap<&str, Option<&serde_json::value::RawValue>> =
        members
            .iter()
            .map(|(k, v)| (k.0.as_ref(), Some(*v)))
            .collect();
    for needed in ["expires", "targets"] {
        by_name.entry(needed).or_insert(None);
    }
    out.extend_from_slice(b"{\"signed\":{");
    let mut first = true;
    for (name, current) in by_name {
        member(&mut out, &mut first, name)?;
        match name {
            "version" => out.extend_from_slice(next.to_string().as_bytes()),
            "expires" => serde_json::to_writer(&mut out, &expires).map_err(Error::internal)?,
            "targets" => write_targets(&mut out, current.map_or("{}", |v| v.get()), &added, role)?,
            _ => out.extend_from_slice(current.map_or("null", |v| v.get()).as_bytes()),
        }
    }
    out.extend_from_slice(b"},\"signatures\":[]}");
    Ok(out)
}

/// The targets map `existing` (raw text) with `added` (sorted by name) in it.
fn write_targets(
    out: &mut Vec<u8>,
    existing: &str,
    added: &[&TagTarget],
    role: &str,
) -> Result<()> {
    if !existing.starts_with('{') {
        return Err(malformed(role)("targets is not an object".into()));
    }
    out.push(b'{');
    let mut first = true;
    // Both lists in name order (a published file's is canonical): merged, so the map stays
    // sorted. A file out of order still gives a valid map, which the guard then rewrites.
    // The file's entries are read one at a time, not listed (100,000 of them).
    let mut pending = added.iter().copied().peekable();
    let write_added = |out: &mut Vec<u8>, first: &mut bool, t: &TagTarget| -> Result<()> {
        member(out, first, &t.tag)?;
        serde_json::to_writer(&mut *out, &Target(t)).map_err(Error::internal)
    };
    let mut failed = None;
    cjson::for_each_member(existing, |k, v| {
        if failed.is_some() {
            return;
        }
        let mut step = || -> Result<()> {
            if added
                .binary_search_by(|t| t.tag.as_str().cmp(k.0.as_ref()))
                .is_ok()
            {
                return Ok(());
            }
            while let Some(t) = pending.next_if(|t| t.tag.as_str() < k.0.as_ref()) {
                write_added(out, &mut first, t)?;
            }
            member(out, &mut first, &k.0)?;
            out.extend_from_slice(v.get().as_bytes());
            Ok(())
        };
        if let Err(e) = step() {
            failed = Some(e);
        }
    })
    .map_err(|e| malformed(role)(e.to_string()))?;
    if let Some(e) = failed {
        return Err(e);
    }
    for t in pending {
        write_added(out, &mut first, t)?;
    }
    out.push(b'}');
    Ok(())
}

impl Repo {
    /// A role's current `signed`, or an empty targets role for a delegation with no file yet.
    pub(crate) fn signed_or_new(&self, role: &str) -> Result<Value> {
        self.refuse_skipped(role)?;
        Ok(match self.files.get(role) {
            Some(_) => self.doc(role)?.signed,
            None => {
                json!({"_type": "Targets", "version": 0, "targets": {}, "delegations": {"keys": {}, "roles": []}})
            }
        })
    }
}

impl Repo {
    /// A skipped delegation's content is unverified: signing over it would vouch for
    /// whatever the server put there.
    fn refuse_skipped(&self, role: &str) -> Result<()> {
        match self.verified.skipped_role(role) {
            Some(s) => Err(Error::Refused(format!(
                "{role} does not verify ({}): refusing to sign over it",
                s.reason
            ))),
            None => Ok(()),
        }
    }

    /// Whether `role` has a published file to add targets to ([`Edit::file`], moved out with
    /// [`Repo::take_file`]); refused as [`Repo::signed_or_new`] refuses.
    pub(crate) fn file_to_edit(&self, role: &str) -> Result<bool> {
        self.refuse_skipped(role)?;
        Ok(self.files.contains_key(role))
    }

    /// Moves `role`'s published file out of the repository, not copied (a role may be
    /// 90 MiB): an [`Edit::file`], which [`commit`] signs against as the previous version.
    pub(crate) fn take_file(&mut self, role: &str) -> Option<Vec<u8>> {
        self.files.remove(role)
    }
}

/// The repository, initialised first when the server has no trust data for it (as docker
/// trust does); the flag says whether it was.
pub(crate) async fn fetch_or_init(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    token: &str,
) -> Result<(Repo, bool)> {
    // Signing reads the roles' targets from their text: none are listed here.
    let roles_only = crate::tuf::verify::Listing::RolesOnly;
    if let Some(r) = fetch_with(client, ctx, gun, roles_only).await? {
        return Ok((r, false));
    }
    init(guard, client, ctx, gun, "", token, false).await?;
    let r = fetch_with(client, ctx, gun, roles_only)
        .await?
        .ok_or_else(|| Error::Unavailable(format!("{gun} vanished after init")))?;
    Ok((r, true))
}

/// Signs each edited role as its next version (Notary's default expiry) and publishes them
/// in one update; a snapshot key held here (not server-managed) signs the new snapshot.
pub(crate) async fn commit(
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
pub(crate) type Presigned = (Vec<(String, Vec<u8>)>, Vec<Receipt>);

/// As [`commit`], publishing `signed` (already signed files, e.g. a new root) too.
pub(crate) async fn commit_with(
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
                repo.file("root")?,
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
        added,
        file,
    } in edits
    {
        let mut taken = None;
        let document = if file.is_none() && added.picked.is_empty() {
            next_version(&mut signed, &role, TARGETS_LIFETIME)?;
            unsigned(signed)
        } else {
            // Tags go into the role's text: the published file, or a new role's document. A
            // big role is edited off the async runtime.
            let published = file.is_some();
            let base = file.unwrap_or_else(|| unsigned(signed));
            let size = base.len() + 64 * added.picked.len();
            let r = role.clone();
            let (document, base) = crate::util::cpu(size, move || {
                (unsigned_from_file(&base, added, &r, TARGETS_LIFETIME), base)
            })
            .await?;
            taken = published.then_some(base);
            document?
        };
        check_role_size(&role, document.len(), super::notary::MAX_DOWNLOAD)?;
        // The role's published version: the file the edit took, else the repository's.
        let previous = taken.or_else(|| repo.files.get(&role).cloned());
        let s = sign_doc_owned(
            guard,
            listings(keys, &key.canonical_id),
            document,
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
                .map_err(Error::internal)?
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
            let meta =
                json!({"hashes": {"sha256": B64.encode(sha2_256(bytes))}, "length": bytes.len()});
            edit::set(&mut snap, &["meta", role], meta).map_err(malformed("snapshot"))?;
        }
        next_version(&mut snap, "snapshot", TARGETS_LIFETIME)?;
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

pub(crate) fn sha2_256(b: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All of `tags`, in order.
    fn all(tags: Vec<TagTarget>) -> Added {
        Added {
            picked: (0..tags.len()).collect(),
            tags: Arc::new(tags),
        }
    }
    use crate::tuf::verify::{RepoFiles, SkippedRole, VerifiedRepo};

    /// A role that would be over Notary's download cap once signed is refused, saying how
    /// big and what to do; one within it (signatures' room left) passes.
    #[test]
    fn a_role_past_the_download_cap_is_refused() {
        let cap = 1024 * 1024;
        assert!(check_role_size("targets", cap - 64 * 1024, cap).is_ok());
        let err = check_role_size("targets", cap - 64 * 1024 + 1, cap)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("targets would be 0.9 MiB, over the 1 MiB"),
            "{err}"
        );
        assert!(err.contains("nothing was signed"), "{err}");
        assert!(check_role_size("targets", usize::MAX, cap).is_err());
    }

    /// The new text is sized once from the file and the added entries: never grown (twice
    /// the size), never far over (the estimate is each entry's exact length).
    #[test]
    fn the_edited_text_is_sized_once() {
        let file = br#"{"signed":{"_type":"Targets","expires":"2030-01-01T00:00:00Z","targets":{},"version":1},"signatures":[]}"#;
        let lengths = [0, 9, 10, 99, 100, 12345, u64::MAX];
        let tags = (0..3000)
            .map(|i| TagTarget {
                tag: format!("tag-{i}"),
                sha256: [7; 32],
                length: lengths[i % lengths.len()],
            })
            .collect();
        let text = unsigned_from_file(file, all(tags), "targets", time::Duration::days(3)).unwrap();
        let spare = text.capacity() - text.len();
        assert!(spare <= file.len() + 256, "{spare} bytes spare");
    }

    /// Added targets land in the document once each, the last of a name winning, replacing
    /// an entry already there and keeping the others; a new role's document (a tree) takes
    /// them the same way, through its text.
    #[test]
    fn added_targets_are_written_into_the_document() {
        let signed = json!({
            "_type": "Targets", "version": 2, "expires": "2030-01-01T00:00:00Z",
            "targets": {"a": {"hashes": {"sha256": "old"}, "length": 1}, "b": {"hashes": {"sha256": "keep"}, "length": 2}},
        });
        let t = |name: &str, n: u8| TagTarget {
            tag: name.into(),
            sha256: [n; 32],
            length: u64::from(n),
        };
        let bytes = unsigned_from_file(
            &unsigned(signed),
            all(vec![t("c", 3), t("a", 4), t("c", 5)]),
            "targets",
            time::Duration::days(3),
        )
        .unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(text.matches("\"c\":").count(), 1, "{text}");
        assert_eq!(text.matches("\"a\":").count(), 1, "{text}");
        let doc = Envelope::parse(&bytes).unwrap();
        assert!(doc.signatures.is_empty());
        let targets = doc.signed["targets"].as_object().unwrap();
        assert_eq!(targets.len(), 3);
        assert_eq!(
            targets["a"],
            json!({"hashes": {"sha256": B64.encode([4u8; 32])}, "length": 4})
        );
        assert_eq!(
            targets["b"],
            json!({"hashes": {"sha256": "keep"}, "length": 2})
        );
        assert_eq!(
            targets["c"],
            json!({"hashes": {"sha256": B64.encode([5u8; 32])}, "length": 5})
        );
        assert_eq!(doc.signed["version"], 3);
        // Written in canonical form (members and targets by name): the guard signs this
        // text as it is, without a rewritten copy.
        let raw = RawEnvelope::parse(&bytes).unwrap();
        assert!(cjson::is_canonical(raw.signed.get()), "{text}");

        // A file whose targets are out of order still gives every target once; the guard
        // then writes the canonical form itself.
        let file = br#"{"signed":{"_type":"Targets","expires":"2030-01-01T00:00:00Z","targets":{"z":{"length":1},"a":{"length":2}},"version":7},"signatures":[]}"#;
        let bytes = unsigned_from_file(
            file,
            all(vec![t("m", 6)]),
            "targets",
            time::Duration::days(3),
        )
        .unwrap();
        let raw = RawEnvelope::parse(&bytes).unwrap();
        assert!(!cjson::is_canonical(raw.signed.get()));
        let canonical = cjson::from_str(raw.signed.get()).unwrap();
        let text = String::from_utf8(canonical).unwrap();
        assert!(
            text.contains(r#""targets":{"a":{"length":2},"m":{"hashes""#),
            "{text}"
        );
        assert!(
            text.ends_with(r#""z":{"length":1}},"version":8}"#),
            "{text}"
        );
    }

    #[test]
    fn a_skipped_delegation_is_never_signed_over() {
        let alice = br#"{"signed":{"_type":"Targets","version":1,"expires":"2020-01-01T00:00:00Z","targets":{}},"signatures":[]}"#;
        let mut files = RepoFiles::new();
        files.insert("targets/alice".into(), alice.to_vec());
        files.insert("targets/bob".into(), alice.to_vec());
        let repo = Repo {
            files,
            verified: VerifiedRepo {
                skipped: vec![SkippedRole {
                    role: "targets/alice".into(),
                    reason: "expired at 2020-01-01T00:00:00Z".into(),
                    targets: Vec::new(),
                }],
                ..Default::default()
            },
            trusted: true,
            delegations: Default::default(),
        };
        let err = repo.signed_or_new("targets/alice").unwrap_err().to_string();
        assert!(
            err.contains("targets/alice does not verify (expired at"),
            "{err}"
        );
        assert!(repo.signed_or_new("targets/bob").is_ok());
        assert!(repo.signed_or_new("targets/new").is_ok());
        // Tags added to a role's text are refused the same way.
        let err = repo.file_to_edit("targets/alice").unwrap_err().to_string();
        assert!(err.contains("targets/alice does not verify"), "{err}");
        assert!(repo.file_to_edit("targets/bob").unwrap());
        assert!(!repo.file_to_edit("targets/new").unwrap());
        let mut repo = repo;
        assert_eq!(repo.take_file("targets/bob").as_deref(), Some(&alice[..]));
        assert_eq!(repo.take_file("targets/bob"), None);
    }

    /// Tags added to a published file's text make the document a tree edit would: the next
    /// version, a new expiry, every other member and target kept, a replaced target replaced.
    #[test]
    fn tags_added_to_a_file_make_what_a_tree_edit_would() {
        let file = br#"{"signed":{"_type":"Targets","delegations":{"keys":{},"roles":[]},"expires":"2020-01-01T00:00:00Z","targets":{"a":{"hashes":{"sha256":"old"},"length":1},"b\u00e9":{"custom":{"x":1},"hashes":{"sha256":"keep"},"length":2}},"version":7,"x-other":[1,"two"]},"signatures":[{"keyid":"k","method":"ecdsa","sig":"AAAA"}]}"#;
        let t = |name: &str, n: u8| TagTarget {
            tag: name.into(),
            sha256: [n; 32],
            length: u64::from(n),
        };
        let lifetime = time::Duration::days(3);
        let from_text = unsigned_from_file(
            file,
            all(vec![t("c", 3), t("a", 4), t("c", 5)]),
            "targets",
            lifetime,
        )
        .unwrap();
        // The same edit made on a tree, as the agent made it before.
        let mut tree = Envelope::parse(file).unwrap().signed;
        next_version(&mut tree, "targets", lifetime).unwrap();
        for n in [t("a", 4), t("c", 5)] {
            let entry = json!({"hashes": {"sha256": B64.encode(n.sha256)}, "length": n.length});
            edit::set(&mut tree, &["targets", n.tag.as_str()], entry).unwrap();
        }
        let from_tree = unsigned(tree);
        let (a, b) = (
            Envelope::parse(&from_text).unwrap(),
            Envelope::parse(&from_tree).unwrap(),
        );
        assert!(a.signatures.is_empty());
        assert_eq!(a.signed["version"], 8);
        assert_ne!(a.signed["expires"], "2020-01-01T00:00:00Z");
        // The expiries may differ by the second between the two calls.
        let strip = |mut v: Value| {
            v.as_object_mut().unwrap().remove("expires");
            v
        };
        assert_eq!(strip(a.signed), strip(b.signed));
        let no_version = br#"{"signed":{"_type":"Targets","targets":{}},"signatures":[]}"#;
        assert!(unsigned_from_file(no_version, all(Vec::new()), "targets", lifetime).is_err());
        let bad = br#"{"signed":{"_type":"Targets","version":1,"targets":[]},"signatures":[]}"#;
        assert!(unsigned_from_file(bad, all(vec![t("a", 1)]), "targets", lifetime).is_err());
    }
}
