//! One-use channels for secrets from the CLI: the agent hands out an X25519 public key, the
//! CLI seals the PIN or passphrase to it (ChaCha20-Poly1305 under a key derived from the
//! shared secret), and the agent opens it straight into zeroizing memory. The plaintext never
//! passes through the transport's buffers, which are freed without being wiped; and since the
//! agent's half of each channel is dropped (and zeroized) at first use or after a minute, the
//! ciphertext left in those buffers cannot be opened later either. The format and the key
//! derivation are dct-wire's (`dct_wire::seal`), shared with the CLI; this module keeps the
//! open channels.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dct_wire::seal::{ChannelKey, SealError};
use secrecy::SecretString;

use crate::error::{Error, Result};

const LIFETIME: Duration = Duration::from_secs(60);
/// Channels open at once; the oldest go first.
const MAX_OPEN: usize = 256;

#[derive(Default)]
pub struct Channels {
    open: Mutex<HashMap<u64, (ChannelKey, Instant)>>,
}

impl Channels {
    /// A new channel: its number and the agent's public key.
    pub fn open(&self) -> Result<(u64, [u8; 32])> {
        let key = ChannelKey::generate();
        let public = key.public();
        let mut id = [0u8; 8];
        getrandom::getrandom(&mut id).map_err(Error::internal)?;
        let id = u64::from_be_bytes(id);
        let mut open = self
            .open
            .lock()
            .map_err(|_| Error::Internal("secret channels poisoned".into()))?;
        open.retain(|_, (_, at)| at.elapsed() < LIFETIME);
        if open.len() >= MAX_OPEN {
            if let Some(oldest) = open.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) {
                open.remove(&oldest);
            }
        }
        open.insert(id, (key, Instant::now()));
        Ok((id, public))
    }

    /// Opens a sealed secret; the channel is gone afterwards, whatever the outcome.
    pub fn unseal(&self, s: &dct_proto::dct::v1::SealedSecret) -> Result<SecretString> {
        let bad = |why: &str| Error::InvalidArgument(format!("sealed secret: {why}"));
        let (key, at) = self
            .open
            .lock()
            .map_err(|_| Error::Internal("secret channels poisoned".into()))?
            .remove(&s.channel)
            .ok_or_else(|| bad("unknown or used channel (ask for a new one)"))?;
        if at.elapsed() >= LIFETIME {
            return Err(bad("the channel expired"));
        }
        let plain = key
            .open(s.channel, &s.client_public, &s.nonce, &s.ciphertext)
            .map_err(|e| match e {
                SealError::BadPublicKey => bad("client key is not 32 bytes"),
                other => bad(&other.to_string()),
            })?;
        let text = std::str::from_utf8(&plain).map_err(|_| bad("not UTF-8"))?;
        Ok(SecretString::from(text.to_string()))
    }
}
