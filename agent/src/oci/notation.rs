//! Writing Notation signatures as `notation sign` writes them (Notary Project signature
//! specification, JWS envelope): the payload `{"targetArtifact": descriptor}`, the protected
//! header (ES256, the `notary.x509` signing scheme, the signing time), the certificate chain
//! in the unprotected `x5c`, stored as an OCI manifest of artifact type
//! `application/vnd.cncf.notary.signature` whose `subject` is the image, and listed in the
//! image's referrers: the OCI referrers tag schema (`sha256-<hex>` index), which is what
//! Notation reads from a registry without the referrers API (distribution 2.8).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use der::Encode as _;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::registry::Session;
use crate::error::{Error, Result};

pub const ARTIFACT_TYPE: &str = "application/vnd.cncf.notary.signature";
pub const JWS_TYPE: &str = "application/jose+json";
const PAYLOAD_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
const THUMBPRINTS: &str = "io.cncf.notary.x509chain.thumbprint#S256";

/// The image a signature is for: its manifest's media type, digest (hex) and size.
#[derive(Debug, Clone)]
pub struct Subject {
    pub media_type: String,
    pub digest_hex: String,
    pub size: u64,
}

/// A JWS signing input and its parts.
pub struct SigningInput {
    pub protected_b64: String,
    pub payload_b64: String,
}

impl SigningInput {
    /// `BASE64URL(protected) "." BASE64URL(payload)`: the bytes signed.
    pub fn bytes(&self) -> Vec<u8> {
        format!("{}.{}", self.protected_b64, self.payload_b64).into_bytes()
    }
}

/// The signing input for `subject`, signed at `at`, valid until `expiry` when given.
pub fn signing_input(
    subject: &Subject,
    at: OffsetDateTime,
    expiry: Option<OffsetDateTime>,
) -> Result<SigningInput> {
    let time = |t: OffsetDateTime| {
        t.replace_nanosecond(0)
            .unwrap_or(t)
            .format(&Rfc3339)
            .map_err(Error::internal)
    };
    let mut crit = vec!["io.cncf.notary.signingScheme"];
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), "ES256".into());
    header.insert("cty".into(), PAYLOAD_TYPE.into());
    header.insert("io.cncf.notary.signingScheme".into(), "notary.x509".into());
    header.insert("io.cncf.notary.signingTime".into(), time(at)?.into());
    if let Some(e) = expiry {
        crit.push("io.cncf.notary.expiry");
        header.insert("io.cncf.notary.expiry".into(), time(e)?.into());
    }
    header.insert("crit".into(), json!(crit));
    let header = Value::Object(header);
    let payload = json!({"targetArtifact": {
        "digest": format!("sha256:{}", subject.digest_hex),
        "mediaType": subject.media_type,
        "size": subject.size,
    }});
    Ok(SigningInput {
        protected_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
        payload_b64: URL_SAFE_NO_PAD.encode(payload.to_string()),
    })
}

/// The JWS envelope (JSON serialization) of a signature `raw` (r||s) over `input`, with the
/// signing key's chain (DER, leaf first).
pub fn envelope(input: &SigningInput, raw: &[u8], chain: &[Vec<u8>]) -> Vec<u8> {
    json!({
        "payload": input.payload_b64,
        "protected": input.protected_b64,
        "header": {
            "x5c": chain.iter().map(|c| STANDARD.encode(c)).collect::<Vec<_>>(),
            "io.cncf.notary.signingAgent": concat!("dct-agent/", env!("CARGO_PKG_VERSION")),
        },
        "signature": URL_SAFE_NO_PAD.encode(raw),
    })
    .to_string()
    .into_bytes()
}

/// The referrers tag of an image (the OCI referrers tag schema).
pub fn referrers_tag(digest_hex: &str) -> String {
    format!("sha256-{digest_hex}")
}

/// The descriptors listed in the image's referrers index, if it has one.
async fn referrers(session: &Session, digest_hex: &str) -> Result<Vec<Value>> {
    let Some(m) = session.manifest(&referrers_tag(digest_hex)).await? else {
        return Ok(Vec::new());
    };
    let v: Value = serde_json::from_slice(&m.bytes).map_err(|e| {
        Error::Refused(format!(
            "{}: the referrers index of sha256:{digest_hex} is not JSON: {e}",
            session.name
        ))
    })?;
    Ok(v.get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// The JWS envelopes of the image's Notation signatures (at most 64).
async fn envelopes(session: &Session, digest_hex: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for d in referrers(session, digest_hex).await?.iter().take(64) {
        if d.get("artifactType").and_then(Value::as_str) != Some(ARTIFACT_TYPE) {
            continue;
        }
        let Some(digest) = d.get("digest").and_then(Value::as_str) else {
            continue;
        };
        let Some(m) = session.manifest(digest).await? else {
            continue;
        };
        let m: Value = serde_json::from_slice(&m.bytes).unwrap_or(Value::Null);
        let layer = m
            .pointer("/layers/0")
            .filter(|l| l.get("mediaType").and_then(Value::as_str) == Some(JWS_TYPE))
            .and_then(|l| l.get("digest").and_then(Value::as_str).map(str::to_string));
        if let Some(blob) = layer {
            let bytes = session.blob(&blob, 256 * 1024).await?;
            if let Ok(env) = serde_json::from_slice::<Value>(&bytes) {
                out.push(env);
            }
        }
    }
    Ok(out)
}

/// A JWS envelope checked: signed by `key` over a payload naming `digest_hex`.
fn verifies(env: &Value, digest_hex: &str, key: &p256::ecdsa::VerifyingKey) -> bool {
    let field = |k: &str| env.get(k).and_then(Value::as_str);
    let (Some(protected), Some(payload), Some(sig)) =
        (field("protected"), field("payload"), field("signature"))
    else {
        return false;
    };
    let Some(sig) = URL_SAFE_NO_PAD
        .decode(sig)
        .ok()
        .and_then(|s| p256::ecdsa::Signature::from_slice(&s).ok())
    else {
        return false;
    };
    if key
        .verify(format!("{protected}.{payload}").as_bytes(), &sig)
        .is_err()
    {
        return false;
    }
    let payload: Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or(Value::Null);
    payload
        .pointer("/targetArtifact/digest")
        .and_then(Value::as_str)
        == Some(format!("sha256:{digest_hex}").as_str())
}

/// Whether the image already has a Notation signature by the key `spki_der`.
pub async fn already_signed(session: &Session, digest_hex: &str, spki_der: &[u8]) -> Result<bool> {
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der)
        .map_err(|e| Error::InvalidArgument(format!("the key is not P-256: {e}")))?;
    Ok(envelopes(session, digest_hex)
        .await?
        .iter()
        .any(|e| verifies(e, digest_hex, &key)))
}

/// Stores `envelope` as a Notation signature of `subject` and lists it in the image's
/// referrers index (keeping what the index lists).
pub async fn attach(
    session: &Session,
    subject: &Subject,
    envelope: &[u8],
    chain: &[Vec<u8>],
) -> Result<()> {
    let blob = session.put_blob(envelope).await?;
    let empty = session.put_blob(b"{}").await?;
    let thumbprints: Vec<String> = chain
        .iter()
        .map(|c| crate::tuf::keys::hex(&Sha256::digest(c)))
        .collect();
    let annotations = json!({
        THUMBPRINTS: serde_json::to_string(&thumbprints).map_err(Error::internal)?,
        "org.opencontainers.image.created": OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc())
            .format(&Rfc3339)
            .map_err(Error::internal)?,
    });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_TYPE, "digest": empty, "size": 2},
        "layers": [{"mediaType": JWS_TYPE, "digest": blob, "size": envelope.len()}],
        "subject": {
            "mediaType": subject.media_type,
            "digest": format!("sha256:{}", subject.digest_hex),
            "size": subject.size,
        },
        "annotations": annotations,
    })
    .to_string();
    let digest = format!(
        "sha256:{}",
        crate::tuf::keys::hex(&Sha256::digest(manifest.as_bytes()))
    );
    session
        .put_manifest(&digest, manifest.as_bytes(), MANIFEST_TYPE)
        .await?;
    let mut listed = referrers(session, &subject.digest_hex).await?;
    listed.retain(|d| d.get("digest").and_then(Value::as_str) != Some(digest.as_str()));
    listed.push(json!({
        "mediaType": MANIFEST_TYPE,
        "digest": digest,
        "size": manifest.len(),
        "artifactType": ARTIFACT_TYPE,
        "annotations": annotations,
    }));
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": listed,
    })
    .to_string();
    session
        .put_manifest(
            &referrers_tag(&subject.digest_hex),
            index.as_bytes(),
            INDEX_TYPE,
        )
        .await
}

/// What a verifier trusts: CA certificates, and the leaf subjects it accepts (RFC 4514 as
/// `dct key list` shows them, optionally with Notation's `x509.subject:` prefix; `*` for any).
pub struct Trust {
    pub cas: Vec<x509_cert::Certificate>,
    pub identities: Vec<String>,
}

/// A subject name compared without the spaces around its separators.
fn normal_name(name: &str) -> String {
    let name = name.trim();
    let name = name.strip_prefix("x509.subject:").unwrap_or(name);
    name.split(',')
        .map(|part| part.trim())
        .collect::<Vec<_>>()
        .join(",")
}

/// The image's Notation signatures (JWS envelopes), at most 64.
pub async fn evidence(session: &Session, digest_hex: &str) -> Result<Vec<Value>> {
    envelopes(session, digest_hex).await
}

/// The first of the envelopes `found` that verifies: its chain issued by a trusted CA (all
/// valid now), its leaf a trusted identity, the signature by the leaf's key over a payload
/// naming `digest_hex`, not expired. The reason when none does.
pub fn check(found: &[Value], digest_hex: &str, trust: &Trust) -> Result<Value> {
    use der::Decode as _;
    if found.is_empty() {
        return Err(Error::Refused(format!(
            "no Notation signature of sha256:{digest_hex} (referrers {})",
            referrers_tag(digest_hex)
        )));
    }
    let mut why = Vec::new();
    for env in found {
        let chain: Vec<x509_cert::Certificate> = env
            .pointer("/header/x5c")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter_map(|c| STANDARD.decode(c).ok())
                    .filter_map(|d| x509_cert::Certificate::from_der(&d).ok())
                    .collect()
            })
            .unwrap_or_default();
        let Some(leaf) = chain.first() else {
            why.push("an envelope without a certificate chain".to_string());
            continue;
        };
        if let Err(e) =
            crate::tuf::cert::chains_to(&chain, &trust.cas, std::time::SystemTime::now())
        {
            why.push(e);
            continue;
        }
        let subject = leaf.tbs_certificate.subject.to_string();
        let trusted = trust
            .identities
            .iter()
            .any(|i| i.trim() == "*" || normal_name(i) == normal_name(&subject));
        if !trusted {
            why.push(format!("signed by {subject}, not a trusted identity"));
            continue;
        }
        let spki = leaf
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(Error::internal)?;
        let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(&spki) else {
            why.push(format!("{subject}'s key is not P-256"));
            continue;
        };
        if !verifies(env, digest_hex, &key) {
            why.push(format!(
                "a signature by {subject} that does not verify for this digest"
            ));
            continue;
        }
        let protected: Value = env
            .get("protected")
            .and_then(Value::as_str)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|p| serde_json::from_slice(&p).ok())
            .unwrap_or(Value::Null);
        if let Some(expiry) = protected
            .get("io.cncf.notary.expiry")
            .and_then(Value::as_str)
        {
            match OffsetDateTime::parse(expiry, &Rfc3339) {
                Ok(t) if t > OffsetDateTime::now_utc() => {}
                _ => {
                    why.push(format!("a signature by {subject} that expired at {expiry}"));
                    continue;
                }
            }
        }
        return Ok(env.clone());
    }
    why.dedup();
    Err(Error::Refused(format!(
        "no Notation signature of sha256:{digest_hex} is trusted ({})",
        why.join("; ")
    )))
}
