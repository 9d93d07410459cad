//! dct-authz: a Docker authorization plugin (`dockerd --authorization-plugin=NAME`) that
//! lets dockerd pull and create containers from signed images only, judged by the deploy
//! gate (`trust::verify_tag`) under pinned roots. Keyless: it never signs.
//!
//! | file | job |
//! |------|-----|
//! | `config`  | `authz.toml`, and MCR's daemon.json `content-trust` block |
//! | `request` | what dockerd sends: API paths, queries, image names as docker normalizes them |
//! | `docker`  | a local image's repository digests, asked of dockerd |
//! | `check`   | the checks: pulled tags and digests, created containers' images |
//! | `server`  | the plugin API on a Unix socket, the log and the audit file |

pub mod check;
pub mod config;
pub mod docker;
pub mod request;
pub mod server;
