//! The one question the plugin asks dockerd: which repository digests a local image has
//! (`GET /images/NAME/json` on dockerd's API socket).

use std::path::Path;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The part of `docker image inspect` the checks read.
#[derive(Debug, Deserialize)]
pub struct LocalImage {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "RepoDigests", default)]
    pub repo_digests: Vec<String>,
}

/// An answer larger than this is not an image inspect.
const MAX_ANSWER: u64 = 4 * 1024 * 1024;

/// The local image `name`, None when dockerd has no such image.
pub async fn image_inspect(socket: &Path, name: &str) -> Result<Option<LocalImage>, String> {
    // Image references and IDs only: nothing that would need escaping in a path.
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
    {
        return Err(format!("{name:?} is not an image name"));
    }
    let ask = async {
        let mut s = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("dockerd at {}: {e}", socket.display()))?;
        // HTTP/1.0: the answer is the rest of the stream, never chunked.
        let req = format!("GET /images/{name}/json HTTP/1.0\r\nHost: docker\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("dockerd: {e}"))?;
        let mut out = Vec::new();
        s.take(MAX_ANSWER)
            .read_to_end(&mut out)
            .await
            .map_err(|e| format!("dockerd: {e}"))?;
        Ok::<_, String>(out)
    };
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), ask)
        .await
        .map_err(|_| "dockerd did not answer within 30 s".to_string())??;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("dockerd's answer has no HTTP header")?;
    let head = String::from_utf8_lossy(out.get(..split).unwrap_or_default());
    let body = out.get(split + 4..).unwrap_or_default();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("dockerd's answer has no status")?;
    match status {
        200 => serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| format!("dockerd's image inspect: {e}")),
        404 => Ok(None),
        s => Err(format!(
            "dockerd answered {s}: {}",
            String::from_utf8_lossy(body).trim()
        )),
    }
}
