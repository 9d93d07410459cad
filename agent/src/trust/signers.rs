//! Delegations: add and remove signers (`targets/releases` and named roles).

use serde_json::{json, Value};

use super::cache::TrustContext;
use super::fetch::{check_gun, fetch, Repo};
use super::publish::{commit, fetch_or_init, malformed, Edit};
use super::tags::signable;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::keys::KeyEntry;
use crate::trust::notary::NotaryClient;
use crate::tuf::edit;
use crate::tuf::keys::TufKey;

/// Docker's signer names: `^[a-z0-9][a-z0-9_-]*$`, and not `releases`.
pub(crate) fn check_signer_name(name: &str) -> Result<()> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name != "releases"
        && name.len() < 200;
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid signer name {name:?}: lowercase letters, digits, '_' and '-', not starting with '_' or '-', and not \"releases\""
        )))
    }
}

/// The targets role's edit, for changes to delegations (only the targets key may make them).
pub(crate) fn targets_edit(repo: &Repo, keys: &[KeyEntry], gun: &str) -> Result<Edit> {
    let (role, key) = signable(repo, keys)?
        .into_iter()
        .find(|(r, _)| r == "targets")
        .ok_or_else(|| Error::Refused(format!("the targets key of {gun} is not on this agent's tokens; only it can change signers")))?;
    Ok(Edit {
        signed: repo.signed_or_new(&role)?,
        role,
        key,
        added: Default::default(),
        file: None,
    })
}

/// Whether the delegation entry `r` is the role `name`.
fn named(r: &Value, name: &str) -> bool {
    r.get("name").and_then(Value::as_str) == Some(name)
}

/// Adds key `id` to the delegation `name` in `roles`, or adds the delegation (all paths).
pub(crate) fn add_keyid(
    roles: &mut Vec<Value>,
    name: &str,
    id: &str,
) -> std::result::Result<(), String> {
    match roles.iter_mut().find(|r| named(r, name)) {
        Some(r) => {
            let ids = r
                .get_mut("keyids")
                .and_then(Value::as_array_mut)
                .ok_or_else(|| format!("delegation {name} has no list of keyids"))?;
            if !ids.iter().any(|x| x == id) {
                ids.push(json!(id));
            }
        }
        None => roles.push(json!({"name": name, "keyids": [id], "threshold": 1, "paths": [""]})),
    }
    Ok(())
}

/// The targets role's `signed` with signer `name`: its key `id` (`key`) among the
/// delegation keys, in `targets/NAME` and in `targets/releases`.
fn add_signer(
    signed: &mut Value,
    name: &str,
    id: &str,
    key: Value,
) -> std::result::Result<(), String> {
    edit::set(signed, &["delegations", "keys", id], key)?;
    let roles = edit::array_mut(signed, &["delegations", "roles"])?;
    add_keyid(roles, &format!("targets/{name}"), id)?;
    add_keyid(roles, "targets/releases", id)
}

/// The targets role's `signed` without signer `name` (of `gun`): `targets/NAME` goes, its
/// keys leave `targets/releases` (which goes when no key is left), and keys no delegation
/// uses any more leave the key map.
fn remove_signer(signed: &mut Value, gun: &str, name: &str) -> Result<()> {
    let role = format!("targets/{name}");
    let Some(d) = signed.get_mut("delegations").and_then(Value::as_object_mut) else {
        return Err(Error::NotFound(format!("{gun} has no signers")));
    };
    let roles = d
        .get_mut("roles")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::NotFound(format!("{gun} has no signers")))?;
    let pos = roles
        .iter()
        .position(|r| named(r, &role))
        .ok_or_else(|| Error::NotFound(format!("{gun} has no signer {name}")))?;
    let removed = roles.remove(pos);
    let gone: Vec<Value> = removed
        .get("keyids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in roles.iter_mut().filter(|r| named(r, "targets/releases")) {
        if let Some(ids) = r.get_mut("keyids").and_then(Value::as_array_mut) {
            ids.retain(|id| !gone.contains(id));
        }
    }
    roles.retain(|r| {
        !named(r, "targets/releases")
            || r.get("keyids")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
    });
    let used: Vec<Value> = roles
        .iter()
        .flat_map(|r| {
            r.get("keyids")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    if let Some(k) = d.get_mut("keys").and_then(Value::as_object_mut) {
        k.retain(|id, _| used.contains(&json!(id)));
    }
    Ok(())
}

/// `dct trust signer add`: `targets/NAME` with the key, and the key added to
/// `targets/releases`, both with all paths, as docker lays them out. Initialises the
/// repository first when it has no trust data.
pub async fn signer_add(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    name: &str,
    key: TufKey,
    token: &str,
) -> Result<(String, bool)> {
    check_gun(gun)?;
    check_signer_name(name)?;
    let (repo, initialized) = fetch_or_init(guard, client, ctx, gun, token).await?;
    repo.require_trusted(client, gun)?;
    let (keys, _) = guard.keys().all_keys().await;
    let mut targets = targets_edit(&repo, &keys, gun)?;
    let id = key.key_id();
    add_signer(&mut targets.signed, name, &id, key.to_value()).map_err(malformed("targets"))?;
    commit(guard, client, gun, &repo, &keys, vec![targets]).await?;
    tracing::info!(gun, signer = name, key = %id, "added signer");
    Ok((id, initialized))
}

/// `dct trust signer remove`: drops `targets/NAME` and its keys from `targets/releases`
/// (and `releases` itself when no key is left in it).
pub async fn signer_remove(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    name: &str,
) -> Result<()> {
    check_gun(gun)?;
    check_signer_name(name)?;
    let repo = fetch(client, ctx, gun)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no trust data for {gun} on the trust server")))?;
    let (keys, _) = guard.keys().all_keys().await;
    repo.require_trusted(client, gun)?;
    let mut targets = targets_edit(&repo, &keys, gun)?;
    remove_signer(&mut targets.signed, gun, name)?;
    commit(guard, client, gun, &repo, &keys, vec![targets]).await?;
    tracing::info!(gun, signer = name, "removed signer");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_signer_lays_out_as_docker_does() {
        let mut signed = json!({"_type": "Targets", "version": 3});
        add_signer(&mut signed, "alice", "k1", json!({"keytype": "ecdsa"})).unwrap();
        add_signer(&mut signed, "bob", "k2", json!({"keytype": "ecdsa"})).unwrap();
        add_signer(&mut signed, "alice", "k1", json!({"keytype": "ecdsa"})).unwrap();
        let all = json!([""]);
        assert_eq!(
            signed["delegations"],
            json!({
                "keys": {"k1": {"keytype": "ecdsa"}, "k2": {"keytype": "ecdsa"}},
                "roles": [
                    {"name": "targets/alice", "keyids": ["k1"], "threshold": 1, "paths": all},
                    {"name": "targets/releases", "keyids": ["k1", "k2"], "threshold": 1, "paths": all},
                    {"name": "targets/bob", "keyids": ["k2"], "threshold": 1, "paths": all},
                ]
            })
        );
        remove_signer(&mut signed, "gun", "alice").unwrap();
        assert_eq!(
            signed["delegations"],
            json!({
                "keys": {"k2": {"keytype": "ecdsa"}},
                "roles": [
                    {"name": "targets/releases", "keyids": ["k2"], "threshold": 1, "paths": all},
                    {"name": "targets/bob", "keyids": ["k2"], "threshold": 1, "paths": all},
                ]
            })
        );
        remove_signer(&mut signed, "gun", "bob").unwrap();
        assert_eq!(signed["delegations"], json!({"keys": {}, "roles": []}));
    }

    #[test]
    fn malformed_delegations_are_refused_not_panicked_on() {
        let key = json!({"keytype": "ecdsa"});
        for bad in [
            json!({"delegations": {"keys": ["k0"], "roles": []}}),
            json!({"delegations": {"keys": "x", "roles": []}}),
            json!({"delegations": {"keys": {}, "roles": {"targets/alice": {}}}}),
            json!({"delegations": {"keys": {}, "roles": [{"name": "targets/releases"}]}}),
            json!({"delegations": ["targets/alice"]}),
            json!({"delegations": 1}),
            json!([]),
        ] {
            let mut signed = bad.clone();
            assert!(
                add_signer(&mut signed, "alice", "k1", key.clone()).is_err(),
                "{bad}"
            );
            let mut signed = bad.clone();
            assert!(remove_signer(&mut signed, "gun", "alice").is_err(), "{bad}");
        }
        let e = add_signer(&mut json!({"delegations": {"keys": []}}), "a", "k1", key)
            .map_err(malformed("targets"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "refused: cannot edit targets: \"delegations\".\"keys\" is an array, not an object"
        );
    }

    #[test]
    fn removing_an_unknown_signer_is_not_found() {
        let mut signed = json!({"delegations": {"keys": {}, "roles": [{"name": 5}]}});
        let e = remove_signer(&mut signed, "gun", "alice").unwrap_err();
        assert_eq!(e.to_string(), "gun has no signer alice");
        let e = remove_signer(&mut json!({}), "gun", "alice").unwrap_err();
        assert_eq!(e.to_string(), "gun has no signers");
    }
}
