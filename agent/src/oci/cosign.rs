//! Writing cosign's classic signatures, as `cosign sign` writes them and every cosign
//! verifies them: the simple-signing payload as a layer
//! (`application/vnd.dev.cosign.simplesigning.v1+json`) of an OCI manifest tagged
//! `sha256-<hex>.sig` in the image's repository, the signature (base64 of the DER ECDSA
//! signature over the payload's SHA-256) in the layer's `dev.cosignproject.cosign/signature`
//! annotation; more signatures of one image are more layers of that manifest.

use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use serde_json::{json, Value};

use super::registry::Session;
use crate::error::{Error, Result};

pub const PAYLOAD_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// The simple-signing payload for `reference` (the repository, `registry/name`) at
/// `digest_hex`, byte for byte as cosign writes it.
pub fn payload(reference: &str, digest_hex: &str) -> Vec<u8> {
    // serde_json keeps map keys sorted, which is cosign's order here too.
    let v = json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": format!("sha256:{digest_hex}")},
            "type": "cosign container image signature",
        },
        "optional": null,
    });
    v.to_string().into_bytes()
}

/// The tag cosign keeps an image's signatures under.
pub fn signature_tag(digest_hex: &str) -> String {
    format!("sha256-{digest_hex}.sig")
}

/// A raw r||s signature as the DER cosign stores (base64).
pub fn der_base64(raw: &[u8]) -> Result<String> {
    use base64::Engine as _;
    let sig = p256::ecdsa::Signature::from_slice(raw)
        .map_err(|e| Error::Internal(format!("not a P-256 signature: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes()))
}

/// The layers of the image's signature manifest, if it has one.
async fn existing_layers(session: &Session, digest_hex: &str) -> Result<Vec<Value>> {
    let Some(m) = session.manifest(&signature_tag(digest_hex)).await? else {
        return Ok(Vec::new());
    };
    let v: Value = serde_json::from_slice(&m.bytes).map_err(|e| {
        Error::Refused(format!(
            "{}: the signature manifest of sha256:{digest_hex} is not JSON: {e}",
            session.name
        ))
    })?;
    Ok(v.get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// Whether the image already carries a signature of `payload` that `spki_der` verifies
/// (so a second run signs nothing again).
pub async fn already_signed(
    session: &Session,
    digest_hex: &str,
    payload: &[u8],
    spki_der: &[u8],
) -> Result<bool> {
    use base64::Engine as _;
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der)
        .map_err(|e| Error::InvalidArgument(format!("the key is not P-256: {e}")))?;
    let payload_digest = format!(
        "sha256:{}",
        crate::tuf::keys::hex(&<sha2::Sha256 as sha2::Digest>::digest(payload))
    );
    for layer in existing_layers(session, digest_hex).await? {
        if layer.get("digest").and_then(Value::as_str) != Some(payload_digest.as_str()) {
            continue;
        }
        let Some(sig) = layer
            .get("annotations")
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            .and_then(Value::as_str)
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        else {
            continue;
        };
        let Ok(sig) = p256::ecdsa::Signature::from_der(&sig) else {
            continue;
        };
        if key.verify(payload, &sig).is_ok() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Adds a signature (`sig_der_b64` over `payload`) to the image's signature manifest,
/// keeping the signatures it has.
pub async fn attach(
    session: &Session,
    digest_hex: &str,
    payload: &[u8],
    sig_der_b64: &str,
) -> Result<()> {
    let mut layers = existing_layers(session, digest_hex).await?;
    let payload_digest = session.put_blob(payload).await?;
    layers.push(json!({
        "mediaType": PAYLOAD_TYPE,
        "size": payload.len(),
        "digest": payload_digest,
        "annotations": {SIGNATURE_ANNOTATION: sig_der_b64},
    }));
    let diff_ids: Vec<Value> = layers
        .iter()
        .filter_map(|l| l.get("digest").cloned())
        .collect();
    let config = json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    })
    .to_string();
    let config_digest = session.put_blob(config.as_bytes()).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "size": config.len(), "digest": config_digest},
        "layers": layers,
    })
    .to_string();
    session
        .put_manifest(
            &signature_tag(digest_hex),
            manifest.as_bytes(),
            MANIFEST_TYPE,
        )
        .await
}

/// A classic cosign signature as found on an image: the payload and its signature (DER).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    /// The payload (base64).
    pub payload: String,
    /// The signature annotation (base64 of DER).
    pub signature: String,
}

/// The classic cosign signatures of the image `digest_hex` (payloads fetched), at most 64.
pub async fn evidence(session: &Session, digest_hex: &str) -> Result<Vec<Evidence>> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for layer in existing_layers(session, digest_hex).await?.iter().take(64) {
        let (Some(digest), Some(sig)) = (
            layer.get("digest").and_then(Value::as_str),
            layer
                .get("annotations")
                .and_then(|a| a.get(SIGNATURE_ANNOTATION))
                .and_then(Value::as_str),
        ) else {
            continue;
        };
        let payload = session.blob(digest, 64 * 1024).await?;
        out.push(Evidence {
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            signature: sig.to_string(),
        });
    }
    Ok(out)
}

/// The first of `found` that `spki_der` verifies over a payload naming `digest_hex` and
/// `repository`; the reason when none.
pub fn check(
    found: &[Evidence],
    repository: &str,
    digest_hex: &str,
    spki_der: &[u8],
) -> Result<Evidence> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der)
        .map_err(|e| Error::InvalidArgument(format!("the cosign key is not P-256: {e}")))?;
    if found.is_empty() {
        return Err(Error::Refused(format!(
            "no cosign signature of sha256:{digest_hex} ({})",
            signature_tag(digest_hex)
        )));
    }
    let mut why = Vec::new();
    for e in found {
        let Some(sig) = b64
            .decode(&e.signature)
            .ok()
            .and_then(|d| p256::ecdsa::Signature::from_der(&d).ok())
        else {
            why.push("a signature that is not DER ECDSA".to_string());
            continue;
        };
        let Ok(payload) = b64.decode(&e.payload) else {
            why.push("a payload that is not base64".to_string());
            continue;
        };
        if key.verify(&payload, &sig).is_err() {
            why.push("a signature by another key".to_string());
            continue;
        }
        let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        let field = |p: &str| v.pointer(p).and_then(Value::as_str);
        let names_digest = field("/critical/image/docker-manifest-digest")
            == Some(format!("sha256:{digest_hex}").as_str());
        let reference = field("/critical/identity/docker-reference").unwrap_or_default();
        if field("/critical/type") != Some("cosign container image signature") || !names_digest {
            why.push("a payload for another image".to_string());
            continue;
        }
        if reference != repository {
            why.push(format!("a signature for {reference}"));
            continue;
        }
        return Ok(e.clone());
    }
    why.dedup();
    Err(Error::Refused(format!(
        "no cosign signature of sha256:{digest_hex} verifies with the key ({})",
        why.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_byte_for_byte_cosigns() {
        // As pushed by cosign v3.1.3 (`cosign sign --new-bundle-format=false`).
        let hex = "c161e5793e329443a4f2f8ac143a78379f6b6c4dc7fdbd43a252c608b2fceffb";
        assert_eq!(
            String::from_utf8(payload("127.0.0.1:5999/app", hex)).unwrap(),
            r#"{"critical":{"identity":{"docker-reference":"127.0.0.1:5999/app"},"image":{"docker-manifest-digest":"sha256:c161e5793e329443a4f2f8ac143a78379f6b6c4dc7fdbd43a252c608b2fceffb"},"type":"cosign container image signature"},"optional":null}"#
        );
        assert_eq!(signature_tag(hex), format!("sha256-{hex}.sig"));
    }
}
