//! Trust archives (issue 17, part 3): `dct trust export` against the real notary-server,
//! then `dct trust verify --from` and `dct tuf verify` with the server stopped and its
//! (in-memory) storage gone, on gate agents that hold no key and never saw the repository.

use dct_tests::hex;
use dct_tests::notary::{trust, NotaryStack};
use dct_tests::{Agent, Run};
use sha2::{Digest, Sha256};

fn sign(agent: &Agent, stack: &NotaryStack, image: &str, content: &[u8]) {
    let digest = format!("sha256:{}", hex(&Sha256::digest(content)));
    let size = content.len().to_string();
    trust(
        agent,
        stack,
        &["sign", image, "--digest", &digest, "--size", &size],
    )
    .ok();
}

fn one_line(r: Run, needle: &str) -> String {
    let err = r.fails(1, needle);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

#[test]
fn an_exported_archive_verifies_offline_after_the_server_is_gone() {
    let mut stack = NotaryStack::start();
    let (_hsm, signer) = Agent::on_fresh_token("archive-signer", "2222");
    let gun = "registry.example.com/archived";
    let (c1, c2) = (b"manifest one\n".to_vec(), b"manifest two\n".to_vec());
    trust(&signer, &stack, &["init", gun]).ok();
    sign(&signer, &stack, &format!("{gun}:v1"), &c1);
    // A root rotation, so the archive carries a chain of two roots.
    trust(&signer, &stack, &["key", "rotate", gun, "root"]).ok();
    sign(&signer, &stack, &format!("{gun}:v2"), &c2);
    let ins = trust(&signer, &stack, &["--json", "inspect", gun]).json();
    let root_id = ins["administrative_keys"]["root"][0]["key_id"]
        .as_str()
        .unwrap()
        .to_string();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("archived.json");
    let path = file.to_str().unwrap();
    let j = trust(&signer, &stack, &["--json", "export", gun, "--out", path]).json();
    assert_eq!(j["root_versions"], 2, "{j}");
    assert!(j["roles"].as_u64().unwrap() >= 4, "{j}");
    let archive: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(archive["format"], "dct-trust-archive/1");
    assert_eq!(archive["root_chain"].as_array().unwrap().len(), 1);

    // An agent that never saw the repository cannot export it (no trust on first use).
    let stranger = Agent::start_with_config(None, "");
    let other = dir.path().join("stranger.json");
    one_line(
        trust(
            &stranger,
            &stack,
            &["export", gun, "--out", other.to_str().unwrap()],
        ),
        "never seen",
    );
    assert!(!other.exists());

    // The server stopped: its memory storage is gone with it.
    stack.stop();

    let v1 = format!("{gun}:v1");
    let d1 = format!("sha256:{}", hex(&Sha256::digest(&c1)));
    let d2 = format!("sha256:{}", hex(&Sha256::digest(&c2)));
    // A gate pinned to the current root, with no trust on first use.
    let pinned = Agent::start_with_config(
        None,
        &format!(
            "[trust.pinning]\ndisable_tofu = true\n[trust.pinning.certs]\n\"{gun}\" = [\"{root_id}\"]\n"
        ),
    );
    let j = pinned
        .dct(&["--json", "trust", "verify", &v1, "--from", path])
        .json();
    assert_eq!(j["digest"], d1, "{j}");
    assert_eq!(j["trust"], "pinned");
    let out = pinned
        .dct(&[
            "trust",
            "verify",
            &format!("{gun}:v2"),
            "--from",
            path,
            "--print-digest",
        ])
        .ok();
    assert_eq!(out.stdout.trim(), d2);
    one_line(
        pinned.dct(&["trust", "verify", &v1, "--from", path, "--digest", &d2]),
        "digest:",
    );
    // Expiry is judged as of the export; later, as of when asked.
    one_line(
        pinned.dct(&[
            "trust",
            "verify",
            &v1,
            "--from",
            path,
            "--at",
            &dct_tests::expires_in(30),
        ]),
        "expired",
    );
    // A gate with no pins takes the archive's own, and says so.
    let bare = Agent::start_with_config(None, "");
    let j = bare
        .dct(&["--json", "trust", "verify", &v1, "--from", path])
        .json();
    assert_eq!(j["trust"], "archive");
    // A pin on another root refuses it; so does an archive of another repository.
    let wrong = Agent::start_with_config(
        None,
        &format!(
            "[trust.pinning.certs]\n\"{gun}\" = [\"{}\"]\n",
            "ab".repeat(32)
        ),
    );
    one_line(
        wrong.dct(&["trust", "verify", &v1, "--from", path]),
        "trust data:",
    );
    one_line(
        pinned.dct(&[
            "trust",
            "verify",
            "registry.example.com/other:v1",
            "--from",
            path,
        ]),
        "archive:",
    );

    // Tampering: a target's digest changed in targets.json, or the first root dropped
    // from the chain, each refused.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bad = archive.clone();
    let targets = b64
        .decode(bad["files"]["targets"].as_str().unwrap())
        .unwrap();
    let sha_c1 = b64.encode(Sha256::digest(&c1));
    let sha_c2 = b64.encode(Sha256::digest(&c2));
    let forged = String::from_utf8(targets)
        .unwrap()
        .replace(&sha_c1, &sha_c2);
    bad["files"]["targets"] = b64.encode(forged).into();
    let forged_file = dir.path().join("forged.json");
    std::fs::write(&forged_file, bad.to_string()).unwrap();
    let forged_path = forged_file.to_str().unwrap();
    one_line(
        pinned.dct(&["trust", "verify", &v1, "--from", forged_path]),
        "does not verify",
    );
    let mut cut = archive.clone();
    cut["root_chain"] = serde_json::json!([]);
    let cut_file = dir.path().join("cut.json");
    std::fs::write(&cut_file, cut.to_string()).unwrap();
    one_line(
        pinned.dct(&["trust", "verify", &v1, "--from", cut_file.to_str().unwrap()]),
        "archive:",
    );

    // dct tuf verify reads the archive's role files as a directory's, offline.
    let out = bare
        .dct(&[
            "tuf",
            "verify",
            path,
            "--gun",
            gun,
            "--root-key",
            &root_id,
            "--at",
            archive["exported_at"].as_str().unwrap(),
        ])
        .ok();
    assert!(
        out.stdout.contains(&hex(&Sha256::digest(&c2))),
        "{}",
        out.stdout
    );
}
