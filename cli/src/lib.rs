//! What the `dct` command line and the signing tools' plugins (`notation-dct`,
//! `sigstore-kms-dct`) share: reaching the agent over its socket, and printing its answers.
//! Every key operation and every decision happens in the agent.
#![forbid(unsafe_code)]

pub mod client;
pub mod cosign;
pub mod output;
