//! A registry client: resolving a tag to the digest Docker Content Trust signs (the sha256
//! and length of the exact manifest bytes a registry serves), and writing blobs and
//! manifests (OCI signatures), with anonymous, basic or bearer-token auth and the same TLS
//! options as the trust server.
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

/// `r` with the auth a registry asked for, if any.
fn with_auth(r: reqwest::RequestBuilder, auth: Option<&HeaderValue>) -> reqwest::RequestBuilder {
    match auth {
        Some(a) => r.header("Authorization", a.clone()),
        None => r,
    }
}

/// A manifest as a registry serves it.
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
}

/// One repository of one registry, with the auth it asked for, kept for the requests that
/// follow (many tags in one run, not a token per request).
pub struct Session {
    http: reqwest::Client,
    host: String,
    /// The repository path (`team/app`).
    pub name: String,
    creds: Option<Credentials>,
    /// `pull` or `pull,push`: the scope a bearer token is asked for.
    scope: &'static str,
    auth: tokio::sync::Mutex<Option<HeaderValue>>,
    /// The repository's tags as listed once ([`Session::list_tags`]): a tag not in it is
    /// known absent without asking. None: not listed, ask each time.
    listed: std::sync::Mutex<Option<std::collections::HashSet<String>>>,
    /// Blobs this session stored or found stored: not uploaded again.
    stored: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Session {
    /// A session with `gun`'s registry over HTTPS (trusting `ca_pem` too); `push` asks for
    /// write access when the registry wants a token.
    pub fn open(
        gun: &str,
        ca_pem: Option<&[u8]>,
        creds: Option<Credentials>,
        push: bool,
    ) -> Result<Session> {
        let (host, name) = locate(gun)?;
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .user_agent(concat!("dct-agent/", env!("CARGO_PKG_VERSION")));
        // Without credentials, HTTP/1.1 on as many kept connections as requests are in
        // flight: distribution (docker-registry) took `dct migrate`'s writes 13-24% faster
        // so than as streams of one HTTP/2 connection (measured, 1,000 tags). With
        // credentials, HTTP/2 where the registry offers it: HTTP/1.1 writes the
        // Authorization value verbatim into each connection's write buffer, which outlives
        // the request (tests/tests/registry_creds.rs finds it in the agent's memory).
        if creds.is_none() {
            b = b.http1_only();
        }
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
        Ok(Session {
            http,
            host,
            name,
            creds,
            scope: if push { "pull,push" } else { "pull" },
            auth: tokio::sync::Mutex::new(None),
            listed: std::sync::Mutex::new(None),
            stored: std::sync::Mutex::new(std::collections::HashSet::new()),
        })
    }

    fn unreachable(&self) -> impl Fn(reqwest::Error) -> Error + '_ {
        move |e| Error::Unavailable(format!("registry {} unreachable: {e}", self.host))
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}/v2/{}/{path}", self.host, self.name)
    }

    /// Sends the request `make` builds, anonymously or with the auth obtained before; on a
    /// 401, answers the registry's challenge once and sends it again.
    async fn send(
        &self,
        make: impl Fn(Option<&HeaderValue>) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let held = self.auth.lock().await.clone();
        let resp = make(held.as_ref())
            .send()
            .await
            .map_err(self.unreachable())?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let asked = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(challenge);
        let auth = match asked {
            Some(Challenge::Basic) => match &self.creds {
                Some(c) => c.basic()?,
                None => return Ok(resp),
            },
            Some(Challenge::Bearer(realm, service)) => self.token(&realm, service).await?,
            None => return Ok(resp),
        };
        *self.auth.lock().await = Some(auth.clone());
        make(Some(&auth)).send().await.map_err(self.unreachable())
    }

    /// Token auth: a token for this repository from the realm the registry names.
    /// Credentials go only to an HTTPS token service.
    async fn token(&self, realm: &str, service: Option<String>) -> Result<HeaderValue> {
        let (host, name) = (&self.host, &self.name);
        if !realm.starts_with("https://") {
            return Err(Error::Refused(format!(
                "registry {host} names a token service that is not HTTPS: {realm}"
            )));
        }
        let mut q = vec![(
            "scope".to_string(),
            format!("repository:{name}:{}", self.scope),
        )];
        if let Some(s) = service {
            q.push(("service".into(), s));
        }
        let mut tr = self.http.get(realm).query(&q);
        if let Some(c) = &self.creds {
            tr = tr.header("Authorization", c.basic()?);
        }
        let body = crate::util::http::read_capped(
            tr.send().await.map_err(self.unreachable())?,
            1024 * 1024,
        )
        .await
        .map_err(|e| e.unwrap_or_else(self.unreachable()))?;
        let token: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Error::Unavailable(format!("registry {host} token: {e}")))?;
        let field = |k: &str| token.get(k).and_then(serde_json::Value::as_str);
        let t = field("token")
            .or_else(|| field("access_token"))
            .ok_or_else(|| {
                Error::Refused(format!(
                    "registry {host} gave no {} token for {name}",
                    self.scope
                ))
            })?;
        let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| Error::Unavailable(format!("registry {host} gave a malformed token")))?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// The error for an answer other than success, naming what was asked.
    fn refused(&self, status: reqwest::StatusCode, what: &str) -> Error {
        let host = &self.host;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            let why = if self.creds.is_some() {
                "the credentials were not accepted"
            } else {
                "it wants credentials (DCT_REGISTRY_USERNAME / DCT_REGISTRY_PASSWORD)"
            };
            return Error::Refused(format!(
                "registry {host} answered {status} for {what}: {why}"
            ));
        }
        Error::Refused(format!("registry {host} answered {status} for {what}"))
    }

    /// Lists the repository's tags (every page), and from then on answers for a signature
    /// tag that was not listed without asking the registry, until [`Session::forget_tags`].
    /// For checking many images of which most have no signature yet: one request, not one
    /// per image.
    pub async fn list_tags(&self) -> Result<()> {
        self.list_tags_by(10_000).await
    }

    /// [`Session::list_tags`] asking for `page` tags a page.
    pub async fn list_tags_by(&self, page: usize) -> Result<()> {
        // Only the signature tags are kept (they are all that is answered from the listing);
        // a listing that is too long, pages forever or pages elsewhere is given up whole:
        // the caller then asks per image, as without a listing.
        const MAX_TAGS: usize = 1_000_000;
        const MAX_PAGES: usize = 10_000;
        let mut kept = std::collections::HashSet::new();
        let (mut seen, mut pages) = (0usize, 0usize);
        let mut next = Some(self.url(&format!("tags/list?n={page}")));
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(Error::Unavailable(format!(
                    "registry {} lists the tags of {} in more than {MAX_PAGES} pages",
                    self.host, self.name
                )));
            }
            let resp = self
                .send(|auth| with_auth(self.http.get(&url), auth))
                .await?;
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                // No repository yet: no tags.
                break;
            }
            if !status.is_success() {
                return Err(self.refused(status, &format!("the tags of {}", self.name)));
            }
            let link = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .filter(|l| l.contains("rel=\"next\""))
                .map(str::to_string);
            if let Some(l) = link {
                next = Some(next_page(&l, &self.host).ok_or_else(|| {
                    Error::Refused(format!(
                        "registry {} pages its tag list somewhere else: {l}",
                        self.host
                    ))
                })?);
            }
            let body = crate::util::http::read_capped(resp, 16 * 1024 * 1024)
                .await
                .map_err(|e| e.unwrap_or_else(self.unreachable()))?;
            #[derive(serde::Deserialize)]
            struct Page {
                tags: Option<Vec<String>>,
            }
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| Error::Unavailable(format!("registry {} tag list: {e}", self.host)))?;
            let page = page.tags.unwrap_or_default();
            seen += page.len();
            if seen > MAX_TAGS {
                return Err(Error::Unavailable(format!(
                    "{} has more than {MAX_TAGS} tags: not listed",
                    self.name
                )));
            }
            kept.extend(page.into_iter().filter(|t| t.starts_with("sha256-")));
        }
        *self.listing() = Some(kept);
        Ok(())
    }

    /// Asks the registry about every tag again.
    pub fn forget_tags(&self) {
        *self.listing() = None;
    }

    /// Whether the listing taken says `reference` is absent: only for the tags signatures
    /// are kept under (`sha256-HEX`, `sha256-HEX.sig`); any other is always asked for.
    fn known_absent(&self, reference: &str) -> bool {
        reference.starts_with("sha256-")
            && self
                .listing()
                .as_ref()
                .is_some_and(|t| !t.contains(reference))
    }

    /// The tag listing (a cache: a panic elsewhere leaves it usable, at worst a tag is
    /// asked for again or signed again).
    fn listing(&self) -> std::sync::MutexGuard<'_, Option<std::collections::HashSet<String>>> {
        self.listed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The manifest `reference` (a tag or `sha256:...`) names, or None when there is none.
    pub async fn manifest(&self, reference: &str) -> Result<Option<Manifest>> {
        if self.known_absent(reference) {
            return Ok(None);
        }
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self
            .send(|auth| with_auth(self.http.get(&url).header("Accept", ACCEPT), auth))
            .await?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.refused(status, &format!("{}:{reference}", self.name)));
        }
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = crate::util::http::read_capped(resp, MAX_MANIFEST)
            .await
            .map_err(|e| e.unwrap_or_else(self.unreachable()))?;
        Ok(Some(Manifest { bytes, media_type }))
    }

    /// The blob `digest` (`sha256:HEX`) names, at most `cap` bytes, checked against its
    /// digest.
    pub async fn blob(&self, digest: &str, cap: usize) -> Result<Vec<u8>> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self
            .send(|auth| with_auth(self.http.get(&url), auth))
            .await?;
        if !resp.status().is_success() {
            return Err(self.refused(resp.status(), &format!("blob {digest} of {}", self.name)));
        }
        let bytes = crate::util::http::read_capped(resp, cap)
            .await
            .map_err(|e| e.unwrap_or_else(self.unreachable()))?;
        let got = format!("sha256:{}", crate::tuf::keys::hex(&Sha256::digest(&bytes)));
        if got != digest {
            return Err(Error::Refused(format!(
                "registry {} served {got} for blob {digest}",
                self.host
            )));
        }
        Ok(bytes)
    }

    /// Uploads `bytes` as a blob (unless this session stored it already); its digest
    /// (`sha256:HEX`). No HEAD first: the blobs written here are small, and most are new,
    /// so asking would cost as much as uploading (a registry takes a blob it has again).
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", crate::tuf::keys::hex(&Sha256::digest(bytes)));
        if self.stored_blobs().contains(&digest) {
            return Ok(digest);
        }
        let start_url = self.url("blobs/uploads/");
        let started = self
            .send(|auth| {
                with_auth(
                    self.http.post(&start_url).header("Content-Length", "0"),
                    auth,
                )
            })
            .await?;
        if started.status() != reqwest::StatusCode::ACCEPTED {
            return Err(self.refused(started.status(), &format!("an upload to {}", self.name)));
        }
        let location = started
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::Unavailable(format!("registry {} gave no upload location", self.host))
            })?;
        // The location may be relative to the registry, and may carry a query already.
        let mut put_url = if location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("https://{}{location}", self.host)
        } else {
            return Err(Error::Unavailable(format!(
                "registry {} gave an upload location off HTTPS: {location}",
                self.host
            )));
        };
        if !put_url.starts_with(&format!("https://{}/", self.host)) {
            return Err(Error::Refused(format!(
                "registry {} sent the upload to another host: {put_url}",
                self.host
            )));
        }
        put_url.push(if put_url.contains('?') { '&' } else { '?' });
        put_url.push_str(&format!("digest={digest}"));
        let body = bytes.to_vec();
        let put = self
            .send(|auth| {
                with_auth(
                    self.http
                        .put(&put_url)
                        .header("Content-Type", "application/octet-stream")
                        .body(body.clone()),
                    auth,
                )
            })
            .await?;
        if put.status() != reqwest::StatusCode::CREATED {
            return Err(self.refused(put.status(), &format!("blob {digest} of {}", self.name)));
        }
        self.stored_blobs().insert(digest.clone());
        Ok(digest)
    }

    fn stored_blobs(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `bytes` as the manifest `reference` (a tag) names.
    pub async fn put_manifest(
        &self,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<()> {
        let url = self.url(&format!("manifests/{reference}"));
        let body = bytes.to_vec();
        let put = self
            .send(|auth| {
                with_auth(
                    self.http
                        .put(&url)
                        .header("Content-Type", media_type)
                        .body(body.clone()),
                    auth,
                )
            })
            .await?;
        if put.status() != reqwest::StatusCode::CREATED {
            return Err(self.refused(put.status(), &format!("{}:{reference}", self.name)));
        }
        if let Some(t) = self.listing().as_mut() {
            t.insert(reference.to_string());
        }
        Ok(())
    }
}

/// The next page a tag list's `Link` header names (`<URL>; rel="next"`), on this registry.
fn next_page(link: &str, host: &str) -> Option<String> {
    let (target, params) = link.split_once(';')?;
    if !params.contains("rel=\"next\"") {
        return None;
    }
    let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
    if target.starts_with("/v2/") {
        Some(format!("https://{host}{target}"))
    } else if target.starts_with(&format!("https://{host}/")) {
        Some(target.to_string())
    } else {
        None
    }
}

/// (sha256, length) of the manifest `gun:tag` points at.
pub async fn resolve(
    gun: &str,
    tag: &str,
    ca_pem: Option<&[u8]>,
    creds: Option<&Credentials>,
) -> Result<([u8; 32], u64)> {
    let creds = creds.map(|c| Credentials {
        username: c.username.clone(),
        password: c.password.clone(),
    });
    let session = Session::open(gun, ca_pem, creds, false)?;
    let m = session
        .manifest(tag)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{gun}:{tag} is not in the registry")))?;
    Ok((Sha256::digest(&m.bytes).into(), m.bytes.len() as u64))
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
    fn tag_list_pages() {
        let h = "r.example:5000";
        assert_eq!(
            next_page(r#"</v2/a/b/tags/list?last=t9&n=10>; rel="next""#, h).as_deref(),
            Some("https://r.example:5000/v2/a/b/tags/list?last=t9&n=10")
        );
        assert_eq!(
            next_page(
                r#"<https://r.example:5000/v2/a/tags/list?last=x>; rel="next""#,
                h
            )
            .as_deref(),
            Some("https://r.example:5000/v2/a/tags/list?last=x")
        );
        // Another host, or not the next page: not followed.
        assert_eq!(
            next_page(r#"<https://evil.example/v2/a>; rel="next""#, h),
            None
        );
        assert_eq!(
            next_page(r#"</v2/a/tags/list?last=x>; rel="prev""#, h),
            None
        );
        assert_eq!(next_page("garbage", h), None);
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
