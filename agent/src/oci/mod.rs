//! OCI registries: the registry client that resolves tags to digests.

pub mod cosign;
pub mod notation;
pub mod registry;
