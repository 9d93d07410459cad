//! Notation's signing inputs (JWS and COSE), parsed before the agent signs.

use super::Parsed;
use crate::error::{Error, Result};

/// Parses a JWS signing input or a COSE Sig_structure made by `notation sign`.
pub fn parse(_payload: &[u8]) -> Result<Parsed> {
    Err(Error::InvalidArgument(
        "Notation payloads are not supported yet".into(),
    ))
}
