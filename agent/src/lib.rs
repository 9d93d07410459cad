//! dct-agent: a hardware-backed signing agent for Docker Content Trust (Notary v1 / TUF).
//!
//! The modules are layers; each imports only the ones before it in this list:
//!
//! | module   | job |
//! |----------|-----|
//! | `error`, `util` | leaves: the error type, durations, PIN files, atomic writes, HTTP bodies |
//! | `tuf`    | Notary-dialect TUF: canonical JSON, key IDs, envelopes, certificates, verification |
//! | `keys`   | the `KeyBackend` seam (PKCS#11, PIV, key files), token threads, unlock state |
//! | `guard`  | the only path to a signature: parse, policy + version, confirm, token, audit, commit |
//! | `oci`    | registries: resolve a tag to its manifest's digest |
//! | `trust`  | DCT operations on a notary-server: cache, fetch, publish, tags, signers, rotation, gate, ceremonies |
//! | `rpc`    | the gRPC services (dct API, notary-signer API), limits, error -> status |
//! | `authz`  | dct-authz, the Docker authorization plugin: dockerd pulls and runs signed images only |
//! | `daemon` | config file, listeners, start-up: the composition root, imported by nothing |
#![forbid(unsafe_code)]
// No panics on any input: parsed data is read with `.get(..)`, never indexed or sliced
// unchecked (issue 13). Tests may index what they just built.
#![deny(clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod error;
pub mod util;

pub mod tuf;

pub mod keys;

pub mod guard;

pub mod oci;

pub mod trust;

pub mod rpc;

pub mod authz;

pub mod daemon;
