//! Notation's signing inputs (JWS and COSE), parsed before the agent signs.
//!
//! `notation sign` builds the envelope itself and hands its plugin only the bytes to sign:
//! for JWS, `BASE64URL(protected header) "." BASE64URL(payload)`; for COSE, the CBOR
//! `Sig_structure` `["Signature1", protected, external_aad, payload]` (RFC 9052 §4.4).
//! Both carry the same facts (notation-core-go `signature/jws`, `signature/cose`): the
//! signing scheme, the signing time, an optional expiry, and the payload
//! `{"targetArtifact": {mediaType, digest, size, annotations}}`.
//!
//! The payload names no repository (Notation signs a descriptor, and the plugin's request
//! carries no reference), so a Notation signature is bound by its key's rule (`oci`
//! includes `notation`) and by the digest it shows, not by the rule's `guns`.

use base64::Engine;
use ciborium::value::Value;
use serde::Deserialize;
use time::OffsetDateTime;

use super::{Kind, Parsed};
use crate::error::{Error, Result};

/// The payload's media type: the `cty` of the envelope.
pub const PAYLOAD_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
const SCHEME: &str = "io.cncf.notary.signingScheme";
const SIGNING_TIME: &str = "io.cncf.notary.signingTime";
const AUTHENTIC_TIME: &str = "io.cncf.notary.authenticSigningTime";
const EXPIRY: &str = "io.cncf.notary.expiry";
/// The signing schemes of the Notary Project signature specification.
const SCHEMES: [&str; 2] = ["notary.x509", "notary.x509.signingAuthority"];
/// COSE's ES256 (RFC 9053), the one algorithm the agent's P-256 keys make.
const COSE_ES256: i64 = -7;

fn bad(why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("not a Notation signing input: {why}"))
}

/// Parses a JWS signing input or a COSE Sig_structure made by `notation sign`.
pub fn parse(payload: &[u8]) -> Result<Parsed> {
    match payload.first() {
        // A CBOR array of four (0x84): a COSE Sig_structure.
        Some(0x84) => parse_cose(payload),
        Some(_) => parse_jws(payload),
        None => Err(bad("empty")),
    }
}

/// The JWS protected header, as notation-core-go writes it (`jwsProtectedHeader`).
#[derive(Deserialize)]
struct JwsHeader {
    alg: String,
    cty: String,
    #[serde(default)]
    crit: Vec<String>,
    #[serde(rename = "io.cncf.notary.signingScheme")]
    scheme: String,
    #[serde(rename = "io.cncf.notary.signingTime", default)]
    signing_time: Option<String>,
    #[serde(rename = "io.cncf.notary.authenticSigningTime", default)]
    authentic_time: Option<String>,
    #[serde(rename = "io.cncf.notary.expiry", default)]
    expiry: Option<String>,
}

/// The signed payload (`envelope.Payload`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    target_artifact: Target,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// What both envelopes say.
struct Facts {
    alg: String,
    scheme: String,
    signing_time: OffsetDateTime,
    expiry: Option<OffsetDateTime>,
    crit: Vec<String>,
}

fn parse_jws(input: &[u8]) -> Result<Parsed> {
    let text = std::str::from_utf8(input).map_err(|_| bad("neither UTF-8 JWS nor COSE"))?;
    let (h64, p64) = text
        .split_once('.')
        .ok_or_else(|| bad("a JWS signing input is HEADER.PAYLOAD"))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header_json = b64
        .decode(h64)
        .map_err(|e| bad(format!("JWS protected header: {e}")))?;
    let payload_json = b64
        .decode(p64)
        .map_err(|e| bad(format!("JWS payload: {e}")))?;
    let h: JwsHeader = serde_json::from_slice(&header_json)
        .map_err(|e| bad(format!("JWS protected header: {e}")))?;
    if h.cty != PAYLOAD_TYPE {
        return Err(bad(format!("content type {:?}, not {PAYLOAD_TYPE}", h.cty)));
    }
    let time = |field: &str, v: &str| {
        OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
            .map_err(|e| bad(format!("{field} {v:?}: {e}")))
    };
    let signing_time = match (&h.signing_time, &h.authentic_time) {
        (Some(t), _) => time(SIGNING_TIME, t)?,
        (None, Some(t)) => time(AUTHENTIC_TIME, t)?,
        (None, None) => return Err(bad("no signing time")),
    };
    let expiry = h.expiry.as_deref().map(|e| time(EXPIRY, e)).transpose()?;
    let facts = Facts {
        alg: h.alg,
        scheme: h.scheme,
        signing_time,
        expiry,
        crit: h.crit,
    };
    finish(Kind::NotationJws, facts, &payload_json)
}

fn parse_cose(input: &[u8]) -> Result<Parsed> {
    let v: Value = ciborium::de::from_reader(input).map_err(|e| bad(format!("CBOR: {e}")))?;
    let Value::Array(items) = v else {
        return Err(bad("COSE Sig_structure is not an array"));
    };
    let [context, protected, aad, payload] = items.as_slice() else {
        return Err(bad("COSE Sig_structure is not an array of four"));
    };
    if context.as_text() != Some("Signature1") {
        return Err(bad("COSE context is not \"Signature1\""));
    }
    let (Some(protected), Some(aad), Some(payload)) =
        (protected.as_bytes(), aad.as_bytes(), payload.as_bytes())
    else {
        return Err(bad("COSE Sig_structure fields are not byte strings"));
    };
    if !aad.is_empty() {
        return Err(bad("COSE external_aad is not empty"));
    }
    let header: Value = ciborium::de::from_reader(protected.as_slice())
        .map_err(|e| bad(format!("COSE protected header: {e}")))?;
    let Value::Map(entries) = header else {
        return Err(bad("COSE protected header is not a map"));
    };
    let get = |label: Label| {
        entries
            .iter()
            .find(|(k, _)| label.matches(k))
            .map(|(_, v)| v)
    };
    let alg = match get(Label::Int(1)).and_then(|v| v.as_integer()) {
        Some(a) if i64::try_from(a).ok() == Some(COSE_ES256) => "ES256".to_string(),
        Some(a) => format!("COSE algorithm {}", i128::from(a)),
        None => return Err(bad("COSE protected header has no algorithm")),
    };
    match get(Label::Int(3)).and_then(Value::as_text) {
        Some(PAYLOAD_TYPE) => {}
        other => return Err(bad(format!("content type {other:?}, not {PAYLOAD_TYPE}"))),
    }
    let crit = match get(Label::Int(2)) {
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_text()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{v:?}"))
            })
            .collect(),
        Some(_) => return Err(bad("COSE crit is not an array")),
        None => Vec::new(),
    };
    let scheme = get(Label::Text(SCHEME))
        .and_then(Value::as_text)
        .ok_or_else(|| bad("no signing scheme"))?
        .to_string();
    let signing_time = match (
        get(Label::Text(SIGNING_TIME)),
        get(Label::Text(AUTHENTIC_TIME)),
    ) {
        (Some(t), _) => cose_time(SIGNING_TIME, t)?,
        (None, Some(t)) => cose_time(AUTHENTIC_TIME, t)?,
        (None, None) => return Err(bad("no signing time")),
    };
    let expiry = get(Label::Text(EXPIRY))
        .map(|t| cose_time(EXPIRY, t))
        .transpose()?;
    let facts = Facts {
        alg,
        scheme,
        signing_time,
        expiry,
        crit,
    };
    finish(Kind::NotationCose, facts, payload)
}

/// A COSE header label: an integer or a text string.
#[derive(Clone, Copy)]
enum Label {
    Int(i64),
    Text(&'static str),
}

impl Label {
    fn matches(self, v: &Value) -> bool {
        match (self, v) {
            (Label::Int(i), Value::Integer(n)) => i64::try_from(*n).ok() == Some(i),
            (Label::Text(t), Value::Text(s)) => s == t,
            _ => false,
        }
    }
}

/// A CBOR date-time as Notation writes it: tag 1 over integer seconds since the epoch.
fn cose_time(field: &str, v: &Value) -> Result<OffsetDateTime> {
    let Value::Tag(1, inner) = v else {
        return Err(bad(format!("{field} is not a tag-1 date-time")));
    };
    let secs = match inner.as_ref() {
        Value::Integer(n) => i64::try_from(*n).map_err(|_| bad(format!("{field} out of range")))?,
        Value::Float(f) if f.is_finite() => *f as i64,
        _ => return Err(bad(format!("{field} is not a number of seconds"))),
    };
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| bad(format!("{field}: {e}")))
}

/// Checks what both envelopes share and says what the signature vouches for.
fn finish(kind: Kind, f: Facts, payload_json: &[u8]) -> Result<Parsed> {
    if f.alg != "ES256" {
        return Err(bad(format!(
            "algorithm {}: the agent's Notation keys sign ES256 (ECDSA P-256, SHA-256)",
            f.alg
        )));
    }
    if !SCHEMES.contains(&f.scheme.as_str()) {
        return Err(bad(format!("signing scheme {:?}", f.scheme)));
    }
    if !f.crit.iter().any(|c| c == SCHEME) {
        return Err(bad("the signing scheme is not marked critical"));
    }
    if f.expiry.is_some() && !f.crit.iter().any(|c| c == EXPIRY) {
        return Err(bad("the expiry is not marked critical"));
    }
    if let Some(e) = f.expiry {
        if e <= f.signing_time {
            return Err(bad("the signature expires before it was made"));
        }
    }
    let p: Payload =
        serde_json::from_slice(payload_json).map_err(|e| bad(format!("payload: {e}")))?;
    let t = p.target_artifact;
    let digest_ok = t.digest.split_once(':').is_some_and(|(alg, hex)| {
        let len = match alg {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => 0,
        };
        hex.len() == len
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !digest_ok {
        return Err(bad(format!("target digest {:?}", t.digest)));
    }
    if t.size < 0 || t.media_type.is_empty() {
        return Err(bad("target descriptor without media type or size"));
    }
    let fmt = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    let mut lines = vec![
        format!("Artifact: {}", t.digest),
        format!("Media type: {}", t.media_type),
        format!("Size: {} bytes", t.size),
        format!("Signing scheme: {}", f.scheme),
        format!("Signing time: {}", fmt(f.signing_time)),
        format!(
            "Expires: {}",
            f.expiry.map(fmt).unwrap_or_else(|| "never".into())
        ),
        format!(
            "Envelope: {}",
            if kind == Kind::NotationJws {
                "JWS"
            } else {
                "COSE"
            }
        ),
    ];
    for (k, v) in &t.annotations {
        lines.push(format!("Annotation: {k}={v}"));
    }
    Ok(Parsed {
        kind,
        repository: String::new(),
        artifact: t.digest,
        expires: f.expiry,
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_notation() {
        for p in [
            &b""[..],
            b"hello",
            b"e30.e30",
            b"{\"critical\":{}}",
            &[0x84, 0x01, 0x02, 0x03, 0x04],
        ] {
            let e = parse(p).unwrap_err();
            assert!(
                e.to_string().contains("not a Notation signing input"),
                "{e}"
            );
        }
    }

    const IMAGE: &str = "sha256:c7b75ba72bc7a9e34b42ff7f8e2cb24b220d4fff851891618b5e7aeb004b8657";

    #[test]
    fn jws_from_notation() {
        let p = parse(include_bytes!("fixtures/notation-jws-expiry.bin")).unwrap();
        assert_eq!(p.kind, Kind::NotationJws);
        assert_eq!(p.artifact, IMAGE);
        assert_eq!(p.repository, "");
        assert_eq!(
            p.expires,
            Some(time::macros::datetime!(2026-12-08 14:58:29 UTC))
        );
        assert!(p
            .lines
            .contains(&"Media type: application/vnd.oci.image.manifest.v1+json".to_string()));
        assert!(
            p.lines.contains(&"Size: 394 bytes".to_string()),
            "{:?}",
            p.lines
        );
        assert!(p.lines.contains(&"Signing scheme: notary.x509".to_string()));
        assert!(p
            .lines
            .contains(&"Signing time: 2026-12-07T14:58:29Z".to_string()));
    }

    #[test]
    fn cose_from_notation() {
        let p = parse(include_bytes!("fixtures/notation-cose.bin")).unwrap();
        assert_eq!(p.kind, Kind::NotationCose);
        assert_eq!(p.artifact, IMAGE);
        assert_eq!(p.expires, None);
        assert!(
            p.lines.contains(&"Expires: never".to_string()),
            "{:?}",
            p.lines
        );
        let p = parse(include_bytes!("fixtures/notation-cose-expiry.bin")).unwrap();
        let e = p.expires.unwrap();
        let signed = p
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("Signing time: "))
            .unwrap();
        let signed =
            OffsetDateTime::parse(signed, &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(e - signed, time::Duration::hours(48));
        assert!(
            p.lines.contains(&"Annotation: team=web".to_string()),
            "{:?}",
            p.lines
        );
    }

    #[test]
    fn refuses_altered_inputs() {
        let jws = include_bytes!("fixtures/notation-jws-expiry.bin");
        let text = std::str::from_utf8(jws).unwrap();
        let (h, p) = text.split_once('.').unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = String::from_utf8(b64.decode(h).unwrap()).unwrap();
        for (from, to, why) in [
            ("ES256", "ES384", "algorithm"),
            ("payload.v1+json", "payload.v2+json", "content type"),
            (
                "\"io.cncf.notary.expiry\"]",
                "\"x\"]",
                "expiry is not marked critical",
            ),
            ("notary.x509\"", "notary.other\"", "signing scheme"),
        ] {
            let h2 = b64.encode(header.replacen(from, to, 1));
            let e = parse(format!("{h2}.{p}").as_bytes()).unwrap_err();
            assert!(e.to_string().contains(why), "{from}: {e}");
        }
        let body =
            b64.encode(br#"{"targetArtifact":{"mediaType":"x","digest":"sha256:zz","size":1}}"#);
        let e = parse(format!("{h}.{body}").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("target digest"), "{e}");
        let mut cose = include_bytes!("fixtures/notation-cose.bin").to_vec();
        cose.truncate(cose.len() - 5);
        assert!(parse(&cose).is_err());
    }
}
