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
