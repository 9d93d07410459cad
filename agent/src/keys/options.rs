//! Each backend's table in agent.toml (`[[pkcs11]]`, `[[piv]]`, `[[file]]`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::util::duration::parse_duration;

#[derive(Debug, Clone, Deserialize)]
// Unknown keys are reported, all at once, by the config parser (serde_ignored).
pub struct FileConfig {
    /// The key directory, e.g. "~/.docker/trust/private" (`~/` is the home directory).
    pub dir: String,
    /// As for [[pkcs11]]: forget the decrypted keys after this long unused / unlocked.
    pub idle_ttl: Option<String>,
    pub hard_ttl: Option<String>,
}

impl FileConfig {
    pub fn ttl(&self) -> crate::keys::Ttl {
        // Checked when the config was parsed.
        ttl(&self.idle_ttl, &self.hard_ttl).unwrap_or_default()
    }

    pub fn path(&self) -> PathBuf {
        match (self.dir.strip_prefix("~/"), std::env::var_os("HOME")) {
            (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => PathBuf::from(&self.dir),
        }
    }

    /// The token label the CLI names it by.
    pub fn label(&self) -> String {
        format!("file:{}", self.dir)
    }
}

#[derive(Debug, Clone, Deserialize)]
// Unknown keys are reported, all at once, by the config parser (serde_ignored).
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (shared library).
    pub module: PathBuf,
    /// Token label.
    pub token: String,
    /// Sessions that sign in parallel (a pool of threads). Default: the number of CPUs, at
    /// most 4. 1: everything on the token's one session.
    pub sessions: Option<usize>,
    /// A file holding the PIN, to unlock the token at start with no one at a terminal
    /// (a server, CI). Must be owned by the agent's user and not readable by others. One
    /// login attempt; a wrong PIN leaves the token locked and is never retried.
    pub pin_file: Option<PathBuf>,
    /// Lock the token after this long unused ("90s", "15m", "8h"). Default: never.
    pub idle_ttl: Option<String>,
    /// Lock the token this long after it was unlocked, used or not. Default: never.
    pub hard_ttl: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
// Unknown keys are reported, all at once, by the config parser (serde_ignored).
pub struct PivConfig {
    /// The card's serial number (`ykman list`, `yubico-piv-tool -a status`).
    pub serial: u32,
    /// The token label requests name it by. Default `piv:SERIAL`.
    pub label: Option<String>,
    /// Where the management key (needed to make keys and write certificates) comes from:
    /// "protected" (default: the PIN-protected copy on the card, as `ykman piv access
    /// change-management-key --protect` leaves it) or "default" (the factory key; only for
    /// a test card). `management_key_file` instead: a file holding the key in hex.
    pub management_key: Option<String>,
    /// A file with the management key in hex (owner-only, like pin_file).
    pub management_key_file: Option<PathBuf>,
    /// The slot for root keys. Default "9c" (Digital Signature, where Notary keeps them).
    pub root_slot: Option<String>,
    /// Slots for other keys, first free one first. Default 9a, 9d, then the retired
    /// slots 82..95.
    pub slots: Option<Vec<String>>,
    /// As for [[pkcs11]].
    pub pin_file: Option<PathBuf>,
    pub idle_ttl: Option<String>,
    pub hard_ttl: Option<String>,
}

/// Where a card's management key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagementKey {
    Protected,
    Default,
    File(PathBuf),
}

impl PivConfig {
    pub fn label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| format!("piv:{}", self.serial))
    }

    pub fn ttl(&self) -> crate::keys::Ttl {
        // Checked when the config was parsed.
        ttl(&self.idle_ttl, &self.hard_ttl).unwrap_or_default()
    }

    pub fn management_key(&self) -> Result<ManagementKey, String> {
        match (self.management_key.as_deref(), &self.management_key_file) {
            (Some(_), Some(_)) => Err(format!(
                "{}: management_key and management_key_file are exclusive",
                self.label()
            )),
            (_, Some(f)) => Ok(ManagementKey::File(f.clone())),
            (None | Some("protected"), None) => Ok(ManagementKey::Protected),
            (Some("default"), None) => Ok(ManagementKey::Default),
            (Some(other), None) => Err(format!(
                "{}: management_key {other:?}: expected \"protected\" or \"default\" (or management_key_file)",
                self.label()
            )),
        }
    }

    pub fn root_slot(&self) -> &str {
        self.root_slot.as_deref().unwrap_or("9c")
    }

    pub fn slots(&self) -> Vec<String> {
        self.slots.clone().unwrap_or_else(|| {
            let mut s = vec!["9a".to_string(), "9d".to_string()];
            s.extend((0x82..=0x95).map(|n| format!("{n:02x}")));
            s
        })
    }
}

pub fn ttl(idle: &Option<String>, hard: &Option<String>) -> Result<crate::keys::Ttl, String> {
    Ok(crate::keys::Ttl {
        idle: idle.as_deref().map(parse_duration).transpose()?,
        hard: hard.as_deref().map(parse_duration).transpose()?,
    })
}

impl Pkcs11Config {
    pub fn ttl(&self) -> crate::keys::Ttl {
        // Checked when the config was parsed.
        ttl(&self.idle_ttl, &self.hard_ttl).unwrap_or_default()
    }

    pub fn sessions(&self) -> usize {
        self.sessions.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4)
        })
    }
}
