//! The gRPC services: the dct API (`service`), notary-signer's API (`notary_signer`), the
//! request limits both share, PIN sealing, and the mapping of errors to gRPC statuses.

pub mod limits;
pub mod notary_signer;
pub mod sealed;
pub mod service;
pub mod status;
