//! Process-wide tuning of glibc's `malloc` for the agent.
//!
//! glibc serves a request of 128 KiB or more with its own `mmap`, returned to the system when
//! freed, but it raises that threshold to the size of each such block freed (up to 32 MiB).
//! After the agent frees the first big buffer of a large targets role (a 100,000-tag role is
//! a file of 8.8 MiB, and a request, a document, a signed copy of about that size each),
//! every later buffer below that size is carved from the heap of the thread that asked,
//! and stays there when freed: each tokio worker and blocking thread keeps its own arena, so
//! the peaks of successive steps on different threads add up. Fixing the threshold keeps big
//! buffers mapped and returned. Measured (`target/release/bench --only e2e`, 100,000 tags,
//! same build, the threshold set through the environment): peak resident memory of signing
//! them all 78 -> 56 MiB; re-signing one 55 -> 54; inspect 131 -> 121.
//!
//! The agent crates forbid `unsafe`; this crate holds the one call that needs it.
#![deny(unsafe_code)]

/// Requests from this size on are mapped on their own, and unmapped when freed.
pub const MMAP_FROM_BYTES: i32 = 128 * 1024;

/// Fixes glibc's `mmap` threshold at [`MMAP_FROM_BYTES`] (no dynamic raise), for the whole
/// process. Call it first thing in `main`. Returns whether the allocator took it: false on a
/// libc other than glibc (nothing to do there) or if glibc refused, and the agent runs as
/// before either way. An operator's `MALLOC_MMAP_THRESHOLD_` in the environment is left to
/// win.
pub fn return_big_buffers_when_freed() -> bool {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return false;
    }
    set_threshold()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_threshold() -> bool {
    // SAFETY: mallopt(3) takes two integers and changes an allocator tunable under the
    // allocator's own lock; glibc allows it at any time, from any thread. No pointer crosses.
    #[allow(unsafe_code)]
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM_BYTES) };
    set == 1
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_threshold() -> bool {
    false
}

#[cfg(test)]
mod tests {
    /// glibc takes the threshold (these machines are glibc's). What it does to memory is
    /// measured by the benchmark, not here.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_threshold() {
        assert!(super::set_threshold());
    }
}
