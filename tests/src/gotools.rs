//! The real Notation and cosign CLIs, built from their pinned Go modules by
//! `tests/go-tools.sh` (which `tests/run.sh` runs before the tests) into a cache.

use std::path::PathBuf;

/// The cache directory `tests/go-tools.sh` builds into.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DCT_GO_TOOLS") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    cache.join("dct-agent").join("go-tools")
}

fn tool(name: &str) -> PathBuf {
    let p = dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run tests/go-tools.sh (tests/run.sh does) to build {name} from its Go module",
        p.display()
    );
    p
}

/// The `notation` CLI.
pub fn notation() -> PathBuf {
    tool("notation")
}

/// The `cosign` CLI.
pub fn cosign() -> PathBuf {
    tool("cosign")
}
