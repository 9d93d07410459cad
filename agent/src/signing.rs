//! Signing a Notary metadata file: parse it, check the key fits the document, sign the
//! canonical bytes of `signed` on the token, add the signature. Nothing in `signed` changes.

use sha2::{Digest, Sha256};

use crate::audit::Event;
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
        root_keyid(&envelope, previous.as_ref(), keys, &gun)?
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
/// this key's own certificate for the GUN.
fn root_keyid(
    envelope: &Envelope,
    previous: Option<&Envelope>,
    keys: &[KeyEntry],
    gun: &str,
) -> Result<String> {
    let spki = &keys[0].spki;
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
                keys[0].canonical_id
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

/// What signing a document produced.
pub struct Signed {
    pub document: Vec<u8>,
    pub keyid: String,
    pub role: String,
    pub version: u64,
}

/// Checks `document` for `keys` (all listings of one key), signs it on the key's token and
/// returns the signed file. Parsing and canonicalising run off the async runtime.
pub async fn sign_document(
    keyring: &crate::keys::Keyring,
    keys: Vec<KeyEntry>,
    document: Vec<u8>,
    role: String,
    gun: String,
) -> Result<Signed> {
    sign_document_after(keyring, keys, document, role, gun, None).await
}

/// Documents up to this size are parsed and canonicalised in place (tens of microseconds);
/// larger ones on a blocking thread, so a 100,000-tag targets file never stalls the runtime.
const INLINE_BYTES: usize = 64 * 1024;

/// Runs CPU work of `size` input bytes inline when small, else off the async runtime.
async fn cpu<R, F>(size: usize, f: F) -> Result<R>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R> + Send + 'static,
{
    if size <= INLINE_BYTES {
        f()
    } else {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
    }
}

/// As [`sign_document`], for a root that follows `previous` (see [`prepare_after`]).
pub async fn sign_document_after(
    keyring: &crate::keys::Keyring,
    keys: Vec<KeyEntry>,
    document: Vec<u8>,
    role: String,
    gun: String,
    previous: Option<Vec<u8>>,
) -> Result<Signed> {
    match sign_inner(keyring, keys, document, role, gun, previous, None).await? {
        Outcome::Signed(s) => Ok(s),
        Outcome::Confirm { .. } => Err(Error::Internal("confirmation outside dct tuf sign".into())),
    }
}

/// What a signing request with confirmation came to.
pub enum Outcome {
    Signed(Signed),
    /// The key needs the user's confirmation: show `summary`, then ask again with `ticket`.
    Confirm {
        ticket: String,
        summary: Vec<String>,
    },
}

/// As [`sign_document`], for a request that can be confirmed at the terminal: `ticket` is
/// the one the agent offered (None on the first request).
pub async fn sign_document_confirmable(
    keyring: &crate::keys::Keyring,
    keys: Vec<KeyEntry>,
    document: Vec<u8>,
    role: String,
    gun: String,
    ticket: String,
) -> Result<Outcome> {
    sign_inner(keyring, keys, document, role, gun, None, Some(ticket)).await
}

/// What the user is asked to confirm.
fn summary(p: &Prepared) -> Vec<String> {
    let mut out = vec![
        format!("role     {}", p.role),
        format!(
            "GUN      {}",
            if p.gun.is_empty() {
                "-"
            } else {
                p.gun.as_str()
            }
        ),
        format!("version  {}", p.version),
        format!("expires  {}", p.expires),
        format!("key      {}", p.keyid),
        format!("sha256   {}", crate::tuf::keys::hex(&p.digest)),
    ];
    if let Some(t) = p.envelope.signed.get("targets").and_then(|t| t.as_object()) {
        let names: Vec<&str> = t.keys().map(String::as_str).take(20).collect();
        out.push(format!(
            "targets  {} ({}{})",
            t.len(),
            names.join(", "),
            if t.len() > 20 { ", ..." } else { "" }
        ));
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn sign_inner(
    keyring: &crate::keys::Keyring,
    keys: Vec<KeyEntry>,
    document: Vec<u8>,
    role: String,
    gun: String,
    previous: Option<Vec<u8>>,
    ticket: Option<String>,
) -> Result<Outcome> {
    let key = keys
        .first()
        .cloned()
        .ok_or_else(|| Error::NotFound("no such key".into()))?;
    let size = document.len();
    let attempt = Event {
        key_id: key.key_id.clone(),
        role: if role.is_empty() {
            key.role.clone()
        } else {
            role.clone()
        },
        gun: gun.clone(),
        ..Event::new("sign")
    };
    let prepared = cpu(size, move || {
        prepare_after(&document, &keys, &role, &gun, previous.as_deref())
    })
    .await;
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            keyring.audit().refused(attempt, &e).await;
            return Err(e);
        }
    };
    let event = sign_event(&prepared);
    let view = policy_view(&key, &prepared);
    let confirmable = ticket.is_some() && keyring.policy().needs_confirm(&key);
    let confirmed = confirmable
        && ticket
            .as_deref()
            .is_some_and(|t| !t.is_empty() && keyring.policy().redeem(t, &view));
    if let Err(e) = keyring
        .policy()
        .check_confirmed(&view, confirmed || confirmable)
    {
        keyring.audit().refused(event, &e).await;
        return Err(e);
    }
    if confirmable && !confirmed {
        // Nothing is signed yet: the user sees what would be, and asks again.
        let ticket = keyring.policy().offer(&view)?;
        return Ok(Outcome::Confirm {
            ticket,
            summary: summary(&prepared),
        });
    }
    let sig = match keyring.sign_digest(&key, prepared.digest).await {
        Ok(sig) => sig,
        Err(e) => {
            keyring.audit().refused(event, &e).await;
            return Err(e);
        }
    };
    // The signature leaves the agent only once its record is on disk.
    let mut event = event;
    if confirmed {
        event.outcome = "ok, confirmed at the terminal".into();
    }
    keyring.audit().record(event).await?;
    keyring.policy().signed(&policy_view(&key, &prepared));
    cpu(size, move || signed(prepared, sig))
        .await
        .map(Outcome::Signed)
}

/// What the policy sees of a prepared document.
fn policy_view<'a>(key: &'a KeyEntry, p: &'a Prepared) -> crate::policy::Signing<'a> {
    crate::policy::Signing {
        key,
        keyid: &p.keyid,
        role: &p.role,
        gun: &p.gun,
        version: p.version,
        expires: p.expires,
        digest: &p.digest,
    }
}

fn refusal(mut e: Event, why: &Error) -> Event {
    e.action = "refuse";
    e.outcome = why.to_string();
    e
}

/// The audit record of signing `p`.
fn sign_event(p: &Prepared) -> Event {
    Event {
        key_id: p.keyid.clone(),
        role: p.role.clone(),
        gun: p.gun.clone(),
        sha256: crate::tuf::keys::hex(&p.digest),
        version: Some(p.version),
        ..Event::new("sign")
    }
}

fn signed(prepared: Prepared, sig: Vec<u8>) -> Result<Signed> {
    let (keyid, role, version) = (
        prepared.keyid.clone(),
        prepared.role.clone(),
        prepared.version,
    );
    tracing::info!(key_id = %keyid, role = %role, version, "signed metadata");
    Ok(Signed {
        document: finish(prepared, sig)?,
        keyid,
        role,
        version,
    })
}

/// One document of a batch: every listing of its key, the document, role and GUN.
pub struct BatchItem {
    pub keys: Vec<KeyEntry>,
    pub document: Vec<u8>,
    pub role: String,
    pub gun: String,
}

/// Signs many documents: all parsed in one pass, one trip to each token (spread over its
/// signing sessions), all finished in one pass. One result per item, in order.
pub async fn sign_documents(
    keyring: &crate::keys::Keyring,
    items: Vec<BatchItem>,
) -> Vec<Result<Signed>> {
    let size: usize = items.iter().map(|i| i.document.len()).sum();
    let n = items.len();
    let attempts: Vec<Event> = items
        .iter()
        .map(|i| Event {
            key_id: i.keys.first().map(|k| k.key_id.clone()).unwrap_or_default(),
            role: i.role.clone(),
            gun: i.gun.clone(),
            ..Event::new("sign")
        })
        .collect();
    let prepared = cpu(size, move || {
        Ok(items
            .into_iter()
            .map(|i| {
                let key = i.keys.first().cloned();
                let p = prepare(&i.document, &i.keys, &i.role, &i.gun)?;
                key.map(|k| (k, p))
                    .ok_or_else(|| Error::NotFound("no such key".into()))
            })
            .collect::<Vec<_>>())
    })
    .await;
    let mut prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            return (0..n).map(|_| Err(Error::Internal(msg.clone()))).collect();
        }
    };
    // Policy, in order: a version claimed earlier in the batch counts for the later ones.
    for p in prepared.iter_mut() {
        let verdict = match p {
            Ok((k, prep)) => {
                let view = policy_view(k, prep);
                keyring
                    .policy()
                    .check(&view)
                    .map(|()| keyring.policy().signed(&view))
            }
            Err(_) => Ok(()),
        };
        if let Err(e) = verdict {
            *p = Err(e);
        }
    }
    // Group the signing work by token, keeping each item's place.
    let mut by_token: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, p) in prepared.iter().enumerate() {
        if let Ok((k, _)) = p {
            by_token.entry(k.token.clone()).or_default().push(i);
        }
    }
    let mut sigs: Vec<Option<Result<Vec<u8>>>> = (0..n).map(|_| None).collect();
    for (label, idx) in by_token {
        let work = idx
            .iter()
            .filter_map(|&i| {
                prepared[i]
                    .as_ref()
                    .ok()
                    .map(|(k, p)| (k.clone(), p.digest))
            })
            .collect();
        let result = match keyring.token(&label) {
            Ok(t) => t.sign_many(work).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(list) => {
                for (i, sig) in idx.into_iter().zip(list) {
                    sigs[i] = Some(sig);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for i in idx {
                    sigs[i] = Some(Err(Error::Unavailable(msg.clone())));
                }
            }
        }
    }
    // One record per document, all on disk before any signature leaves the agent.
    let events: Vec<Event> = attempts
        .into_iter()
        .zip(prepared.iter().zip(&sigs))
        .map(|(attempt, (p, sig))| match (p, sig) {
            (Ok((_, p)), Some(Ok(_))) => sign_event(p),
            (Ok((_, p)), Some(Err(e))) => refusal(sign_event(p), e),
            (Ok((_, p)), None) => refusal(sign_event(p), &Error::Internal("not signed".into())),
            (Err(e), _) => refusal(attempt, e),
        })
        .collect();
    if let Err(e) = keyring.audit().record_many(events).await {
        let msg = e.to_string();
        for sig in sigs.iter_mut() {
            *sig = Some(Err(Error::Unavailable(msg.clone())));
        }
    }
    let done = cpu(size, move || {
        Ok(prepared
            .drain(..)
            .zip(sigs)
            .map(|(p, sig)| {
                let (_, p) = p?;
                let sig = sig.unwrap_or_else(|| Err(Error::Internal("not signed".into())))?;
                signed(p, sig)
            })
            .collect::<Vec<_>>())
    })
    .await;
    done.unwrap_or_else(|e| {
        let msg = e.to_string();
        (0..n).map(|_| Err(Error::Internal(msg.clone()))).collect()
    })
}
