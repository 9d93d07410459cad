//! The guard's first step: parse what is to be signed and check the key fits it. A Notary
//! metadata file is parsed as its type (the agent signs only what it understands), its
//! role, GUN, version and expiry read, and the digest of its canonical `signed` bytes taken;
//! after the token signed, the signature is added. Nothing in `signed` changes.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::keys::KeyEntry;
use crate::tuf::cert::subject_cn;
use crate::tuf::keys::{TufKey, ECDSA_X509};
use crate::tuf::metadata::{
    expected_type, parse_key_map, valid_delegation_name, Common, Delegations, Envelope, MetaDoc,
    RoleKeys, RootDoc, Signature,
};
use crate::tuf::verify::check_role_keys;
use serde::Deserialize;

/// The parts of a targets document the checks need; the targets map is checked in place
/// by [`check_target_entries`].
#[derive(Deserialize)]
struct TargetsHead {
    #[serde(rename = "_type")]
    doc_type: String,
    version: i64,
    expires: String,
    #[serde(default)]
    delegations: Delegations,
}

/// Targets in one document the agent will sign.
pub const MAX_TARGETS: usize = 1_000_000;

/// Every target names a length and a SHA-256 (base64 of 32 bytes), as Notary writes them.
fn check_target_entries(signed: &serde_json::Value) -> Result<()> {
    use base64::Engine as _;
    let Some(targets) = signed.get("targets") else {
        return Ok(());
    };
    let targets = targets
        .as_object()
        .ok_or_else(|| Error::InvalidArgument("document: targets is not an object".into()))?;
    if targets.len() > MAX_TARGETS {
        return Err(Error::ResourceExhausted(format!(
            "document has {} targets; the agent signs at most {MAX_TARGETS} per document",
            targets.len()
        )));
    }
    for (name, meta) in targets {
        let bad = |what: &str| Error::InvalidArgument(format!("document: target {name:?}: {what}"));
        if meta
            .get("length")
            .and_then(serde_json::Value::as_u64)
            .is_none()
        {
            return Err(bad("no length"));
        }
        let sha = meta
            .get("hashes")
            .and_then(|h| h.get("sha256"))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| bad("no sha256 hash"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(sha)
            .map_err(|_| bad("sha256 is not base64"))?;
        if decoded.len() != 32 {
            return Err(bad("sha256 is not 32 bytes"));
        }
    }
    Ok(())
}

/// A document checked and ready for a given key to sign.
pub struct Prepared {
    pub envelope: Envelope,
    pub role: String,
    pub version: u64,
    /// SHA-256 of the canonical `signed` bytes.
    pub digest: [u8; 32],
    /// The keyid to write in the signature.
    pub keyid: String,
    /// The GUN the document was checked against (empty when none is known).
    pub gun: String,
    pub expires: time::OffsetDateTime,
}

/// Parses `document` and checks that `keys` (every listing of the key: a root key lists
/// once per certificate) may sign it for `role`/`gun`.
pub fn prepare(document: &[u8], keys: &[KeyEntry], role: &str, gun: &str) -> Result<Prepared> {
    prepare_after(document, keys, role, gun, None)
}

/// As [`prepare`], for a root that follows `previous`: an old root key signs under the
/// certificate ID the previous root lists for it.
pub fn prepare_after(
    document: &[u8],
    keys: &[KeyEntry],
    role: &str,
    gun: &str,
    previous: Option<&[u8]>,
) -> Result<Prepared> {
    let key = keys
        .first()
        .ok_or_else(|| Error::NotFound("no such key".into()))?;
    let envelope =
        Envelope::parse(document).map_err(|e| Error::InvalidArgument(format!("document: {e}")))?;
    let doc_type = envelope
        .doc_type()
        .ok_or_else(|| Error::InvalidArgument("document: signed has no _type".into()))?
        .to_string();

    // The role the document is for: the request's, else the key's.
    let role = if role.is_empty() {
        key.role.clone()
    } else {
        role.to_string()
    };
    let fits = match key.role.as_str() {
        // A delegation key may sign any delegation (docker puts one key in targets/NAME and
        // targets/releases), never the top-level roles.
        r if r.starts_with("targets/") => valid_delegation_name(&role),
        r => r == role,
    };
    if !fits {
        return Err(Error::Refused(format!(
            "key {} is a {} key; it does not sign {role}",
            key.key_id, key.role
        )));
    }
    let expected = expected_type(&role);
    if doc_type != expected {
        return Err(Error::Refused(format!(
            "document _type is {doc_type:?} but a {role} document must be {expected:?}"
        )));
    }

    // Parse the whole document as its type: the agent signs only what it understands.
    let bad = |e: serde_json::Error| {
        Error::InvalidArgument(format!("document is not a valid {doc_type}: {e}"))
    };
    // Typed views borrow from the parsed tree: a 100,000-tag targets role is not copied.
    let signed = &envelope.signed;
    let (common, doc_gun) = match doc_type.as_str() {
        "Root" => {
            let root = RootDoc::deserialize(signed).map_err(bad)?;
            let keys = parse_key_map(&root.keys)
                .map_err(|e| Error::InvalidArgument(format!("document: {e}")))?;
            let root_gun = root
                .roles
                .get("root")
                .and_then(|r| {
                    r.keyids
                        .iter()
                        .find_map(|id| keys.get(id)?.certificate().ok())
                })
                .and_then(|c| subject_cn(&c));
            (root.common, root_gun)
        }
        "Targets" => {
            let t = TargetsHead::deserialize(signed).map_err(bad)?;
            check_target_entries(signed)?;
            let keys = parse_key_map(&t.delegations.keys)
                .map_err(|e| Error::InvalidArgument(format!("document: {e}")))?;
            // Delegations as Notary accepts them: direct children of this role, with a
            // threshold and listed keys.
            for d in &t.delegations.roles {
                let parent = d.name.rsplit_once('/').map(|(p, _)| p);
                if !valid_delegation_name(&d.name) || parent != Some(role.as_str()) {
                    return Err(Error::InvalidArgument(format!(
                        "document: invalid delegation {:?} in {role}",
                        d.name
                    )));
                }
                let rk = RoleKeys {
                    keyids: d.keyids.clone(),
                    threshold: d.threshold,
                };
                check_role_keys(&role, &d.name, &rk, &keys)
                    .map_err(|e| Error::InvalidArgument(format!("document: {e}")))?;
            }
            (
                Common {
                    doc_type: t.doc_type,
                    version: t.version,
                    expires: t.expires,
                },
                None,
            )
        }
        _ => (MetaDoc::deserialize(signed).map_err(bad)?.common, None),
    };
    if common.version < 1 {
        return Err(Error::InvalidArgument(format!(
            "document version {} is below 1",
            common.version
        )));
    }
    let expires = common
        .expires_at()
        .map_err(|e| Error::InvalidArgument(format!("document: {e}")))?;

    // GUN: the request's, the document's (a root names it in its certificates), the key's.
    let mut gun = gun.to_string();
    if let Some(d) = doc_gun {
        if !gun.is_empty() && gun != d {
            return Err(Error::Refused(format!(
                "document is the root of {d:?}, not {gun:?}"
            )));
        }
        gun = d;
    }
    let keyid = if key.role == "root" {
        let previous = previous.and_then(|p| Envelope::parse(p).ok());
        root_keyid(&envelope, previous.as_ref(), key, keys, &gun)?
    } else {
        if let Some(kg) = &key.gun {
            if !gun.is_empty() && &gun != kg {
                return Err(Error::Refused(format!(
                    "key {} belongs to {kg:?}, not {gun:?}",
                    key.key_id
                )));
            }
        }
        key.canonical_id.clone()
    };
    let message = envelope
        .signed_bytes()
        .map_err(|e| Error::InvalidArgument(format!("document: {e}")))?;
    Ok(Prepared {
        envelope,
        role,
        version: common.version as u64,
        digest: Sha256::digest(&message).into(),
        keyid,
        gun,
        expires,
    })
}

/// The keyid a root key signs a root document with: the certificate the document lists for
/// this key; else, for a new root signed by an old key, the one the previous root lists; else
/// this key's own certificate for the GUN. `key` is the first of `keys`, its entries.
fn root_keyid(
    envelope: &Envelope,
    previous: Option<&Envelope>,
    key: &KeyEntry,
    keys: &[KeyEntry],
    gun: &str,
) -> Result<String> {
    let spki = &key.spki;
    let listed = |env: &Envelope| -> Option<String> {
        let map = env.signed.get("keys")?.as_object()?;
        map.iter().find_map(|(id, v)| {
            let k = TufKey::from_value(v).ok()?;
            if k.keytype != ECDSA_X509 || k.spki_der().ok().as_ref() != Some(spki) {
                return None;
            }
            // Only a certificate for this GUN names the key in this root.
            let cn = k.certificate().ok().and_then(|c| subject_cn(&c));
            (gun.is_empty() || cn.as_deref() == Some(gun)).then(|| id.clone())
        })
    };
    if let Some(id) = listed(envelope).or_else(|| previous.and_then(listed)) {
        return Ok(id);
    }
    keys.iter()
        .find(|k| k.keytype == ECDSA_X509 && k.gun.as_deref() == Some(gun))
        .map(|k| k.key_id.clone())
        .ok_or_else(|| {
            Error::Refused(format!(
                "root key {} has no certificate for {gun:?} and the document does not list it",
                key.canonical_id
            ))
        })
}

/// Adds the signature and returns the new file bytes.
pub fn finish(mut p: Prepared, raw_sig: Vec<u8>) -> Result<Vec<u8>> {
    p.envelope.set_signature(Signature {
        keyid: p.keyid,
        method: "ecdsa".into(),
        sig: raw_sig,
    });
    p.envelope.to_bytes().map_err(Error::Internal)
}

/// The `signed` part notary-server asks its signer to sign (through the notary-signer API)
/// must be a document of the key's role: parsed, its type checked, its version and expiry
/// well formed. Returns (version, expiry).
pub fn check_server_content(content: &[u8], role: &str) -> Result<(u64, time::OffsetDateTime)> {
    let doc: MetaDoc = serde_json::from_slice(content)
        .map_err(|e| Error::InvalidArgument(format!("content is not a {role} document: {e}")))?;
    let want = expected_type(role);
    if doc.common.doc_type != want {
        return Err(Error::Refused(format!(
            "a {role} key signs only {want} documents, not {:?}",
            doc.common.doc_type
        )));
    }
    if doc.common.version < 1 {
        return Err(Error::InvalidArgument(format!(
            "document version {} is below 1",
            doc.common.version
        )));
    }
    let expires = doc
        .common
        .expires_at()
        .map_err(|e| Error::InvalidArgument(format!("document: {e}")))?;
    Ok((doc.common.version as u64, expires))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_content_must_be_the_keys_role() {
        let ts = br#"{"_type":"Timestamp","expires":"2030-01-01T00:00:00Z","meta":{},"version":2}"#;
        assert_eq!(check_server_content(ts, "timestamp").unwrap().0, 2);
        assert!(matches!(
            check_server_content(ts, "snapshot"),
            Err(Error::Refused(_))
        ));
        assert!(matches!(
            check_server_content(b"not json", "timestamp"),
            Err(Error::InvalidArgument(_))
        ));
        let v0 = br#"{"_type":"Timestamp","expires":"2030-01-01T00:00:00Z","meta":{},"version":0}"#;
        assert!(check_server_content(v0, "timestamp").is_err());
    }
}
