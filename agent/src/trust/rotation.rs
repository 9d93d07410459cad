//! Key rotation and root renewal, signed by the current root's keys.

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::cache::TrustContext;
use super::fetch::{check_gun, fetch};
use super::publish::{commit_with, listings, malformed, next_version, sign_doc, unsigned, Edit};
use crate::error::{Error, Result};
use crate::guard::{Guard, Receipt};
use crate::keys::KeyEntry;
use crate::trust::notary::NotaryClient;
use crate::trust::ROOT_LIFETIME;
use crate::tuf::edit;
use crate::tuf::keys::TufKey;
use crate::tuf::metadata::{parse_key_map, RootDoc};

/// Canonical IDs of `root`'s root keys that are on this agent's tokens. Root keys are
/// listed by certificate ID; a key imported without its certificate knows only its
/// canonical ID, so both sides are compared by canonical ID.
pub(crate) fn held_root_keys(root: &RootDoc, keys: &[KeyEntry]) -> Vec<String> {
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
pub(crate) async fn sign_next_root(
    guard: &Guard,
    all: &[KeyEntry],
    gun: &str,
    mut root: Value,
    signers: &[String],
    previous: &[u8],
    receipts: &mut Vec<Receipt>,
) -> Result<Vec<u8>> {
    next_version(&mut root, "root", ROOT_LIFETIME)?;
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

/// The new root: `role` lists only `new_id` (threshold 1); keys no role uses any more are
/// dropped.
fn replace_role_key(root: &mut Value, role: &str, new_id: &str, new_key: &TufKey) -> Result<()> {
    let bad = malformed("root");
    edit::set(root, &["roles", role, "keyids"], json!([new_id])).map_err(&bad)?;
    edit::set(root, &["roles", role, "threshold"], json!(1)).map_err(&bad)?;
    edit::set(root, &["keys", new_id], new_key.to_value()).map_err(&bad)?;
    let used: Vec<Value> = ["root", "targets", "snapshot", "timestamp"]
        .iter()
        .flat_map(|r| {
            edit::get(root, &["roles", r, "keyids"])
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    edit::object_mut(root, &["keys"])
        .map_err(&bad)?
        .retain(|id, _| used.contains(&json!(id)));
    Ok(())
}

/// Whether a root expiring at `expires` must be re-signed now: within six months, as the
/// notary client does on every publish.
pub(crate) fn root_due(expires: &str, now: OffsetDateTime) -> bool {
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
                added: Default::default(),
                file: None,
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
    replace_role_key(&mut root, role, &new_id, &new_key)?;
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
        repo.file("root")?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    pub(crate) fn root_is_due_within_six_months() {
        let now = datetime!(2026-11-22 0:00 UTC);
        assert!(root_due("2027-03-01T00:00:00Z", now));
        assert!(!root_due("2027-07-01T00:00:00Z", now));
        assert!(root_due("2026-01-01T00:00:00Z", now));
        assert!(root_due("not a time", now));
    }

    fn key(byte: u8) -> TufKey {
        TufKey {
            keytype: "ed25519".into(),
            public: vec![byte; 32],
        }
    }

    #[test]
    fn replace_role_key_lists_only_the_new_key() {
        let mut root = json!({
            "keys": {"r": {}, "t": {}, "s": {}, "ts": {}},
            "roles": {
                "root": {"keyids": ["r"], "threshold": 1},
                "targets": {"keyids": ["t"], "threshold": 1},
                "snapshot": {"keyids": ["s"], "threshold": 1},
                "timestamp": {"keyids": ["ts"], "threshold": 1},
            },
        });
        let k = key(7);
        replace_role_key(&mut root, "targets", "t2", &k).unwrap();
        assert_eq!(
            root["roles"]["targets"],
            json!({"keyids": ["t2"], "threshold": 1})
        );
        // The map keeps insertion order (canonical JSON sorts when it is written).
        let mut ids: Vec<&String> = root["keys"].as_object().unwrap().keys().collect();
        ids.sort();
        assert_eq!(ids, ["r", "s", "t2", "ts"]);
        assert_eq!(root["keys"]["t2"], k.to_value());
    }

    #[test]
    fn replace_role_key_refuses_a_malformed_root() {
        for bad in [
            json!({"keys": {}, "roles": ["root"]}),
            json!({"keys": {}, "roles": {"targets": []}}),
            json!({"keys": [], "roles": {}}),
            json!({"keys": "x", "roles": {}}),
            json!("root"),
        ] {
            let mut root = bad.clone();
            let e = replace_role_key(&mut root, "targets", "t2", &key(1));
            assert!(matches!(e, Err(Error::Refused(_))), "{bad}: {e:?}");
        }
    }
}
