//! `agent.toml`: which tokens the agent serves, where it listens, its limits.
//!
//! ```toml
//! socket = "/run/user/1000/dct-agent/agent.sock"   # optional
//! max_request_bytes = 33554432                      # optional
//! allowed_uids = [1001]                             # optional: other users of the socket
//! socket_group = "dctusers"                         # optional: their group reaches it
//! socket_mode = "0660"                              # optional (with socket_group)
//!
//! [[pkcs11]]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token = "dct"
//! sessions = 2                                      # optional: signing sessions
//! pin_file = "/etc/dct/dct.pin"                     # optional: unlock at start (0600)
//!
//! [[piv]]                                           # a YubiKey over PIV (PC/SC)
//! serial = 12345678                                 # token label "piv:12345678"
//! management_key = "protected"                      # or "default", or management_key_file
//!
//! [notary_signer]                                   # optional: notary-signer's API
//! listen = "127.0.0.1:7899"
//! tls_cert = "/etc/dct/signer.crt"
//! tls_key = "/etc/dct/signer.key"
//! client_ca = "/etc/dct/ca.crt"                     # client certificates required
//! token = "dct"                                     # where its keys are made
//! ```
//! PKCS#11 module paths come only from here, never from a request.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::keys::options::{ttl, FileConfig, PivConfig, Pkcs11Config};
use crate::rpc::notary_signer::NotarySignerConfig;
use crate::trust::{Pinning, TrustConfig};
use crate::util::duration::parse_duration;

/// Requests larger than this are refused unless the config says otherwise. A 100,000-tag
/// targets file is about 10 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Config {
    pub socket: Option<PathBuf>,
    pub max_request_bytes: Option<usize>,
    #[serde(default)]
    pub pkcs11: Vec<Pkcs11Config>,
    /// `[[piv]]`: YubiKeys reached over PIV directly (not through a PKCS#11 module).
    #[serde(default)]
    pub piv: Vec<PivConfig>,
    /// `[[file]]`: directories of Notary / Docker key files, served as token `file:DIR`.
    #[serde(default)]
    pub file: Vec<FileConfig>,
    /// Where trust data seen from servers is cached (TOFU). Default:
    /// $XDG_DATA_HOME/dct/trust, else ~/.local/share/dct/trust.
    pub trust_dir: Option<PathBuf>,
    #[serde(default)]
    pub trust: TrustConfig,
    /// `[notary_signer]`: serve notary-signer's gRPC API (mutual TLS) for notary-server.
    pub notary_signer: Option<NotarySignerConfig>,
    /// `[metrics]`: serve Prometheus metrics and a health check over HTTP.
    pub metrics: Option<super::metrics::MetricsConfig>,
    /// Requests served at once, over all connections; more are refused (ResourceExhausted).
    /// Default 256.
    pub max_concurrent_requests: Option<usize>,
    /// The longest a request may take ("10m"); clients may ask for less. Default 10 minutes.
    pub request_timeout: Option<String>,
    /// `[[policy]]`: what each key may sign (see the policy module).
    #[serde(default)]
    pub policy: Vec<crate::guard::policy::Rule>,
    /// Users (uids) besides the agent's own that may use its socket (checked on every
    /// connection). They also need to reach the socket: see `socket_group`.
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// The group (name or gid) that may reach the socket, for the users of `allowed_uids`:
    /// the socket's directory becomes 0750 and the socket `socket_mode` (default 0660), both
    /// of this group. Only with `allowed_uids`. Default: no group access (0700 / 0600).
    pub socket_group: Option<SocketGroup>,
    /// The socket's mode when it is shared with `socket_group` (default "0660"; the
    /// agent's own group if `socket_group` is not given). Never any access for others.
    pub socket_mode: Option<String>,
    /// The audit log. Default: $XDG_STATE_HOME/dct/audit.log, else
    /// ~/.local/state/dct/audit.log.
    pub audit_log: Option<PathBuf>,
    /// The version ledger's checkpoint (what each key signed, kept apart from the audit log
    /// so that moving or rotating the log forgets nothing). Default: `versions.ledger`
    /// beside the trust directory.
    pub ledger: Option<PathBuf>,
    /// `[confirm]`: the program that asks the user before a key whose policy says
    /// `confirm = true` signs (pinentry's Assuan protocol).
    #[serde(default)]
    pub confirm: crate::guard::confirm::ConfirmConfig,
    /// Set from the command line (`--accept-ledger-gap`), never from the file.
    #[serde(skip)]
    pub accept_ledger_gap: bool,
}

/// `socket_group = "dctusers"` or `socket_group = 1001`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SocketGroup {
    Gid(u32),
    Name(String),
}

/// How the socket is shared with a group (see `socket_group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    pub gid: u32,
    /// The socket's mode (group access, none for others).
    pub mode: u32,
}

impl SocketAccess {
    /// The socket directory's mode: the group may pass, not write.
    pub const DIR_MODE: u32 = 0o750;
}

/// "0660", "660" or "0o660": a socket mode that gives its owner read and write, its group
/// at least write (connecting needs it), and others nothing.
pub fn parse_socket_mode(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("socket_mode {text:?} is not an octal mode such as \"0660\""))?;
    if mode & !0o777 != 0 {
        return Err(format!(
            "socket_mode {text:?}: only permission bits (at most 0777)"
        ));
    }
    if mode & 0o007 != 0 {
        return Err(format!(
            "socket_mode {text:?} gives others access: the socket is never world-accessible (use 0660)"
        ));
    }
    if mode & 0o600 != 0o600 || mode & 0o020 == 0 {
        return Err(format!(
            "socket_mode {text:?}: the agent's user needs read and write, the group write (use 0660)"
        ));
    }
    Ok(mode)
}

impl Config {
    /// Parses and checks `text`; an error lists every problem found, one a line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (c, problems) = Self::parse_all(text)?;
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Parses `text` and lists every problem in it, not only the first: unknown keys (all
    /// of them), then each table's checks. An error only when it is not TOML of the
    /// right shape at all.
    pub fn parse_all(text: &str) -> Result<(Self, Vec<String>), String> {
        let mut problems = Vec::new();
        let de = toml::Deserializer::new(text);
        let c: Config = serde_ignored::deserialize(de, |path| {
            problems.push(format!("unknown key {path}"));
        })
        .map_err(|e| e.to_string())?;
        problems.extend(c.problems());
        Ok((c, problems))
    }

    /// The checks of a parsed config that need nothing but the config itself.
    fn problems(&self) -> Vec<String> {
        let c = self;
        let mut out = Vec::new();
        let mut labels = std::collections::BTreeSet::<String>::new();
        for t in &c.pkcs11 {
            if t.token.is_empty() {
                out.push("a [[pkcs11]] table has an empty token label".into());
            } else if !labels.insert(t.token.clone()) {
                out.push(format!("token {:?} is configured twice", t.token));
            }
            if t.sessions == Some(0) || t.sessions.is_some_and(|n| n > 64) {
                out.push(format!(
                    "token {:?}: sessions must be between 1 and 64",
                    t.token
                ));
            }
            if !t.module.is_absolute() {
                out.push(format!(
                    "PKCS#11 module path {:?} must be absolute",
                    t.module
                ));
            }
            if let Err(e) = ttl(&t.idle_ttl, &t.hard_ttl) {
                out.push(format!("token {:?}: {e}", t.token));
            }
        }
        if let Err(e) = crate::guard::policy::Policy::new(c.policy.clone()) {
            out.push(e);
        }
        if let Some(t) = &c.request_timeout {
            if let Err(e) = parse_duration(t) {
                out.push(format!("request_timeout: {e}"));
            }
        }
        for f in &c.file {
            if let Err(e) = ttl(&f.idle_ttl, &f.hard_ttl) {
                out.push(format!("{}: {e}", f.label()));
            }
        }
        for p in &c.piv {
            let label = p.label();
            if label.is_empty() || !labels.insert(label.clone()) {
                out.push(format!("token {label:?} is configured twice (or empty)"));
            }
            if let Err(e) = ttl(&p.idle_ttl, &p.hard_ttl) {
                out.push(format!("{label}: {e}"));
            }
            if let Err(e) = p.management_key() {
                out.push(e);
            }
            for slot in std::iter::once(p.root_slot().to_string()).chain(p.slots()) {
                if let Err(e) = crate::keys::piv::parse_slot(&slot) {
                    out.push(format!("{label}: {e}"));
                }
            }
        }
        if c.socket_group.is_some() || c.socket_mode.is_some() {
            if c.allowed_uids.is_empty() {
                out.push(
                    "socket_group / socket_mode share the socket with other users: \
                     they need allowed_uids naming those users"
                        .into(),
                );
            }
            if let Some(m) = &c.socket_mode {
                if let Err(e) = parse_socket_mode(m) {
                    out.push(e);
                }
            }
            if c.socket_group == Some(SocketGroup::Name(String::new())) {
                out.push("socket_group is empty".into());
            }
        }
        if c.confirm.program.is_some() {
            let confirm = c
                .confirm
                .timeout
                .as_deref()
                .and_then(|t| parse_duration(t).ok())
                .unwrap_or(crate::guard::confirm::DEFAULT_TIMEOUT);
            if confirm >= c.request_timeout() {
                out.push(format!(
                    "[confirm] timeout ({}s) is not shorter than request_timeout ({}s): the \
                     request would be cut off while the user reads the confirmation",
                    confirm.as_secs(),
                    c.request_timeout().as_secs()
                ));
            }
        }
        if let Some(ns) = &c.notary_signer {
            let files: Vec<String> = c.file.iter().map(FileConfig::label).collect();
            if !labels.contains(ns.token.as_str()) && !files.contains(&ns.token) {
                out.push(format!(
                    "[notary_signer] token {:?} is not a configured token ([[pkcs11]] token, or file:DIR of a [[file]])",
                    ns.token
                ));
            }
        }
        out
    }

    /// Reads `path`; a missing file at the default path means an empty config.
    pub fn load(path: Option<&Path>) -> Result<(Self, Option<PathBuf>), String> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => match default_config_path() {
                Some(p) => (p, false),
                None => return Ok((Config::default(), None)),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text)
                .map(|c| (c, Some(path.clone())))
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok((Config::default(), None))
            }
            Err(e) => Err(format!("cannot read config {}: {e}", path.display())),
        }
    }

    pub fn trust_dir(&self) -> PathBuf {
        self.trust_dir.clone().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_DATA_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                .unwrap_or_else(|| PathBuf::from("."));
            base.join("dct").join("trust")
        })
    }

    /// The default trust server, with its CA read now so a bad path fails at start.
    pub fn trust_server(&self) -> Result<Option<crate::trust::notary::ServerOpts>, String> {
        let Some(url) = &self.trust.server else {
            return Ok(None);
        };
        let ca_pem = match &self.trust.tlscacert {
            Some(p) => {
                Some(std::fs::read(p).map_err(|e| format!("trust CA {}: {e}", p.display()))?)
            }
            None => None,
        };
        Ok(Some(crate::trust::notary::ServerOpts {
            url: url.clone(),
            ca_pem,
            trust_on_first_use: false,
        }))
    }

    pub fn ledger(&self) -> PathBuf {
        self.ledger.clone().unwrap_or_else(|| {
            let trust = self.trust_dir();
            trust
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("versions.ledger")
        })
    }

    pub fn audit_log(&self) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(crate::guard::audit::default_path)
    }

    /// `[trust.pinning]` with the notary client config's `trust_pinning` added.
    pub fn pinning(&self) -> Result<Pinning, String> {
        let mut p = self.trust.pinning.clone();
        let Some(path) = &self.trust.notary_config else {
            return Ok(p);
        };
        let text = std::fs::read(path)
            .map_err(|e| format!("notary client config {}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| format!("notary client config {}: {e}", path.display()))?;
        let none = serde_json::Value::Null;
        let tp = v.get("trust_pinning").unwrap_or(&none);
        if let Some(cas) = tp.get("ca").and_then(|c| c.as_object()) {
            for (gun, file) in cas {
                if let Some(f) = file.as_str() {
                    p.ca.insert(gun.clone(), PathBuf::from(f));
                }
            }
        }
        if let Some(certs) = tp.get("certs").and_then(|c| c.as_object()) {
            for (gun, ids) in certs {
                let ids: Vec<String> = ids
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|i| i.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                p.certs.entry(gun.clone()).or_default().extend(ids);
            }
        }
        if tp.get("disable_tofu").and_then(|d| d.as_bool()) == Some(true) {
            p.disable_tofu = true;
        }
        Ok(p)
    }

    /// How the socket is shared: None (the default) keeps it private to the agent's user.
    /// Resolves `socket_group`'s name, so an unknown group fails at start.
    pub fn socket_access(&self) -> Result<Option<SocketAccess>, String> {
        if self.socket_group.is_none() && self.socket_mode.is_none() {
            return Ok(None);
        }
        let gid = match &self.socket_group {
            None => nix::unistd::getegid().as_raw(),
            Some(SocketGroup::Gid(g)) => *g,
            Some(SocketGroup::Name(n)) => match nix::unistd::Group::from_name(n) {
                Ok(Some(g)) => g.gid.as_raw(),
                Ok(None) => match n.parse::<u32>() {
                    Ok(g) => g,
                    Err(_) => return Err(format!("socket_group {n:?}: no such group")),
                },
                Err(e) => return Err(format!("socket_group {n:?}: {e}")),
            },
        };
        let mode = match &self.socket_mode {
            Some(m) => parse_socket_mode(m)?,
            None => 0o660,
        };
        Ok(Some(SocketAccess { gid, mode }))
    }

    pub fn max_concurrent_requests(&self) -> usize {
        self.max_concurrent_requests.unwrap_or(256).max(1)
    }

    pub fn request_timeout(&self) -> std::time::Duration {
        // Checked when the config was parsed.
        self.request_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(std::time::Duration::from_secs(600))
    }

    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES)
    }
}

/// `dct-agent check-config`: every problem of the config `text`, including the files it
/// names (modules readable and not writable by others, PIN and key files owner-only, TLS
/// files readable, the confirmation program runnable, the socket group known), without
/// loading a PKCS#11 module or touching a token.
pub fn check(text: &str) -> Vec<String> {
    let (c, mut out) = match Config::parse_all(text) {
        Ok(x) => x,
        Err(e) => return vec![e],
    };
    out.extend(c.file_problems());
    out
}

impl Config {
    fn file_problems(&self) -> Vec<String> {
        use crate::util::pin_file::check_owner_only;
        let mut out = Vec::new();
        let mut push = |r: Result<(), String>| {
            if let Err(e) = r {
                out.push(e);
            }
        };
        for t in &self.pkcs11 {
            push(check_module(&t.module));
            if let Some(f) = &t.pin_file {
                push(check_owner_only(
                    f,
                    &format!("token {:?}: PIN file", t.token),
                ));
            }
        }
        for p in &self.piv {
            if let Some(f) = &p.pin_file {
                push(check_owner_only(f, &format!("{}: PIN file", p.label())));
            }
            if let Some(f) = &p.management_key_file {
                push(check_owner_only(
                    f,
                    &format!("{}: management key file", p.label()),
                ));
            }
        }
        for f in &self.file {
            let dir = f.path();
            push(match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(format!(
                    "{}: {} is not a directory",
                    f.label(),
                    dir.display()
                )),
                Err(e) => Err(format!("{}: {}: {e}", f.label(), dir.display())),
            });
        }
        if let Some(ns) = &self.notary_signer {
            push(readable(&ns.tls_cert, "[notary_signer] tls_cert"));
            push(check_owner_only(&ns.tls_key, "[notary_signer] tls_key"));
            push(readable(&ns.client_ca, "[notary_signer] client_ca"));
        }
        push(self.trust_server().map(drop));
        push(self.pinning().map(drop));
        push(self.socket_access().map(drop));
        push(crate::guard::confirm::Confirmer::new(&self.confirm).map(drop));
        out
    }
}

fn readable(path: &Path, what: &str) -> Result<(), String> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// A PKCS#11 module runs inside the agent: it must be a readable file that no one but its
/// owner (root or the agent's user) can change, nor its directory.
fn check_module(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("PKCS#11 module {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("PKCS#11 module {shown} is not a file"));
    }
    readable(path, "PKCS#11 module")?;
    let uid = nix::unistd::getuid().as_raw();
    let dir_meta = path.parent().and_then(|d| std::fs::metadata(d).ok());
    for (m, what) in [(Some(meta), "it"), (dir_meta, "its directory")] {
        let Some(m) = m else { continue };
        if m.permissions().mode() & 0o022 != 0 || (m.uid() != 0 && m.uid() != uid) {
            return Err(format!(
                "PKCS#11 module {shown}: {what} can be changed by other users, who would run \
                 code inside the agent (chmod go-w, owner root)"
            ));
        }
    }
    Ok(())
}

/// `$XDG_CONFIG_HOME/dct/agent.toml`, else `~/.config/dct/agent.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("dct").join("agent.toml"))
}

/// `$XDG_RUNTIME_DIR/dct-agent/agent.sock`, else `/tmp/dct-agent-<uid>/agent.sock`: the
/// CLI's default too (both from dct-wire).
pub fn default_socket_path() -> PathBuf {
    dct_wire::socket::default_socket_path(nix::unistd::getuid().as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_by_gun_and_prefix() {
        let c = Config::parse(
            "[trust.pinning.certs]\n\"a.com/app\" = [\"AA\"]\n\"a.com/*\" = [\"bb\"]\n\"a.com/team/*\" = [\"cc\"]\n",
        )
        .unwrap();
        let p = &c.trust.pinning;
        assert_eq!(p.for_gun("a.com/app"), ["aa"]);
        assert_eq!(p.for_gun("a.com/other"), ["bb"]);
        assert_eq!(p.for_gun("a.com/team/x"), ["cc"]);
        assert!(p.for_gun("b.com/app").is_empty());
    }

    #[test]
    fn parses_tokens_and_refuses_unknown_keys() {
        let c = Config::parse("[[pkcs11]]\nmodule = \"/m.so\"\ntoken = \"a\"\n").unwrap();
        assert_eq!(c.pkcs11[0].token, "a");
        assert!(Config::parse("bogus = 1").unwrap_err().contains("bogus"));
        assert!(
            Config::parse("[[pkcs11]]\nmodule = \"m.so\"\ntoken = \"a\"\n")
                .unwrap_err()
                .contains("absolute")
        );
        let twice = "[[pkcs11]]\nmodule = \"/m\"\ntoken = \"a\"\n[[pkcs11]]\nmodule = \"/m\"\ntoken = \"a\"\n";
        assert!(Config::parse(twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_shared_socket_needs_allowed_uids_and_is_never_world_accessible() {
        let shared = "allowed_uids = [1001]\nsocket_group = \"dctusers\"\n";
        let c = Config::parse(shared).unwrap();
        assert_eq!(c.socket_group, Some(SocketGroup::Name("dctusers".into())));
        let c = Config::parse("allowed_uids = [1001]\nsocket_group = 4242\n").unwrap();
        assert_eq!(
            c.socket_access().unwrap(),
            Some(SocketAccess {
                gid: 4242,
                mode: 0o660
            })
        );
        let c =
            Config::parse("allowed_uids = [1001]\nsocket_group = 4242\nsocket_mode = \"0620\"\n")
                .unwrap();
        assert_eq!(c.socket_access().unwrap().map(|a| a.mode), Some(0o620));
        // Without the options: private, as before.
        assert_eq!(
            Config::parse("allowed_uids = [1001]\n")
                .unwrap()
                .socket_access(),
            Ok(None)
        );
        // Without allowed_uids the group would reach a socket that refuses it.
        assert!(Config::parse("socket_group = \"dctusers\"\n")
            .unwrap_err()
            .contains("allowed_uids"));
        assert!(Config::parse("socket_mode = \"0660\"\n")
            .unwrap_err()
            .contains("allowed_uids"));
        for (mode, why) in [
            ("0666", "never world-accessible"),
            ("0661", "never world-accessible"),
            ("0664", "never world-accessible"),
            ("4660", "only permission bits"),
            ("0640", "the group write"),
            ("0460", "read and write"),
            ("rw-rw----", "octal"),
        ] {
            let text = format!("allowed_uids = [1001]\nsocket_mode = \"{mode}\"\n");
            let err = Config::parse(&text).unwrap_err();
            assert!(err.contains(why), "{mode}: {err}");
        }
        assert!(Config::parse("allowed_uids = [1]\nsocket_group = \"\"\n").is_err());
        assert!(
            Config::parse("allowed_uids = [1]\nsocket_group = \"no-such-group-dct\"\n")
                .unwrap()
                .socket_access()
                .unwrap_err()
                .contains("no such group")
        );
    }
}
