//! cosign's signing inputs (simple-signing payloads, DSSE), parsed before the agent signs.

use super::Parsed;
use crate::error::{Error, Result};

/// Parses what cosign asks a KMS to sign.
pub fn parse(_payload: &[u8]) -> Result<Parsed> {
    Err(Error::InvalidArgument(
        "cosign payloads are not supported yet".into(),
    ))
}
