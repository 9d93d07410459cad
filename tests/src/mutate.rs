//! Notary repositories signed in the test with P-256 test keys (the root a self-signed
//! certificate, as Notary makes it), so that any role can be mutated and signed again,
//! including into shapes the agent refuses to sign (no sha256, expired, ...).

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dct_agent::tuf::cert::{assemble, root_tbs};
use dct_agent::tuf::keys::TufKey;
use dct_agent::tuf::metadata::{Envelope, Signature};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{signature::Signer, Signature as EcSig, SigningKey};
use p256::pkcs8::EncodePublicKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const ROOT: usize = 0;
pub const TARGETS: usize = 1;
pub const SNAPSHOT: usize = 2;
pub const TIMESTAMP: usize = 3;
pub const RELEASES: usize = 4;
pub const ALICE: usize = 5;
/// A key no role lists.
pub const STRANGER: usize = 6;

pub struct Key {
    sk: SigningKey,
    pub tuf: TufKey,
    pub id: String,
}

fn spki(sk: &SigningKey) -> Vec<u8> {
    sk.verifying_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// The seven keys, indexed by the constants above; the root's certificate has CN `cn`.
pub fn keys(cn: &str, seed: u8) -> Vec<Key> {
    let sk = |i: u8| SigningKey::from_slice(&[seed.wrapping_add(i).max(1); 32]).unwrap();
    let root_sk = sk(0);
    let now = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let tbs = root_tbs(cn, &spki(&root_sk), now).unwrap();
    let sig: EcSig = root_sk
        .sign_prehash(&Sha256::digest(der::Encode::to_der(&tbs).unwrap()))
        .unwrap();
    let root = TufKey::ecdsa_x509(&assemble(tbs, &sig.to_bytes()).unwrap());
    let mut out = vec![Key {
        id: root.key_id(),
        tuf: root,
        sk: root_sk,
    }];
    for i in 1..=6 {
        let sk = sk(i);
        let tuf = TufKey::ecdsa(spki(&sk));
        out.push(Key {
            id: tuf.key_id(),
            tuf,
            sk,
        });
    }
    out
}

/// `{"hashes": {"sha256": ...}, "length": N}` of `content`.
pub fn meta(content: &[u8]) -> Value {
    json!({"hashes": {"sha256": B64.encode(Sha256::digest(content))}, "length": content.len()})
}

/// The signed parts of a repository, who signs each, and how it is assembled.
pub struct Repo {
    pub signed: BTreeMap<String, Value>,
    pub signers: BTreeMap<String, Vec<usize>>,
    /// The signature method written (Notary writes "ecdsa").
    pub method: String,
    /// Roles left out of the snapshot's meta.
    pub unlisted: Vec<String>,
    pub snapshot_version: i64,
}

impl Repo {
    /// root; targets with `v1` and delegations targets/releases (`v2`) and targets/alice
    /// (`v2`, `a1`); every role valid for a year, the timestamp for a week.
    pub fn new(k: &[Key]) -> Repo {
        let id = |i: usize| k[i].id.clone();
        let far = crate::expires_in(365);
        let mut signed = BTreeMap::new();
        signed.insert(
            "root".to_string(),
            json!({"_type": "Root", "consistent_snapshot": false, "expires": far, "version": 1,
                "keys": {id(ROOT): k[ROOT].tuf.to_value(), id(TARGETS): k[TARGETS].tuf.to_value(),
                         id(SNAPSHOT): k[SNAPSHOT].tuf.to_value(), id(TIMESTAMP): k[TIMESTAMP].tuf.to_value()},
                "roles": {"root": {"keyids": [id(ROOT)], "threshold": 1},
                          "targets": {"keyids": [id(TARGETS)], "threshold": 1},
                          "snapshot": {"keyids": [id(SNAPSHOT)], "threshold": 1},
                          "timestamp": {"keyids": [id(TIMESTAMP)], "threshold": 1}}}),
        );
        signed.insert(
            "targets".to_string(),
            json!({"_type": "Targets", "expires": far, "version": 1, "targets": {"v1": meta(b"one\n")},
                "delegations": {"keys": {id(RELEASES): k[RELEASES].tuf.to_value(), id(ALICE): k[ALICE].tuf.to_value()},
                    "roles": [
                        {"name": "targets/releases", "keyids": [id(RELEASES)], "threshold": 1, "paths": [""]},
                        {"name": "targets/alice", "keyids": [id(ALICE)], "threshold": 1, "paths": [""]}]}}),
        );
        signed.insert(
            "targets/releases".to_string(),
            json!({"_type": "Targets", "expires": far, "version": 1, "targets": {"v2": meta(b"two\n")},
                "delegations": {"keys": {}, "roles": []}}),
        );
        signed.insert(
            "targets/alice".to_string(),
            json!({"_type": "Targets", "expires": far, "version": 1,
                "targets": {"v2": meta(b"two\n"), "a1": meta(b"alice\n")},
                "delegations": {"keys": {}, "roles": []}}),
        );
        let signers = [
            ("root", ROOT),
            ("targets", TARGETS),
            ("snapshot", SNAPSHOT),
            ("timestamp", TIMESTAMP),
            ("targets/releases", RELEASES),
            ("targets/alice", ALICE),
        ]
        .into_iter()
        .map(|(r, i)| (r.to_string(), vec![i]))
        .collect();
        Repo {
            signed,
            signers,
            method: "ecdsa".into(),
            unlisted: Vec::new(),
            snapshot_version: 1,
        }
    }

    pub fn role(&mut self, role: &str) -> &mut Value {
        self.signed.get_mut(role).unwrap()
    }

    fn sign(&self, k: &[Key], role: &str, signed: &Value) -> Vec<u8> {
        let msg = dct_agent::tuf::cjson::to_vec(signed).unwrap();
        let signatures = self
            .signers
            .get(role)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|i| {
                let sig: EcSig = k[i].sk.sign(&msg);
                Signature {
                    keyid: k[i].id.clone(),
                    method: self.method.clone(),
                    sig: sig.to_bytes().to_vec(),
                }
            })
            .collect();
        Envelope {
            signed: signed.clone(),
            signatures,
        }
        .to_bytes()
        .unwrap()
    }

    /// Every role signed, a snapshot over them and a timestamp over that.
    pub fn files(&self, k: &[Key]) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        for (role, signed) in &self.signed {
            files.insert(role.clone(), self.sign(k, role, signed));
        }
        let mut snap_meta = serde_json::Map::new();
        for (role, bytes) in &files {
            if !self.unlisted.contains(role) {
                snap_meta.insert(role.clone(), meta(bytes));
            }
        }
        let snap = json!({"_type": "Snapshot", "expires": crate::expires_in(365),
            "version": self.snapshot_version, "meta": snap_meta});
        let snap = self.sign(k, "snapshot", &snap);
        let ts = json!({"_type": "Timestamp", "expires": crate::expires_in(7),
            "version": self.snapshot_version, "meta": {"snapshot": meta(&snap)}});
        files.insert("timestamp".into(), self.sign(k, "timestamp", &ts));
        files.insert("snapshot".into(), snap);
        files
    }

    /// Writes the files into `dir` (`targets/x` as `dir/targets/x.json`), replacing what
    /// was there.
    pub fn write(&self, k: &[Key], dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        for (role, bytes) in self.files(k) {
            let p = dir.join(format!("{role}.json"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }
}
