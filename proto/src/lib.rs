//! The wire API between `dct` and `dct-agent`: generated code only.
#![forbid(unsafe_code)]
#![allow(clippy::all)]

/// The dct agent API, version 1.
pub mod dct {
    pub mod v1 {
        tonic::include_proto!("dct.v1");
    }
}
