//! Shared harness for the end-to-end tests: fresh SoftHSM2 tokens, the real `dct-agent`
//! daemon and `dct` CLI, fixture paths.

use std::path::PathBuf;

/// A path under `tests/fixtures/`.
pub fn fixture_dir(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}
