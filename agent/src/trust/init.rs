//! A new trusted collection: root, targets and snapshot keys, the first versions, published.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;

use super::cache::TrustContext;
use super::fetch::check_gun;
use super::publish::{expires, held, listings, publish, sha2_256, sign_doc, unsigned};
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::keys::{make_root_cert, KeyEntry};
use crate::trust::notary::NotaryClient;
use crate::trust::{ROOT_LIFETIME, TARGETS_LIFETIME};
use crate::tuf::keys::ECDSA_X509;

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
        let role = found
            .first()
            .map(|k| k.role.as_str())
            .ok_or_else(|| Error::NotFound(format!("no key {root_key}")))?;
        if role != "root" {
            return Err(Error::InvalidArgument(format!(
                "key {root_key} is a {role} key, not a root key"
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
        // The meta of root and targets, the files so far.
        let metas: serde_json::Map<String, serde_json::Value> = files
            .iter()
            .map(|(role, b)| (role.clone(), meta(b)))
            .collect();
        let snap = json!({
            "_type": "Snapshot", "expires": expires(TARGETS_LIFETIME)?, "version": 1,
            "meta": metas,
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
