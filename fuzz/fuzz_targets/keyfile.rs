//! Notary / Docker key-file parsing and decryption.
//!
//! The input, if UTF-8 (the agent refuses other key files before parsing), goes to
//! `keyfile::read` without a passphrase and with the fixed passphrase `fuzz-passphrase`,
//! and to `keys::pem_decode` / `keys::key_from_pem`. Nothing may panic. When a key is read:
//! its public point must be a valid uncompressed P-256 point, the result must not depend on
//! the passphrase for an unencrypted file, and writing it with `keyfile::write` and reading
//! that back must give the same secret, role and GUN.
#![no_main]

use dct_agent::tuf::keyfile::{self, KeyFileError};
use dct_agent::tuf::keys;
use libfuzzer_sys::fuzz_target;

const PASS: &[u8] = b"fuzz-passphrase";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = keyfile::is_encrypted(text);
    let _ = keys::pem_decode(text);
    if let Ok(k) = keys::key_from_pem(text) {
        let _ = k.key_id();
        let _ = k.canonical_id();
        let _ = k.spki_der();
    }

    let plain = keyfile::read(text, None);
    let with_pass = keyfile::read(text, Some(PASS));
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        let show = |r: &Result<keyfile::ImportedKey, KeyFileError>| match r {
            Ok(k) => format!("ok role={:?} gun={:?}", k.role, k.gun),
            Err(e) => format!("err {e}"),
        };
        eprintln!("read: none: {}; pass: {}", show(&plain), show(&with_pass));
    }
    match (&plain, &with_pass) {
        (Ok(a), Ok(b)) => {
            assert_eq!(*a.secret, *b.secret, "passphrase changed an unencrypted key");
            assert_eq!((&a.role, &a.gun), (&b.role, &b.gun));
        }
        (Ok(_), Err(e)) => panic!("readable without a passphrase but not with one: {e}"),
        (Err(KeyFileError::NeedPassphrase), _) | (Err(_), Err(_)) => {}
        (Err(e), Ok(_)) => panic!("unreadable without passphrase for another reason: {e}"),
    }
    for key in [plain, with_pass].into_iter().flatten() {
        assert_eq!(key.point.len(), 65, "public point is not uncompressed P-256");
        assert_eq!(key.point[0], 4);
        keys::p256_spki_from_point(&key.point).expect("point of a read key is not valid");
        let role = key.role.as_deref().unwrap_or("targets");
        let written = keyfile::write(&key.secret, role, key.gun.as_deref(), PASS)
            .expect("write of a key just read");
        let back = keyfile::read(&written, Some(PASS))
            .unwrap_or_else(|e| panic!("reading back a written key: {e}\n{}", *written));
        assert_eq!(*back.secret, *key.secret, "secret changed in write/read");
        assert_eq!(back.point, key.point);
        assert_eq!(back.role.as_deref(), Some(role), "role changed in write/read");
        assert_eq!(back.gun, key.gun, "gun changed in write/read");
    }
});
