//! What dockerd sends an authorization plugin, and the image names in it, read as docker
//! reads them.

use base64::Engine;
use serde::Deserialize;

/// `POST /AuthZPlugin.AuthZReq` (and AuthZRes): the API request dockerd is about to serve.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuthzRequest {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub request_method: String,
    #[serde(default, rename = "RequestUri", alias = "RequestURI")]
    pub request_uri: String,
    /// base64 (Go's []byte); dockerd sends JSON bodies under 1 MiB only.
    #[serde(default)]
    pub request_body: Option<String>,
}

impl AuthzRequest {
    pub fn body(&self) -> Option<Vec<u8>> {
        let b = self.request_body.as_deref()?;
        base64::engine::general_purpose::STANDARD.decode(b).ok()
    }
}

/// What the plugin judges.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// `docker pull`: POST /images/create?fromImage=..&tag=..
    Pull(ImageRef),
    /// `docker pull -a`: every tag of a repository.
    PullAll(String),
    /// `docker create` / `docker run`: POST /containers/create, the body's Image as given.
    Create(String),
    /// A container create whose body dockerd did not pass on, or has no Image.
    CreateUnreadable,
    /// Everything else passes.
    Other,
}

/// An image reference: the repository as a GUN (`registry/path`, docker.io/library/x for
/// bare names), with a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub gun: String,
    pub tag: Option<String>,
    /// Lowercase hex of a sha256 digest.
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn display(&self) -> String {
        match (&self.tag, &self.digest) {
            (_, Some(d)) => format!("{}@sha256:{d}", self.gun),
            (Some(t), None) => format!("{}:{t}", self.gun),
            (None, None) => self.gun.clone(),
        }
    }
}

/// `sha256:<64 hex>` -> the hex.
pub fn sha256_hex(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// Parses a reference as docker's `ParseNormalizedNamed`: a first component with a `.` or
/// `:`, or `localhost`, is the registry; else docker.io, where a one-component name is in
/// `library/`. The tag is after the last `:` of the last component; the digest after `@`.
pub fn parse_image(s: &str) -> Result<ImageRef, String> {
    let bad = || format!("{s:?} is not an image reference");
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
    {
        return Err(bad());
    }
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(sha256_hex(d).ok_or_else(bad)?)),
        None => (s, None),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name.get(last_slash..).and_then(|last| last.rfind(':')) {
        Some(i) => {
            let at = last_slash + i;
            let tag = name.get(at + 1..).unwrap_or_default();
            (name.get(..at).unwrap_or_default(), Some(tag.to_string()))
        }
        None => (name, None),
    };
    if tag
        .as_deref()
        .is_some_and(|t| t.is_empty() || t.len() > 128)
    {
        return Err(bad());
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io".to_string()
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if path.is_empty()
        || path
            .split('/')
            .any(|c| c.is_empty() || c.bytes().any(|b| b.is_ascii_uppercase() || b == b':'))
    {
        return Err(bad());
    }
    Ok(ImageRef {
        gun: format!("{domain}/{path}"),
        tag,
        digest,
    })
}

/// Decodes a URL query component (`+` is a space, `%XX` a byte).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The API path without its `/vX.Y` version prefix, and the query's pairs.
pub fn split_uri(uri: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let path = match path
        .strip_prefix("/v")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((version, rest))
            if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            format!("/{rest}")
        }
        _ => path.to_string(),
    };
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    (unescape(&path), pairs)
}

/// What a request asks dockerd to do, as far as the plugin judges it.
pub fn action(req: &AuthzRequest) -> Result<Action, String> {
    if !req.request_method.eq_ignore_ascii_case("POST") {
        return Ok(Action::Other);
    }
    let (path, query) = split_uri(&req.request_uri);
    let q = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    match path.trim_end_matches('/') {
        "/images/create" => {
            let Some(from) = q("fromImage").filter(|f| !f.is_empty()) else {
                // fromSrc: `docker import`, an image no registry signed; `create` judges
                // what runs from it.
                return Ok(Action::Other);
            };
            let mut image = parse_image(from)?;
            match q("tag").filter(|t| !t.is_empty()) {
                Some(t) => {
                    if let Some(d) = sha256_hex(t) {
                        image.digest = Some(d);
                        image.tag = None;
                    } else if t.contains(':') || t.contains('@') {
                        return Err(format!("tag {t:?} is not a tag or a sha256 digest"));
                    } else {
                        image.tag = Some(t.to_string());
                    }
                }
                None if image.tag.is_none() && image.digest.is_none() => {
                    return Ok(Action::PullAll(image.gun));
                }
                None => {}
            }
            Ok(Action::Pull(image))
        }
        "/containers/create" => {
            #[derive(Deserialize)]
            struct Body {
                #[serde(rename = "Image")]
                image: Option<String>,
            }
            let body = req
                .body()
                .and_then(|b| serde_json::from_slice::<Body>(&b).ok())
                .and_then(|b| b.image)
                .filter(|i| !i.is_empty());
            Ok(body.map_or(Action::CreateUnreadable, Action::Create))
        }
        _ => Ok(Action::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(gun: &str, tag: Option<&str>, digest: Option<&str>) -> ImageRef {
        ImageRef {
            gun: gun.into(),
            tag: tag.map(Into::into),
            digest: digest.map(Into::into),
        }
    }

    #[test]
    fn names_map_to_guns_as_docker_normalizes_them() {
        let d = "a".repeat(64);
        assert_eq!(
            parse_image("alpine").unwrap(),
            r("docker.io/library/alpine", None, None)
        );
        assert_eq!(
            parse_image("alpine:3.19").unwrap(),
            r("docker.io/library/alpine", Some("3.19"), None)
        );
        assert_eq!(
            parse_image("me/app:v1").unwrap(),
            r("docker.io/me/app", Some("v1"), None)
        );
        assert_eq!(
            parse_image("127.0.0.1:5000/team/app:v1").unwrap(),
            r("127.0.0.1:5000/team/app", Some("v1"), None)
        );
        assert_eq!(
            parse_image(&format!("127.0.0.1:5000/app@sha256:{d}")).unwrap(),
            r("127.0.0.1:5000/app", None, Some(&d))
        );
        assert_eq!(
            parse_image("localhost/app").unwrap(),
            r("localhost/app", None, None)
        );
        assert_eq!(
            parse_image("index.docker.io/library/x:1").unwrap(),
            r("docker.io/library/x", Some("1"), None)
        );
        for bad in ["", "App", "a b", "x@sha256:12", "x:", "a//b", "reg.io/"] {
            assert!(parse_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_become_actions() {
        let req = |m: &str, uri: &str, body: Option<&str>| AuthzRequest {
            request_method: m.into(),
            request_uri: uri.into(),
            request_body: body.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            ..Default::default()
        };
        let d = "b".repeat(64);
        assert_eq!(
            action(&req(
                "POST",
                "/v1.41/images/create?fromImage=127.0.0.1%3A5000%2Fapp&tag=v1",
                None
            ))
            .unwrap(),
            Action::Pull(r("127.0.0.1:5000/app", Some("v1"), None))
        );
        assert_eq!(
            action(&req(
                "POST",
                &format!("/v1.41/images/create?fromImage=app&tag=sha256%3A{d}"),
                None
            ))
            .unwrap(),
            Action::Pull(r("docker.io/library/app", None, Some(&d)))
        );
        assert_eq!(
            action(&req("POST", "/images/create?fromImage=app", None)).unwrap(),
            Action::PullAll("docker.io/library/app".into())
        );
        assert_eq!(
            action(&req(
                "POST",
                "/v1.41/containers/create?name=x",
                Some(r#"{"Image":"app:v1"}"#)
            ))
            .unwrap(),
            Action::Create("app:v1".into())
        );
        assert_eq!(
            action(&req("POST", "/v1.41/containers/create", None)).unwrap(),
            Action::CreateUnreadable
        );
        assert_eq!(
            action(&req("GET", "/v1.41/images/json", None)).unwrap(),
            Action::Other
        );
        assert_eq!(
            action(&req("POST", "/v1.41/images/create?fromSrc=-", None)).unwrap(),
            Action::Other
        );
    }
}
