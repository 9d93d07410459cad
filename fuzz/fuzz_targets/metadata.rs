//! Metadata parsing and verification.
//!
//! The input is split into up to eight files at each `\n%%\n`. The n-th file is, unless it
//! starts with a line `@ROLE`, the role `root`, `targets`, `snapshot`, `timestamp`,
//! `targets/releases`, `targets/releases/qa`, ... in that order; an empty file is left
//! out. Each file goes through `Envelope::parse` (and back through `to_bytes`) and through
//! `signing::prepare` with a fixed key of its role; then the whole set through
//! `verify::verify_repository` as GUN `example.com/app` at a fixed time, unpinned and
//! pinned to the fixture's root certificate. Nothing may panic, and the round trips and
//! results must be consistent (see `common.rs`).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

const SEP: &[u8] = b"\n%%\n";
const ROLES: [&str; 8] = [
    "root",
    "targets",
    "snapshot",
    "timestamp",
    "targets/releases",
    "targets/releases/qa",
    "targets/a",
    "targets/a/b",
];

fn split<'a>(mut data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    while parts.len() + 1 < ROLES.len() {
        match data.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                parts.push(&data[..i]);
                data = &data[i + sep.len()..];
            }
            None => break,
        }
    }
    parts.push(data);
    parts
}

fuzz_target!(|data: &[u8]| {
    let mut files = Vec::new();
    for (i, part) in split(data, SEP).into_iter().enumerate() {
        let (role, content) = match part.strip_prefix(b"@") {
            Some(rest) => {
                let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                let role = String::from_utf8_lossy(&rest[..end]).into_owned();
                (role, rest.get(end + 1..).unwrap_or_default())
            }
            None => (ROLES[i].to_string(), part),
        };
        if content.is_empty() {
            continue;
        }
        common::check_envelope(content);
        common::check_prepare(content, &role, common::GUN);
        files.push((role, content.to_vec()));
    }
    if let Some(files) = common::repo_files(files) {
        common::check_verify(common::GUN, &files, common::at());
    }
});
