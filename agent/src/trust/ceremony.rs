//! Root-key ceremonies: new roots made and signed by a threshold of tokens, rotations by
//! ceremony, backups, and publishing the result.

use serde_json::{json, Value};

use super::cache::{version_of, TrustContext};
use super::fetch::{
    check_gun, check_rotation, check_self_signed, fetch, role_keyids, root_role_keys,
};
use super::init::InitResult;
use super::publish::{
    commit_with, expires, listings, malformed, next_version, publish, sha2_256, sign_doc, unsigned,
};
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::keys::{make_root_cert, KeyEntry};
use crate::trust::notary::NotaryClient;
use crate::trust::{ROOT_LIFETIME, TARGETS_LIFETIME};
use crate::tuf::edit;
use crate::tuf::keys::TufKey;
use crate::tuf::metadata::{parse_key_map, Envelope, RootDoc};
use crate::tuf::verify::{self};

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
    // The targets key goes on the first root token unless another is named.
    let targets_label = match (targets_token, tokens.first()) {
        ("", Some(first)) => first.as_str(),
        ("", None) => return Err(Error::InvalidArgument("no token for the root keys".into())),
        (named, _) => named,
    };
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
    let root = <RootDoc as serde::Deserialize>::deserialize(&env.signed)
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
    let current = repo.file("root")?.clone();
    let mut root = repo.doc("root")?.signed;
    let new_keys = make_root_keys(guard, gun, tokens, &RootBackups::default()).await?;
    guard.keys().invalidate();
    let listed: Vec<(String, Value)> = new_keys
        .iter()
        .map(|k| (k.key.key_id.clone(), k.key.tuf_key().to_value()))
        .collect();
    replace_root_keys(&mut root, &listed, threshold)?;
    next_version(&mut root, "root", ROOT_LIFETIME)?;
    Ok((current, unsigned(root), new_keys))
}

/// The next root's root role: `new` keys (ID, key) with `threshold`. The old root keys
/// leave the key map (the previous root keeps them for the chain).
fn replace_root_keys(root: &mut Value, new: &[(String, Value)], threshold: usize) -> Result<()> {
    let bad = malformed("root");
    let old_ids: Vec<String> = edit::get(root, &["roles", "root", "keyids"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let map = edit::object_mut(root, &["keys"]).map_err(&bad)?;
    for id in &old_ids {
        map.remove(id);
    }
    for (id, key) in new {
        map.insert(id.clone(), key.clone());
    }
    let ids: Vec<&String> = new.iter().map(|(id, _)| id).collect();
    edit::set(
        root,
        &["roles", "root"],
        json!({"keyids": ids, "threshold": threshold}),
    )
    .map_err(&bad)
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
    let current = repo.file("root")?;
    check_rotation(current, &root_bytes)?;
    check_self_signed(&root_bytes)?;
    if version_of(&root_bytes) != version_of(current).saturating_add(1) {
        return Err(Error::Refused(format!(
            "the new root is version {}, the server's is {}: make it from the current root",
            version_of(&root_bytes),
            version_of(current)
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
pub(crate) fn check_root_size(threshold: usize, n: usize) -> Result<()> {
    if n == 0 || n > 16 || threshold == 0 || threshold > n {
        return Err(Error::InvalidArgument(format!(
            "a root of {threshold} of {n} keys: need 1 <= threshold <= keys <= 16 (one --token per key)"
        )));
    }
    Ok(())
}

/// One root key per token, each with its root certificate for `gun` made on its token; a
/// key with an entry in `backups` is made wrappable and copied, wrapped, into that token.
pub(crate) async fn make_root_keys(
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
        let cert = key.tuf_key().certificate().map_err(Error::internal)?;
        let der = der::Encode::to_der(&cert).map_err(Error::internal)?;
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
pub(crate) async fn import_with_backup_file(
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
    .map_err(Error::internal)??;
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

    #[test]
    fn replace_root_keys_swaps_the_root_role() {
        let mut root = json!({
            "keys": {"old": {}, "t": {}},
            "roles": {"root": {"keyids": ["old"], "threshold": 1}, "targets": {"keyids": ["t"], "threshold": 1}},
        });
        let new = [
            ("a".to_string(), json!({"n": 1})),
            ("b".to_string(), json!({"n": 2})),
        ];
        replace_root_keys(&mut root, &new, 2).unwrap();
        assert_eq!(
            root,
            json!({
                "keys": {"a": {"n": 1}, "b": {"n": 2}, "t": {}},
                "roles": {"root": {"keyids": ["a", "b"], "threshold": 2}, "targets": {"keyids": ["t"], "threshold": 1}},
            })
        );
    }

    #[test]
    fn replace_root_keys_refuses_a_malformed_root() {
        let new = [("a".to_string(), json!({}))];
        for bad in [
            json!({"keys": [], "roles": {"root": {"keyids": []}}}),
            json!({"keys": {}, "roles": ["root"]}),
            json!(4),
        ] {
            let mut root = bad.clone();
            let e = replace_root_keys(&mut root, &new, 1);
            assert!(matches!(e, Err(Error::Refused(_))), "{bad}: {e:?}");
        }
    }

    #[test]
    fn next_version_needs_a_version_below_the_last() {
        let mut root = json!({"version": 4});
        next_version(&mut root, "root", ROOT_LIFETIME).unwrap();
        assert_eq!(root["version"], json!(5));
        assert!(root["expires"].is_string());
        for bad in [
            json!({}),
            json!({"version": "4"}),
            json!({"version": i64::MAX}),
            json!([]),
        ] {
            let mut doc = bad.clone();
            let e = next_version(&mut doc, "root", ROOT_LIFETIME);
            assert!(matches!(e, Err(Error::Refused(_))), "{bad}: {e:?}");
        }
    }
}
