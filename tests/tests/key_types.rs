//! Verification of every key type and signature method Notary verifies, on signatures made
//! by openssl (tests/fixtures/keytypes).

use dct_agent::tuf::keys::{KeyError, TufKey};
use dct_tests::fixture_dir;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir("keytypes").join(name)).unwrap()
}

fn check(key: &TufKey, method: &str, sig: &[u8]) {
    let msg = read("msg");
    assert_eq!(
        key.verify(method, &msg, sig),
        Ok(()),
        "{} {method}",
        key.keytype
    );
    let mut other = msg.clone();
    other[3] ^= 1;
    assert_eq!(
        key.verify(method, &other, sig),
        Err(KeyError::BadSignature),
        "{} {method}",
        key.keytype
    );
    let mut bad = sig.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        key.verify(method, &msg, &bad),
        Err(KeyError::BadSignature),
        "{} {method}",
        key.keytype
    );
}

#[test]
fn rsa_pss_and_pkcs1v15() {
    let key = TufKey {
        keytype: "rsa".into(),
        public: read("rsa.spki.der"),
    };
    check(&key, "rsapss", &read("rsa.pss.sig"));
    check(&key, "rsapkcs1v15", &read("rsa.pkcs1.sig"));
    // A PSS signature is not a PKCS#1 v1.5 one, and RSA keys do not verify ecdsa.
    assert_eq!(
        key.verify("rsapkcs1v15", &read("msg"), &read("rsa.pss.sig")),
        Err(KeyError::BadSignature)
    );
    assert!(matches!(
        key.verify("ecdsa", &read("msg"), &read("rsa.pss.sig")),
        Err(KeyError::MethodMismatch { .. })
    ));
}

#[test]
fn rsa_x509_uses_the_certificate_key() {
    let key = TufKey {
        keytype: "rsa-x509".into(),
        public: read("rsa.crt.pem"),
    };
    check(&key, "rsapss", &read("rsa.pss.sig"));
    // Its canonical ID is the ID of the plain rsa key of the same public key.
    let plain = TufKey {
        keytype: "rsa".into(),
        public: read("rsa.spki.der"),
    };
    assert_eq!(key.canonical_id().unwrap(), plain.key_id());
    assert_ne!(key.key_id(), plain.key_id());
}

#[test]
fn ecdsa_p384_raw_signatures_only() {
    let key = TufKey {
        keytype: "ecdsa".into(),
        public: read("p384.spki.der"),
    };
    let der = read("p384.sig.der");
    let raw = p384::ecdsa::Signature::from_der(&der).unwrap().to_bytes();
    assert_eq!(raw.len(), 96);
    check(&key, "ecdsa", &raw);
    // DER, as openssl wrote it, is not what TUF carries.
    assert_eq!(
        key.verify("ecdsa", &read("msg"), &der),
        Err(KeyError::BadSignature)
    );
}

#[test]
fn ed25519_eddsa() {
    let key = TufKey {
        keytype: "ed25519".into(),
        public: read("ed25519.pub"),
    };
    check(&key, "eddsa", &read("ed25519.sig"));
    assert!(matches!(
        key.verify("ecdsa", &read("msg"), &read("ed25519.sig")),
        Err(KeyError::MethodMismatch { .. })
    ));
    let short = TufKey {
        keytype: "ed25519".into(),
        public: vec![1; 31],
    };
    assert!(matches!(
        short.verify("eddsa", b"m", &[0; 64]),
        Err(KeyError::Malformed(_))
    ));
}

#[test]
fn unknown_types_and_methods_are_refused() {
    let key = TufKey {
        keytype: "dsa".into(),
        public: vec![1, 2, 3],
    };
    assert!(key.verify("dsa", b"m", b"s").is_err());
    let key = TufKey {
        keytype: "ecdsa".into(),
        public: read("p384.spki.der"),
    };
    assert!(matches!(
        key.verify("pycrypto", b"m", b"s"),
        Err(KeyError::UnknownMethod(_))
    ));
}

#[test]
fn legacy_dek_info_key_files_decrypt() {
    use dct_agent::tuf::keyfile::{self, KeyFileError};
    let text = String::from_utf8(read("legacy.key")).unwrap();
    assert!(keyfile::is_encrypted(&text));
    let k = keyfile::read(&text, Some(b"legacy-pass")).unwrap();
    let spki = dct_agent::tuf::keys::p256_spki_from_point(&k.point).unwrap();
    assert_eq!(
        spki,
        read("legacy.pub.der"),
        "decrypted key is not the one openssl wrote"
    );
    assert_eq!(
        keyfile::read(&text, Some(b"wrong-pass")).err(),
        Some(KeyFileError::WrongPassphrase)
    );
    assert_eq!(
        keyfile::read(&text, None).err(),
        Some(KeyFileError::NeedPassphrase)
    );
}
