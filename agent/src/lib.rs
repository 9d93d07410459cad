//! dct-agent: a hardware-backed signing agent for Docker Content Trust (Notary v1 / TUF).
#![forbid(unsafe_code)]

pub mod tuf;
