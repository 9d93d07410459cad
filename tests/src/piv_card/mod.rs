//! A virtual PIV card that answers like a YubiKey 5 (PIV applet), for tests that need a
//! "hardware" token without one: [`vpcd`] plugs it into a real pcscd through
//! vsmartcard-vpcd. State lives in memory, so every start is a factory-fresh card.
//!
//! What it implements is what the `yubikey` crate, yubico-piv-tool / libykcs11 and
//! OpenSC's PIV driver send (each handler below names its instruction and replies).

pub mod der;
pub mod vpcd;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aes::cipher::{BlockEncrypt, KeyInit};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::{OsRng, RngCore};

use der::{read_all, tlv, tlv2};

/// A YubiKey 5's ATR (offers T=1, which the `yubikey` crate insists on).
pub const ATR: [u8; 23] = [
    0x3b, 0xfd, 0x13, 0x00, 0x00, 0x81, 0x31, 0xfe, 0x15, 0x80, 0x73, 0xc0, 0x21, 0xc0, 0x57, 0x59,
    0x75, 0x62, 0x69, 0x4b, 0x65, 0x79, 0x40,
];

/// The PIV application's full AID (RID A000000308, PIX 00001000 0100).
pub const PIV_AID: [u8; 11] = [
    0xa0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];

/// The well-known factory management key.
pub const DEFAULT_MGM_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
pub const DEFAULT_PIN: &[u8] = b"123456";
pub const DEFAULT_PUK: &[u8] = b"12345678";

pub const ALG_3DES: u8 = 0x03;
pub const ALG_AES128: u8 = 0x08;
pub const ALG_AES192: u8 = 0x0a;
pub const ALG_AES256: u8 = 0x0c;
pub const ALG_P256: u8 = 0x11;
pub const ALG_P384: u8 = 0x14;

pub const SLOT_MGM: u8 = 0x9b;
pub const SLOT_ATTESTATION: u8 = 0xf9;
const PIN_REF: u8 = 0x80;
const PUK_REF: u8 = 0x81;

pub const PIN_POLICY_NEVER: u8 = 1;
pub const PIN_POLICY_ONCE: u8 = 2;
pub const PIN_POLICY_ALWAYS: u8 = 3;
pub const TOUCH_POLICY_NEVER: u8 = 1;
pub const TOUCH_POLICY_ALWAYS: u8 = 2;
pub const TOUCH_POLICY_CACHED: u8 = 3;
/// How long a touch counts for keys with the "cached" touch policy.
const TOUCH_CACHE: Duration = Duration::from_secs(15);

const ORIGIN_GENERATED: u8 = 1;
const ORIGIN_IMPORTED: u8 = 2;

/// Object ID of the attestation certificate (slot F9).
const OBJ_ATTESTATION: [u8; 3] = [0x5f, 0xff, 0x01];
/// Printed information: a PIN-protected management key lives there.
const OBJ_PRINTED: [u8; 3] = [0x5f, 0xc1, 0x09];
/// What a YubiKey answers for the discovery object: the PIV AID and PIN usage policy
/// (PIV PIN only, PIV PIN preferred).
const DISCOVERY: [u8; 20] = [
    0x7e, 0x12, 0x4f, 0x0b, 0xa0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x5f,
    0x2f, 0x02, 0x40, 0x00,
];

/// Status words.
mod sw {
    pub const OK: u16 = 0x9000;
    pub const WRONG_LENGTH: u16 = 0x6700;
    pub const SECURITY_STATUS: u16 = 0x6982;
    pub const BLOCKED: u16 = 0x6983;
    pub const CONDITIONS: u16 = 0x6985;
    pub const WRONG_DATA: u16 = 0x6a80;
    pub const NOT_FOUND: u16 = 0x6a82;
    pub const INCORRECT_P1P2: u16 = 0x6a86;
    pub const REF_NOT_FOUND: u16 = 0x6a88;
    pub const WRONG_P1P2: u16 = 0x6b00;
    pub const INS_NOT_SUPPORTED: u16 = 0x6d00;
    pub const CLA_NOT_SUPPORTED: u16 = 0x6e00;
}

/// What the card is told at manufacture.
#[derive(Clone, Debug)]
pub struct CardConfig {
    pub serial: u32,
    pub version: (u8, u8, u8),
    /// How long a signature with a touch-policy key waits for the simulated touch.
    pub touch_delay: Duration,
}

impl Default for CardConfig {
    fn default() -> Self {
        CardConfig {
            serial: 12345678,
            version: (5, 4, 3),
            touch_delay: Duration::ZERO,
        }
    }
}

/// An EC private key in a slot.
enum EcKey {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

impl EcKey {
    fn generate(alg: u8) -> Option<EcKey> {
        match alg {
            ALG_P256 => Some(EcKey::P256(p256::ecdsa::SigningKey::random(&mut OsRng))),
            ALG_P384 => Some(EcKey::P384(p384::ecdsa::SigningKey::random(&mut OsRng))),
            _ => None,
        }
    }

    fn import(alg: u8, scalar: &[u8]) -> Option<EcKey> {
        match alg {
            ALG_P256 if scalar.len() == 32 => p256::ecdsa::SigningKey::from_slice(scalar)
                .ok()
                .map(EcKey::P256),
            ALG_P384 if scalar.len() == 48 => p384::ecdsa::SigningKey::from_slice(scalar)
                .ok()
                .map(EcKey::P384),
            _ => None,
        }
    }

    fn alg(&self) -> u8 {
        match self {
            EcKey::P256(_) => ALG_P256,
            EcKey::P384(_) => ALG_P384,
        }
    }

    fn field_len(&self) -> usize {
        match self {
            EcKey::P256(_) => 32,
            EcKey::P384(_) => 48,
        }
    }

    /// The uncompressed public point 04 X Y.
    fn point(&self) -> Vec<u8> {
        match self {
            EcKey::P256(k) => k
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
            EcKey::P384(k) => k
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
        }
    }

    fn spki(&self) -> Vec<u8> {
        let curve = match self {
            EcKey::P256(_) => der::OID_P256,
            EcKey::P384(_) => der::OID_P384,
        };
        der::ec_spki(curve, &self.point())
    }

    /// A DER ECDSA signature of a digest, left-padded (or refused when too long) to the
    /// field size like the card does: the host hashes, the card never does.
    fn sign_digest(&self, digest: &[u8]) -> Option<Vec<u8>> {
        let n = self.field_len();
        if digest.len() > n {
            return None;
        }
        let mut padded = vec![0u8; n - digest.len()];
        padded.extend_from_slice(digest);
        match self {
            EcKey::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign_prehash(&padded).ok()?;
                Some(sig.to_der().as_bytes().to_vec())
            }
            EcKey::P384(k) => {
                let sig: p384::ecdsa::Signature = k.sign_prehash(&padded).ok()?;
                Some(sig.to_der().as_bytes().to_vec())
            }
        }
    }

    /// ECDH: the X coordinate of the shared point.
    fn ecdh(&self, peer: &[u8]) -> Option<Vec<u8>> {
        match self {
            EcKey::P256(k) => {
                let peer = p256::PublicKey::from_sec1_bytes(peer).ok()?;
                let shared = (peer.to_projective() * **k.as_nonzero_scalar()).to_affine();
                Some(shared.to_encoded_point(false).x()?.to_vec())
            }
            EcKey::P384(k) => {
                let peer = p384::PublicKey::from_sec1_bytes(peer).ok()?;
                let shared = (peer.to_projective() * **k.as_nonzero_scalar()).to_affine();
                Some(shared.to_encoded_point(false).x()?.to_vec())
            }
        }
    }
}

struct Key {
    ec: EcKey,
    pin_policy: u8,
    touch_policy: u8,
    origin: u8,
}

/// A pending management-key authentication.
enum MgmPending {
    /// The card sent this witness encrypted; the host must return it decrypted.
    Witness(Vec<u8>),
    /// The card sent this challenge; the host must return it encrypted.
    Challenge(Vec<u8>),
}

/// One command APDU.
struct Apdu<'a> {
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    data: &'a [u8],
    extended: bool,
}

fn parse_apdu(b: &[u8]) -> Option<Apdu<'_>> {
    if b.len() < 4 {
        return None;
    }
    let (cla, ins, p1, p2) = (b[0], b[1], b[2], b[3]);
    let mut extended = false;
    let data = match b.len() {
        4 | 5 => &b[4..4],
        _ if b[4] != 0 => {
            let lc = usize::from(b[4]);
            // Lc data [Le]
            if b.len() != 5 + lc && b.len() != 6 + lc {
                return None;
            }
            &b[5..5 + lc]
        }
        7 => {
            extended = true;
            &b[7..7]
        }
        _ => {
            extended = true;
            if b.len() < 7 {
                return None;
            }
            let lc = usize::from(u16::from_be_bytes([b[5], b[6]]));
            if b.len() != 7 + lc && b.len() != 9 + lc {
                return None;
            }
            &b[7..7 + lc]
        }
    };
    Some(Apdu {
        cla,
        ins,
        p1,
        p2,
        data,
        extended,
    })
}

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    OsRng.fill_bytes(&mut b);
    b
}

/// Block size and key length of a management-key algorithm.
fn mgm_sizes(alg: u8) -> Option<(usize, usize)> {
    match alg {
        ALG_3DES => Some((8, 24)),
        ALG_AES128 => Some((16, 16)),
        ALG_AES192 => Some((16, 24)),
        ALG_AES256 => Some((16, 32)),
        _ => None,
    }
}

/// Encrypts one block (ECB) with the management key.
fn mgm_encrypt(alg: u8, key: &[u8], block: &[u8]) -> Option<Vec<u8>> {
    let (bs, kl) = mgm_sizes(alg)?;
    if block.len() != bs || key.len() != kl {
        return None;
    }
    if alg == ALG_3DES {
        let mut b = [0u8; 8];
        b.copy_from_slice(block);
        des::TdesEde3::new_from_slice(key)
            .ok()?
            .encrypt_block((&mut b).into());
        return Some(b.to_vec());
    }
    let mut b = [0u8; 16];
    b.copy_from_slice(block);
    match alg {
        ALG_AES128 => aes::Aes128::new_from_slice(key)
            .ok()?
            .encrypt_block((&mut b).into()),
        ALG_AES192 => aes::Aes192::new_from_slice(key)
            .ok()?
            .encrypt_block((&mut b).into()),
        _ => aes::Aes256::new_from_slice(key)
            .ok()?
            .encrypt_block((&mut b).into()),
    }
    Some(b.to_vec())
}

/// Is `slot` one that holds a user key (9A, 9C, 9D, 9E, retired 82..95)?
fn is_key_slot(slot: u8) -> bool {
    matches!(slot, 0x9a | 0x9c | 0x9d | 0x9e | 0x82..=0x95)
}

/// A YubiKey's default PIN policy for a slot.
fn default_pin_policy(slot: u8) -> u8 {
    match slot {
        0x9c => PIN_POLICY_ALWAYS,
        0x9e => PIN_POLICY_NEVER,
        _ => PIN_POLICY_ONCE,
    }
}

/// The object ID where a slot's certificate lives.
pub fn cert_object(slot: u8) -> Option<[u8; 3]> {
    let last = match slot {
        0x9a => 0x05,
        0x9c => 0x0a,
        0x9d => 0x0b,
        0x9e => 0x01,
        0x82..=0x95 => slot - 0x82 + 0x0d,
        SLOT_ATTESTATION => return Some(OBJ_ATTESTATION),
        _ => return None,
    };
    Some([0x5f, 0xc1, last])
}

/// A certificate as a PIV data object value: 53 L { 70 L cert 71 01 00 FE 00 }.
pub fn cert_object_value(der: &[u8]) -> Vec<u8> {
    let mut inner = tlv(0x70, der);
    inner.extend_from_slice(&[0x71, 0x01, 0x00, 0xfe, 0x00]);
    tlv(0x53, &inner)
}

/// A PIN or PUK padded with FF to 8 bytes.
fn pad8(v: &[u8]) -> [u8; 8] {
    let mut out = [0xffu8; 8];
    out[..v.len()].copy_from_slice(v);
    out
}

/// Is an FF-padded PIN/PUK 6..8 characters long?
fn valid_padded(v: &[u8]) -> bool {
    let n = v.iter().position(|&b| b == 0xff).unwrap_or(v.len());
    v.len() == 8 && (6..=8).contains(&n) && v[n..].iter().all(|&b| b == 0xff)
}

/// A PIN or PUK with its retry counter.
struct Secret {
    value: [u8; 8],
    max: u8,
    left: u8,
    default: bool,
}

impl Secret {
    fn new(v: &[u8]) -> Secret {
        Secret {
            value: pad8(v),
            max: 3,
            left: 3,
            default: true,
        }
    }

    /// Checks `given` against the value, counting the try: Ok, or the status word.
    fn check(&mut self, given: &[u8]) -> Result<(), u16> {
        if self.left == 0 {
            return Err(sw::BLOCKED);
        }
        if given == self.value {
            self.left = self.max;
            Ok(())
        } else {
            self.left -= 1;
            Err(0x63c0 | u16::from(self.left))
        }
    }
}

/// The card: persistent state (keys, objects, PIN/PUK, management key) and the volatile
/// state of one power cycle.
pub struct PivCard {
    cfg: CardConfig,
    pin: Secret,
    puk: Secret,
    mgm_alg: u8,
    mgm_key: Vec<u8>,
    mgm_touch: u8,
    keys: BTreeMap<u8, Key>,
    /// Data objects by object ID: the stored value (53 L ..).
    objects: BTreeMap<Vec<u8>, Vec<u8>>,
    attestation_key: p256::ecdsa::SigningKey,
    attestation_subject: Vec<u8>,
    ca_cert: Vec<u8>,
    // Volatile.
    pin_verified: bool,
    /// A VERIFY just happened (for PIN policy "always").
    pin_fresh: bool,
    mgm_authed: bool,
    mgm_pending: Option<MgmPending>,
    chain: Option<(u8, Vec<u8>)>,
    pending_response: Vec<u8>,
    last_touch: Option<Instant>,
}

impl PivCard {
    /// A factory-fresh card with its own attestation root CA and slot F9 key/certificate.
    pub fn new(cfg: CardConfig) -> PivCard {
        let ca_key = p256::ecdsa::SigningKey::random(&mut OsRng);
        let ca_name = der::name(&[
            ("2.5.4.10", "dct-tests virtual card"),
            ("2.5.4.3", "Yubico PIV Root CA (virtual)"),
        ]);
        let ca_spki = der::ec_spki(
            der::OID_P256,
            ca_key.verifying_key().to_encoded_point(false).as_bytes(),
        );
        let ca_cert = der::certificate(
            &der::CertSpec {
                serial: &random(16),
                issuer: &ca_name,
                subject: &ca_name,
                spki: &ca_spki,
                extensions: der::ca_extensions(),
            },
            &ca_key,
        );
        let attestation_key = p256::ecdsa::SigningKey::random(&mut OsRng);
        let attestation_subject = der::name(&[
            ("2.5.4.10", "dct-tests virtual card"),
            ("2.5.4.3", "Yubico PIV Attestation"),
        ]);
        let f9_spki = der::ec_spki(
            der::OID_P256,
            attestation_key
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes(),
        );
        let f9_cert = der::certificate(
            &der::CertSpec {
                serial: &random(16),
                issuer: &ca_name,
                subject: &attestation_subject,
                spki: &f9_spki,
                extensions: der::ca_extensions(),
            },
            &ca_key,
        );
        let mut card = PivCard {
            pin: Secret::new(DEFAULT_PIN),
            puk: Secret::new(DEFAULT_PUK),
            mgm_alg: ALG_3DES,
            mgm_key: DEFAULT_MGM_KEY.to_vec(),
            mgm_touch: TOUCH_POLICY_NEVER,
            keys: BTreeMap::new(),
            objects: BTreeMap::new(),
            attestation_key: attestation_key.clone(),
            attestation_subject,
            ca_cert,
            pin_verified: false,
            pin_fresh: false,
            mgm_authed: false,
            mgm_pending: None,
            chain: None,
            pending_response: Vec::new(),
            last_touch: None,
            cfg,
        };
        card.factory_reset();
        card.keys.insert(
            SLOT_ATTESTATION,
            Key {
                ec: EcKey::P256(attestation_key),
                pin_policy: PIN_POLICY_NEVER,
                touch_policy: TOUCH_POLICY_NEVER,
                origin: ORIGIN_IMPORTED,
            },
        );
        card.objects
            .insert(OBJ_ATTESTATION.to_vec(), cert_object_value(&f9_cert));
        card
    }

    pub fn config(&self) -> &CardConfig {
        &self.cfg
    }

    /// The attestation root CA certificate (DER).
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.ca_cert
    }

    /// The attestation root CA certificate as PEM.
    pub fn ca_cert_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.ca_cert);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// PIN, PUK, management key, user keys and objects back to factory state; the
    /// attestation key and certificate (slot F9) stay, as on a YubiKey.
    fn factory_reset(&mut self) {
        self.pin = Secret::new(DEFAULT_PIN);
        self.puk = Secret::new(DEFAULT_PUK);
        self.mgm_alg = if self.cfg.version >= (5, 7, 0) {
            ALG_AES192
        } else {
            ALG_3DES
        };
        self.mgm_key = DEFAULT_MGM_KEY.to_vec();
        self.mgm_touch = TOUCH_POLICY_NEVER;
        self.keys.retain(|&slot, _| slot == SLOT_ATTESTATION);
        self.objects.retain(|id, _| id[..] == OBJ_ATTESTATION);
        self.clear_security_state();
    }

    fn clear_security_state(&mut self) {
        self.pin_verified = false;
        self.pin_fresh = false;
        self.mgm_authed = false;
        self.mgm_pending = None;
        self.chain = None;
        self.pending_response.clear();
    }

    /// Power on, power off, warm reset: a new power cycle.
    pub fn power_cycle(&mut self) {
        self.clear_security_state();
    }

    /// One command APDU in, the response APDU (data + SW1 SW2) out.
    pub fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        let Some(cmd) = parse_apdu(apdu) else {
            return sw::WRONG_LENGTH.to_be_bytes().to_vec();
        };
        if cmd.cla & !0x10 != 0 {
            return sw::CLA_NOT_SUPPORTED.to_be_bytes().to_vec();
        }
        if cmd.ins == 0xc0 {
            return self.get_response();
        }
        self.pending_response.clear();
        if cmd.cla & 0x10 != 0 {
            match &mut self.chain {
                Some((ins, buf)) if *ins == cmd.ins => buf.extend_from_slice(cmd.data),
                _ => self.chain = Some((cmd.ins, cmd.data.to_vec())),
            }
            return sw::OK.to_be_bytes().to_vec();
        }
        let chained;
        let data = match self.chain.take() {
            Some((ins, mut buf)) if ins == cmd.ins => {
                buf.extend_from_slice(cmd.data);
                chained = buf;
                &chained[..]
            }
            _ => cmd.data,
        };
        match self.dispatch(&cmd, data) {
            Ok(body) => self.respond(body, cmd.extended),
            Err(status) => status.to_be_bytes().to_vec(),
        }
    }

    /// Response data over 256 bytes goes out in pieces: 61xx, then GET RESPONSE.
    fn respond(&mut self, mut body: Vec<u8>, extended: bool) -> Vec<u8> {
        if extended || body.len() <= 256 {
            body.extend_from_slice(&sw::OK.to_be_bytes());
            return body;
        }
        self.pending_response = body.split_off(256);
        let left = self.pending_response.len().min(256) as u8;
        body.extend_from_slice(&[0x61, left]);
        body
    }

    fn get_response(&mut self) -> Vec<u8> {
        if self.pending_response.is_empty() {
            return sw::CONDITIONS.to_be_bytes().to_vec();
        }
        let n = self.pending_response.len().min(256);
        let mut out: Vec<u8> = self.pending_response.drain(..n).collect();
        if self.pending_response.is_empty() {
            out.extend_from_slice(&sw::OK.to_be_bytes());
        } else {
            let left = self.pending_response.len().min(256) as u8;
            out.extend_from_slice(&[0x61, left]);
        }
        out
    }

    fn dispatch(&mut self, cmd: &Apdu, data: &[u8]) -> Result<Vec<u8>, u16> {
        match cmd.ins {
            0xa4 => self.select(cmd.p1, data),
            0xfd => {
                let (a, b, c) = self.cfg.version;
                Ok(vec![a, b, c])
            }
            0xf8 => Ok(self.cfg.serial.to_be_bytes().to_vec()),
            0x20 => self.verify(cmd.p1, cmd.p2, data),
            0x24 => self.change_reference(cmd.p2, data),
            0x2c => self.reset_retry(cmd.p2, data),
            0xfa => self.set_pin_retries(cmd.p1, cmd.p2),
            0x87 => self.general_authenticate(cmd.p1, cmd.p2, data),
            0x47 => self.generate(cmd.p1, cmd.p2, data),
            0xfe => self.import(cmd.p1, cmd.p2, data),
            0xcb => self.get_data(data),
            0xdb => self.put_data(data),
            0xf7 => self.metadata(cmd.p2),
            0xff => self.set_mgm_key(cmd.p1, cmd.p2, data),
            0xfb => self.reset(),
            0xf9 => self.attest(cmd.p1),
            _ => Err(sw::INS_NOT_SUPPORTED),
        }
    }

    fn select(&mut self, p1: u8, aid: &[u8]) -> Result<Vec<u8>, u16> {
        if p1 != 0x04 || aid.len() < 5 || !PIV_AID.starts_with(aid) {
            return Err(sw::NOT_FOUND);
        }
        // Selecting the application resets its security status (the `yubikey` crate relies
        // on that to read the PIN counter).
        self.clear_security_state();
        // Application property template as a YubiKey 5 answers it: the PIX with version,
        // and the coexistent tag allocation authority (the PIV RID).
        let mut apt = tlv(0x4f, &PIV_AID[5..]);
        apt.extend(tlv(0x79, &tlv(0x4f, &PIV_AID[..5])));
        Ok(tlv(0x61, &apt))
    }

    fn verify(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Vec<u8>, u16> {
        if p2 != PIN_REF {
            return Err(sw::REF_NOT_FOUND);
        }
        match p1 {
            0xff if data.is_empty() => {
                self.pin_verified = false;
                self.pin_fresh = false;
                return Ok(vec![]);
            }
            0x00 => {}
            _ => return Err(sw::INCORRECT_P1P2),
        }
        if data.is_empty() {
            return if self.pin.left == 0 {
                Err(sw::BLOCKED)
            } else if self.pin_verified {
                Ok(vec![])
            } else {
                Err(0x63c0 | u16::from(self.pin.left))
            };
        }
        if data.len() != 8 {
            return Err(sw::WRONG_DATA);
        }
        self.pin_verified = false;
        self.pin_fresh = false;
        self.pin.check(data)?;
        self.pin_verified = true;
        self.pin_fresh = true;
        Ok(vec![])
    }

    fn change_reference(&mut self, p2: u8, data: &[u8]) -> Result<Vec<u8>, u16> {
        if data.len() != 16 || !valid_padded(&data[8..]) {
            return Err(sw::WRONG_DATA);
        }
        let secret = match p2 {
            PIN_REF => &mut self.pin,
            PUK_REF => &mut self.puk,
            _ => return Err(sw::REF_NOT_FOUND),
        };
        secret.check(&data[..8])?;
        secret.value.copy_from_slice(&data[8..]);
        secret.default = false;
        Ok(vec![])
    }

    fn reset_retry(&mut self, p2: u8, data: &[u8]) -> Result<Vec<u8>, u16> {
        if p2 != PIN_REF {
            return Err(sw::REF_NOT_FOUND);
        }
        if data.len() != 16 || !valid_padded(&data[8..]) {
            return Err(sw::WRONG_DATA);
        }
        self.puk.check(&data[..8])?;
        self.pin.value.copy_from_slice(&data[8..]);
        self.pin.left = self.pin.max;
        self.pin.default = false;
        Ok(vec![])
    }

    fn set_pin_retries(&mut self, pin_tries: u8, puk_tries: u8) -> Result<Vec<u8>, u16> {
        if !self.mgm_authed || !self.pin_verified {
            return Err(sw::SECURITY_STATUS);
        }
        if pin_tries == 0 || puk_tries == 0 || pin_tries > 15 || puk_tries > 15 {
            return Err(sw::INCORRECT_P1P2);
        }
        // Like a YubiKey: new counters, and PIN and PUK back to their defaults.
        self.pin = Secret::new(DEFAULT_PIN);
        self.pin.max = pin_tries;
        self.pin.left = pin_tries;
        self.puk = Secret::new(DEFAULT_PUK);
        self.puk.max = puk_tries;
        self.puk.left = puk_tries;
        self.pin_verified = false;
        self.pin_fresh = false;
        Ok(vec![])
    }

    fn reset(&mut self) -> Result<Vec<u8>, u16> {
        if self.pin.left != 0 || self.puk.left != 0 {
            return Err(sw::CONDITIONS);
        }
        self.factory_reset();
        Ok(vec![])
    }

    /// The simulated touch: waits unless a cached touch still counts.
    fn touch(&mut self, policy: u8) {
        let wait = match policy {
            TOUCH_POLICY_ALWAYS => true,
            TOUCH_POLICY_CACHED => {
                !matches!(self.last_touch, Some(t) if t.elapsed() <= TOUCH_CACHE)
            }
            _ => false,
        };
        if wait {
            std::thread::sleep(self.cfg.touch_delay);
            self.last_touch = Some(Instant::now());
        }
    }

    fn general_authenticate(&mut self, alg: u8, slot: u8, data: &[u8]) -> Result<Vec<u8>, u16> {
        let outer = read_all(data).ok_or(sw::WRONG_DATA)?;
        let [(0x7c, inner)] = outer[..] else {
            return Err(sw::WRONG_DATA);
        };
        let tags = read_all(inner).ok_or(sw::WRONG_DATA)?;
        if slot == SLOT_MGM {
            self.mgm_authenticate(alg, &tags)
        } else {
            self.private_key_operation(alg, slot, &tags)
        }
    }

    fn mgm_authenticate(&mut self, alg: u8, tags: &[(u16, &[u8])]) -> Result<Vec<u8>, u16> {
        if alg != self.mgm_alg {
            return Err(sw::WRONG_DATA);
        }
        let (bs, _) = mgm_sizes(alg).ok_or(sw::WRONG_DATA)?;
        let enc = |card: &PivCard, b: &[u8]| {
            mgm_encrypt(card.mgm_alg, &card.mgm_key, b).ok_or(sw::WRONG_DATA)
        };
        let pending = self.mgm_pending.take();
        match tags {
            // Mutual authentication, step 1: the card's witness, encrypted.
            [(0x80, [])] => {
                self.mgm_authed = false;
                let witness = random(bs);
                let encrypted = enc(self, &witness)?;
                self.mgm_pending = Some(MgmPending::Witness(witness));
                Ok(tlv(0x7c, &tlv(0x80, &encrypted)))
            }
            // Step 2: the witness decrypted and the host's challenge.
            [(0x80, witness), (0x81, challenge)] => {
                match pending {
                    Some(MgmPending::Witness(w)) if w == *witness && challenge.len() == bs => {}
                    _ => return Err(sw::SECURITY_STATUS),
                }
                self.touch(self.mgm_touch);
                let response = enc(self, challenge)?;
                self.mgm_authed = true;
                Ok(tlv(0x7c, &tlv(0x82, &response)))
            }
            // Single-step challenge/response: the card's challenge, in clear...
            [(0x81, [])] => {
                self.mgm_authed = false;
                let challenge = random(bs);
                self.mgm_pending = Some(MgmPending::Challenge(challenge.clone()));
                Ok(tlv(0x7c, &tlv(0x81, &challenge)))
            }
            // ...and the host's answer, the challenge encrypted.
            [(0x82, response)] => {
                let Some(MgmPending::Challenge(c)) = pending else {
                    return Err(sw::SECURITY_STATUS);
                };
                if enc(self, &c)? != *response {
                    return Err(sw::SECURITY_STATUS);
                }
                self.touch(self.mgm_touch);
                self.mgm_authed = true;
                Ok(vec![])
            }
            _ => Err(sw::WRONG_DATA),
        }
    }

    fn private_key_operation(
        &mut self,
        alg: u8,
        slot: u8,
        tags: &[(u16, &[u8])],
    ) -> Result<Vec<u8>, u16> {
        if !is_key_slot(slot) {
            return Err(sw::WRONG_P1P2);
        }
        let key = self.keys.get(&slot).ok_or(sw::REF_NOT_FOUND)?;
        if key.ec.alg() != alg {
            return Err(sw::WRONG_DATA);
        }
        let pin_ok = match key.pin_policy {
            PIN_POLICY_NEVER => true,
            PIN_POLICY_ALWAYS => self.pin_verified && self.pin_fresh,
            _ => self.pin_verified,
        };
        if !pin_ok {
            return Err(sw::SECURITY_STATUS);
        }
        let (pin_policy, touch_policy) = (key.pin_policy, key.touch_policy);
        if pin_policy == PIN_POLICY_ALWAYS {
            self.pin_fresh = false;
        }
        self.touch(touch_policy);
        let key = self.keys.get(&slot).ok_or(sw::REF_NOT_FOUND)?;
        let result = match tags {
            [(0x82, []), (0x81, digest)] => key.ec.sign_digest(digest),
            [(0x82, []), (0x85, point)] => key.ec.ecdh(point),
            _ => None,
        }
        .ok_or(sw::WRONG_DATA)?;
        Ok(tlv(0x7c, &tlv(0x82, &result)))
    }

    /// PIN and touch policies from AA / AB tags, defaults resolved.
    fn policies(slot: u8, tags: &[(u16, &[u8])]) -> Result<(u8, u8), u16> {
        let mut pin = default_pin_policy(slot);
        let mut touch = TOUCH_POLICY_NEVER;
        for &(t, v) in tags {
            match (t, v) {
                (0xaa, [0]) | (0xab, [0]) => {}
                (0xaa, [p @ 1..=3]) => pin = *p,
                (0xab, [p @ 1..=3]) => touch = *p,
                (0xaa | 0xab, _) => return Err(sw::WRONG_DATA),
                _ => {}
            }
        }
        Ok((pin, touch))
    }

    fn generate(&mut self, p1: u8, slot: u8, data: &[u8]) -> Result<Vec<u8>, u16> {
        if !self.mgm_authed {
            return Err(sw::SECURITY_STATUS);
        }
        if p1 != 0 || !is_key_slot(slot) {
            return Err(sw::WRONG_P1P2);
        }
        let outer = read_all(data).ok_or(sw::WRONG_DATA)?;
        let [(0xac, inner)] = outer[..] else {
            return Err(sw::WRONG_DATA);
        };
        let tags = read_all(inner).ok_or(sw::WRONG_DATA)?;
        let alg = match tags.iter().find(|(t, _)| *t == 0x80) {
            Some((_, [a])) => *a,
            _ => return Err(sw::WRONG_DATA),
        };
        let (pin_policy, touch_policy) = Self::policies(slot, &tags)?;
        let ec = EcKey::generate(alg).ok_or(sw::WRONG_DATA)?;
        let point = ec.point();
        self.keys.insert(
            slot,
            Key {
                ec,
                pin_policy,
                touch_policy,
                origin: ORIGIN_GENERATED,
            },
        );
        Ok(tlv2(0x7f49, &tlv(0x86, &point)))
    }

    fn import(&mut self, alg: u8, slot: u8, data: &[u8]) -> Result<Vec<u8>, u16> {
        if !self.mgm_authed {
            return Err(sw::SECURITY_STATUS);
        }
        if !is_key_slot(slot) {
            return Err(sw::WRONG_P1P2);
        }
        let tags = read_all(data).ok_or(sw::WRONG_DATA)?;
        let scalar = match tags.iter().find(|(t, _)| *t == 0x06) {
            Some((_, s)) => *s,
            None => return Err(sw::WRONG_DATA),
        };
        let ec = EcKey::import(alg, scalar).ok_or(sw::WRONG_DATA)?;
        let (pin_policy, touch_policy) = Self::policies(slot, &tags)?;
        self.keys.insert(
            slot,
            Key {
                ec,
                pin_policy,
                touch_policy,
                origin: ORIGIN_IMPORTED,
            },
        );
        Ok(vec![])
    }

    /// The object ID in a GET DATA / PUT DATA command (5C L id), and what follows it.
    fn object_id(data: &[u8]) -> Result<(&[u8], &[u8]), u16> {
        let (tag, id, rest) = der::read_tlv(data).ok_or(sw::WRONG_DATA)?;
        if tag != 0x5c || id.is_empty() || id.len() > 3 {
            return Err(sw::WRONG_DATA);
        }
        Ok((id, rest))
    }

    fn get_data(&mut self, data: &[u8]) -> Result<Vec<u8>, u16> {
        let (id, rest) = Self::object_id(data)?;
        if !rest.is_empty() {
            return Err(sw::WRONG_DATA);
        }
        if id == [0x7e] {
            return Ok(DISCOVERY.to_vec());
        }
        if id == OBJ_PRINTED && !self.pin_verified {
            return Err(sw::SECURITY_STATUS);
        }
        self.objects.get(id).cloned().ok_or(sw::NOT_FOUND)
    }

    fn put_data(&mut self, data: &[u8]) -> Result<Vec<u8>, u16> {
        if !self.mgm_authed {
            return Err(sw::SECURITY_STATUS);
        }
        let (id, rest) = Self::object_id(data)?;
        if id.len() != 3 {
            return Err(sw::WRONG_DATA);
        }
        match der::read_tlv(rest) {
            Some((0x53, [], [])) => {
                self.objects.remove(id);
            }
            Some((0x53, _, [])) => {
                self.objects.insert(id.to_vec(), rest.to_vec());
            }
            _ => return Err(sw::WRONG_DATA),
        }
        Ok(vec![])
    }

    fn metadata(&mut self, slot: u8) -> Result<Vec<u8>, u16> {
        let mut out = Vec::new();
        match slot {
            SLOT_MGM => {
                let default = self.mgm_key == DEFAULT_MGM_KEY;
                out.extend(tlv(0x01, &[self.mgm_alg]));
                out.extend(tlv(0x02, &[0x00, self.mgm_touch]));
                out.extend(tlv(0x05, &[u8::from(default)]));
            }
            PIN_REF | PUK_REF => {
                let s = if slot == PIN_REF {
                    &self.pin
                } else {
                    &self.puk
                };
                out.extend(tlv(0x01, &[0xff]));
                out.extend(tlv(0x05, &[u8::from(s.default)]));
                out.extend(tlv(0x06, &[s.max, s.left]));
            }
            _ if is_key_slot(slot) || slot == SLOT_ATTESTATION => {
                let key = self.keys.get(&slot).ok_or(sw::REF_NOT_FOUND)?;
                out.extend(tlv(0x01, &[key.ec.alg()]));
                out.extend(tlv(0x02, &[key.pin_policy, key.touch_policy]));
                out.extend(tlv(0x03, &[key.origin]));
                out.extend(tlv(0x04, &tlv(0x86, &key.ec.point())));
            }
            _ => return Err(sw::WRONG_P1P2),
        }
        Ok(out)
    }

    fn set_mgm_key(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Vec<u8>, u16> {
        if !self.mgm_authed {
            return Err(sw::SECURITY_STATUS);
        }
        let touch = match (p1, p2) {
            (0xff, 0xff) => TOUCH_POLICY_NEVER,
            (0xff, 0xfe) => TOUCH_POLICY_ALWAYS,
            _ => return Err(sw::INCORRECT_P1P2),
        };
        let [alg, SLOT_MGM, n, key @ ..] = data else {
            return Err(sw::WRONG_DATA);
        };
        let (_, kl) = mgm_sizes(*alg).ok_or(sw::WRONG_DATA)?;
        if usize::from(*n) != kl || key.len() != kl {
            return Err(sw::WRONG_DATA);
        }
        if *alg != ALG_3DES && self.cfg.version < (5, 4, 0) {
            return Err(sw::WRONG_DATA);
        }
        self.mgm_alg = *alg;
        self.mgm_key = key.to_vec();
        self.mgm_touch = touch;
        Ok(vec![])
    }

    fn attest(&mut self, slot: u8) -> Result<Vec<u8>, u16> {
        if !is_key_slot(slot) {
            return Err(sw::WRONG_P1P2);
        }
        let key = self.keys.get(&slot).ok_or(sw::REF_NOT_FOUND)?;
        if key.origin != ORIGIN_GENERATED {
            return Err(sw::WRONG_DATA);
        }
        let (a, b, c) = self.cfg.version;
        let yubico = |n: u32| format!("1.3.6.1.4.1.41482.3.{n}");
        let extensions = vec![
            der::extension(&yubico(3), false, &[a, b, c]),
            der::extension(
                &yubico(7),
                false,
                &der::uint(&self.cfg.serial.to_be_bytes()),
            ),
            der::extension(&yubico(8), false, &[key.pin_policy, key.touch_policy]),
            // Form factor: USB-A keychain.
            der::extension(&yubico(9), false, &[0x01]),
        ];
        Ok(der::certificate(
            &der::CertSpec {
                serial: &random(16),
                issuer: &self.attestation_subject,
                subject: &der::cn(&format!("YubiKey PIV Attestation {slot:02x}")),
                spki: &key.ec.spki(),
                extensions,
            },
            &self.attestation_key,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashVerifier;

    fn card() -> PivCard {
        PivCard::new(CardConfig::default())
    }

    /// Sends an APDU; returns (data, SW).
    fn send(card: &mut PivCard, apdu: &[u8]) -> (Vec<u8>, u16) {
        let mut r = card.process(apdu);
        let sw = u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]]);
        r.truncate(r.len() - 2);
        (r, sw)
    }

    fn apdu(ins: u8, p1: u8, p2: u8, data: &[u8]) -> Vec<u8> {
        let mut a = vec![0, ins, p1, p2, data.len() as u8];
        a.extend_from_slice(data);
        a
    }

    /// Mutual authentication with the management key, as the `yubikey` crate does it.
    fn authenticate(card: &mut PivCard, alg: u8, key: &[u8]) -> u16 {
        let (r, sw) = send(card, &apdu(0x87, alg, 0x9b, &[0x7c, 0x02, 0x80, 0x00]));
        assert_eq!(sw, 0x9000);
        let (bs, _) = mgm_sizes(alg).unwrap();
        let encrypted = &r[4..4 + bs];
        // Decrypt by brute symmetry: find the witness via the cipher's decryption.
        let witness = mgm_decrypt(alg, key, encrypted);
        let challenge = vec![7u8; bs];
        let mut inner = tlv(0x80, &witness);
        inner.extend(tlv(0x81, &challenge));
        let (r, sw) = send(card, &apdu(0x87, alg, 0x9b, &tlv(0x7c, &inner)));
        if sw == 0x9000 {
            assert_eq!(r[4..], mgm_encrypt(alg, key, &challenge).unwrap()[..]);
        }
        sw
    }

    fn mgm_decrypt(alg: u8, key: &[u8], block: &[u8]) -> Vec<u8> {
        use aes::cipher::BlockDecrypt;
        if alg == ALG_3DES {
            let mut b = [0u8; 8];
            b.copy_from_slice(block);
            des::TdesEde3::new_from_slice(key)
                .unwrap()
                .decrypt_block((&mut b).into());
            b.to_vec()
        } else {
            let mut b = [0u8; 16];
            b.copy_from_slice(block);
            aes::Aes192::new_from_slice(key)
                .unwrap()
                .decrypt_block((&mut b).into());
            b.to_vec()
        }
    }

    #[test]
    fn select_version_serial() {
        let mut c = card();
        let (r, sw) = send(&mut c, &apdu(0xa4, 4, 0, &PIV_AID[..5]));
        assert_eq!(sw, 0x9000);
        assert_eq!(r[0], 0x61);
        assert_eq!(send(&mut c, &[0, 0xfd, 0, 0, 0]), (vec![5, 4, 3], 0x9000));
        assert_eq!(
            send(&mut c, &[0, 0xf8, 0, 0, 0]),
            (12345678u32.to_be_bytes().to_vec(), 0x9000)
        );
        let otp = [0xa0, 0, 0, 5, 0x27, 0x20, 1];
        assert_eq!(send(&mut c, &apdu(0xa4, 4, 0, &otp)).1, 0x6a82);
    }

    #[test]
    fn pin_counter() {
        let mut c = card();
        let verify = |c: &mut PivCard, pin: &[u8]| send(c, &apdu(0x20, 0, 0x80, &pad8(pin))).1;
        assert_eq!(send(&mut c, &[0, 0x20, 0, 0x80, 0]).1, 0x63c3);
        assert_eq!(verify(&mut c, b"654321"), 0x63c2);
        assert_eq!(verify(&mut c, b"123456"), 0x9000);
        assert_eq!(send(&mut c, &[0, 0x20, 0, 0x80, 0]).1, 0x9000);
        c.power_cycle();
        assert_eq!(send(&mut c, &[0, 0x20, 0, 0x80, 0]).1, 0x63c3);
        for left in [2, 1, 0] {
            assert_eq!(verify(&mut c, b"000000"), 0x63c0 | left);
        }
        assert_eq!(verify(&mut c, b"123456"), 0x6983);
        // Unblock with the PUK.
        let mut data = pad8(b"12345678").to_vec();
        data.extend(pad8(b"11112222"));
        assert_eq!(send(&mut c, &apdu(0x2c, 0, 0x80, &data)).1, 0x9000);
        assert_eq!(verify(&mut c, b"11112222"), 0x9000);
    }

    #[test]
    fn mgm_auth_generate_sign_attest_3des_and_aes() {
        for (version, alg) in [((5, 4, 3), ALG_3DES), ((5, 7, 1), ALG_AES192)] {
            let mut c = PivCard::new(CardConfig {
                version,
                ..CardConfig::default()
            });
            let gen = apdu(0x47, 0, 0x9a, &[0xac, 0x03, 0x80, 0x01, 0x11]);
            assert_eq!(send(&mut c, &gen).1, 0x6982);
            let wrong = [9u8; 24];
            assert_eq!(authenticate(&mut c, alg, &wrong), 0x6982);
            assert_eq!(authenticate(&mut c, alg, &DEFAULT_MGM_KEY), 0x9000);
            let (r, sw) = send(&mut c, &gen);
            assert_eq!(sw, 0x9000);
            assert_eq!(r[..5], [0x7f, 0x49, 0x43, 0x86, 0x41]);
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&r[5..]).unwrap();

            let digest = [0x42u8; 32];
            let mut inner = vec![0x82, 0x00];
            inner.extend(tlv(0x81, &digest));
            let sign = apdu(0x87, 0x11, 0x9a, &tlv(0x7c, &inner));
            assert_eq!(send(&mut c, &sign).1, 0x6982, "PIN policy once");
            assert_eq!(
                send(&mut c, &apdu(0x20, 0, 0x80, &pad8(b"123456"))).1,
                0x9000
            );
            let (r, sw) = send(&mut c, &sign);
            assert_eq!(sw, 0x9000);
            let sig = p256::ecdsa::Signature::from_der(&r[4..]).unwrap();
            vk.verify_prehash(&digest, &sig).unwrap();

            // Attestation: a certificate chained over GET RESPONSE.
            let (mut cert, mut sw) = send(&mut c, &[0, 0xf9, 0x9a, 0, 0]);
            while sw >> 8 == 0x61 {
                let (more, s) = send(&mut c, &[0, 0xc0, 0, 0, 0]);
                cert.extend(more);
                sw = s;
            }
            assert_eq!(sw, 0x9000);
            assert_eq!(cert[0], 0x30);
            let point = vk.to_encoded_point(false);
            assert!(cert
                .windows(point.as_bytes().len())
                .any(|w| w == point.as_bytes()));

            let (meta, sw) = send(&mut c, &[0, 0xf7, 0, 0x9b, 0]);
            assert_eq!(sw, 0x9000);
            assert_eq!(meta, [1, 1, alg, 2, 2, 0, 1, 5, 1, 1]);
        }
    }

    #[test]
    fn pin_policy_always_and_objects() {
        let mut c = card();
        assert_eq!(authenticate(&mut c, ALG_3DES, &DEFAULT_MGM_KEY), 0x9000);
        let gen = apdu(0x47, 0, 0x9c, &[0xac, 0x03, 0x80, 0x01, 0x11]);
        assert_eq!(send(&mut c, &gen).1, 0x9000);
        let (meta, _) = send(&mut c, &[0, 0xf7, 0, 0x9c, 0]);
        assert_eq!(meta[..8], [1, 1, 0x11, 2, 2, 3, 1, 3]);
        let mut inner = vec![0x82, 0x00];
        inner.extend(tlv(0x81, &[1u8; 20]));
        let sign = apdu(0x87, 0x11, 0x9c, &tlv(0x7c, &inner));
        let verify = apdu(0x20, 0, 0x80, &pad8(b"123456"));
        assert_eq!(send(&mut c, &verify).1, 0x9000);
        assert_eq!(send(&mut c, &sign).1, 0x9000);
        assert_eq!(
            send(&mut c, &sign).1,
            0x6982,
            "always: a VERIFY per signature"
        );
        assert_eq!(send(&mut c, &verify).1, 0x9000);
        assert_eq!(send(&mut c, &sign).1, 0x9000);

        // A long object via chaining, read back over GET RESPONSE.
        let cert = vec![0x30u8; 600];
        let mut put = vec![0x5c, 0x03, 0x5f, 0xc1, 0x05];
        put.extend(cert_object_value(&cert));
        let chunks: Vec<&[u8]> = put.chunks(255).collect();
        for (i, ch) in chunks.iter().enumerate() {
            let mut a = apdu(0xdb, 0x3f, 0xff, ch);
            if i + 1 < chunks.len() {
                a[0] = 0x10;
            }
            assert_eq!(send(&mut c, &a).1, 0x9000);
        }
        let get = apdu(0xcb, 0x3f, 0xff, &[0x5c, 0x03, 0x5f, 0xc1, 0x05]);
        let (mut r, mut sw) = send(&mut c, &get);
        while sw >> 8 == 0x61 {
            let (more, s) = send(&mut c, &[0, 0xc0, 0, 0, 0]);
            r.extend(more);
            sw = s;
        }
        assert_eq!(sw, 0x9000);
        assert_eq!(r, cert_object_value(&cert));
        // Printed info needs the PIN.
        c.power_cycle();
        let printed = apdu(0xcb, 0x3f, 0xff, &[0x5c, 0x03, 0x5f, 0xc1, 0x09]);
        assert_eq!(send(&mut c, &printed).1, 0x6982);
        assert_eq!(send(&mut c, &verify).1, 0x9000);
        assert_eq!(send(&mut c, &printed).1, 0x6a82);
    }

    #[test]
    fn reset_only_when_blocked() {
        let mut c = card();
        assert_eq!(send(&mut c, &[0, 0xfb, 0, 0, 0]).1, 0x6985);
        for _ in 0..3 {
            send(&mut c, &apdu(0x20, 0, 0x80, &pad8(b"000000")));
            let mut d = pad8(b"00000000").to_vec();
            d.extend(pad8(b"000000"));
            send(&mut c, &apdu(0x2c, 0, 0x80, &d));
        }
        assert_eq!(send(&mut c, &[0, 0xfb, 0, 0, 0]).1, 0x9000);
        assert_eq!(send(&mut c, &[0, 0x20, 0, 0x80, 0]).1, 0x63c3);
        // The attestation certificate survives.
        let f9 = apdu(0xcb, 0x3f, 0xff, &[0x5c, 0x03, 0x5f, 0xff, 0x01]);
        assert_eq!(send(&mut c, &f9).1 >> 8, 0x61);
    }
}
