//! HTTP bodies read with a bound.

use crate::error::Error;

/// Reads a body chunk by chunk, refusing it as soon as it passes `cap` bytes (a missing or
/// false Content-Length must not make the agent read without bound).
pub async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> std::result::Result<Vec<u8>, std::result::Result<Error, reqwest::Error>> {
    // Sized once from the length the server announces (within the cap: it may lie), not
    // doubled chunk by chunk up to twice a 90 MiB role.
    let announced = resp.content_length().unwrap_or(0);
    let mut out = Vec::with_capacity(usize::try_from(announced).unwrap_or(cap).min(cap));
    while let Some(chunk) = resp.chunk().await.map_err(Err)? {
        if out.len() + chunk.len() > cap {
            return Err(Ok(Error::Unavailable(format!(
                "response over the {cap}-byte limit"
            ))));
        }
        out.extend_from_slice(&chunk);
    }
    // A body sent without its length grew by doubling: the spare half goes back (a big
    // buffer is its own mapping, shrunk in place).
    if out.capacity() - out.len() > out.len() / 8 {
        out.shrink_to_fit();
    }
    Ok(out)
}
