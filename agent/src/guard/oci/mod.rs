//! OCI signatures from the same keys: Notation ([`notation`]) and cosign ([`cosign`]).
//!
//! The plugins (`notation-dct`, `sigstore-kms-dct`) hand the agent exactly the bytes their
//! tool wants signed. The guard parses them as the profile's formats before anything else
//! happens: what artifact, in which repository, until when. The policy decides from that
//! ([`super::policy::Policy::check_oci`]), the confirmation shows it, the audit record keeps
//! it. Bytes that parse as none of the profile's formats are refused (cosign's profile
//! takes them as a blob, which a key signs only where its policy allows blobs).

pub mod cosign;
pub mod notation;

use time::OffsetDateTime;

use crate::error::Result;

/// Which tool's formats a payload is parsed as (the client says; the parse decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Notation,
    Cosign,
}

/// What a payload turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JWS signing input: `BASE64URL(protected header) "." BASE64URL(payload)`.
    NotationJws,
    /// A COSE `Sig_structure` (`["Signature1", protected, external_aad, payload]`).
    NotationCose,
    /// cosign's classic simple-signing payload (`.sig` signatures).
    CosignSimpleSigning,
    /// DSSE's pre-authentication encoding of an in-toto statement (cosign bundles).
    CosignDsse,
    /// Anything else cosign was asked to sign (`cosign sign-blob`).
    Blob,
}

impl Kind {
    /// The word the policy's `oci` list uses for this kind.
    pub fn policy_word(self) -> &'static str {
        match self {
            Kind::NotationJws | Kind::NotationCose => "notation",
            Kind::CosignSimpleSigning | Kind::CosignDsse => "cosign",
            Kind::Blob => "blob",
        }
    }

    /// The name the API and the audit log use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::NotationJws => "notation-jws",
            Kind::NotationCose => "notation-cose",
            Kind::CosignSimpleSigning => "cosign-simplesigning",
            Kind::CosignDsse => "cosign-dsse",
            Kind::Blob => "blob",
        }
    }
}

/// A payload parsed: what the signature will vouch for.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub kind: Kind,
    /// The repository (`registry/name`) the artifact is in; empty for a blob.
    pub repository: String,
    /// The digest the signature vouches for (`sha256:HEX`): the image manifest's, or for a
    /// blob the payload's own.
    pub artifact: String,
    /// When the signature stops being valid, where the format says (Notation's expiry).
    pub expires: Option<OffsetDateTime>,
    /// What the confirmation shows and the audit keeps, a line each ("Artifact: ...").
    pub lines: Vec<String>,
}

/// Parses `payload` as one of `profile`'s formats.
pub fn parse(profile: Profile, payload: &[u8]) -> Result<Parsed> {
    match profile {
        Profile::Notation => notation::parse(payload),
        Profile::Cosign => cosign::parse(payload),
    }
}
