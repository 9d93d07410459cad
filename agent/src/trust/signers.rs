//! Delegations: add and remove signers (`targets/releases` and named roles).

use serde_json::{json, Value};

use super::cache::TrustContext;
use super::fetch::{check_gun, fetch, Repo};
use super::publish::{commit, fetch_or_init, Edit};
use super::tags::signable;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::keys::KeyEntry;
use crate::trust::notary::NotaryClient;
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
    })
}

pub(crate) fn add_keyid(roles: &mut Vec<Value>, name: &str, id: &str) {
    match roles.iter_mut().find(|r| r["name"] == name) {
        Some(r) => {
            let ids = r["keyids"].as_array_mut();
            if let Some(ids) = ids {
                if !ids.iter().any(|x| x == id) {
                    ids.push(json!(id));
                }
            }
        }
        None => roles.push(json!({"name": name, "keyids": [id], "threshold": 1, "paths": [""]})),
    }
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
    let mut edit = targets_edit(&repo, &keys, gun)?;
    let id = key.key_id();
    let d = &mut edit.signed["delegations"];
    if !d.is_object() {
        *d = json!({"keys": {}, "roles": []});
    }
    d["keys"][&id] = key.to_value();
    if !d["roles"].is_array() {
        d["roles"] = json!([]);
    }
    if let Some(roles) = d["roles"].as_array_mut() {
        add_keyid(roles, &format!("targets/{name}"), &id);
        add_keyid(roles, "targets/releases", &id);
    }
    commit(guard, client, gun, &repo, &keys, vec![edit]).await?;
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
    let mut edit = targets_edit(&repo, &keys, gun)?;
    let role = format!("targets/{name}");
    let d = &mut edit.signed["delegations"];
    let roles = d["roles"]
        .as_array_mut()
        .ok_or_else(|| Error::NotFound(format!("{gun} has no signers")))?;
    let pos = roles
        .iter()
        .position(|r| r["name"] == role.as_str())
        .ok_or_else(|| Error::NotFound(format!("{gun} has no signer {name}")))?;
    let removed = roles.remove(pos);
    let gone: Vec<Value> = removed["keyids"].as_array().cloned().unwrap_or_default();
    for r in roles.iter_mut().filter(|r| r["name"] == "targets/releases") {
        if let Some(ids) = r["keyids"].as_array_mut() {
            ids.retain(|id| !gone.contains(id));
        }
    }
    roles.retain(|r| {
        r["name"] != "targets/releases" || r["keyids"].as_array().is_some_and(|a| !a.is_empty())
    });
    let used: Vec<Value> = roles
        .iter()
        .flat_map(|r| r["keyids"].as_array().cloned().unwrap_or_default())
        .collect();
    if let Some(k) = d["keys"].as_object_mut() {
        k.retain(|id, _| used.contains(&json!(id)));
    }
    commit(guard, client, gun, &repo, &keys, vec![edit]).await?;
    tracing::info!(gun, signer = name, "removed signer");
    Ok(())
}
