//! YubiKey over PIV (the `yubikey` crate over PC/SC), without a PKCS#11 module.
//!
//! A card is named by its serial. Keys are P-256, generated on the card with a PIN policy
//! and a touch policy chosen per key (root: PIN always, touch always). A slot holds a key
//! for the agent when its certificate says so: a root key's certificate is its Notary root
//! certificate (subject CN = GUN, only that, code signing), made on the card; any other
//! key's is a self-signed certificate, signed on the card, with subject
//! `CN=<GUN>, OU=dct-agent:<role>`. Slots with other certificates are left alone. New root
//! keys go to the root slot (9c unless configured), others to the first free slot.
//!
//! The PIN is verified only with a PIN the user gave, never a default, once per unlock,
//! and refused on the last try without `force`. While unlocked the agent keeps the PIN in
//! zeroizing memory: keys with PIN policy "always" need it before each signature. Removing
//! the card locks the token (the card forgets its PIN state); the agent reopens it by
//! serial when it is back, and `dct unlock` goes on from there.

use std::collections::HashMap;

use der::{Decode, Encode};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use yubikey::piv::{self, AlgorithmId, ManagementSlotId, Origin, SlotAlgorithmId, SlotId};
use yubikey::{MgmAlgorithmId, MgmKey, PinPolicy, Serial, TouchPolicy, YubiKey};
use zeroize::Zeroizing;

use super::{KeyBackend, KeyDetail, KeyEntry, KeyOptions, TokenInfo};
use crate::error::{Error, PinState, Result};
use crate::keys::options::ManagementKey;
use crate::tuf::keys::{self as tufkeys, TufKey};

pub const BACKEND: &str = "piv";
/// The factory management key of every YubiKey (3DES up to firmware 5.6, AES-192 after).
const FACTORY_MGM: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

/// A slot name ("9c", "82") as the card knows it. Key slots only.
pub fn parse_slot(s: &str) -> std::result::Result<SlotId, String> {
    let bad = || format!("{s:?} is not a PIV key slot (9a, 9c, 9d, 9e, 82..95)");
    let n = u8::from_str_radix(s.trim(), 16).map_err(|_| bad())?;
    match SlotId::try_from(n) {
        Ok(SlotId::Attestation | SlotId::Management(_)) | Err(_) => Err(bad()),
        Ok(slot) => Ok(slot),
    }
}

pub fn slot_name(slot: SlotId) -> String {
    format!("{:02x}", u8::from(slot))
}

/// The certificate object of a key slot.
fn object_id(slot: SlotId) -> u32 {
    match u8::from(slot) {
        0x9a => 0x5f_c105,
        0x9c => 0x5f_c10a,
        0x9d => 0x5f_c10b,
        0x9e => 0x5f_c101,
        0xf9 => 0x5f_ff01,
        // Retired slots 82..95: objects 5FC10D..5FC120.
        n => 0x5f_c10d + u32::from(n.saturating_sub(0x82)),
    }
}

fn pin_policy_name(p: PinPolicy) -> &'static str {
    match p {
        PinPolicy::Default => "default",
        PinPolicy::Never => "never",
        PinPolicy::Once => "once",
        PinPolicy::Always => "always",
    }
}

fn touch_policy_name(t: TouchPolicy) -> &'static str {
    match t {
        TouchPolicy::Default => "default",
        TouchPolicy::Never => "never",
        TouchPolicy::Always => "always",
        TouchPolicy::Cached => "cached",
    }
}

pub fn parse_pin_policy(s: &str) -> Result<PinPolicy> {
    match s {
        "never" => Ok(PinPolicy::Never),
        "once" => Ok(PinPolicy::Once),
        "always" => Ok(PinPolicy::Always),
        _ => Err(Error::InvalidArgument(format!(
            "PIN policy {s:?}: expected never, once or always"
        ))),
    }
}

pub fn parse_touch_policy(s: &str) -> Result<TouchPolicy> {
    match s {
        "never" => Ok(TouchPolicy::Never),
        "always" => Ok(TouchPolicy::Always),
        "cached" => Ok(TouchPolicy::Cached),
        _ => Err(Error::InvalidArgument(format!(
            "touch policy {s:?}: expected never, always or cached"
        ))),
    }
}

fn mgm_name(a: MgmAlgorithmId) -> &'static str {
    match a {
        MgmAlgorithmId::ThreeDes => "3DES",
        MgmAlgorithmId::Aes128 => "AES-128",
        MgmAlgorithmId::Aes192 => "AES-192",
        MgmAlgorithmId::Aes256 => "AES-256",
    }
}

/// What the agent knows of a slot's key.
#[derive(Debug, Clone, Copy)]
struct SlotPolicy {
    pin: PinPolicy,
    touch: TouchPolicy,
    generated: Option<bool>,
}

pub struct PivBackend {
    serial: u32,
    label: String,
    mgm: ManagementKey,
    root_slot: SlotId,
    slots: Vec<SlotId>,
    card: Option<YubiKey>,
    /// The PIN while unlocked (PIN policy "always" needs it before each signature).
    pin: Option<Zeroizing<Vec<u8>>>,
    /// Why the token is locked when the card took its state away (removed, reset).
    lost: Option<String>,
    policies: HashMap<u8, SlotPolicy>,
    mgm_alg: Option<MgmAlgorithmId>,
}

impl PivBackend {
    pub fn new(cfg: &crate::keys::options::PivConfig) -> std::result::Result<Self, String> {
        let mut slots = Vec::new();
        for s in cfg.slots() {
            slots.push(parse_slot(&s)?);
        }
        Ok(PivBackend {
            serial: cfg.serial,
            label: cfg.label(),
            mgm: cfg.management_key()?,
            root_slot: parse_slot(cfg.root_slot())?,
            slots,
            card: None,
            pin: None,
            lost: None,
            policies: HashMap::new(),
            mgm_alg: None,
        })
    }

    fn absent(&self) -> Error {
        Error::Unavailable(format!(
            "card absent: YubiKey serial {} is not connected (insert it; the agent finds it again without a restart)",
            self.serial
        ))
    }

    /// The open card, opened by serial when needed.
    fn card(&mut self) -> Result<&mut YubiKey> {
        if self.card.is_none() {
            match YubiKey::open_by_serial(Serial(self.serial)) {
                Ok(yk) => {
                    tracing::info!(token = %self.label, version = %yk.version(), "YubiKey opened");
                    self.card = Some(yk);
                    self.mgm_alg = None;
                    self.policies.clear();
                }
                Err(e) => {
                    tracing::debug!(token = %self.label, "open: {e}");
                    return Err(self.absent());
                }
            }
        }
        self.card
            .as_mut()
            .ok_or_else(|| Error::Internal("card vanished".into()))
    }

    /// Maps a card error; a PC/SC error means the card went away or was reset: the
    /// connection is dropped, the token locked, and the next request reopens it.
    fn fail(&mut self, what: &str, e: yubikey::Error) -> Error {
        match e {
            yubikey::Error::PcscError { .. } => {
                tracing::warn!(token = %self.label, "{what}: {e}; card removed or reset");
                self.drop_card(format!(
                    "YubiKey serial {} was removed or reset",
                    self.serial
                ));
                self.absent()
            }
            yubikey::Error::WrongPin { tries } => Error::WrongPin {
                token: self.label.clone(),
                state: pin_state(tries),
            },
            yubikey::Error::PinLocked => Error::PinLocked {
                token: self.label.clone(),
            },
            yubikey::Error::AuthenticationError => Error::Refused(format!(
                "{what}: the card refused (security status not satisfied) on token {}",
                self.label
            )),
            e => Error::Internal(format!("{what} on token {}: {e}", self.label)),
        }
    }

    /// Runs `f` on the card. A reset by another PC/SC client (the card is still there but
    /// forgot its verified PIN) is recovered once: the card is reopened, the PIN the user
    /// gave verified again (only with more than one try left), and `f` run again. A card
    /// that is gone, or a second failure: the token locks and the error says so. The inner
    /// result is the card's own answer.
    fn with_card<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut YubiKey) -> yubikey::Result<T>,
    ) -> Result<yubikey::Result<T>> {
        let r = f(self.card()?);
        let Err(yubikey::Error::PcscError {
            inner: Some(pcsc::Error::ResetCard),
        }) = r
        else {
            return match r {
                Err(e @ yubikey::Error::PcscError { .. }) => Err(self.fail(what, e)),
                r => Ok(r),
            };
        };
        tracing::info!(token = %self.label, "{what}: the card was reset by another application; reopening");
        self.reopen_after_reset()?;
        match f(self.card()?) {
            Err(e @ yubikey::Error::PcscError { .. }) => Err(self.fail(what, e)),
            r => Ok(r),
        }
    }

    fn reopen_after_reset(&mut self) -> Result<()> {
        let pin = self.pin.take();
        self.card = None;
        self.card()?;
        let Some(pin) = pin else { return Ok(()) };
        let why = format!(
            "YubiKey serial {} was reset by another application",
            self.serial
        );
        match self.pin_tries()? {
            Some(n) if n > 1 => {}
            _ => {
                self.lost = Some(format!(
                    "{why}; the PIN was not tried again (few tries left)"
                ));
                return Err(Error::Locked {
                    token: self.label.clone(),
                });
            }
        }
        let yk = self.card()?;
        match yk.verify_pin(&pin) {
            Ok(()) => {
                self.pin = Some(pin);
                Ok(())
            }
            Err(e) => {
                self.lost = Some(format!("{why}; its PIN no longer verifies"));
                Err(self.fail("PIN after a reset", e))
            }
        }
    }

    fn drop_card(&mut self, why: String) {
        if self.pin.is_some() {
            self.lost = Some(why);
        }
        self.pin = None;
        self.card = None;
        self.policies.clear();
    }

    fn require_unlocked(&mut self) -> Result<()> {
        self.card()?;
        if self.pin.is_none() {
            return Err(Error::Locked {
                token: self.label.clone(),
            });
        }
        Ok(())
    }

    fn version(&mut self) -> Result<yubikey::Version> {
        Ok(self.card()?.version())
    }

    /// PIN tries left without disturbing a verified PIN: slot metadata on firmware 5.3+,
    /// else the VERIFY status query (which resets the verification, so only while locked).
    fn pin_tries(&mut self) -> Result<Option<u8>> {
        let unlocked = self.pin.is_some();
        let pin_slot = SlotId::Management(ManagementSlotId::Pin);
        match self.with_card("PIN metadata", |yk| piv::metadata(yk, pin_slot))? {
            Ok(m) => Ok(m.retries.map(|r| r.remaining_count)),
            Err(yubikey::Error::NotSupported | yubikey::Error::NotFound) if !unlocked => {
                match self.with_card("PIN retries", |yk| yk.get_pin_retries())? {
                    Ok(n) => Ok(Some(n)),
                    Err(e) => Err(self.fail("PIN retries", e)),
                }
            }
            Err(yubikey::Error::NotSupported | yubikey::Error::NotFound) => Ok(None),
            Err(e) => Err(self.fail("PIN metadata", e)),
        }
    }

    /// The management key's algorithm: from the card's metadata (firmware 5.3+); older
    /// cards know only 3DES.
    fn mgm_algorithm(&mut self) -> Result<MgmAlgorithmId> {
        if let Some(a) = self.mgm_alg {
            return Ok(a);
        }
        let mgm_slot = SlotId::Management(ManagementSlotId::Management);
        let alg = match self.with_card("metadata", |yk| piv::metadata(yk, mgm_slot))? {
            Ok(m) => match m.algorithm {
                SlotAlgorithmId::Management(a) => a,
                other => {
                    return Err(Error::Internal(format!(
                        "management key metadata names algorithm {other:?}"
                    )))
                }
            },
            Err(yubikey::Error::NotSupported) => MgmAlgorithmId::ThreeDes,
            Err(e) => return Err(self.fail("management key metadata", e)),
        };
        self.mgm_alg = Some(alg);
        Ok(alg)
    }

    /// Authenticates with the management key (needs the PIN verified for a protected key).
    fn authenticate(&mut self) -> Result<()> {
        self.require_unlocked()?;
        let alg = self.mgm_algorithm()?;
        let key = match &self.mgm {
            ManagementKey::Default => MgmKey::from_bytes(FACTORY_MGM, Some(alg)),
            ManagementKey::File(path) => {
                let bytes = read_key_file(path)?;
                MgmKey::from_bytes(&*bytes, Some(alg))
            }
            ManagementKey::Protected => {
                match self.with_card("management key", MgmKey::get_protected)? {
                    Ok(k) => Ok(k),
                    Err(e) => {
                        return Err(Error::Refused(format!(
                            "token {}: no PIN-protected management key on the card ({e}); set one with `ykman piv access change-management-key --protect`, or name it with management_key_file in agent.toml",
                            self.label
                        )))
                    }
                }
            }
        };
        let key = key.map_err(|e| {
            Error::InvalidArgument(format!(
                "token {}: the management key does not fit the card's {} key: {e}",
                self.label,
                mgm_name(alg)
            ))
        })?;
        match self.with_card("management key", |yk| yk.authenticate(&key))? {
            Ok(()) => Ok(()),
            Err(yubikey::Error::AuthenticationError) => Err(Error::Refused(format!(
                "token {}: the card refused the management key ({}): check management_key in agent.toml",
                self.label,
                mgm_name(alg)
            ))),
            Err(e) => Err(self.fail("management key", e)),
        }
    }

    /// Reads a slot's certificate (DER), if it has one.
    fn read_cert(&mut self, slot: SlotId) -> Result<Option<Vec<u8>>> {
        let obj = match self.with_card("read", |yk| yk.fetch_object(object_id(slot)))? {
            Ok(o) => o,
            Err(_) => return Ok(None),
        };
        Ok(cert_from_object(&obj))
    }

    fn write_cert(&mut self, slot: SlotId, der: &[u8]) -> Result<()> {
        let obj = cert_object(der)?;
        self.with_card("write certificate", |yk| {
            yk.save_object(object_id(slot), &mut obj.clone())
        })?
        .map_err(|e| self.fail("write certificate", e))
    }

    /// The policies of a slot's key: metadata on firmware 5.3+, else the slot's defaults.
    fn slot_policy(&mut self, slot: SlotId) -> Result<Option<SlotPolicy>> {
        if let Some(p) = self.policies.get(&u8::from(slot)) {
            return Ok(Some(*p));
        }
        let p = match self.with_card("slot metadata", |yk| piv::metadata(yk, slot))? {
            Ok(m) => {
                let (pin, touch) = m
                    .policy
                    .unwrap_or((PinPolicy::Default, TouchPolicy::Default));
                SlotPolicy {
                    pin,
                    touch,
                    generated: m.origin.map(|o| o == Origin::Generated),
                }
            }
            Err(yubikey::Error::NotFound) => return Ok(None),
            Err(yubikey::Error::NotSupported) => SlotPolicy {
                pin: PinPolicy::Default,
                touch: TouchPolicy::Default,
                generated: None,
            },
            Err(e) => return Err(self.fail("slot metadata", e)),
        };
        let p = SlotPolicy {
            // A slot's defaults: 9c asks for the PIN before every signature, 9e never.
            pin: match (p.pin, slot) {
                (PinPolicy::Default, SlotId::Signature) => PinPolicy::Always,
                (PinPolicy::Default, SlotId::CardAuthentication) => PinPolicy::Never,
                (PinPolicy::Default, _) => PinPolicy::Once,
                (pin, _) => pin,
            },
            touch: match p.touch {
                TouchPolicy::Default => TouchPolicy::Never,
                t => t,
            },
            ..p
        };
        self.policies.insert(u8::from(slot), p);
        Ok(Some(p))
    }

    fn entry(&self, slot: SlotId, role: &str, gun: Option<String>, spki: Vec<u8>) -> KeyEntry {
        let key = TufKey::ecdsa(spki.clone());
        let id = key.key_id();
        let policy = self.policies.get(&u8::from(slot));
        let detail = KeyDetail::Piv {
            serial: self.serial,
            slot: slot_name(slot),
            pin_policy: policy.map(|p| pin_policy_name(p.pin).to_string()),
            touch_policy: policy.map(|p| touch_policy_name(p.touch).to_string()),
            generated: policy.and_then(|p| p.generated),
        };
        KeyEntry {
            key_id: id.clone(),
            canonical_id: id,
            role: role.into(),
            gun,
            keytype: key.keytype,
            public: key.public,
            spki,
            uri: format!("yubikey:serial={};slot={}", self.serial, slot_name(slot)),
            backend: BACKEND,
            token: self.label.clone(),
            handle: vec![u8::from(slot)],
            detail,
        }
    }

    /// The key a slot's certificate names, if the slot holds one of the agent's keys.
    fn key_in(&mut self, slot: SlotId) -> Result<Option<KeyEntry>> {
        let Some(der) = self.read_cert(slot)? else {
            return Ok(None);
        };
        let Ok(cert) = Certificate::from_der(&der) else {
            return Ok(None);
        };
        let Some((role, gun)) = crate::tuf::cert::key_role(&cert) else {
            return Ok(None);
        };
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(Error::internal)?;
        if tufkeys::p256_spki_from_point(spki_point(&cert))
            .ok()
            .as_ref()
            != Some(&spki)
        {
            return Ok(None);
        }
        // A certificate over an empty slot is no key.
        if self.slot_policy(slot)?.is_none() {
            return Ok(None);
        }
        let mut e = self.entry(slot, &role, gun.clone(), spki);
        if role == "root" && gun.is_some() {
            let key = TufKey::ecdsa_x509(&der);
            e.key_id = key.key_id();
            e.keytype = key.keytype;
            e.public = key.public;
        }
        Ok(Some(e))
    }

    fn all_slots(&self) -> Vec<SlotId> {
        let mut v = vec![self.root_slot];
        for s in &self.slots {
            if !v.contains(s) {
                v.push(*s);
            }
        }
        v
    }

    /// A slot with neither a certificate nor a key.
    fn free(&mut self, slot: SlotId) -> Result<bool> {
        if self.read_cert(slot)?.is_some() {
            return Ok(false);
        }
        match self.with_card("slot metadata", |yk| piv::metadata(yk, slot))? {
            Ok(_) => Ok(false),
            Err(yubikey::Error::NotFound | yubikey::Error::NotSupported) => Ok(true),
            Err(e) => Err(self.fail("slot metadata", e)),
        }
    }

    fn pick_slot(&mut self, role: &str, wanted: Option<&str>) -> Result<SlotId> {
        if let Some(w) = wanted {
            let slot = parse_slot(w).map_err(Error::InvalidArgument)?;
            if !self.free(slot)? {
                return Err(Error::InvalidArgument(format!(
                    "slot {} of token {} already holds a key or certificate; choose another --slot, or clear it with the card's own tool (ykman piv keys delete / yubico-piv-tool -a delete-certificate)",
                    slot_name(slot),
                    self.label
                )));
            }
            return Ok(slot);
        }
        if role == "root" {
            let slot = self.root_slot;
            if !self.free(slot)? {
                return Err(Error::InvalidArgument(format!(
                    "the root slot {} of token {} is in use; choose another with --slot (e.g. 82)",
                    slot_name(slot),
                    self.label
                )));
            }
            return Ok(slot);
        }
        for slot in self.slots.clone() {
            if slot != self.root_slot && self.free(slot)? {
                return Ok(slot);
            }
        }
        Err(Error::ResourceExhausted(format!(
            "token {}: no free slot left among the configured slots",
            self.label
        )))
    }

    /// One ECDSA P-256 signature on the card: PIN first when the key's policy says
    /// "always", a notice when it waits for a touch; the card's DER becomes raw r||s.
    fn sign_slot(&mut self, slot: SlotId, key_id: &str, digest: &[u8; 32]) -> Result<Vec<u8>> {
        self.require_unlocked()?;
        let policy = self.slot_policy(slot)?.ok_or_else(|| {
            Error::NotFound(format!(
                "slot {} of token {} holds no key",
                slot_name(slot),
                self.label
            ))
        })?;
        if policy.pin == PinPolicy::Always {
            let pin = self.pin.clone().ok_or_else(|| Error::Locked {
                token: self.label.clone(),
            })?;
            // The PIN may have been changed elsewhere since the unlock: never spend the
            // last try on it.
            if self.pin_tries()?.is_some_and(|n| n <= 1) {
                self.pin = None;
                return Err(Error::FinalTry {
                    token: self.label.clone(),
                });
            }
            if let Err(e) = self.with_card("PIN", |yk| yk.verify_pin(&pin))? {
                // The PIN that unlocked this card no longer works: lock, do not retry.
                let err = self.fail("PIN", e);
                self.pin = None;
                return Err(err);
            }
        }
        if matches!(policy.touch, TouchPolicy::Always | TouchPolicy::Cached) {
            crate::keys::notices::post(crate::keys::notices::Notice {
                kind: "touch",
                token: self.label.clone(),
                key_id: key_id.into(),
                message: format!(
                    "touch your YubiKey (serial {}) to sign with key {} (slot {})",
                    self.serial,
                    short(key_id),
                    slot_name(slot)
                ),
            });
        }
        let sign = |yk: &mut YubiKey| piv::sign_data(yk, digest, AlgorithmId::EccP256, slot);
        let der = match self.with_card("sign", sign)? {
            Ok(d) => d,
            Err(yubikey::Error::AuthenticationError) => {
                // Security status not satisfied: the card lost its PIN state (reset by
                // another client) or no touch came.
                return Err(Error::Refused(format!(
                    "the YubiKey (serial {}) refused to sign with slot {}: no touch, or the card was reset (dct unlock --token {} again)",
                    self.serial,
                    slot_name(slot),
                    self.label
                )));
            }
            Err(e) => return Err(self.fail("sign", e)),
        };
        let sig = p256::ecdsa::Signature::from_der(&der).map_err(|e| {
            Error::Internal(format!("the card returned a malformed signature: {e}"))
        })?;
        Ok(sig.to_bytes().to_vec())
    }

    /// Writes the slot certificate of a new key, signed on the card: a root key's Notary
    /// root certificate (CN = GUN), or the agent's marker certificate for other keys.
    fn certify(
        &mut self,
        slot: SlotId,
        role: &str,
        gun: Option<&str>,
        spki: Vec<u8>,
    ) -> Result<KeyEntry> {
        let root = role == "root";
        let key = self.entry(slot, role, gun.map(str::to_string), spki.clone());
        // The slot certificate, signed on the card: a root key's Notary root certificate
        // (CN = GUN), or the agent's marker certificate for other keys.
        let tbs = match (root, gun) {
            (true, Some(gun)) => {
                crate::tuf::cert::root_tbs(gun, &spki, std::time::SystemTime::now())
            }
            _ => crate::tuf::cert::marker_tbs(
                gun.unwrap_or(""),
                &format!("{}{role}", crate::tuf::cert::KEY_OU_PREFIX),
                &spki,
                std::time::SystemTime::now(),
            ),
        }
        .map_err(Error::internal)?;
        let tbs_der = tbs.to_der().map_err(Error::internal)?;
        let digest: [u8; 32] = Sha256::digest(&tbs_der).into();
        let sig = self.sign_slot(slot, &key.key_id, &digest)?;
        let der = crate::tuf::cert::assemble(tbs, &sig).map_err(Error::internal)?;
        // The certificate is written with the management key; authenticate again in case
        // the signature's PIN check reset the card's authentication state.
        self.authenticate()?;
        self.write_cert(slot, &der)?;
        self.key_in(slot)?
            .ok_or_else(|| Error::Internal("the new key does not list".into()))
    }

    fn slot_of(key: &KeyEntry) -> Result<SlotId> {
        key.handle
            .first()
            .and_then(|b| SlotId::try_from(*b).ok())
            .ok_or_else(|| Error::Internal(format!("key {} has no PIV slot", key.key_id)))
    }
}

/// Root keys: PIN before every signature and a touch; other keys: PIN once, no touch.
fn default_policies(role: &str) -> (PinPolicy, TouchPolicy) {
    if role == "root" {
        (PinPolicy::Always, TouchPolicy::Always)
    } else {
        (PinPolicy::Once, TouchPolicy::Never)
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn pin_state(tries: u8) -> PinState {
    PinState {
        tries_left: Some(u32::from(tries)),
        count_low: tries < 3,
        final_try: tries == 1,
        locked: tries == 0,
    }
}

/// A management key file: hex, owner-only.
fn read_key_file(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>> {
    let text = crate::util::pin_file::read_pin_file(path)
        .map_err(|e| Error::InvalidArgument(e.replace("PIN file", "management key file")))?;
    let hex = text.expose_secret().trim();
    let bytes = tufkeys::unhex(hex).filter(|b| matches!(b.len(), 16 | 24 | 32));
    bytes.map(Zeroizing::new).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "management key file {}: expected 32, 48 or 64 hex digits",
            path.display()
        ))
    })
}

/// The uncompressed point inside a certificate's SPKI.
fn spki_point(cert: &Certificate) -> &[u8] {
    cert.tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
}

/// The DER certificate inside a PIV certificate object (`70 L <DER> 71 01 <info> FE 00`).
fn cert_from_object(obj: &[u8]) -> Option<Vec<u8>> {
    let (tag, value, _) = tlv(obj)?;
    (tag == 0x70 && value.first() == Some(&0x30)).then(|| value.to_vec())
}

/// One BER-TLV (one-byte tag, definite length up to 3 bytes): (tag, value, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = match l0 {
        0..=0x7f => (usize::from(l0), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    let value = rest.get(..len)?;
    Some((tag, value, rest.get(len..)?))
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) -> Result<()> {
    out.push(tag);
    match value.len() {
        n @ 0..=0x7f => out.push(n as u8),
        n @ 0x80..=0xff => out.extend([0x81, n as u8]),
        n @ 0x100..=0xffff => out.extend([0x82, (n >> 8) as u8, n as u8]),
        n => {
            return Err(Error::InvalidArgument(format!(
                "a {n}-byte certificate does not fit a PIV slot"
            )))
        }
    }
    out.extend_from_slice(value);
    Ok(())
}

/// A PIV certificate object: the DER, "not compressed", an empty LRC.
fn cert_object(der: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(der.len() + 10);
    push_tlv(&mut out, 0x70, der)?;
    push_tlv(&mut out, 0x71, &[0])?;
    push_tlv(&mut out, 0xfe, &[])?;
    Ok(out)
}

impl KeyBackend for PivBackend {
    fn info(&mut self) -> TokenInfo {
        let mut info = TokenInfo {
            backend: BACKEND,
            label: self.label.clone(),
            module: "PC/SC (PIV)".into(),
            manufacturer: "Yubico".into(),
            serial: self.serial.to_string(),
            ..Default::default()
        };
        let version = match self.version() {
            Ok(v) => v,
            Err(e) => {
                info.error = Some(match self.lost.as_deref() {
                    Some(why) => format!("{e}; {why}: locked"),
                    None => e.to_string(),
                });
                return info;
            }
        };
        info.present = true;
        info.unlocked = self.pin.is_some();
        let mgm = self.mgm_algorithm().map(mgm_name).unwrap_or("unknown");
        info.model = format!("YubiKey {version} (PIV, management key {mgm})");
        match self.pin_tries() {
            Ok(Some(n)) => info.pin = pin_state(n),
            Ok(None) => {}
            Err(e) => info.error = Some(e.to_string()),
        }
        match self.list_keys() {
            Ok(k) => info.key_count = k.len() as u32,
            Err(e) => info.error = Some(e.to_string()),
        }
        if let (Some(why), false) = (&self.lost, info.unlocked) {
            info.error
                .get_or_insert_with(|| format!("{why}: unlock again"));
        }
        info
    }

    fn login(&mut self, pin: &SecretString, force: bool) -> Result<PinState> {
        self.card()?;
        if self.pin.is_some() {
            return Ok(self.pin_tries()?.map(pin_state).unwrap_or_default());
        }
        let tries = self.pin_tries()?;
        match tries {
            Some(0) => {
                return Err(Error::PinLocked {
                    token: self.label.clone(),
                })
            }
            Some(1) if !force => {
                return Err(Error::FinalTry {
                    token: self.label.clone(),
                })
            }
            _ => {}
        }
        let bytes = Zeroizing::new(pin.expose_secret().as_bytes().to_vec());
        if !(6..=8).contains(&bytes.len()) {
            return Err(Error::InvalidArgument(format!(
                "a PIV PIN has 6 to 8 characters; token {} was not tried",
                self.label
            )));
        }
        match self.with_card("PIN", |yk| yk.verify_pin(&bytes))? {
            Ok(()) => {
                self.pin = Some(bytes);
                self.lost = None;
                Ok(self.pin_tries()?.map(pin_state).unwrap_or_default())
            }
            Err(e) => Err(self.fail("PIN", e)),
        }
    }

    fn logout(&mut self) -> Result<()> {
        // Dropping the connection resets the card, which forgets the verified PIN.
        self.pin = None;
        self.lost = None;
        self.card = None;
        Ok(())
    }

    fn list_keys(&mut self) -> Result<Vec<KeyEntry>> {
        let mut out = Vec::new();
        for slot in self.all_slots() {
            if let Some(k) = self.key_in(slot)? {
                out.push(k);
            }
        }
        super::sort_keys(&mut out);
        Ok(out)
    }

    fn generate(&mut self, role: &str, gun: Option<&str>) -> Result<KeyEntry> {
        self.generate_with(role, gun, &KeyOptions::default())
    }

    fn generate_with(
        &mut self,
        role: &str,
        gun: Option<&str>,
        opts: &KeyOptions,
    ) -> Result<KeyEntry> {
        self.require_unlocked()?;
        let (default_pin, default_touch) = default_policies(role);
        let pin = match &opts.pin_policy {
            Some(p) => parse_pin_policy(p)?,
            None => default_pin,
        };
        let touch = match &opts.touch_policy {
            Some(t) => parse_touch_policy(t)?,
            None => default_touch,
        };
        let slot = self.pick_slot(role, opts.slot.as_deref())?;
        self.authenticate()?;
        let spki = self
            .with_card("generate", |yk| {
                piv::generate(yk, slot, AlgorithmId::EccP256, pin, touch)
            })?
            .map_err(|e| self.fail("generate", e))?;
        let spki = tufkeys::p256_spki_from_point(spki.subject_public_key.raw_bytes())
            .map_err(|e| Error::Internal(format!("the card returned a bad public key: {e}")))?;
        self.policies.insert(
            u8::from(slot),
            SlotPolicy {
                pin,
                touch,
                generated: Some(true),
            },
        );
        tracing::info!(token = %self.label, slot = %slot_name(slot), role, "generated a key on the card");
        self.certify(slot, role, gun, spki)
    }

    /// Puts a key made elsewhere into the first free slot (root: the root slot), with the
    /// policies a generated key of its role gets. The card marks it "imported": it has no
    /// attestation. A root key without a GUN gets its certificate from the caller.
    fn import(
        &mut self,
        role: &str,
        gun: Option<&str>,
        key: &crate::tuf::keyfile::ImportedKey,
    ) -> Result<KeyEntry> {
        self.require_unlocked()?;
        let (pin, touch) = default_policies(role);
        let slot = self.pick_slot(role, None)?;
        let spki = tufkeys::p256_spki_from_point(&key.point)
            .map_err(|e| Error::InvalidArgument(format!("not a P-256 key: {e}")))?;
        self.authenticate()?;
        let secret = key.secret.clone();
        self.with_card("import", |yk| {
            piv::import_ecc_key(yk, slot, AlgorithmId::EccP256, &secret[..], touch, pin)
        })?
        .map_err(|e| self.fail("import", e))?;
        self.policies.insert(
            u8::from(slot),
            SlotPolicy {
                pin,
                touch,
                generated: Some(false),
            },
        );
        tracing::info!(token = %self.label, slot = %slot_name(slot), role, "imported a key into the card");
        if role == "root" && gun.is_none() {
            return Ok(self.entry(slot, role, None, spki));
        }
        self.certify(slot, role, gun, spki)
    }

    fn sign_digest(
        &mut self,
        _grant: &super::SignGrant,
        key: &KeyEntry,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>> {
        let slot = Self::slot_of(key)?;
        self.sign_slot(slot, &key.key_id, digest)
    }

    fn store_certificate(
        &mut self,
        key: &KeyEntry,
        gun: &str,
        cert_der: &[u8],
    ) -> Result<KeyEntry> {
        let _ = gun;
        let slot = Self::slot_of(key)?;
        self.authenticate()?;
        self.write_cert(slot, cert_der)?;
        self.key_in(slot)?
            .ok_or_else(|| Error::Internal("the certificate does not list".into()))
    }

    fn delete(&mut self, key: &KeyEntry) -> Result<()> {
        // PIV has no key deletion before firmware 5.7; the certificate goes, so the slot
        // no longer lists and a new key may be generated over the old one.
        let slot = Self::slot_of(key)?;
        self.authenticate()?;
        self.with_card("delete certificate", |yk| {
            yk.save_object(object_id(slot), &mut [])
        })?
        .map_err(|e| self.fail("delete certificate", e))?;
        self.policies.remove(&u8::from(slot));
        Ok(())
    }

    fn attest(&mut self, key: &KeyEntry) -> Result<(Vec<u8>, Vec<u8>)> {
        let slot = Self::slot_of(key)?;
        let att = match self.with_card("attest", |yk| piv::attest(yk, slot))? {
            Ok(a) => a.to_vec(),
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "the card gives no attestation for slot {} ({e}): only keys generated on the card have one",
                    slot_name(slot)
                )))
            }
        };
        let f9 = self.read_cert(SlotId::Attestation)?.ok_or_else(|| {
            Error::NotFound(format!(
                "token {} has no attestation certificate (slot f9)",
                self.label
            ))
        })?;
        Ok((att, f9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_parse_and_map_to_objects() {
        assert_eq!(parse_slot("9c").map(object_id), Ok(0x5f_c10a));
        assert_eq!(parse_slot("82").map(object_id), Ok(0x5f_c10d));
        assert_eq!(parse_slot("95").map(object_id), Ok(0x5f_c120));
        assert!(parse_slot("f9").is_err());
        assert!(parse_slot("9b").is_err());
        assert!(parse_slot("zz").is_err());
        assert_eq!(parse_slot("9C").map(slot_name), Ok("9c".to_string()));
    }

    #[test]
    fn certificate_objects_round_trip() {
        let der = {
            let mut d = vec![0x30, 0x82, 0x01, 0x00];
            d.extend(vec![7u8; 256]);
            d
        };
        let obj = cert_object(&der).unwrap();
        assert_eq!(&obj[..4], &[0x70, 0x82, 0x01, 0x04]);
        assert_eq!(cert_from_object(&obj), Some(der));
        assert_eq!(cert_from_object(&[0x70, 0x05, 0x30]), None);
    }
}
