//! Shared by the `metadata` and `grpc_decode` targets: fixed keys (the public halves of the
//! notary 0.7 test repository's keys, as listed by its root.json), the repository's GUN and a
//! fixed verification time, and the checks run on one metadata document.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use dct_agent::keys::KeyEntry;
use dct_agent::guard::document as signing;
use dct_agent::tuf::metadata::{parse_key_map, Envelope, RootDoc};
use dct_agent::tuf::verify::{self, RepoFiles};
use serde::Deserialize;
use time::OffsetDateTime;

/// root.json of the notary 0.7 test repository (GUN example.com/app).
pub const ROOT_JSON: &[u8] = include_bytes!("../../tests/fixtures/notary-0.7/metadata/root.json");
pub const GUN: &str = "example.com/app";
/// The root's certificate key ID (a pin that matches).
pub const ROOT_CERT_ID: &str = "c78536bb57a473cfc8d0c5b8c358e4dcb18d3b26766884041d22aa4b0d26e717";

/// Whether FUZZ_DEBUG is set: the targets then print what each step returned (for checking
/// that the seeds reach the paths they are meant to, e.g. `-runs=0` on the corpus).
pub fn debug() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some())
}

/// 2026-11-23T00:00:00Z: the fixture's timestamp.json is valid then (expires 2026-12-06).
pub fn at() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_392_000).unwrap()
}

/// One key per role: root (ecdsa-x509), targets, snapshot, timestamp, and the targets key
/// listed again as a delegation key (`targets/releases`).
pub fn keys() -> &'static [KeyEntry] {
    static KEYS: OnceLock<Vec<KeyEntry>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let env = Envelope::parse(ROOT_JSON).expect("fixture root.json");
        let root = RootDoc::deserialize(&env.signed).expect("fixture root.json is a root");
        let tuf_keys = parse_key_map(&root.keys).expect("fixture root keys");
        let entry = |role: &str, id: &str| {
            let k = &tuf_keys[id];
            KeyEntry {
                key_id: id.to_string(),
                canonical_id: k.canonical_id().unwrap(),
                role: role.to_string(),
                gun: Some(GUN.to_string()),
                keytype: k.keytype.clone(),
                public: k.public.clone(),
                spki: k.spki_der().unwrap(),
                uri: format!("fuzz:{role}"),
                backend: "fuzz",
                token: "fuzz".into(),
                handle: id.as_bytes().to_vec(),
                detail: dct_agent::keys::KeyDetail::None,
            }
        };
        let mut out = Vec::new();
        for role in ["root", "targets", "snapshot", "timestamp"] {
            out.push(entry(role, &root.roles[role].keyids[0]));
        }
        out.push(entry("targets/releases", &root.roles["targets"].keyids[0]));
        out
    })
}

/// The fixed key for `role` (a delegation gets the delegation key, anything else targets').
pub fn key_for_role(role: &str) -> &'static KeyEntry {
    let keys = keys();
    keys.iter()
        .find(|k| k.role == role)
        .or_else(|| {
            role.starts_with("targets/")
                .then(|| keys.iter().find(|k| k.role == "targets/releases"))
                .flatten()
        })
        .unwrap_or(&keys[1])
}

/// A key found as the agent's keyring finds one: key ID or canonical ID, or a prefix.
pub fn find_key(id: &str) -> Option<&'static KeyEntry> {
    if id.is_empty() {
        return None;
    }
    keys()
        .iter()
        .find(|k| k.key_id.starts_with(id) || k.canonical_id.starts_with(id))
}

/// Canonical output writes control characters raw inside strings; escape them so a strict
/// JSON parser can read the bytes (outside strings there are none).
pub fn escape_controls(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for &c in b {
        if c < 0x20 {
            out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
        } else {
            out.push(c);
        }
    }
    out
}

/// Envelope parsing and re-serialisation of one document.
pub fn check_envelope(bytes: &[u8]) {
    let Ok(env) = Envelope::parse(bytes) else {
        return;
    };
    let _ = env.doc_type();
    let signed = env.signed_bytes();
    let written = env.to_bytes();
    assert_eq!(
        signed.is_ok(),
        written.is_ok(),
        "signed_bytes and to_bytes disagree on whether the document has a canonical form"
    );
    if let (Ok(signed), Ok(written)) = (signed, written) {
        // What the agent writes parses back to the same signed bytes and signatures.
        let back = Envelope::parse(&escape_controls(&written))
            .unwrap_or_else(|e| panic!("to_bytes output does not parse: {e}"));
        assert_eq!(back.signed_bytes().unwrap(), signed, "signed part changed");
        assert_eq!(back.signatures, env.signatures, "signatures changed");
    }
}

/// `signing::prepare` of `document` for `role` with the fixed key for that role, with and
/// without role and GUN, as the agent runs it before asking a token to sign. When it
/// accepts, adding a signature must succeed.
pub fn check_prepare(document: &[u8], role: &str, gun: &str) {
    let key = key_for_role(role);
    let keys = std::slice::from_ref(key);
    for (r, g) in [(role, gun), ("", ""), (role, "")] {
        let res = signing::prepare(document, keys, r, g);
        if debug() {
            eprintln!("prepare({r:?}, {g:?}): {:?}", res.as_ref().map(|p| &p.keyid).map_err(|e| e.to_string()));
        }
        if let Ok(p) = res {
            assert!(p.version >= 1, "prepared a document with version {}", p.version);
            let keyid = p.keyid.clone();
            let out = signing::finish(p, vec![0x42; 64]).expect("finish after prepare");
            let back = Envelope::parse(&escape_controls(&out))
                .unwrap_or_else(|e| panic!("signed document does not parse: {e}"));
            assert!(
                back.signatures.iter().any(|s| s.keyid == keyid),
                "signature missing after finish"
            );
        }
    }
    if key.role == "root" {
        let _ = signing::prepare_after(document, keys, role, gun, Some(ROOT_JSON));
    }
}

/// Repository verification as the agent's VerifyRepository runs it, without and with a pin.
pub fn check_verify(gun: &str, files: &RepoFiles, at: OffsetDateTime) {
    for pins in [Vec::new(), vec![ROOT_CERT_ID.to_string()]] {
        let res = verify::verify_repository(gun, files, at, &pins);
        if debug() {
            eprintln!("verify_repository(pins {pins:?}): {:?}", res.as_ref().map(|r| r.roles.len()).map_err(|e| e.to_string()));
        }
        if let Ok(repo) = res {
            assert!(
                repo.roles.first().map(|r| r.role.as_str()) == Some("root"),
                "verified without a root report"
            );
            assert!(files.contains_key("root"));
        }
    }
}

/// Files from a role list as the gRPC request gives them: a role given twice is refused.
pub fn repo_files(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Option<RepoFiles> {
    let mut out = BTreeMap::new();
    for (role, content) in files {
        if out.insert(role, content).is_some() {
            return None;
        }
    }
    Some(out)
}
