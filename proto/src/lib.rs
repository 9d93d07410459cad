//! The wire APIs of dct-agent: generated code only.
#![forbid(unsafe_code)]
#![allow(clippy::all)]

/// The dct agent API, version 1.
pub mod dct {
    pub mod v1 {
        tonic::include_proto!("dct.v1");
    }
}

/// notary-signer's API (protobuf package `proto`), served for notary-server.
pub mod notary {
    tonic::include_proto!("proto");
}

/// gRPC metadata key under which the agent names the kind of every error it returns
/// (`invalid_argument`, `not_found`, `refused`, `locked`, `wrong_pin`, `pin_locked`,
/// `final_try`, `unavailable`, `resource_exhausted`, `internal`): clients decide on it,
/// never on the message text.
pub const REASON_KEY: &str = "dct-reason";

/// The most tags one `TrustSign` request may carry (the agent refuses more; `dct trust sign
/// --from` sends a longer list with `TrustSignStream`).
pub const MAX_TAGS_PER_SIGN: usize = 200_000;

/// The most tags one `TrustSignStream` may carry, in all: one published update. The agent
/// holds about 100 bytes a tag while it signs, besides the roles' text.
pub const MAX_TAGS_PER_STREAM: usize = 2_000_000;

/// The most tags one piece of a `TrustSignStream` may carry (about 1 MiB of message).
pub const MAX_TAGS_PER_PIECE: usize = 10_000;
