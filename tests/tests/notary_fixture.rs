//! Byte-for-byte compatibility of the TUF core with what the real notary 0.7 client and
//! server wrote (tests/fixtures/notary-0.7).

use std::collections::BTreeMap;

use dct_agent::tuf::{keys::TufKey, metadata::Envelope, verify};
use dct_tests::fixture_dir;
use time::macros::datetime;

const GUN: &str = "example.com/app";
const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

fn files() -> verify::RepoFiles {
    let dir = fixture_dir("notary-0.7/metadata");
    ROLES
        .iter()
        .map(|r| {
            (
                r.to_string(),
                std::fs::read(dir.join(format!("{r}.json"))).unwrap(),
            )
        })
        .collect()
}

/// The `signed` member exactly as it stands in the file.
fn raw_signed(bytes: &[u8]) -> &[u8] {
    let start = b"{\"signed\":".len();
    let end = bytes
        .windows(14)
        .rposition(|w| w == b",\"signatures\":")
        .unwrap();
    &bytes[start..end]
}

#[test]
fn canonical_reencoding_is_byte_identical() {
    for (role, bytes) in files() {
        let env = Envelope::parse(&bytes).unwrap();
        assert_eq!(env.signed_bytes().unwrap(), raw_signed(&bytes), "{role}");
        // The whole file round-trips too: envelope layout is Go's.
        assert_eq!(env.to_bytes().unwrap(), bytes, "{role}");
    }
}

#[test]
fn every_key_id_is_reproduced() {
    let f = files();
    let mut seen = 0;
    for role in ["root"] {
        let env = Envelope::parse(&f[role]).unwrap();
        for (id, key) in env.signed["keys"].as_object().unwrap() {
            assert_eq!(&TufKey::from_value(key).unwrap().key_id(), id);
            seen += 1;
        }
    }
    assert_eq!(seen, 4);
    // The root key's two IDs: the certificate ID in root.json, the canonical ID of the key file.
    let env = Envelope::parse(&f["root"]).unwrap();
    let root_cert_id = "c78536bb57a473cfc8d0c5b8c358e4dcb18d3b26766884041d22aa4b0d26e717";
    let key = TufKey::from_value(&env.signed["keys"][root_cert_id]).unwrap();
    assert_eq!(key.keytype, "ecdsa-x509");
    assert_eq!(
        key.canonical_id().unwrap(),
        "6c8afbe159c6ec668099a2529f3e8b4fcccac34dbccf82e296fbe38821102d6c"
    );
    // The server's timestamp key as served by GET .../timestamp.key.
    let served: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture_dir("notary-0.7/metadata/timestamp.key")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        TufKey::from_value(&served).unwrap().key_id(),
        "48bcae89f6979077fd18e5b6e03ffc09cd6c2677b6dbadf0a9f48c863abc883c"
    );
    // The key files are named by canonical ID; the non-root ones match root.json's IDs.
    for id in [
        "4887b4aa2cb6bff5e64a33424e07bd6333faefd023a05ae86f0cae2dcecce4f9",
        "15c14862492972614909e9d1905db060278a00043974b966b9cde5940b8fe493",
    ] {
        assert!(fixture_dir(&format!("notary-0.7/keys/{id}.key")).exists());
        let key = TufKey::from_value(&env.signed["keys"][id]).unwrap();
        assert_eq!(key.canonical_id().unwrap(), id);
    }
}

#[test]
fn repository_verifies_as_of_2026_11_23() {
    let repo =
        verify::verify_repository(GUN, &files(), datetime!(2026-11-23 0:00 UTC), &[]).unwrap();
    let targets = repo.roles.iter().find(|r| r.role == "targets").unwrap();
    let tags: BTreeMap<_, _> = targets
        .targets
        .iter()
        .map(|t| (t.name.as_str(), (t.sha256_hex.as_str(), t.length)))
        .collect();
    use sha2::{Digest, Sha256};
    let v1 = std::fs::read(fixture_dir("notary-0.7/metadata/target-v1.txt")).unwrap();
    assert_eq!(
        tags["v1"],
        (
            dct_agent::tuf::keys::hex(&Sha256::digest(&v1)).as_str(),
            v1.len() as u64
        )
    );
    assert_eq!(
        tags["latest"],
        (
            "017772a9f7191c884602c4473c8fc6b1f0f1be0605004b170d0a09acdd4c23a0",
            4096
        )
    );
    assert_eq!(targets.version, 2);
}

#[test]
fn verification_rejects_tampering() {
    let at = datetime!(2026-11-23 0:00 UTC);
    let check = |files: &verify::RepoFiles, role: &str, needle: &str| {
        let err = verify::verify_repository(GUN, files, at, &[]).unwrap_err();
        assert_eq!(err.role, role, "{err}");
        assert!(err.reason.contains(needle), "{err}");
    };
    // A flipped byte inside each role's signed part.
    for role in ROLES {
        let mut f = files();
        let bytes = f.get_mut(role).unwrap();
        let pos = bytes.windows(9).position(|w| w == b"\"expires\"").unwrap() + 13;
        bytes[pos] = if bytes[pos] == b'1' { b'2' } else { b'1' };
        // The file's hash changed too, so the role that pins it may be the first to notice.
        let err = verify::verify_repository(GUN, &f, at, &[]).unwrap_err();
        let pinned_by = match role {
            "root" | "targets" => "snapshot",
            "snapshot" => "timestamp",
            _ => "timestamp",
        };
        assert!(err.role == role || err.role == pinned_by, "{role}: {err}");
    }
    // A removed signature.
    let mut f = files();
    let env = Envelope::parse(&f["targets"]).unwrap();
    let mut stripped = env.clone();
    stripped.signatures.clear();
    f.insert("targets".into(), stripped.to_bytes().unwrap());
    check(&f, "snapshot", "targets.json does not match");
    // Swapped role files.
    let mut f = files();
    let t = f["targets"].clone();
    f.insert("targets".into(), f["snapshot"].clone());
    f.insert("snapshot".into(), t);
    check(&f, "timestamp", "snapshot.json does not match");
    // Expired timestamp as of a later time.
    let late = datetime!(2026-12-07 0:00 UTC);
    let err = verify::verify_repository(GUN, &files(), late, &[]).unwrap_err();
    assert_eq!(err.role, "timestamp");
    assert!(err.reason.contains("expired"), "{err}");
    // Wrong GUN: the root certificate's CN does not match.
    let err = verify::verify_repository("example.com/other", &files(), at, &[]).unwrap_err();
    assert!(err.reason.contains("not the GUN"), "{err}");
}

#[test]
fn notary_key_files_decrypt_to_their_canonical_ids() {
    use dct_agent::tuf::keyfile::{self, KeyFileError};
    use dct_agent::tuf::keys::p256_spki_from_point;
    for (id, pass, role, gun) in [
        (
            "4887b4aa2cb6bff5e64a33424e07bd6333faefd023a05ae86f0cae2dcecce4f9",
            "test-targets-passphrase",
            "targets",
            Some(GUN),
        ),
        (
            "15c14862492972614909e9d1905db060278a00043974b966b9cde5940b8fe493",
            "test-snapshot-passphrase",
            "snapshot",
            Some(GUN),
        ),
        (
            "6c8afbe159c6ec668099a2529f3e8b4fcccac34dbccf82e296fbe38821102d6c",
            "test-root-passphrase",
            "root",
            None,
        ),
    ] {
        let text =
            std::fs::read_to_string(fixture_dir(&format!("notary-0.7/keys/{id}.key"))).unwrap();
        assert!(keyfile::is_encrypted(&text));
        let k = keyfile::read(&text, Some(pass.as_bytes())).unwrap();
        assert_eq!(
            TufKey::ecdsa(p256_spki_from_point(&k.point).unwrap()).key_id(),
            id
        );
        assert_eq!(k.role.as_deref(), Some(role));
        assert_eq!(k.gun.as_deref(), gun);
        assert_eq!(
            keyfile::read(&text, Some(b"wrong")).err(),
            Some(KeyFileError::WrongPassphrase)
        );
        assert_eq!(
            keyfile::read(&text, None).err(),
            Some(KeyFileError::NeedPassphrase)
        );
    }
}
