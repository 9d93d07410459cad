//! gRPC request decoding.
//!
//! The input is decoded with `prost::Message::decode` as every request message of the
//! `dct.v1` API and of the notary-signer API (package `proto`). Nothing may panic, and a
//! decoded message must survive encode/decode unchanged. Decoded requests then go down
//! the agent's own parse paths, as its services run them (the parts that need no token):
//! - SignMetadataRequest (alone and in a batch): role and GUN checks, key lookup among the
//!   fixed keys (else the fixed key of the role), `signing::prepare` and `signing::finish`;
//! - VerifyRepositoryRequest: GUN check, RFC 3339 time, files, `verify_repository`;
//! - ImportKeyRequest: `keyfile::read` with the request's passphrase;
//! - TrustSignerAddRequest: `keys::key_from_pem` of `public_pem`;
//! - notary SignatureRequest: the signer's content check (re-implemented from public items:
//!   `notary_signer::check_content` is private).
#![no_main]

mod common;

use dct_agent::keys::{check_gun, check_role};
use dct_agent::tuf::metadata::{expected_type, MetaDoc};
use dct_agent::tuf::{keyfile, keys};
use dct_proto::dct::v1 as pb;
use dct_proto::notary as npb;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Decodes `data` as `M`; a decoded message re-encodes to bytes that decode to the same.
fn decode<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<M> {
    let m = M::decode(data).ok()?;
    let bytes = m.encode_to_vec();
    assert_eq!(bytes.len(), m.encoded_len(), "encoded_len is wrong");
    let again = M::decode(bytes.as_slice()).expect("re-encoded message does not decode");
    assert_eq!(again, m, "encode/decode changed the message");
    Some(m)
}

fn sign_metadata(req: &pb::SignMetadataRequest) {
    if !req.gun.is_empty() && check_gun(&req.gun).is_err() {
        return;
    }
    if !req.role.is_empty() && check_role(&req.role).is_err() {
        return;
    }
    let key = common::find_key(&req.key_id).unwrap_or_else(|| common::key_for_role(&req.role));
    let keys = std::slice::from_ref(key);
    let res = dct_agent::guard::document::prepare(&req.document, keys, &req.role, &req.gun);
    if common::debug() {
        eprintln!("sign {:?}: {:?}", req.role, res.as_ref().map(|p| &p.keyid).map_err(|e| e.to_string()));
    }
    if let Ok(p) = res {
        dct_agent::guard::document::finish(p, vec![7; 64]).expect("finish after prepare");
    }
    common::check_envelope(&req.document);
}

fn verify_repository(req: pb::VerifyRepositoryRequest) {
    if check_gun(&req.gun).is_err() {
        return;
    }
    let at = if req.at.is_empty() {
        common::at()
    } else {
        match OffsetDateTime::parse(&req.at, &Rfc3339) {
            Ok(t) => t,
            Err(_) => return,
        }
    };
    let Some(files) = common::repo_files(req.files.into_iter().map(|f| (f.role, f.content))) else {
        return;
    };
    let pins: Vec<String> = req
        .pinned_root_keys
        .iter()
        .map(|p| p.to_ascii_lowercase())
        .collect();
    let res = dct_agent::tuf::verify::verify_repository(&req.gun, &files, at, &pins);
    if common::debug() {
        eprintln!("verify: {:?}", res.as_ref().map(|r| r.roles.len()).map_err(|e| e.to_string()));
    }
    if let Ok(repo) = res {
        assert_eq!(repo.pinned, !pins.is_empty());
    }
}

fn import_key(req: &pb::ImportKeyRequest) {
    let Ok(text) = std::str::from_utf8(&req.file) else {
        return;
    };
    let pass = req.passphrase.as_bytes();
    let res = keyfile::read(text, (!pass.is_empty()).then_some(pass));
    if common::debug() {
        eprintln!("import: {:?}", res.as_ref().map(|k| k.role.clone()).map_err(|e| e.to_string()));
    }
}

/// notary_signer's check of the content notary-server asks to have signed.
fn notary_sign(req: &npb::SignatureRequest) {
    let id = req.key_id.as_ref().map(|k| k.id.as_str()).unwrap_or("");
    let key = common::find_key(id).unwrap_or(&common::keys()[3]);
    let Ok(doc) = serde_json::from_slice::<MetaDoc>(&req.content) else {
        return;
    };
    if doc.common.doc_type != expected_type(&key.role) || doc.common.version < 1 {
        return;
    }
    let expires = doc.common.expires_at();
    if common::debug() {
        eprintln!("notary sign {}: expires {expires:?}", key.role);
    }
}

fuzz_target!(|data: &[u8]| {
    // dct.v1
    let _ = decode::<pb::StatusRequest>(data);
    let _ = decode::<pb::UnlockRequest>(data);
    let _ = decode::<pb::LockRequest>(data);
    let _ = decode::<pb::GenerateKeyRequest>(data);
    let _ = decode::<pb::ListKeysRequest>(data);
    let _ = decode::<pb::AttestKeyRequest>(data);
    let _ = decode::<pb::WatchRequest>(data);
    let _ = decode::<pb::CeremonyRootInitRequest>(data);
    let _ = decode::<pb::TrustKeyRotateRequest>(data);
    let _ = decode::<pb::TrustRevokeRequest>(data);
    let _ = decode::<pb::TrustSignerRemoveRequest>(data);
    let _ = decode::<pb::TrustInitRequest>(data);
    let _ = decode::<pb::TrustSignRequest>(data);
    let _ = decode::<pb::TrustInspectRequest>(data);
    if let Some(req) = decode::<pb::TrustSignerAddRequest>(data) {
        if let Ok(text) = std::str::from_utf8(&req.public_pem) {
            let _ = keys::key_from_pem(text);
        }
    }
    if let Some(req) = decode::<pb::ImportKeyRequest>(data) {
        import_key(&req);
    }
    if let Some(req) = decode::<pb::SignMetadataRequest>(data) {
        sign_metadata(&req);
    }
    if let Some(req) = decode::<pb::SignMetadataBatchRequest>(data) {
        for r in req.requests.iter().take(8) {
            sign_metadata(r);
        }
    }
    if let Some(req) = decode::<pb::VerifyRepositoryRequest>(data) {
        verify_repository(req);
    }
    // notary-signer (package proto)
    let _ = decode::<npb::CreateKeyRequest>(data);
    let _ = decode::<npb::KeyId>(data);
    let _ = decode::<npb::Void>(data);
    if let Some(req) = decode::<npb::SignatureRequest>(data) {
        notary_sign(&req);
    }
});
