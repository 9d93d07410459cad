//! Resolving a tag to the digest Docker Content Trust signs: the sha256 and length of the
//! exact manifest bytes a registry serves (`GET /v2/<name>/manifests/<tag>`), with
//! anonymous, basic or bearer-token auth and the same TLS options as the trust server.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
const MAX_MANIFEST: usize = 4 * 1024 * 1024;

pub struct Credentials {
    pub username: String,
    pub password: SecretString,
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
    let get = |auth: Option<String>| {
        let mut r = http.get(&url).header("Accept", ACCEPT);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        } else if let Some(c) = creds {
            r = r.basic_auth(&c.username, Some(c.password.expose_secret()));
        }
        r.send()
    };
    let mut resp = get(None).await.map_err(unreachable)?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        // Token auth: ask the realm the registry names for a pull token, then retry.
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if let Some(params) = challenge.strip_prefix("Bearer ") {
            let field = |k: &str| {
                params.split(',').find_map(|p| {
                    let (key, v) = p.trim().split_once('=')?;
                    (key == k).then(|| v.trim_matches('"').to_string())
                })
            };
            let realm = field("realm").ok_or_else(|| {
                Error::Unavailable(format!("registry {host}: bad auth challenge"))
            })?;
            // Credentials go only to an HTTPS token service.
            if !realm.starts_with("https://") {
                return Err(Error::Refused(format!(
                    "registry {host} names a token service that is not HTTPS: {realm}"
                )));
            }
            let mut q = vec![("scope".to_string(), format!("repository:{name}:pull"))];
            if let Some(s) = field("service") {
                q.push(("service".into(), s));
            }
            let mut tr = http.get(&realm).query(&q);
            if let Some(c) = creds {
                tr = tr.basic_auth(&c.username, Some(c.password.expose_secret()));
            }
            let body =
                crate::notary::read_capped(tr.send().await.map_err(unreachable)?, 1024 * 1024)
                    .await
                    .map_err(|e| e.unwrap_or_else(unreachable))?;
            let token: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Error::Unavailable(format!("registry {host} token: {e}")))?;
            let t = token["token"]
                .as_str()
                .or(token["access_token"].as_str())
                .ok_or_else(|| {
                    Error::Refused(format!("registry {host} gave no pull token for {name}"))
                })?;
            resp = get(Some(format!("Bearer {t}")))
                .await
                .map_err(unreachable)?;
        }
    }
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(Error::NotFound(format!(
            "{gun}:{tag} is not in the registry"
        )));
    }
    if !status.is_success() {
        return Err(Error::Refused(format!(
            "registry {host} answered {status} for {name}:{tag}"
        )));
    }
    let bytes = crate::notary::read_capped(resp, MAX_MANIFEST)
        .await
        .map_err(|e| e.unwrap_or_else(unreachable))?;
    Ok((Sha256::digest(&bytes).into(), bytes.len() as u64))
}
