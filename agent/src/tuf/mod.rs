//! The Notary dialect of TUF: canonical JSON, key objects and IDs, envelopes, root
//! certificates and repository verification. Pure code: no I/O, no keys held.

pub mod cert;
pub mod cjson;
pub mod edit;
pub mod keyfile;
pub mod keys;
pub mod metadata;
pub mod verify;
