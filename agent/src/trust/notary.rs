//! The notary-server HTTP API, as a publisher uses it: fetch metadata, get server-held
//! keys, publish an atomic update (multipart, one part per role).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::tuf::keys::TufKey;
use crate::util::http::read_capped;

/// Largest metadata file accepted from a server: Notary's own cap (`MaxDownloadSize`, 100
/// MiB), so a repository the notary client reads is not refused here. A 100,000-tag targets
/// role is about 8.6 MiB, a 1,000,000-tag one about 86 MiB.
pub(crate) const MAX_DOWNLOAD: usize = 100 * 1024 * 1024;

/// Where the trust server is and how to trust its TLS certificate.
#[derive(Debug, Clone, Default)]
pub struct ServerOpts {
    pub url: String,
    /// PEM of a CA to trust in addition to the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The user accepts signing on a root first seen now (neither cached nor pinned).
    pub trust_on_first_use: bool,
}

pub struct NotaryClient {
    http: reqwest::Client,
    base: String,
    pub trust_on_first_use: bool,
}

impl NotaryClient {
    pub fn new(opts: &ServerOpts) -> Result<Self> {
        let base = opts.url.trim_end_matches('/').to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(Error::InvalidArgument(format!(
                "trust server {:?} must be an http:// or https:// URL",
                opts.url
            )));
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            // A redirect could move trust traffic to another host or to plain HTTP.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dct-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &opts.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::InvalidArgument(format!("TLS CA file: {e}")))?;
            if certs.is_empty() {
                return Err(Error::InvalidArgument(
                    "TLS CA file holds no certificate".into(),
                ));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        Ok(NotaryClient {
            http,
            base,
            trust_on_first_use: opts.trust_on_first_use,
        })
    }

    fn url(&self, gun: &str, name: &str) -> String {
        format!("{}/v2/{gun}/_trust/tuf/{name}", self.base)
    }

    fn unreachable(&self, e: reqwest::Error) -> Error {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        Error::Unavailable(format!("trust server {} unreachable: {msg}", self.base))
    }

    /// A role's current metadata (`root`, `targets`, `targets/releases`, ...), or None when
    /// the server has none.
    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn get_role(&self, gun: &str, role: &str) -> Result<Option<Vec<u8>>> {
        let resp = self
            .http
            .get(self.url(gun, &format!("{role}.json")))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let bytes = self.body(resp).await?;
        Ok(Some(bytes))
    }

    /// The server-held key for `timestamp` or `snapshot` (created on first request).
    pub async fn get_server_key(&self, gun: &str, role: &str) -> Result<TufKey> {
        self.server_key(reqwest::Method::GET, gun, role).await
    }

    /// Asks the server for a new `timestamp` or `snapshot` key (the old one stays valid
    /// until a root listing the new one is published).
    pub async fn rotate_server_key(&self, gun: &str, role: &str) -> Result<TufKey> {
        self.server_key(reqwest::Method::POST, gun, role).await
    }

    async fn server_key(&self, method: reqwest::Method, gun: &str, role: &str) -> Result<TufKey> {
        let resp = self
            .http
            .request(method, self.url(gun, &format!("{role}.key")))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let bytes = self.body(resp).await?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Unavailable(format!(
                "trust server sent a {role} key that is not JSON: {e}"
            ))
        })?;
        TufKey::from_value(&v)
            .map_err(|e| Error::Unavailable(format!("trust server {role} key: {e}")))
    }

    /// Publishes `files` (role name, file bytes) in one atomic update.
    pub async fn publish(&self, gun: &str, files: Vec<(String, Vec<u8>)>) -> Result<()> {
        let mut form = reqwest::multipart::Form::new();
        for (role, bytes) in files {
            let part = reqwest::multipart::Part::bytes(bytes)
                .file_name(role)
                .mime_str("application/octet-stream")
                .map_err(Error::internal)?;
            form = form.part("files", part);
        }
        let resp = self
            .http
            .post(self.url(gun, ""))
            .multipart(form)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.body(resp).await.map(|_| ())
    }

    /// The body of a successful response, or the server's reason.
    async fn body(&self, resp: reqwest::Response) -> Result<Vec<u8>> {
        let status = resp.status();
        if let Some(len) = resp.content_length() {
            if len as usize > MAX_DOWNLOAD {
                return Err(Error::Unavailable(format!(
                    "trust server sent {len} bytes, over the {MAX_DOWNLOAD}-byte limit"
                )));
            }
        }
        let bytes = read_capped(resp, MAX_DOWNLOAD)
            .await
            .map_err(|e| e.unwrap_or_else(|e| self.unreachable(e)))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let reason = server_reason(&bytes);
        let msg = format!("trust server answered {status}: {reason}");
        Err(if status.is_client_error() {
            Error::Refused(msg)
        } else {
            Error::Unavailable(msg)
        })
    }
}

/// notary-server's error body: `{"errors": [{"code", "message", "detail"}]}`.
fn server_reason(body: &[u8]) -> String {
    let parsed: Option<Vec<String>> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let errs = v.get("errors")?.as_array()?;
            Some(
                errs.iter()
                    .map(|e| {
                        let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("error");
                        match e
                            .get("detail")
                            .filter(|d| !d.is_null() && d.as_object().is_none_or(|o| !o.is_empty()))
                        {
                            Some(d) => format!("{msg} ({d})"),
                            None => msg.to_string(),
                        }
                    })
                    .collect(),
            )
        });
    match parsed {
        Some(v) if !v.is_empty() => v.join("; "),
        // The first 300 bytes, or all of a shorter body.
        _ => String::from_utf8_lossy(body.get(..300).unwrap_or(body))
            .trim()
            .to_string(),
    }
}
