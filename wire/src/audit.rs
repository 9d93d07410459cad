//! The audit log's hash chain. The log is JSON lines; each record is numbered from 1
//! (`seq`) and names in `prev` the [`line_hash`] of the line before it, or [`ZERO_HASH`]
//! for the first. The agent writes it; `dct audit verify` checks it.

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
