//! The guard's first step: parse what is to be signed and check the key fits it. A Notary
//! metadata file is parsed as its type (the agent signs only what it understands), its
//! role, GUN, version and expiry read, and the digest of its canonical `signed` bytes taken;
//! after the token signed, the signature is added. Nothing in `signed` changes.

use std::borrow::Cow;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::keys::KeyEntry;
use crate::tuf::cert::subject_cn;
use crate::tuf::keys::{TufKey, ECDSA_X509};
use crate::tuf::metadata::{
    expected_type, file_bytes, finish_file, parse_key_map, valid_delegation_name, Common, Envelope,
    MetaDoc, RawEnvelope, RoleKeys, RootDoc, Signature, TargetsHead, FILE_HEAD,
};
use crate::tuf::verify::check_role_keys;
use serde::Deserialize;

/// Targets in one document the agent will sign.
pub const MAX_TARGETS: usize = 1_000_000;

/// Every target names a length and a SHA-256 (base64 of 32 bytes), as Notary writes them.
/// `targets` is the raw text of the document's targets map: its entries are read and checked
/// one at a time, none kept.
fn check_target_entries(targets: &str) -> Result<()> {
    use base64::Engine as _;
    if !targets.starts_with('{') {
        return Err(Error::InvalidArgument(
            "document: targets is not an object".into(),
        ));
    }
    let check = |name: &str, meta: &serde_json::Value| -> Result<()> {
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
        Ok(())
    };
    // The first entry found wrong; the rest are only counted.
    let mut wrong = None;
    let n = crate::tuf::cjson::for_each_member(targets, |name, raw| {
        if wrong.is_none() {
            wrong = serde_json::from_str(raw.get())
                .map_err(|e| Error::InvalidArgument(format!("document: targets: {e}")))
                .and_then(|meta| check(&name.0, &meta))
                .err();
        }
    })
    .map_err(|e| Error::InvalidArgument(format!("document: targets: {e}")))?;
    if n > MAX_TARGETS {
        return Err(Error::ResourceExhausted(format!(
            "document has {n} targets; the agent signs at most {MAX_TARGETS} per document"
        )));
    }
    wrong.map_or(Ok(()), Err)
}

/// A document checked and ready for a given key to sign.
pub struct Prepared {
    /// The canonical `signed` bytes: what is hashed, signed and written out. No tree of the
    /// document is kept (a 100,000-target role is a big one), and when the document's
    /// `signed` is canonical already (the agent's own edits, files Notary wrote) these bytes
    /// are that part of the document, not a copy.
    pub message: Bytes,
    /// The document `message` is a view of, when it is one: the signed file is then written
    /// in that buffer.
    pub document: Option<Bytes>,
    /// The signatures the document came with (one by the signing key is replaced).
    pub signatures: Vec<Signature>,
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

/// As [`prepare_shared`], for a document in a plain buffer (copied once).
pub fn prepare_after(
    document: &[u8],
    keys: &[KeyEntry],
    role: &str,
    gun: &str,
    previous: Option<&[u8]>,
) -> Result<Prepared> {
    prepare_shared(&Bytes::copy_from_slice(document), keys, role, gun, previous)
}

/// As [`prepare`], for a root that follows `previous`: an old root key signs under the
/// certificate ID the previous root lists for it. The message shares `document`'s buffer when
/// it can.
pub fn prepare_shared(
    document: &Bytes,
    keys: &[KeyEntry],
    role: &str,
    gun: &str,
    previous: Option<&[u8]>,
) -> Result<Prepared> {
    let key = keys
        .first()
        .ok_or_else(|| Error::NotFound("no such key".into()))?;
    let raw = RawEnvelope::parse(document)
        .map_err(|e| Error::InvalidArgument(format!("document: {e}")))?;
    let text = raw.signed.get();
    let doc_type = raw
        .doc_type()
        .map_err(|e| Error::InvalidArgument(format!("document: {e}")))?
        .ok_or_else(|| Error::InvalidArgument("document: signed has no _type".into()))?;

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
    // Root, snapshot and timestamp documents are small: read as a tree. A targets document is
    // read from its text (its head typed, its targets one by one), never as a tree.
    let tree = |text: &str| -> Result<serde_json::Value> {
        serde_json::from_str(text).map_err(|e| Error::InvalidArgument(format!("document: {e}")))
    };
    let (common, doc_gun, signed) = match doc_type.as_str() {
        "Root" => {
            let signed = tree(text)?;
            let root = RootDoc::deserialize(&signed).map_err(bad)?;
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
            (root.common, root_gun, Some(signed))
        }
        "Targets" => {
            let t: TargetsHead = serde_json::from_str(text).map_err(bad)?;
            let members = crate::tuf::cjson::members(text).map_err(bad)?;
            if let Some(targets) = crate::tuf::cjson::last(&members, "targets") {
                check_target_entries(targets.get())?;
            }
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
                None,
            )
        }
        _ => {
            let signed = tree(text)?;
            let common = MetaDoc::deserialize(&signed).map_err(bad)?.common;
            (common, None, Some(signed))
        }
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
        let signed = signed
            .as_ref()
            .ok_or_else(|| Error::Internal("a root document without its tree".into()))?;
        root_keyid(
            signed,
            previous.as_ref().map(|e| &e.signed),
            key,
            keys,
            &gun,
        )?
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
    let message = match &signed {
        Some(tree) => crate::tuf::cjson::to_vec(tree)
            .map(Bytes::from)
            .map_err(|e| e.to_string()),
        None => crate::tuf::cjson::canonical(text).map(|c| match c {
            Cow::Borrowed(part) => share(document, part),
            Cow::Owned(v) => Bytes::from(v),
        }),
    }
    .map_err(|e| Error::InvalidArgument(format!("document: {e}")))?;
    // Kept to write the signed file in: only when the message is the document's own bytes.
    let within = std::ptr::eq(
        message.as_ptr(),
        document.as_ptr().wrapping_add(FILE_HEAD.len()),
    ) && document.starts_with(FILE_HEAD);
    Ok(Prepared {
        digest: Sha256::digest(&message).into(),
        document: within.then(|| document.clone()),
        message,
        signatures: raw.signatures,
        role,
        version: common.version as u64,
        keyid,
        gun,
        expires,
    })
}

/// `part` of `whole` as a view of the same buffer (a copy should it lie elsewhere).
fn share(whole: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if end <= whole.len() => whole.slice(start..end),
        _ => Bytes::copy_from_slice(part),
    }
}

/// The keyid a root key signs a root document with: the certificate the document lists for
/// this key; else, for a new root signed by an old key, the one the previous root lists; else
/// this key's own certificate for the GUN. `key` is the first of `keys`, its entries.
fn root_keyid(
    signed: &serde_json::Value,
    previous: Option<&serde_json::Value>,
    key: &KeyEntry,
    keys: &[KeyEntry],
    gun: &str,
) -> Result<String> {
    let spki = &key.spki;
    let listed = |signed: &serde_json::Value| -> Option<String> {
        let map = signed.get("keys")?.as_object()?;
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
    if let Some(id) = listed(signed).or_else(|| previous.and_then(listed)) {
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
    crate::tuf::metadata::set_signature(
        &mut p.signatures,
        Signature {
            keyid: p.keyid,
            method: "ecdsa".into(),
            sig: raw_sig,
        },
    );
    if let Some(document) = p.document.take() {
        // The document as sent is `{"signed":` + the message + its signatures: the file is
        // written over it, in its buffer when nothing else holds it (else in a copy).
        let end = FILE_HEAD.len() + p.message.len();
        drop(p.message);
        return finish_file(Vec::from(document), end, &p.signatures).map_err(Error::Internal);
    }
    file_bytes(&p.message, &p.signatures).map_err(Error::Internal)
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

    fn targets_key() -> KeyEntry {
        KeyEntry {
            role: "targets".into(),
            key_id: "k1".into(),
            canonical_id: "k1".into(),
            ..Default::default()
        }
    }

    fn entry(n: u8) -> serde_json::Value {
        use base64::Engine as _;
        serde_json::json!({
            "hashes": {"sha256": base64::engine::general_purpose::STANDARD.encode([n; 32])},
            "length": 10 + u64::from(n),
        })
    }

    /// A targets document read from its text signs the same bytes, and writes the same file,
    /// as the same document read as a tree.
    #[test]
    fn targets_read_from_text_sign_what_the_tree_would() {
        // Spaced, members out of order, one target named twice (the last counts), an old
        // signature by the signing key and one by another.
        let doc = format!(
            r#"{{ "signatures": [{{"keyid":"k1","method":"ecdsa","sig":"AAAA"}},{{"keyid":"k2","method":"ecdsa","sig":"BBBB"}}],
                "signed": {{"version": 4, "targets": {{"b\u00e9": {}, "a": {}, "b\u00e9": {}}},
                "expires": "2030-01-01T00:00:00Z", "_type": "Targets", "x-extra": [1, {{"z": null, "y": "\"q\""}}]}} }}"#,
            entry(1),
            entry(2),
            entry(3)
        );
        let p = prepare(
            doc.as_bytes(),
            &[targets_key()],
            "targets",
            "example.com/app",
        )
        .unwrap();
        let tree = Envelope::parse(doc.as_bytes()).unwrap();
        let canonical = crate::tuf::cjson::to_vec(&tree.signed).unwrap();
        assert_eq!(p.message, canonical);
        assert_eq!(p.digest, <[u8; 32]>::from(Sha256::digest(&canonical)));
        assert_eq!(p.version, 4);
        let file = finish(p, vec![7; 64]).unwrap();
        let mut expected = tree;
        expected.set_signature(Signature {
            keyid: "k1".into(),
            method: "ecdsa".into(),
            sig: vec![7; 64],
        });
        assert_eq!(file, expected.to_bytes().unwrap());
        assert_eq!(Envelope::parse(&file).unwrap().signatures.len(), 2);
    }

    /// A targets document whose `signed` is canonical is signed as it is: the message is
    /// that part of the buffer the document came in, not a copy. Otherwise its own bytes.
    #[test]
    fn a_canonical_document_is_signed_from_its_own_buffer() {
        let signed = format!(
            r#"{{"_type":"Targets","expires":"2030-01-01T00:00:00Z","targets":{{"a":{},"b":{}}},"version":2}}"#,
            serde_json::to_string(&entry(1)).unwrap(),
            serde_json::to_string(&entry(2)).unwrap()
        );
        let within = |doc: &Bytes, p: &Prepared| {
            let (start, at) = (doc.as_ptr() as usize, p.message.as_ptr() as usize);
            (start..start + doc.len()).contains(&at)
        };
        let doc = Bytes::from(format!(r#"{{"signed":{signed},"signatures":[]}}"#));
        let p = prepare_shared(&doc, &[targets_key()], "targets", "g", None).unwrap();
        assert_eq!(&p.message[..], signed.as_bytes());
        assert!(within(&doc, &p), "the canonical part is shared, not copied");
        assert_eq!(
            p.digest,
            <[u8; 32]>::from(Sha256::digest(signed.as_bytes()))
        );
        // The signed file is written in the document's buffer once nothing else holds it,
        // and in a copy while something does: the same bytes either way.
        let sig = Signature {
            keyid: "k1".into(),
            method: "ecdsa".into(),
            sig: vec![7; 64],
        };
        let expected = file_bytes(signed.as_bytes(), std::slice::from_ref(&sig)).unwrap();
        let held = finish(p, vec![7; 64]).unwrap();
        assert_eq!(held, expected);
        assert!(doc.starts_with(br#"{"signed":{"_type""#) && doc.ends_with(b"[]}"));
        let p = prepare_shared(&doc, &[targets_key()], "targets", "g", None).unwrap();
        let at = doc.as_ptr();
        drop(doc);
        let file = finish(p, vec![7; 64]).unwrap();
        assert_eq!(file, expected);
        assert_eq!(file.as_ptr(), at, "written in the document's own buffer");

        let spaced = Bytes::from(
            format!(r#"{{"signed": {signed}, "signatures": []}}"#).replace(",\"b\"", ", \"b\""),
        );
        let p = prepare_shared(&spaced, &[targets_key()], "targets", "g", None).unwrap();
        assert_eq!(&p.message[..], signed.as_bytes());
        assert!(
            !within(&spaced, &p),
            "a rewritten message has its own buffer"
        );
    }

    #[test]
    fn a_bad_target_entry_is_refused_whichever_it_is() {
        let key = [targets_key()];
        let doc = |targets: serde_json::Value| {
            serde_json::json!({"signed": {"_type": "Targets", "version": 1,
                "expires": "2030-01-01T00:00:00Z", "targets": targets}, "signatures": []})
            .to_string()
        };
        let mut no_length = entry(2);
        no_length.as_object_mut().unwrap().remove("length");
        let mut short = entry(3);
        short["hashes"]["sha256"] = "AAAA".into();
        for (targets, why) in [
            (
                serde_json::json!({"a": entry(1), "b": no_length}),
                "target \"b\": no length",
            ),
            (
                serde_json::json!({"a": short, "b": entry(1)}),
                "target \"a\": sha256 is not 32 bytes",
            ),
            (
                serde_json::json!({"a": {"length": 1}}),
                "target \"a\": no sha256 hash",
            ),
            (serde_json::json!(null), "targets is not an object"),
            (serde_json::json!({"a": 5}), "target \"a\": no length"),
        ] {
            let err = prepare(doc(targets).as_bytes(), &key, "targets", "g")
                .err()
                .unwrap();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains(why)),
                "{err} (expected {why})"
            );
        }
        let ok = prepare(
            doc(serde_json::json!({"a": entry(1)})).as_bytes(),
            &key,
            "targets",
            "g",
        );
        assert!(ok.is_ok());
        assert!(prepare(b"[1]", &key, "targets", "g").is_err());
        assert!(prepare(br#"{"signed": []}"#, &key, "targets", "g").is_err());
    }

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
