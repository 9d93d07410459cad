//! The version ledger: for every (key ID as signed, GUN, role), the versions the key signed,
//! so that it never goes back, and never signs a second, different document under a version
//! that may be out in the world.
//!
//! A version is *reserved* while a request is in flight (checked and reserved under one
//! lock, so two racing requests cannot both pass), *pending* once signed for a publish the
//! agent makes itself and not yet acknowledged by the server, and *published* once the
//! server took it or the signature left the agent to a client that publishes it.
//!
//! Durability: the audit log is the ledger's write-ahead log. Every signature's record is
//! synced before the signature leaves, and the audit writer applies it here in the same
//! step. A checkpoint file (its own path, not beside the log) holds the whole ledger and the
//! log position it covers; it is written at start, every [`CHECKPOINT_EVERY`] records and at
//! shutdown. At start the ledger is the checkpoint plus the log after it. A log that does not
//! continue the checkpoint (moved, rotated, replaced) is fine after a clean shutdown; after a
//! crash the agent refuses to start rather than forget what it signed since.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the version rule applies to a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Versioning {
    /// The signature leaves the agent to a client that publishes it: the version is final at
    /// once (lower refused, the same version with other content refused).
    Final,
    /// The agent publishes it itself: pending until the server acknowledges. A pending
    /// version that the server never took may be signed again with other content (a retry
    /// after a failed publish); a published one may not.
    Publish,
    /// A role notary-server manages (timestamp, snapshot through the notary-signer API): it
    /// re-signs its highest version with a new expiry after a failed store, so a repeat of
    /// the highest is allowed; lower versions, and two different documents of one version at
    /// the same time, are refused.
    ServerManaged,
}

/// What a ledger line names: (key ID as signed, GUN, role).
pub type Slot = (String, String, String);

/// The highest version known for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub version: u64,
    #[serde(with = "hex32")]
    pub digest: [u8; 32],
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Entry {
    /// Highest version taken by the world (or final).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    published: Option<Mark>,
    /// Highest version signed for a publish not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Mark>,
    /// Requests in flight: (reservation id, mark).
    #[serde(skip)]
    inflight: Vec<(u64, Mark)>,
    /// When the highest version was last signed here (this run).
    #[serde(skip)]
    signed_at: Option<std::time::Instant>,
}

/// notary-server repeats its highest version with other content only after a failed store,
/// which is a later request; two different documents of one version this close together are
/// two requests racing, and only the first is signed.
pub const REPEAT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
struct State {
    entries: HashMap<Slot, Entry>,
    next_id: u64,
    /// The audit log position the entries cover: (records, hash of the last one).
    covered: (u64, String),
    /// The checkpoint loaded at start was written at a clean shutdown.
    loaded_clean: bool,
    since_checkpoint: u64,
    /// The log position the last checkpoint written covers.
    checkpointed: u64,
}

/// The audit log position the ledger covers.
pub struct Covered {
    pub records: u64,
    pub hash: String,
    /// As loaded: the checkpoint was written at a clean shutdown.
    pub clean: bool,
}

/// The ledger: entries in memory, checkpointed to `path`.
pub struct Ledger {
    state: Mutex<State>,
    path: PathBuf,
}

/// Records between checkpoints.
pub const CHECKPOINT_EVERY: u64 = 4096;

/// A version held for one request; released on drop unless the signature was recorded.
pub struct Reservation<'a> {
    ledger: &'a Ledger,
    slot: Slot,
    id: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        // Recover a poisoned lock: the map is only ever changed by whole-entry updates, and a
        // reservation left behind would refuse the retry (fail closed, but forever).
        let mut st = self.ledger.lock();
        if let Some(e) = st.entries.get_mut(&self.slot) {
            e.inflight.retain(|(id, _)| *id != self.id);
        }
    }
}

/// What the checkpoint file holds.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// Audit records covered, and the hash of the last one.
    records: u64,
    last_hash: String,
    /// Written at a clean shutdown: nothing was signed after `records`.
    clean: bool,
    entries: Vec<(Slot, Entry)>,
}

fn refuse(slot: &Slot, version: u64, known: &Mark, what: &str) -> Error {
    let (key, gun, role) = slot;
    let gun = if gun.is_empty() { "(no GUN)" } else { gun };
    Error::Policy {
        rule: "version",
        why: format!(
            "key {key} already signed {role} version {} of {gun}; version {version} {what}",
            known.version
        ),
    }
}

impl Ledger {
    /// An empty ledger checkpointed at `path` (see [`Ledger::open`]).
    pub fn new(path: PathBuf) -> Ledger {
        Ledger {
            state: Mutex::default(),
            path,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the checkpoint at `path`, if any (its log position: [`Ledger::covered`]). A
    /// checkpoint that cannot be read is an error: the agent does not start without its
    /// memory.
    pub fn open(path: &Path) -> std::result::Result<Ledger, String> {
        let ledger = Ledger::new(path.to_path_buf());
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ledger),
            Err(e) => return Err(format!("version ledger {}: {e}", path.display())),
        };
        let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "version ledger {} is damaged ({e}); restore it from a backup: the agent does not sign without it",
                path.display()
            )
        })?;
        {
            let mut st = ledger.lock();
            st.entries = cp.entries.into_iter().collect();
            st.covered = (cp.records, cp.last_hash.clone());
            st.loaded_clean = cp.clean;
        }
        Ok(ledger)
    }

    /// Checks `mark` for `slot` under `versioning` and holds it for this request.
    pub fn reserve(
        &self,
        slot: Slot,
        mark: Mark,
        versioning: Versioning,
    ) -> Result<Reservation<'_>> {
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        let entry = st.entries.entry(slot.clone()).or_default();
        // Others in flight for the same slot: never two different documents of one version,
        // never below a version being signed now.
        for (_, other) in &entry.inflight {
            if other.version == mark.version && other.digest != mark.digest {
                return Err(refuse(
                    &slot,
                    mark.version,
                    other,
                    "with other content is being signed at this moment; only one of them may be",
                ));
            }
            if other.version > mark.version {
                return Err(refuse(&slot, mark.version, other, "would go back"));
            }
        }
        let floor = match versioning {
            Versioning::Final => max(entry.published, entry.pending),
            Versioning::Publish => entry.published,
            Versioning::ServerManaged => max(entry.published, entry.pending),
        };
        if let Some(known) = floor {
            if mark.version < known.version {
                return Err(refuse(&slot, mark.version, &known, "would go back"));
            }
            let fork = mark.version == known.version && mark.digest != known.digest;
            let racing = entry.signed_at.is_some_and(|t| t.elapsed() < REPEAT_AFTER);
            if fork && versioning == Versioning::ServerManaged && racing {
                return Err(refuse(
                    &slot,
                    mark.version,
                    &known,
                    "with other content was asked for at the same moment; only one of them is signed",
                ));
            }
            if fork && versioning != Versioning::ServerManaged {
                return Err(refuse(
                    &slot,
                    mark.version,
                    &known,
                    "with other content would be a second, different version",
                ));
            }
        }
        // A pending version below this one was never published (or this would be refused by
        // the server's own version check): publishing mode may go past it.
        if versioning != Versioning::Publish {
            if let Some(p) = entry.pending {
                if mark.version < p.version {
                    return Err(refuse(&slot, mark.version, &p, "would go back"));
                }
            }
        }
        entry.inflight.push((id, mark));
        Ok(Reservation {
            ledger: self,
            slot,
            id,
        })
    }

    /// Applies a recorded signature or publish acknowledgement (from the audit writer, after
    /// its record is durable, or when replaying the log). `covered`: the log position now.
    pub fn apply(&self, update: &Update, covered: Option<(u64, &str)>) {
        let mut st = self.lock();
        Self::apply_locked(&mut st, update);
        if let Some((n, h)) = covered {
            st.covered = (n, h.to_string());
        }
        st.since_checkpoint += 1;
    }

    fn apply_locked(st: &mut State, u: &Update) {
        let e = st.entries.entry(u.slot.clone()).or_default();
        let mark = u.mark;
        e.signed_at = Some(std::time::Instant::now());
        let bump = |m: &mut Option<Mark>| {
            if m.is_none_or(|m| mark.version >= m.version) {
                *m = Some(mark);
            }
        };
        match u.state {
            MarkState::Published => {
                bump(&mut e.published);
                // A pending mark at or below what the server took is settled.
                if e.pending.is_some_and(|p| p.version <= mark.version) {
                    e.pending = None;
                }
            }
            // A pending mark at or below a published one is settled already.
            MarkState::Pending if e.published.is_some_and(|p| p.version >= mark.version) => {}
            MarkState::Pending => bump(&mut e.pending),
            MarkState::Untracked => {}
        }
    }

    /// The log position the ledger covers.
    pub fn covered(&self) -> Covered {
        let st = self.lock();
        Covered {
            records: st.covered.0,
            hash: st.covered.1.clone(),
            clean: st.loaded_clean,
        }
    }

    /// The log position covered by the ledger now.
    pub fn set_covered(&self, records: u64, hash: &str) {
        self.lock().covered = (records, hash.to_string());
    }

    /// Whether a checkpoint is due: enough records since the last, or the first records of
    /// a log the last checkpoint saw empty (so that a crash and a moved log are noticed).
    pub fn checkpoint_due(&self) -> bool {
        let st = self.lock();
        st.since_checkpoint >= CHECKPOINT_EVERY || (st.checkpointed == 0 && st.covered.0 > 0)
    }

    /// Writes the checkpoint (synced, atomically replacing the old one).
    pub fn checkpoint(&self, clean: bool) -> std::result::Result<(), String> {
        let bytes = {
            let mut st = self.lock();
            st.since_checkpoint = 0;
            st.checkpointed = st.covered.0;
            let cp = Checkpoint {
                records: st.covered.0,
                last_hash: st.covered.1.clone(),
                clean,
                entries: st
                    .entries
                    .iter()
                    .filter(|(_, e)| e.published.is_some() || e.pending.is_some())
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect(),
            };
            serde_json::to_vec(&cp).map_err(|e| e.to_string())?
        };
        crate::util::write_atomic(&self.path, &bytes, 0o600)
            .map_err(|e| format!("version ledger {}: {e}", self.path.display()))
    }

    /// The highest version of `slot` known, published or pending (for tests and status).
    pub fn highest(&self, slot: &Slot) -> Option<Mark> {
        let st = self.lock();
        let e = st.entries.get(slot)?;
        max(e.published, e.pending)
    }
}

fn max(a: Option<Mark>, b: Option<Mark>) -> Option<Mark> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.version > a.version { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Whether a recorded mark is settled or awaits the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkState {
    Published,
    Pending,
    /// Signed by a key whose rule turns version checks off (load tests).
    Untracked,
}

/// One change to the ledger, carried by an audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub slot: Slot,
    pub mark: Mark,
    pub state: MarkState,
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::tuf::keys::hex(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        crate::tuf::keys::unhex(&text)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("not a SHA-256 in hex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot {
        ("k".into(), "a.com/x".into(), "targets".into())
    }
    fn m(v: u64, d: u8) -> Mark {
        Mark {
            version: v,
            digest: [d; 32],
        }
    }
    fn rec(l: &Ledger, mark: Mark, state: MarkState) {
        l.apply(
            &Update {
                slot: slot(),
                mark,
                state,
            },
            None,
        );
    }

    #[test]
    fn racing_reservations_of_one_version_exclude_each_other() {
        let l = Ledger::new("/nonexistent".into());
        let a = l.reserve(slot(), m(5, 1), Versioning::Final).unwrap();
        assert!(l.reserve(slot(), m(5, 2), Versioning::Final).is_err());
        assert!(l
            .reserve(slot(), m(5, 2), Versioning::ServerManaged)
            .is_err());
        // The same document twice is fine; once the first is gone, the other may go.
        let same = l.reserve(slot(), m(5, 1), Versioning::Final).unwrap();
        drop((a, same));
        l.reserve(slot(), m(5, 2), Versioning::Final).unwrap();
    }

    #[test]
    fn final_versions_never_go_back_or_fork() {
        let l = Ledger::new("/nonexistent".into());
        rec(&l, m(5, 1), MarkState::Published);
        assert!(l.reserve(slot(), m(5, 2), Versioning::Final).is_err());
        assert!(l.reserve(slot(), m(4, 1), Versioning::Final).is_err());
        assert!(l.reserve(slot(), m(5, 2), Versioning::Publish).is_err());
        l.reserve(slot(), m(5, 1), Versioning::Final).unwrap();
        l.reserve(slot(), m(6, 2), Versioning::Final).unwrap();
    }

    #[test]
    fn a_pending_version_can_be_signed_again_by_the_publisher() {
        let l = Ledger::new("/nonexistent".into());
        rec(&l, m(1, 1), MarkState::Published);
        rec(&l, m(2, 2), MarkState::Pending);
        // The publish of v2 failed: a fresh v2 may be signed for the retry ...
        l.reserve(slot(), m(2, 3), Versioning::Publish).unwrap();
        // ... but not handed out as final, and nothing below the published v1.
        assert!(l.reserve(slot(), m(2, 3), Versioning::Final).is_err());
        assert!(l.reserve(slot(), m(1, 9), Versioning::Publish).is_err());
        // Once v2 is published, it is settled.
        rec(&l, m(2, 3), MarkState::Published);
        assert!(l.reserve(slot(), m(2, 4), Versioning::Publish).is_err());
        assert_eq!(l.highest(&slot()), Some(m(2, 3)));
    }

    #[test]
    fn server_managed_roles_may_repeat_the_highest() {
        let l = Ledger::new("/nonexistent".into());
        rec(&l, m(7, 1), MarkState::Published);
        // At once: a race, refused; a moment later: notary-server's retry, signed.
        assert!(l
            .reserve(slot(), m(7, 2), Versioning::ServerManaged)
            .is_err());
        std::thread::sleep(REPEAT_AFTER);
        l.reserve(slot(), m(7, 2), Versioning::ServerManaged)
            .unwrap();
        assert!(l
            .reserve(slot(), m(6, 2), Versioning::ServerManaged)
            .is_err());
    }

    #[test]
    fn checkpoints_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let l = Ledger::new(path.clone());
        rec(&l, m(3, 1), MarkState::Published);
        rec(&l, m(4, 2), MarkState::Pending);
        l.set_covered(12, "ab");
        l.checkpoint(true).unwrap();
        let back = Ledger::open(&path).unwrap();
        let at = back.covered();
        assert_eq!((at.records, at.hash.as_str(), at.clean), (12, "ab", true));
        assert_eq!(back.highest(&slot()), Some(m(4, 2)));
        assert!(back.reserve(slot(), m(3, 9), Versioning::Publish).is_err());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Ledger::open(&path).is_err());
    }
}
