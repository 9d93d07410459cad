//! dct-authz's config: a TOML file of its own (`authz.toml`), and MCR's `content-trust`
//! block of a daemon.json accepted as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::trust::{Pinning, TrustConfig};

/// Enforced: refuse what does not verify. Permissive: allow it, and log what enforced
/// would refuse. Disabled (MCR's third mode): judge nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforced,
    Permissive,
    Disabled,
}

/// What to do with a repository no pin covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unpinned {
    Allow,
    Deny,
}

/// `authz.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// The plugin's Unix socket (its directory is made 0700, the socket 0600).
    pub socket: PathBuf,
    /// dockerd's API socket, asked for a local image's repository digests.
    #[serde(default = "default_docker_socket")]
    pub docker_socket: PathBuf,
    /// Default: the daemon.json block's mode, else enforced.
    pub mode: Option<Mode>,
    #[serde(default = "default_unpinned")]
    pub unpinned: Unpinned,
    /// Trust data seen online, used while the trust server is down (within expiry).
    pub cache_dir: PathBuf,
    /// JSON lines, one per judged request.
    pub audit_log: Option<PathBuf>,
    /// A daemon.json whose `content-trust` block (MCR's) adds pins and the mode.
    pub daemon_json: Option<PathBuf>,
    /// `server`, `tlscacert`, `[trust.pinning]`, as agent.toml has them.
    #[serde(default)]
    pub trust: TrustConfig,
    /// `[signers]`: a repository, or a pattern ending in `*`, -> the delegation names
    /// (`alice` for `targets/alice`) that must each have signed a tag for it to pass, as
    /// `dct trust verify --signer` checks.
    #[serde(default)]
    pub signers: BTreeMap<String, Vec<String>>,
}

impl AuthzConfig {
    /// The signers required for `gun`: an exact entry, else the longest matching `prefix*`.
    pub fn signers_for(&self, gun: &str) -> Vec<String> {
        crate::trust::pinning::by_gun(&self.signers, gun)
            .cloned()
            .unwrap_or_default()
    }
}

fn default_docker_socket() -> PathBuf {
    PathBuf::from("/var/run/docker.sock")
}

fn default_unpinned() -> Unpinned {
    Unpinned::Deny
}

/// MCR's `content-trust` in daemon.json.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ContentTrust {
    #[serde(default)]
    pub trust_pinning: TrustPinning,
    pub mode: Option<Mode>,
    /// MCR's switch to run from expired cached trust data; never honoured here (expired
    /// data is refused), accepted so that the block parses as it is.
    pub allow_expired_cached_trust_data: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrustPinning {
    /// A repository (`registry/repo`) or a pattern ending in `*` (a prefix) -> root key IDs.
    #[serde(default)]
    pub root_keys: BTreeMap<String, Vec<String>>,
    /// Root key IDs for Docker's official images (docker.io/library/*).
    #[serde(default)]
    pub library_images: Vec<String>,
}

/// The `content-trust` block of a daemon.json, None when it has none; other keys of the
/// file are dockerd's and left alone.
pub fn content_trust(json: &str) -> Result<Option<ContentTrust>, String> {
    #[derive(Deserialize)]
    struct DaemonJson {
        #[serde(rename = "content-trust")]
        content_trust: Option<ContentTrust>,
    }
    let d: DaemonJson =
        serde_json::from_str(json).map_err(|e| format!("content-trust block: {e}"))?;
    Ok(d.content_trust)
}

impl ContentTrust {
    /// Adds the block's root keys to `pinning`; a pattern already pinned there keeps both
    /// lists (any of the keys passes, as for one pattern).
    pub fn add_to(&self, pinning: &mut Pinning) {
        let mut add = |pattern: &str, ids: &[String]| {
            let list = pinning.certs.entry(pattern.to_string()).or_default();
            for id in ids {
                if !list.contains(id) {
                    list.push(id.clone());
                }
            }
        };
        for (pattern, ids) in &self.trust_pinning.root_keys {
            add(pattern, ids);
        }
        if !self.trust_pinning.library_images.is_empty() {
            add("docker.io/library/*", &self.trust_pinning.library_images);
        }
    }
}

/// The config as the plugin runs it.
#[derive(Debug, Clone)]
pub struct Effective {
    pub config: AuthzConfig,
    pub mode: Mode,
    pub pinning: Pinning,
}

/// Reads `authz.toml` and the daemon.json it names (or `daemon_json`, given on the command
/// line, instead).
pub fn load(path: &Path, daemon_json: Option<&Path>) -> Result<Effective, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    let mut config: AuthzConfig =
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
    if let Some(n) = &config.trust.notary_config {
        return Err(format!(
            "config {}: [trust] notary_config ({}) is not read by dct-authz: put its pins in [trust.pinning]",
            path.display(),
            n.display()
        ));
    }
    if let Some(p) = daemon_json {
        config.daemon_json = Some(p.to_path_buf());
    }
    let mut pinning = config.trust.pinning.clone();
    let mut mode = config.mode;
    if let Some(p) = &config.daemon_json {
        let json =
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        if let Some(ct) = content_trust(&json).map_err(|e| format!("{}: {e}", p.display()))? {
            ct.add_to(&mut pinning);
            mode = mode.or(ct.mode);
        }
    }
    // Only pinned roots are trusted: a repository no pin covers is judged by `unpinned`,
    // never trusted on first use.
    pinning.disable_tofu = true;
    Ok(Effective {
        mode: mode.unwrap_or(Mode::Enforced),
        config,
        pinning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcr_block_maps_onto_the_pins() {
        let json = r#"{
          "debug": true,
          "content-trust": {
            "trust-pinning": {
              "root-keys": {
                "dtr.example.com/team/*": ["aa11", "bb22"],
                "dtr.example.com/one": ["cc33"]
              },
              "library-images": ["dd44"]
            },
            "mode": "permissive"
          }
        }"#;
        let ct = content_trust(json).unwrap().unwrap();
        assert_eq!(ct.mode, Some(Mode::Permissive));
        let mut p = Pinning::default();
        ct.add_to(&mut p);
        assert_eq!(p.for_gun("dtr.example.com/team/app"), vec!["aa11", "bb22"]);
        assert_eq!(p.for_gun("dtr.example.com/one"), vec!["cc33"]);
        assert!(p.for_gun("dtr.example.com/other").is_empty());
        assert_eq!(p.for_gun("docker.io/library/alpine"), vec!["dd44"]);
        assert!(content_trust(r#"{"debug":true}"#).unwrap().is_none());
        assert!(content_trust(r#"{"content-trust":{"mode":"strict"}}"#).is_err());
    }
}
