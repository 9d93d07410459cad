//! cosign's side: the `sigstore-kms-dct` plugin's protocol (sigstore's KMS CLI plugins, as
//! cosign v3.1.3's sigstore v1.10.8 speaks it), the key's public PEM, and installing the
//! plugin where cosign looks for it (`sigstore-kms-NAME` on PATH for `--key NAME://REF`).
//!
//! The plugin is a thin client: it hands the agent the exact bytes cosign wants signed
//! (`SignPayload`, cosign profile); the agent parses them, applies the key's policy, asks
//! for confirmation where it must, signs on the token and audits. The plugin only turns
//! the raw r||s signature into the ASN.1 DER form cosign expects.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use dct_proto::dct::v1 as pb;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::{json, Value};
use sha2::Digest;

use crate::client::{Client, Failure, Target};

/// The plugin's executable name: cosign runs it for `--key dct://KEYID`.
pub const PLUGIN: &str = "sigstore-kms-dct";
/// The protocol version cosign passes as the first argument.
pub const PROTOCOL_VERSION: &str = "v1";
/// sigstore's name for ECDSA P-256 with SHA-256, the one algorithm of the agent's keys.
pub const ALGORITHM: &str = "ecdsa-sha2-256-nistp256";
/// Go's `crypto.SHA256`, as the protocol numbers hash functions.
const GO_SHA256: u64 = 5;
/// The DSSE subject annotation that names the repository (the agent's
/// `guard::oci::cosign::REPOSITORY_ANNOTATION`).
pub const REPOSITORY_ANNOTATION: &str = "dct.repository";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// `-----BEGIN PUBLIC KEY-----` around a DER SubjectPublicKeyInfo.
pub fn spki_pem(spki: &[u8]) -> String {
    let text = b64(spki);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

/// The key `id` names (key ID, canonical ID, or a unique prefix of either), from the
/// agent's list.
pub async fn find_key(c: &mut Client, id: &str) -> Result<pb::Key, Failure> {
    let r = c
        .call(|mut a| async move { a.list_keys(pb::ListKeysRequest::default()).await })
        .await?;
    let id = id.to_ascii_lowercase();
    let exact: Vec<&pb::Key> = r
        .keys
        .iter()
        .filter(|k| k.key_id == id || k.canonical_id == id)
        .collect();
    let found: Vec<&pb::Key> = if exact.is_empty() {
        r.keys
            .iter()
            .filter(|k| {
                !id.is_empty() && (k.key_id.starts_with(&id) || k.canonical_id.starts_with(&id))
            })
            .collect()
    } else {
        exact
    };
    match found.as_slice() {
        [k] => Ok((*k).clone()),
        [] => Err(Failure {
            hint: Some("see `dct key list` (cosign names a key as dct://KEYID)".into()),
            reason: Some("not_found".into()),
            ..Failure::failed(format!("no key {id} on the agent's tokens"))
        }),
        _ => Err(Failure::usage(format!(
            "{id} names {} keys; give more of the key ID",
            found.len()
        ))),
    }
}

/// The key's SubjectPublicKeyInfo, checked to be P-256.
fn verifying_key(k: &pb::Key) -> Result<VerifyingKey, Failure> {
    if k.spki.is_empty() {
        return Err(Failure::failed(format!(
            "the agent sent no public key for {} (an agent older than this plugin?)",
            k.key_id
        )));
    }
    VerifyingKey::from_public_key_der(&k.spki).map_err(|_| {
        Failure::failed(format!(
            "key {} is not an ECDSA P-256 key: cosign needs one",
            k.key_id
        ))
    })
}

/// A signature as cosign hands it back: ASN.1 DER, or raw r||s.
fn parse_signature(sig: &[u8]) -> Option<Signature> {
    Signature::from_der(sig)
        .ok()
        .or_else(|| Signature::from_slice(sig).ok())
}

/// One plugin call: `args` are the program's arguments after its name, `stdin` the
/// message. Returns the JSON response; errors are `{"errorMessage": ...}` with the fix.
pub async fn plugin(args: &[String], stdin: &[u8], target: &Target) -> Value {
    match plugin_call(args, stdin, target).await {
        Ok(v) => v,
        Err(f) => {
            let mut msg = format!("dct: {}", f.message);
            if let Some(h) = &f.hint {
                msg.push_str(&format!(" ({h})"));
            }
            json!({ "errorMessage": msg })
        }
    }
}

async fn plugin_call(args: &[String], stdin: &[u8], target: &Target) -> Result<Value, Failure> {
    let [version, request, ..] = args else {
        return Err(Failure::usage(format!(
            "{PLUGIN} is cosign's KMS plugin for dct-agent keys (cosign runs it for --key \
             dct://KEYID); usage: {PLUGIN} {PROTOCOL_VERSION} REQUEST-JSON < MESSAGE"
        )));
    };
    if version != PROTOCOL_VERSION {
        return Err(Failure::usage(format!(
            "sigstore KMS plugin protocol {version:?}: this plugin speaks {PROTOCOL_VERSION:?} \
             (sigstore v1.10, as cosign v3.1 uses)"
        )));
    }
    let req: Value = serde_json::from_str(request)
        .map_err(|e| Failure::usage(format!("the request is not JSON: {e}")))?;
    let init = &req["initOptions"];
    let key_id = init["keyResourceID"].as_str().unwrap_or_default();
    if let Some(h) = init["hashFunc"].as_u64() {
        if h != GO_SHA256 {
            return Err(Failure::usage(format!(
                "hash function {h} (Go crypto.Hash): dct keys sign with SHA-256 only"
            )));
        }
    }
    let method = req["methodName"].as_str().unwrap_or_default();
    match method {
        "defaultAlgorithm" => Ok(json!({"defaultAlgorithm": {"defaultAlgorithm": ALGORITHM}})),
        "supportedAlgorithms" => {
            Ok(json!({"supportedAlgorithms": {"supportedAlgorithms": [ALGORITHM]}}))
        }
        "createKey" => Err(Failure::usage(
            "keys are made on a token: `dct key generate --role targets --gun REPO`, then \
             sign with --key dct://KEYID",
        )),
        "publicKey" => {
            let mut c = Client::connect(target).await?;
            let k = find_key(&mut c, key_id).await?;
            verifying_key(&k)?;
            Ok(json!({"publicKey": {"publicKeyPEM": b64(spki_pem(&k.spki).as_bytes())}}))
        }
        "signMessage" => {
            let opts = &req["signMessage"]["signOptions"]["messageOptions"];
            sign_message(key_id, stdin, opts, target).await
        }
        "verifySignature" => {
            let v = &req["verifySignature"];
            let sig = v["signature"]
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .ok_or_else(|| Failure::usage("verifySignature: no signature"))?;
            let digest = message_digest(&v["verifyOptions"]["messageOptions"])?;
            let mut c = Client::connect(target).await?;
            let k = find_key(&mut c, key_id).await?;
            let vk = verifying_key(&k)?;
            let sig = parse_signature(&sig)
                .ok_or_else(|| Failure::failed("the signature is not an ECDSA signature"))?;
            let ok = match (stdin.is_empty(), digest) {
                (true, Some(d)) => vk.verify_prehash(&d, &sig).is_ok(),
                _ => vk.verify(stdin, &sig).is_ok(),
            };
            if ok {
                Ok(json!({"verifySignature": {}}))
            } else {
                Err(Failure::failed(format!(
                    "invalid signature: not made by key {} over this message",
                    k.key_id
                )))
            }
        }
        other => Err(Failure::usage(format!(
            "method {other:?} is not one this plugin knows"
        ))),
    }
}

/// The digest cosign sent beside the message, if any (base64 in `messageOptions.digest`).
fn message_digest(opts: &Value) -> Result<Option<Vec<u8>>, Failure> {
    if let Some(h) = opts["hashFunc"].as_u64() {
        if h != GO_SHA256 {
            return Err(Failure::usage(format!(
                "hash function {h} (Go crypto.Hash): dct keys sign with SHA-256 only"
            )));
        }
    }
    match opts["digest"].as_str() {
        None | Some("") => Ok(None),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Some)
            .map_err(|_| Failure::usage("messageOptions.digest is not base64")),
    }
}

async fn sign_message(
    key_id: &str,
    message: &[u8],
    opts: &Value,
    target: &Target,
) -> Result<Value, Failure> {
    let digest = message_digest(opts)?;
    if message.is_empty() {
        // cosign's crypto.Signer wrapper passes a digest alone: the agent signs only what it
        // can read.
        return Err(Failure::usage(
            "cosign sent a digest without its message: dct-agent signs only what it can \
             read (the simple-signing payload, the in-toto statement, or the blob itself)",
        ));
    }
    if let Some(d) = &digest {
        if d[..] != sha2::Sha256::digest(message)[..] {
            return Err(Failure::usage(
                "the digest cosign sent is not the SHA-256 of the message",
            ));
        }
    }
    let mut c = Client::connect(target).await?;
    let req = pb::SignPayloadRequest {
        key_id: key_id.to_string(),
        profile: pb::PayloadProfile::Cosign as i32,
        payload: message.to_vec(),
    };
    let r = c
        .call(|mut a| async move { a.sign_payload(req).await })
        .await
        .map_err(|mut f| {
            // A refused bundle statement that names no repository: say how to name one.
            let unbound = message.starts_with(b"DSSEv1 ")
                && !message
                    .windows(REPOSITORY_ANNOTATION.len())
                    .any(|w| w == REPOSITORY_ANNOTATION.as_bytes());
            if f.reason.as_deref() == Some("refused") && unbound {
                f.hint = Some(format!(
                    "cosign's bundle names no repository: sign with -a \
                     {REPOSITORY_ANNOTATION}=REGISTRY/REPO (and verify with the same -a), or \
                     in the classic format with --new-bundle-format=false"
                ));
            }
            f
        })?;
    let sig = Signature::from_slice(&r.signature)
        .map_err(|_| Failure::failed("the agent's signature is not a P-256 r||s pair"))?;
    // The signature is checked before it leaves: a key other than the one cosign was told
    // of would make a signature nobody can verify.
    let vk = VerifyingKey::from_public_key_der(&r.public_key)
        .map_err(|_| Failure::failed("the agent sent no P-256 public key"))?;
    vk.verify(message, &sig).map_err(|_| {
        Failure::failed("the agent's signature does not verify with the key's public key")
    })?;
    Ok(json!({"signMessage": {"signature": b64(sig.to_der().as_bytes())}}))
}

/// The default directory for `dct cosign install`: `~/.local/bin`.
pub fn default_install_dir() -> Result<PathBuf, Failure> {
    let home = std::env::var_os("HOME")
        .ok_or_else(|| Failure::usage("HOME is not set: name the directory with --dir"))?;
    Ok(PathBuf::from(home).join(".local").join("bin"))
}

/// Links `sigstore-kms-dct` (beside this program) into `dir`; returns the link and whether
/// `dir` is on PATH.
pub fn install(dir: &Path) -> Result<(PathBuf, bool), Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::failed(format!("cannot find this program: {e}")))?;
    let plugin = exe.with_file_name(PLUGIN);
    if !plugin.is_file() {
        return Err(Failure::failed(format!(
            "{} is missing: the plugin is built and installed beside dct",
            plugin.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::failed(format!("cannot create {}: {e}", dir.display())))?;
    let link = dir.join(PLUGIN);
    if link == plugin {
        return Ok((link, on_path(dir)));
    }
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() || m.is_file() => std::fs::remove_file(&link)
            .map_err(|e| Failure::failed(format!("cannot replace {}: {e}", link.display())))?,
        Ok(_) => {
            return Err(Failure::failed(format!(
                "{} exists and is not a file",
                link.display()
            )))
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&plugin, &link)
        .map_err(|e| Failure::failed(format!("cannot link {}: {e}", link.display())))?;
    Ok((link, on_path(dir)))
}

fn on_path(dir: &Path) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d == dir))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_wraps_der() {
        let pem = spki_pem(&[0u8; 91]);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
    }

    #[tokio::test]
    async fn answers_without_the_agent_what_needs_no_key() {
        let t = Target {
            socket: PathBuf::from("/nonexistent/agent.sock"),
            agent_uid: None,
        };
        let call = |m: &str| {
            vec![
                PROTOCOL_VERSION.to_string(),
                json!({"initOptions": {"protocolVersion": "v1", "keyResourceID": "ab12", "hashFunc": 5},
                       "methodName": m})
                .to_string(),
            ]
        };
        let v = plugin(&call("defaultAlgorithm"), b"", &t).await;
        assert_eq!(v["defaultAlgorithm"]["defaultAlgorithm"], ALGORITHM);
        let v = plugin(&call("supportedAlgorithms"), b"", &t).await;
        assert_eq!(
            v["supportedAlgorithms"]["supportedAlgorithms"][0],
            ALGORITHM
        );
        let v = plugin(&call("createKey"), b"", &t).await;
        assert!(v["errorMessage"]
            .as_str()
            .unwrap()
            .contains("dct key generate"));
        // No agent: the error says how to start one.
        let v = plugin(&call("signMessage"), b"x", &t).await;
        let e = v["errorMessage"].as_str().unwrap();
        assert!(e.contains("start it with `dct-agent`"), "{e}");
        let v = plugin(&["v2".into(), "{}".into()], b"", &t).await;
        assert!(v["errorMessage"]
            .as_str()
            .unwrap()
            .contains("speaks \"v1\""));
    }
}
