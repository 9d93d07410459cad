//! Docker Content Trust operations against a notary-server, built on the TUF core, the
//! guard and the notary HTTP client, one concern a file:
//!
//! | file | job |
//! |------|-----|
//! | `notary`   | the notary-server HTTP API (fetch, server-held keys, publish) |
//! | `pinning`  | `[trust]`: the default server and root pins |
//! | `cache`    | trust data seen before (TOFU cache, rollback versions), per-GUN locks |
//! | `fetch`    | fetch a repository and verify it against the cache or pins |
//! | `publish`  | sign roles through the guard and publish them atomically |
//! | `init`     | a new trusted collection |
//! | `tags`     | sign, list and revoke tags |
//! | `signers`  | delegations: add and remove signers |
//! | `rotation` | key rotation and root renewal |
//! | `gate`     | the deploy gate: verify a tag under pins and policy |
//! | `ceremony` | root-key ceremonies and publishing their roots |
//!
//! Trust data is verified on every fetch. The first root seen for a GUN is cached (trust on
//! first use, as the notary client does); a later root must be the same or be signed by a
//! threshold of the cached root's keys.

pub mod archive;
pub mod cache;
pub mod ceremony;
pub mod combined;
pub mod fetch;
pub mod gate;
pub mod init;
pub mod migrate;
pub mod notary;
pub mod pinning;
pub mod publish;
pub mod rotation;
pub mod signers;
pub mod tags;

pub use cache::TrustContext;
pub use ceremony::{
    ceremony_root_init, ceremony_root_rotate, init_from_root, publish_root, root_signatures,
    rotation_signatures, CeremonyInit, CeremonyKey, RootBackups, ServerKeys,
};
pub use fetch::{check_gun, fetch, Repo};
pub use gate::{verify_tag, Verdict, VerifyOpts};
pub use init::{init, InitResult};
pub use pinning::{Pinning, TrustConfig};
pub use rotation::rotate;
pub use signers::{signer_add, signer_remove};
pub use tags::{
    check_tag, client, given_tag, inspect, resolve_tags, revoke, sign_tags, Inspection, SignResult,
    SignedTag, TagTarget, WantedTag,
};

/// Default lifetimes Notary gives new versions of each role.
pub(crate) const ROOT_LIFETIME: time::Duration = time::Duration::days(10 * 365);
pub(crate) const TARGETS_LIFETIME: time::Duration = time::Duration::days(3 * 365);
