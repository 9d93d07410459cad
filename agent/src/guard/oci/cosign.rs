//! cosign's signing inputs, parsed before the agent signs.
//!
//! What cosign v3 hands a KMS plugin (`sigstore-kms-dct`) to sign, whole (captured from the
//! real cosign: `tests/fixtures/cosign-payloads/`):
//!
//! - `cosign sign --new-bundle-format=false` (classic `.sig`): the simple-signing payload,
//!   `{"critical":{"identity":{"docker-reference":REPO},"image":{"docker-manifest-digest":
//!   DIGEST},"type":"cosign container image signature"},"optional":...}`;
//! - `cosign sign` (v3's default, a Sigstore bundle) and `cosign attest`: DSSE's
//!   pre-authentication encoding `DSSEv1 LEN TYPE LEN BODY` of an in-toto statement whose
//!   one subject is the image digest. `cosign sign` names no repository in it: the
//!   signature holds for that digest in any repository. A repository is bound by the
//!   subject annotation [`REPOSITORY_ANNOTATION`] (`cosign sign -a dct.repository=REPO`),
//!   which `cosign verify -a dct.repository=REPO` checks, or by the subject's name (what
//!   `cosign attest` writes: the image's repository); both, they must agree. Without
//!   either the repository is empty and the policy lets only a key allowed every
//!   repository (`guns = ["*"]`) sign it;
//! - `cosign sign-blob`: the file itself, a [`Kind::Blob`].
//!
//! What looks like one of the formats (starts `DSSEv1 `, or is JSON with a `critical`
//! member in any letter case) but is not exactly that format is refused, never taken as a
//! blob: Go's JSON decoding matches member names regardless of case, so a verifier could
//! read such bytes otherwise than this parser does. Unknown members are refused for the
//! same reason.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Kind, Parsed};
use crate::error::{Error, Result};

/// The in-toto subject annotation that names the image's repository in a DSSE statement.
pub const REPOSITORY_ANNOTATION: &str = "dct.repository";

const SIMPLE_SIGNING_TYPE: &str = "cosign container image signature";
const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPES: [&str; 2] = [
    "https://in-toto.io/Statement/v1",
    "https://in-toto.io/Statement/v0.1",
];

fn bad(what: String) -> Error {
    Error::InvalidArgument(format!("cosign payload: {what}"))
}

/// Parses what cosign asks a KMS to sign.
pub fn parse(payload: &[u8]) -> Result<Parsed> {
    if let Some(rest) = payload.strip_prefix(b"DSSEv1 ") {
        return parse_dsse(rest);
    }
    if let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(payload) {
        if top.keys().any(|k| k.eq_ignore_ascii_case("critical")) {
            return parse_simple_signing(&top);
        }
    }
    Ok(blob(payload))
}

fn blob(payload: &[u8]) -> Parsed {
    let digest = format!("sha256:{}", crate::tuf::keys::hex(&Sha256::digest(payload)));
    Parsed {
        kind: Kind::Blob,
        repository: String::new(),
        lines: vec![
            "Format: a blob (cosign sign-blob): any bytes".into(),
            format!("Size: {} bytes", payload.len()),
            format!("Blob: {digest}"),
        ],
        artifact: digest,
        expires: None,
    }
}

/// Checks that `obj` has no members but `allowed` (exact names).
fn only(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<()> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(format!(
            "{what} has an unknown member {k:?} (expected {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn object<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a Map<String, Value>> {
    match v {
        Some(Value::Object(m)) => Ok(m),
        _ => Err(bad(format!("{what} is missing or not an object"))),
    }
}

fn string<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a str> {
    match v {
        Some(Value::String(s)) => Ok(s),
        _ => Err(bad(format!("{what} is missing or not a string"))),
    }
}

/// `sha256:` and 64 lowercase hex digits.
fn check_digest(d: &str, what: &str) -> Result<()> {
    let hex = d.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(bad(format!("{what} {d:?} is not sha256:<64 hex digits>")))
    }
}

/// The repository of a docker reference (`REGISTRY/NAME`, without a tag or digest).
fn repository_of(reference: &str) -> Result<String> {
    let r = reference.split('@').next().unwrap_or_default();
    let last_slash = r.rfind('/').map(|i| i + 1).unwrap_or(0);
    let r = match r[last_slash..].find(':') {
        Some(colon) => &r[..last_slash + colon],
        None => r,
    };
    let fine = |c: char| c.is_ascii_alphanumeric() || "._-/:".contains(c);
    if r.is_empty() || !r.chars().all(fine) || r.starts_with('/') || r.ends_with('/') {
        return Err(bad(format!("{reference:?} is not a repository")));
    }
    Ok(r.to_string())
}

/// `k=v, ...` of string annotations, for the confirmation and the audit.
fn annotation_line(m: &Map<String, Value>) -> Option<String> {
    if m.is_empty() {
        return None;
    }
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    Some(format!("Annotations: {}", parts.join(", ")))
}

fn parse_simple_signing(top: &Map<String, Value>) -> Result<Parsed> {
    only(top, &["critical", "optional"], "the simple-signing payload")?;
    let critical = object(top.get("critical"), "critical")?;
    only(critical, &["identity", "image", "type"], "critical")?;
    let identity = object(critical.get("identity"), "critical.identity")?;
    only(identity, &["docker-reference"], "critical.identity")?;
    let image = object(critical.get("image"), "critical.image")?;
    only(image, &["docker-manifest-digest"], "critical.image")?;
    let kind = string(critical.get("type"), "critical.type")?;
    if kind != SIMPLE_SIGNING_TYPE {
        return Err(bad(format!(
            "critical.type is {kind:?}, not {SIMPLE_SIGNING_TYPE:?}"
        )));
    }
    let reference = string(
        identity.get("docker-reference"),
        "critical.identity.docker-reference",
    )?;
    let digest = string(
        image.get("docker-manifest-digest"),
        "critical.image.docker-manifest-digest",
    )?;
    check_digest(digest, "critical.image.docker-manifest-digest")?;
    let repository = repository_of(reference)?;
    let mut lines = vec![
        "Format: cosign image signature (simple signing, classic .sig)".into(),
        format!("Repository: {repository}"),
        format!("Image digest: {digest}"),
    ];
    if reference != repository {
        lines.push(format!("Docker reference: {reference}"));
    }
    match top.get("optional") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => lines.extend(annotation_line(m)),
        Some(_) => return Err(bad("optional is neither null nor an object".into())),
    }
    Ok(Parsed {
        kind: Kind::CosignSimpleSigning,
        repository,
        artifact: digest.to_string(),
        expires: None,
        lines,
    })
}

/// Splits `LEN SP` off the front: the decimal length and what follows the space.
fn length_prefix(b: &[u8]) -> Result<(usize, &[u8])> {
    let sp = b
        .iter()
        .position(|&c| c == b' ')
        .ok_or_else(|| bad("DSSE: a length without a space after it".into()))?;
    let digits = b.get(..sp).unwrap_or_default();
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad("DSSE: a length is not a decimal number".into()));
    }
    // ASCII digits, at most ten: always a number that fits.
    let n: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("DSSE: a length is not a decimal number".into()))?;
    Ok((n, b.get(sp + 1..).unwrap_or_default()))
}

/// `LEN(type) SP type SP LEN(body) SP body`, after `DSSEv1 `: exactly, nothing after.
fn parse_dsse(rest: &[u8]) -> Result<Parsed> {
    let (n, rest) = length_prefix(rest)?;
    let payload_type = rest
        .get(..n)
        .ok_or_else(|| bad("DSSE: the payload type is cut short".into()))?;
    let rest = rest
        .get(n..)
        .and_then(|r| r.strip_prefix(b" "))
        .ok_or_else(|| bad("DSSE: no space after the payload type".into()))?;
    let (m, body) = length_prefix(rest)?;
    if body.len() != m {
        return Err(bad(format!(
            "DSSE: the body is {} bytes, its length says {m}",
            body.len()
        )));
    }
    if payload_type != IN_TOTO_PAYLOAD_TYPE.as_bytes() {
        return Err(bad(format!(
            "DSSE payload type {:?}: only in-toto statements ({IN_TOTO_PAYLOAD_TYPE}) are signed",
            String::from_utf8_lossy(payload_type)
        )));
    }
    let statement: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("DSSE: the in-toto statement is not JSON: {e}")))?;
    let Value::Object(st) = statement else {
        return Err(bad("DSSE: the in-toto statement is not an object".into()));
    };
    only(
        &st,
        &["_type", "subject", "predicateType", "predicate"],
        "the in-toto statement",
    )?;
    let stype = string(st.get("_type"), "_type")?;
    if !STATEMENT_TYPES.contains(&stype) {
        return Err(bad(format!("_type {stype:?} is not an in-toto statement")));
    }
    let predicate_type = string(st.get("predicateType"), "predicateType")?;
    let subjects = match st.get("subject") {
        Some(Value::Array(a)) => a,
        _ => return Err(bad("subject is missing or not a list".into())),
    };
    let [subject] = subjects.as_slice() else {
        return Err(bad(format!(
            "the statement has {} subjects; the agent signs statements about one artifact",
            subjects.len()
        )));
    };
    let Value::Object(subject) = subject else {
        return Err(bad("the subject is not an object".into()));
    };
    only(
        subject,
        &[
            "name",
            "uri",
            "digest",
            "content",
            "downloadLocation",
            "mediaType",
            "annotations",
        ],
        "the subject",
    )?;
    let digests = object(subject.get("digest"), "subject.digest")?;
    only(digests, &["sha256"], "subject.digest")?;
    let artifact = format!(
        "sha256:{}",
        string(digests.get("sha256"), "subject.digest")?
    );
    check_digest(&artifact, "subject.digest.sha256")?;
    let annotations = match subject.get("annotations") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad("subject.annotations is not an object".into())),
    };
    let annotated = match annotations.get(REPOSITORY_ANNOTATION) {
        None => None,
        Some(Value::String(r)) => Some(repository_of(r)?),
        Some(_) => {
            return Err(bad(format!(
                "the {REPOSITORY_ANNOTATION} annotation is not a string"
            )))
        }
    };
    // `cosign attest` names the image's repository as the subject's name.
    let named = match subject.get("name") {
        None => None,
        Some(Value::String(n)) => Some(repository_of(n)?),
        Some(_) => return Err(bad("subject.name is not a string".into())),
    };
    let repository = match (annotated, named) {
        (Some(a), Some(n)) if a != n => {
            return Err(bad(format!(
                "the subject is named {n} but its {REPOSITORY_ANNOTATION} annotation says {a}"
            )))
        }
        (Some(r), _) | (None, Some(r)) => r,
        (None, None) => String::new(),
    };
    let mut lines = vec![
        "Format: cosign in-toto statement (DSSE, Sigstore bundle)".into(),
        format!("Predicate type: {predicate_type}"),
        if repository.is_empty() {
            format!(
                "Repository: none named (the signature holds for this digest in any \
                 repository; cosign sign -a {REPOSITORY_ANNOTATION}=REPO names one)"
            )
        } else {
            format!("Repository: {repository}")
        },
        format!("Image digest: {artifact}"),
    ];
    lines.extend(annotation_line(&annotations));
    Ok(Parsed {
        kind: Kind::CosignDsse,
        repository,
        artifact,
        expires: None,
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/cosign-payloads")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    const DIGEST: &str = "sha256:1a338c2755e32ce68c008e42bbdf3f774d2a51ecac2392417c8342b18fdab336";

    fn pae(body: &str) -> Vec<u8> {
        format!(
            "DSSEv1 {} {IN_TOTO_PAYLOAD_TYPE} {} {body}",
            IN_TOTO_PAYLOAD_TYPE.len(),
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn cosigns_own_payloads() {
        let p = parse(&fixture("simplesigning.json")).unwrap();
        assert_eq!(p.kind, Kind::CosignSimpleSigning);
        assert_eq!(p.repository, "127.0.0.1:37991/example.com/app");
        assert_eq!(p.artifact, DIGEST);
        assert!(p.lines.iter().any(|l| l.contains(DIGEST)), "{:?}", p.lines);

        let p = parse(&fixture("dsse-sign.bin")).unwrap();
        assert_eq!(p.kind, Kind::CosignDsse);
        assert_eq!(p.repository, "");
        assert_eq!(p.artifact, DIGEST);
        assert!(p
            .lines
            .iter()
            .any(|l| l == "Predicate type: https://sigstore.dev/cosign/sign/v1"));
        assert!(p.lines.iter().any(|l| l.contains("none named")));

        let p = parse(&fixture("dsse-attest.bin")).unwrap();
        assert_eq!(p.kind, Kind::CosignDsse);
        assert_eq!(p.repository, "127.0.0.1:37991/example.com/app");
        assert_eq!(p.artifact, DIGEST);
        assert!(p
            .lines
            .iter()
            .any(|l| l == "Predicate type: https://slsa.dev/provenance/v0.2"));

        let p = parse(&fixture("dsse-sign-repository.bin")).unwrap();
        assert_eq!(p.kind, Kind::CosignDsse);
        assert_eq!(p.repository, "example.com/app");
        assert_eq!(p.artifact, DIGEST);

        let blob = fixture("blob.txt");
        let p = parse(&blob).unwrap();
        assert_eq!(p.kind, Kind::Blob);
        assert_eq!(p.repository, "");
        assert_eq!(
            p.artifact,
            format!("sha256:{}", crate::tuf::keys::hex(&Sha256::digest(&blob)))
        );
    }

    #[test]
    fn references_become_repositories() {
        assert_eq!(repository_of("r.io:5000/a/b").unwrap(), "r.io:5000/a/b");
        assert_eq!(repository_of("r.io:5000/a/b:v1").unwrap(), "r.io:5000/a/b");
        assert_eq!(
            repository_of(&format!("r.io/a@{DIGEST}")).unwrap(),
            "r.io/a"
        );
        assert!(repository_of("").is_err());
        assert!(repository_of("a b").is_err());
    }

    #[test]
    fn lookalikes_are_refused_not_taken_as_blobs() {
        let simple = String::from_utf8(fixture("simplesigning.json")).unwrap();
        // Go matches member names in any case: such bytes could read otherwise there.
        for bent in [
            simple.replace("\"critical\"", "\"Critical\""),
            simple.replace("\"docker-reference\"", "\"Docker-Reference\""),
            simple.replace("cosign container image signature", "something else"),
            simple.replace("\"optional\":null", "\"optional\":null,\"extra\":1"),
            simple.replace("sha256:1a33", "sha256:1A33"),
        ] {
            assert!(parse(bent.as_bytes()).is_err(), "{bent}");
        }
        let dsse = String::from_utf8(fixture("dsse-sign.bin")).unwrap();
        let body = dsse.split_once("234 ").unwrap().1;
        assert!(parse(&pae(body)).is_ok());
        for bent in [
            format!("{dsse} "),
            dsse.replace("234 ", "233 "),
            dsse.replace(
                "DSSEv1 28 application/vnd.in-toto+json",
                "DSSEv1 28 application/vnd.in-toto+jsoN",
            ),
        ] {
            assert!(parse(bent.as_bytes()).is_err(), "{bent}");
        }
        for body in [
            body.replace("predicateType", "predicate_type"),
            body.replace("Statement/v1", "Statement/v9"),
            body.replace(
                "\"subject\":[",
                "\"subject\":[{\"digest\":{\"sha256\":\"00\"}},",
            ),
            body.replace(
                "\"annotations\":{}",
                "\"annotations\":{\"dct.repository\":7}",
            ),
            body.replace("\"sha256\"", "\"sha512\""),
            // A name and an annotation that disagree.
            body.replace("\"subject\":[{", "\"subject\":[{\"name\":\"r.io/a\",")
                .replace(
                    "\"annotations\":{}",
                    "\"annotations\":{\"dct.repository\":\"r.io/b\"}",
                ),
        ] {
            assert!(parse(&pae(&body)).is_err(), "{body}");
        }
        // Other JSON is a blob.
        assert_eq!(parse(br#"{"a":1}"#).unwrap().kind, Kind::Blob);
    }
}
