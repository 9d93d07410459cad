//! dct-agent: a hardware-backed signing agent for Docker Content Trust (Notary v1 / TUF).
#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod error;
pub mod keys;
pub mod notary;
pub mod notary_signer;
pub mod notices;
pub mod policy;
pub mod registry;
pub mod sealed;
pub mod server;
pub mod service;
pub mod signing;
pub mod trust;
pub mod tuf;
