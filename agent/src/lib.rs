//! dct-agent: a hardware-backed signing agent for Docker Content Trust (Notary v1 / TUF).
#![forbid(unsafe_code)]

pub mod config;
pub mod confirm;
pub mod error;
pub mod guard;
pub mod keys;
pub mod notary;
pub mod notary_signer;
pub mod notices;
pub mod registry;
pub mod sealed;
pub mod server;
pub mod service;
pub mod trust;
pub mod tuf;
pub mod util;
