//! Resolving a tag to the digest Docker Content Trust signs: the sha256 and length of the
//! exact manifest bytes a registry serves (`GET /v2/<name>/manifests/<tag>`), with
//! anonymous, basic or bearer-token auth and the same TLS options as the trust server.
//!
//! The first request is anonymous. Credentials go out only after the registry asks for
//! them (a 401 with a `WWW-Authenticate` challenge), only over HTTPS, and only to the
//! registry itself (Basic) or to the token service its Bearer challenge names.

use std::time::Duration;

use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
const MAX_MANIFEST: usize = 4 * 1024 * 1024;

pub struct Credentials {
    pub username: String,
    pub password: SecretString,
}

impl Credentials {
    /// `Authorization: Basic base64(username:password)`, built in zeroizing buffers (the
    /// header value itself is marked sensitive; HTTP keeps its own copy of it).
    fn basic(&self) -> Result<HeaderValue> {
        use base64::Engine;
        let password = self.password.expose_secret().as_bytes();
        let n = self.username.len() + 1 + password.len();
        // Sized up front: no reallocation leaves a copy behind.
        let mut plain = Zeroizing::new(Vec::with_capacity(n));
        plain.extend_from_slice(self.username.as_bytes());
        plain.push(b':');
        plain.extend_from_slice(password);
        let mut text = Zeroizing::new(String::with_capacity(6 + n.div_ceil(3) * 4));
        text.push_str("Basic ");
        base64::engine::general_purpose::STANDARD.encode_string(plain.as_slice(), &mut text);
        let mut v = HeaderValue::from_str(&text).map_err(|_| {
            Error::InvalidArgument("the registry username is not valid in a header".into())
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// An authentication challenge of a 401 answer.
#[derive(Debug, PartialEq)]
enum Challenge {
    Basic,
    /// realm, service
    Bearer(String, Option<String>),
}

/// The challenge a `WWW-Authenticate` value makes (the first of the schemes known here).
fn challenge(value: &str) -> Option<Challenge> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let field = |k: &str| {
        params.split(',').find_map(|p| {
            let (key, v) = p.trim().split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case(k)
                .then(|| v.trim().trim_matches('"').to_string())
        })
    };
    Some(Challenge::Bearer(field("realm")?, field("service")))
}

/// Registry host and repository path of a GUN, as docker maps them.
pub fn locate(gun: &str) -> Result<(String, String)> {
    let (host, name) = gun
        .split_once('/')
        .ok_or_else(|| Error::InvalidArgument(format!("{gun} names no registry")))?;
    let host = if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    };
    Ok((host.to_string(), name.to_string()))
}

/// (sha256, length) of the manifest `gun:tag` points at.
pub async fn resolve(
    gun: &str,
    tag: &str,
    ca_pem: Option<&[u8]>,
    creds: Option<&Credentials>,
) -> Result<([u8; 32], u64)> {
    let (host, name) = locate(gun)?;
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .user_agent(concat!("dct-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        for c in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::InvalidArgument(format!("TLS CA file: {e}")))?
        {
            b = b.add_root_certificate(c);
        }
    }
    let http = b
        .build()
        .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
    let url = format!("https://{host}/v2/{name}/manifests/{tag}");
    let unreachable =
        |e: reqwest::Error| Error::Unavailable(format!("registry {host} unreachable: {e}"));
    let get = |auth: Option<HeaderValue>| {
        let mut r = http.get(&url).header("Accept", ACCEPT);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send()
    };
    // Anonymous first: a public image needs no credentials, and none are offered unasked.
    let mut resp = get(None).await.map_err(unreachable)?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        let asked = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(challenge);
        match asked {
            Some(Challenge::Basic) => {
                if let Some(c) = creds {
                    resp = get(Some(c.basic()?)).await.map_err(unreachable)?;
                }
            }
            Some(Challenge::Bearer(realm, service)) => {
                // Token auth: ask the realm the registry names for a pull token, then retry.
                // Credentials go only to an HTTPS token service.
                if !realm.starts_with("https://") {
                    return Err(Error::Refused(format!(
                        "registry {host} names a token service that is not HTTPS: {realm}"
                    )));
                }
                let mut q = vec![("scope".to_string(), format!("repository:{name}:pull"))];
                if let Some(s) = service {
                    q.push(("service".into(), s));
                }
                let mut tr = http.get(&realm).query(&q);
                if let Some(c) = creds {
                    tr = tr.header("Authorization", c.basic()?);
                }
                let body = crate::util::http::read_capped(
                    tr.send().await.map_err(unreachable)?,
                    1024 * 1024,
                )
                .await
                .map_err(|e| e.unwrap_or_else(unreachable))?;
                let token: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| Error::Unavailable(format!("registry {host} token: {e}")))?;
                let field = |name: &str| token.get(name).and_then(serde_json::Value::as_str);
                let t = field("token")
                    .or_else(|| field("access_token"))
                    .ok_or_else(|| {
                        Error::Refused(format!("registry {host} gave no pull token for {name}"))
                    })?;
                let bearer = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    Error::Unavailable(format!("registry {host} gave a malformed token"))
                })?;
                resp = get(Some(bearer)).await.map_err(unreachable)?;
            }
            None => {}
        }
    }
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(Error::NotFound(format!(
            "{gun}:{tag} is not in the registry"
        )));
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        let why = if creds.is_some() {
            "the credentials were not accepted"
        } else {
            "it wants credentials (DCT_REGISTRY_USERNAME / DCT_REGISTRY_PASSWORD)"
        };
        return Err(Error::Refused(format!(
            "registry {host} answered {status} for {name}:{tag}: {why}"
        )));
    }
    if !status.is_success() {
        return Err(Error::Refused(format!(
            "registry {host} answered {status} for {name}:{tag}"
        )));
    }
    let bytes = crate::util::http::read_capped(resp, MAX_MANIFEST)
        .await
        .map_err(|e| e.unwrap_or_else(unreachable))?;
    Ok((Sha256::digest(&bytes).into(), bytes.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            challenge(r#"Basic realm="dct-test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(challenge("basic"), Some(Challenge::Basic));
        assert_eq!(
            challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer(
                "https://auth.example/token".into(),
                Some("registry.example".into())
            ))
        );
        assert_eq!(challenge(r#"Bearer service="x""#), None);
        assert_eq!(challenge("Negotiate abc"), None);
        assert_eq!(challenge(""), None);
    }

    #[test]
    fn basic_header() {
        let c = Credentials {
            username: "ci-user".into(),
            password: SecretString::from("ci-secret".to_string()),
        };
        let v = c.basic().unwrap();
        assert!(v.is_sensitive());
        // base64("ci-user:ci-secret")
        assert_eq!(v.to_str().unwrap(), "Basic Y2ktdXNlcjpjaS1zZWNyZXQ=");
    }
}
