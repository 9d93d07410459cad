//! The audit log's hash chain. The log is JSON lines; each record is numbered from 1
//! (`seq`) and names in `prev` the [`line_hash`] of the line before it, or [`ZERO_HASH`]
//! for the first. The agent writes it; `dct audit verify` checks it.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash a record's successor names: SHA-256 (lower-case hex) of the line as written,
/// without its newline.
pub fn line_hash(line: &[u8]) -> String {
    Sha256::digest(line)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the agent keeps its log unless its config says otherwise, and where `dct audit
/// verify` looks with no agent to ask: `$XDG_STATE_HOME/dct/audit.log`, else
/// `~/.local/state/dct/audit.log`.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("dct").join("audit.log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_the_line_without_its_newline() {
        // SHA-256 of "abc" (FIPS 180-2 example).
        assert_eq!(
            line_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(line_hash(b"abc"), line_hash(b"abc\n"));
        assert_eq!(ZERO_HASH.len(), 64);
    }
}
