//! `[trust]` in agent.toml: the default notary-server and the root pins.

use std::path::PathBuf;

use serde::Deserialize;

/// `[trust]`: the default notary-server and root pinning.
#[derive(Debug, Clone, Deserialize, Default)]
// Unknown keys are reported, all at once, by the config parser (serde_ignored).
pub struct TrustConfig {
    pub server: Option<String>,
    /// A CA file for the server's TLS certificate.
    pub tlscacert: Option<PathBuf>,
    /// `[trust.pinning]`, as the notary client's `trust_pinning`: `certs` maps a GUN, or a
    /// GUN prefix ending in `*`, to the root key IDs (certificate or canonical) its root
    /// must be signed by.
    #[serde(default)]
    pub pinning: Pinning,
    /// A notary client config file (JSON) whose `trust_pinning` block (certs, disable_tofu)
    /// is added to `[trust.pinning]`, so existing setups carry over.
    pub notary_config: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
// Unknown keys are reported, all at once, by the config parser (serde_ignored).
pub struct Pinning {
    #[serde(default)]
    pub certs: std::collections::BTreeMap<String, Vec<String>>,
    /// Refuse a repository whose root no pin names, instead of trusting it on first use.
    #[serde(default)]
    pub disable_tofu: bool,
    /// A GUN, or a prefix ending in `*`, mapped to a CA file (PEM): the root's certificates
    /// must chain to it (Notary's CA pinning).
    #[serde(default)]
    pub ca: std::collections::BTreeMap<String, PathBuf>,
}

/// The entry of `map` for `gun`: an exact key, else the longest matching `prefix*` key (as
/// the notary client's trust_pinning matches GUNs).
pub fn by_gun<'a, V>(map: &'a std::collections::BTreeMap<String, V>, gun: &str) -> Option<&'a V> {
    if let Some(v) = map.get(gun) {
        return Some(v);
    }
    map.iter()
        .filter_map(|(k, v)| Some((k.strip_suffix('*')?, v)))
        .filter(|(prefix, _)| gun.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, v)| v)
}

impl Pinning {
    /// The CA file pinned for `gun`: an exact entry, else the longest matching `prefix*`.
    pub fn ca_for_gun(&self, gun: &str) -> Option<PathBuf> {
        by_gun(&self.ca, gun).cloned()
    }

    /// The pins for `gun`: an exact entry, else the longest matching `prefix*` entry.
    pub fn for_gun(&self, gun: &str) -> Vec<String> {
        by_gun(&self.certs, gun)
            .map(|ids| ids.iter().map(|i| i.to_ascii_lowercase()).collect())
            .unwrap_or_default()
    }
}
