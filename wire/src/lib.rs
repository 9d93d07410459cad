//! What `dct-agent` and `dct` must agree on beyond the gRPC API (dct-proto): where the
//! agent's socket is by default, how its audit log chains its records, and how a PIN or
//! passphrase is sealed to the agent. Each is defined here once and used by both sides, so
//! the two can never drift apart. No I/O beyond reading the environment, no async.
#![forbid(unsafe_code)]

pub mod audit;
pub mod seal;
pub mod socket;
