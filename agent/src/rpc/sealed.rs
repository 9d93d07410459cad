//! One-use channels for secrets from the CLI: the agent hands out an X25519 public key, the
//! CLI seals the PIN or passphrase to it (ChaCha20-Poly1305 under a key derived from the
//! shared secret), and the agent opens it straight into zeroizing memory. The plaintext never
//! passes through the transport's buffers, which are freed without being wiped; and since the
//! agent's half of each channel is dropped (and zeroized) at first use or after a minute, the
//! ciphertext left in those buffers cannot be opened later either.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const LIFETIME: Duration = Duration::from_secs(60);
/// Channels open at once; the oldest go first.
const MAX_OPEN: usize = 256;

#[derive(Default)]
pub struct Channels {
    open: Mutex<HashMap<u64, (StaticSecret, Instant)>>,
}

/// The key both sides derive.
pub fn derive_key(shared: &[u8; 32], agent: &[u8; 32], client: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(b"dct-secret-v1");
    h.update(shared);
    h.update(agent);
    h.update(client);
    Zeroizing::new(h.finalize().into())
}

impl Channels {
    /// A new channel: its number and the agent's public key.
    pub fn open(&self) -> Result<(u64, [u8; 32])> {
        let secret = StaticSecret::random_from_rng(rand_core::OsRng);
        let public = PublicKey::from(&secret).to_bytes();
        let mut id = [0u8; 8];
        getrandom::getrandom(&mut id).map_err(|e| Error::Internal(e.to_string()))?;
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
        open.insert(id, (secret, Instant::now()));
        Ok((id, public))
    }

    /// Opens a sealed secret; the channel is gone afterwards, whatever the outcome.
    pub fn unseal(&self, s: &dct_proto::dct::v1::SealedSecret) -> Result<SecretString> {
        let bad = |why: &str| Error::InvalidArgument(format!("sealed secret: {why}"));
        let (secret, at) = self
            .open
            .lock()
            .map_err(|_| Error::Internal("secret channels poisoned".into()))?
            .remove(&s.channel)
            .ok_or_else(|| bad("unknown or used channel (ask for a new one)"))?;
        if at.elapsed() >= LIFETIME {
            return Err(bad("the channel expired"));
        }
        let client: [u8; 32] = s
            .client_public
            .as_slice()
            .try_into()
            .map_err(|_| bad("client key is not 32 bytes"))?;
        if s.nonce.len() != 12 {
            return Err(bad("nonce is not 12 bytes"));
        }
        let shared = Zeroizing::new(secret.diffie_hellman(&PublicKey::from(client)).to_bytes());
        let agent = PublicKey::from(&secret).to_bytes();
        let key = derive_key(&shared, &agent, &client);
        let cipher = ChaCha20Poly1305::new(key.as_slice().into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    s.nonce.as_slice().into(),
                    Payload {
                        msg: &s.ciphertext,
                        aad: &s.channel.to_be_bytes(),
                    },
                )
                .map_err(|_| bad("does not open (tampered, or sealed to another key)"))?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| bad("not UTF-8"))?;
        Ok(SecretString::from(text.to_string()))
    }
}
