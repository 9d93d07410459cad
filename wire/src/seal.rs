//! Sealing a PIN or passphrase to the agent. The agent opens a one-use channel: a number
//! and an X25519 public key ([`ChannelKey`]). The CLI makes an ephemeral X25519 key of its
//! own, derives a ChaCha20-Poly1305 key from the shared secret and both public keys
//! (SHA-256 over [`KEY_CONTEXT`], shared secret, agent public key, client public key), and
//! encrypts the secret under a random 96-bit nonce with the channel number (8 bytes,
//! big-endian) as associated data ([`seal`]). The agent opens it with [`ChannelKey::open`]
//! straight into zeroizing memory. Nothing here keeps state: which channels are open, and
//! for how long, is the agent's business.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Domain separation of the derived key (the format's version).
pub const KEY_CONTEXT: &[u8] = b"dct-secret-v1";
/// X25519 public keys.
pub const PUBLIC_LEN: usize = 32;
/// ChaCha20-Poly1305 nonces.
pub const NONCE_LEN: usize = 12;

/// A sealed secret, as the CLI sends it (with its channel number).
pub struct Sealed {
    pub client_public: [u8; PUBLIC_LEN],
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

/// Why a secret could not be sealed or opened. Never says anything about the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The agent's or the client's public key is not 32 bytes.
    BadPublicKey,
    /// The nonce is not 12 bytes.
    BadNonce,
    /// Encryption failed (a secret too large for the cipher).
    Seal,
    /// Tampered with, sealed to another key, or for another channel.
    DoesNotOpen,
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealError::BadPublicKey => "the public key is not 32 bytes",
            SealError::BadNonce => "the nonce is not 12 bytes",
            SealError::Seal => "cannot seal the secret",
            SealError::DoesNotOpen => "does not open (tampered, or sealed to another key)",
        })
    }
}

impl std::error::Error for SealError {}

/// The key both sides derive from the X25519 shared secret and both public keys.
fn derive_key(
    shared: &[u8; 32],
    agent: &[u8; PUBLIC_LEN],
    client: &[u8; PUBLIC_LEN],
) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(KEY_CONTEXT);
    h.update(shared);
    h.update(agent);
    h.update(client);
    Zeroizing::new(h.finalize().into())
}

fn public_key(bytes: &[u8]) -> Result<[u8; PUBLIC_LEN], SealError> {
    bytes.try_into().map_err(|_| SealError::BadPublicKey)
}

/// Seals `secret` to the agent's channel `channel` whose public key is `agent_public`.
pub fn seal(agent_public: &[u8], channel: u64, secret: &[u8]) -> Result<Sealed, SealError> {
    let agent = public_key(agent_public)?;
    let mine = EphemeralSecret::random_from_rng(rand_core::OsRng);
    let client = PublicKey::from(&mine).to_bytes();
    let shared = Zeroizing::new(mine.diffie_hellman(&PublicKey::from(agent)).to_bytes());
    let key = derive_key(&shared, &agent, &client);
    let mut nonce = [0u8; NONCE_LEN];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let ciphertext = ChaCha20Poly1305::new(key.as_slice().into())
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: secret,
                aad: &channel.to_be_bytes(),
            },
        )
        .map_err(|_| SealError::Seal)?;
    Ok(Sealed {
        client_public: client,
        nonce,
        ciphertext,
    })
}

/// The agent's half of one channel (zeroized when dropped).
pub struct ChannelKey(StaticSecret);

impl ChannelKey {
    /// A fresh key from the OS's randomness.
    pub fn generate() -> ChannelKey {
        ChannelKey(StaticSecret::random_from_rng(rand_core::OsRng))
    }

    /// What the agent hands the CLI.
    pub fn public(&self) -> [u8; PUBLIC_LEN] {
        PublicKey::from(&self.0).to_bytes()
    }

    /// Opens what [`seal`] made for this key and `channel`.
    pub fn open(
        &self,
        channel: u64,
        client_public: &[u8],
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let client = public_key(client_public)?;
        if nonce.len() != NONCE_LEN {
            return Err(SealError::BadNonce);
        }
        let shared = Zeroizing::new(self.0.diffie_hellman(&PublicKey::from(client)).to_bytes());
        let key = derive_key(&shared, &self.public(), &client);
        ChaCha20Poly1305::new(key.as_slice().into())
            .decrypt(
                nonce.into(),
                Payload {
                    msg: ciphertext,
                    aad: &channel.to_be_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::DoesNotOpen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_for_its_key_and_channel_untampered() {
        let agent = ChannelKey::generate();
        let s = seal(&agent.public(), 7, b"1234").unwrap();
        assert_ne!(s.ciphertext[..4], b"1234"[..]);
        let open = |k: &ChannelKey, ch: u64, ct: &[u8]| k.open(ch, &s.client_public, &s.nonce, ct);
        assert_eq!(open(&agent, 7, &s.ciphertext).unwrap().as_slice(), b"1234");
        assert_eq!(open(&agent, 8, &s.ciphertext), Err(SealError::DoesNotOpen));
        let other = ChannelKey::generate();
        assert_eq!(open(&other, 7, &s.ciphertext), Err(SealError::DoesNotOpen));
        let mut bad = s.ciphertext.clone();
        bad[0] ^= 1;
        assert_eq!(open(&agent, 7, &bad), Err(SealError::DoesNotOpen));
        assert_eq!(
            agent.open(7, &s.client_public[..31], &s.nonce, &s.ciphertext),
            Err(SealError::BadPublicKey)
        );
        assert_eq!(
            agent.open(7, &s.client_public, &s.nonce[..11], &s.ciphertext),
            Err(SealError::BadNonce)
        );
        assert!(seal(&[0u8; 31], 7, b"x").is_err());
    }

    /// The derivation is fixed: a sealed secret made by an older or newer build opens.
    #[test]
    fn the_key_derivation_is_stable() {
        let k = derive_key(&[1; 32], &[2; 32], &[3; 32]);
        let mut h = Sha256::new();
        h.update(b"dct-secret-v1");
        h.update([1u8; 32]);
        h.update([2u8; 32]);
        h.update([3u8; 32]);
        assert_eq!(k.as_slice(), &h.finalize()[..]);
    }
}
