//! Findings of the attacker/fault review (issue 13): one GUN's trust cache is not another's
//! (a GUN may contain `/`, a delegation name too), and a root without the roles it must
//! have is refused naming the role instead of panicking the request. The root certificate
//! made in a ceremony carries UTCTime validity dates, as RFC 5280 wants through 2049.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dct_tests::notary::{trust, NotaryStack};
use dct_tests::{hex, Agent, SoftHsm};
use serde_json::Value;
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

/// GUN `h` with a delegation `targets/root` and GUN `h/metadata/targets`: the agent used to
/// cache the delegation file at `tuf/h/metadata/targets/root.json`, which is where it kept the
/// trusted root of `h/metadata/targets`, so verifying the first broke (or replaced) the
/// second's trusted root.
#[test]
fn a_delegation_of_one_gun_does_not_overwrite_another_guns_trusted_root() {
    let stack = NotaryStack::start();
    let (_hsm, owner) = Agent::on_fresh_token("collide", "2222");
    let outer = "registry.example.com/h";
    let victim = "registry.example.com/h/metadata/targets";
    trust(&owner, &stack, &["init", victim]).ok();
    sign(
        &owner,
        &stack,
        &format!("{victim}:v1"),
        b"victim manifest\n",
    );
    trust(&owner, &stack, &["init", outer]).ok();
    // A signer named `root`: its delegation is targets/root.
    let key = owner.generate("targets/root", Some(outer));
    let pem = owner.dct(&["key", "export-public", &key[..12]]).ok().stdout;
    let pem_path = owner.dir.path().join("root-signer.pub");
    std::fs::write(&pem_path, &pem).unwrap();
    trust(
        &owner,
        &stack,
        &[
            "signer",
            "add",
            "root",
            outer,
            "--key",
            pem_path.to_str().unwrap(),
        ],
    )
    .ok();
    let content = b"outer manifest\n";
    let digest = format!("sha256:{}", hex(&Sha256::digest(content)));
    let size = content.len().to_string();
    let image = format!("{outer}:v1");
    let out = trust(
        &owner,
        &stack,
        &["sign", &image, "--digest", &digest, "--size", &size],
    )
    .ok();
    assert!(out.stdout.contains("targets/root"), "{}", out.stdout);

    // A gate that trusts the victim's root first, then checks the outer repository.
    let gate = Agent::start_with_config(None, "");
    let v1 = format!("{victim}:v1");
    let j = trust(&gate, &stack, &["--json", "verify", &v1]).json();
    assert_eq!(j["trust"], "first use");
    let j = trust(&gate, &stack, &["--json", "verify", &format!("{outer}:v1")]).json();
    assert_eq!(j["verified"], true, "{j}");
    // The victim's trusted root is still its own: it verifies, as cached.
    let j = trust(&gate, &stack, &["--json", "verify", &v1]).json();
    assert_eq!(j["verified"], true, "{j}");
    assert_eq!(j["trust"], "cached");
    // And offline, from its own cached files.
    gate.dct(&["trust", "verify", &v1, "--offline"]).ok();
    gate.dct(&["trust", "verify", &format!("{outer}:v1"), "--offline"])
        .ok();
    // One directory per GUN, no GUN's files inside another's.
    let repos = gate.dir.path().join("trust").join("repos");
    let mut names: Vec<String> = std::fs::read_dir(&repos)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "registry.example.com%2Fh",
            "registry.example.com%2Fh%2Fmetadata%2Ftargets"
        ]
    );
    let victim_root = std::fs::read(repos.join(&names[1]).join("root.json")).unwrap();
    let doc: Value = serde_json::from_slice(&victim_root).unwrap();
    assert_eq!(doc["signed"]["_type"], "Root");
    assert!(repos
        .join(&names[0])
        .join("metadata")
        .join("targets%2Froot.json")
        .is_file());
}

const PIN: &str = "findings-pin-4";

/// A P-256 public key as notary-server hands out timestamp and snapshot keys.
fn server_key(seed: u8) -> String {
    let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
    let point = sk.verifying_key().to_encoded_point(false);
    let spki = dct_agent::tuf::keys::p256_spki_from_point(point.as_bytes()).unwrap();
    dct_agent::tuf::keys::TufKey::ecdsa(spki)
        .to_value()
        .to_string()
}

#[test]
fn a_root_without_a_role_is_refused_naming_it_and_the_agent_lives_on() {
    let gun = "registry.example.com/roleless";
    let hsm = SoftHsm::new("roleless", PIN);
    let agent = Agent::start(Some(&hsm));
    agent.unlock(&hsm);
    let work = tempfile::tempdir().unwrap();
    let (ts, sn) = (work.path().join("ts.key"), work.path().join("sn.key"));
    std::fs::write(&ts, server_key(7)).unwrap();
    std::fs::write(&sn, server_key(8)).unwrap();
    let d = work.path().join("ceremony");
    let ds = d.to_str().unwrap();
    agent
        .dct(&[
            "ceremony",
            "root",
            "init",
            gun,
            "--dir",
            ds,
            "--keys",
            "1",
            "--threshold",
            "1",
            "--token",
            "roleless",
            "--timestamp-key",
            ts.to_str().unwrap(),
            "--snapshot-key",
            sn.to_str().unwrap(),
        ])
        .ok();
    let root: Value = serde_json::from_slice(&std::fs::read(d.join("root.json")).unwrap()).unwrap();
    let root_id = root["signed"]["roles"]["root"]["keyids"][0]
        .as_str()
        .unwrap()
        .to_string();

    // The root certificate's validity is in UTCTime (RFC 5280 through 2049), as Go writes it.
    let cert_pem = B64
        .decode(
            root["signed"]["keys"][&root_id]["keyval"]["public"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let cert_path = work.path().join("root.crt");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    let parsed = std::process::Command::new("openssl")
        .args(["asn1parse", "-in", cert_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(parsed.status.success());
    let parsed = String::from_utf8_lossy(&parsed.stdout);
    assert_eq!(parsed.matches("UTCTIME").count(), 2, "{parsed}");
    assert!(!parsed.contains("GENERALIZEDTIME"), "{parsed}");

    // No server has trust data for it (a server that answers 404 to everything).
    let empty = tempfile::tempdir().unwrap();
    let server = dct_tests::replay::Replay::start(gun, empty.path().to_path_buf());
    for (version, missing) in [(1, "targets"), (2, "timestamp"), (3, "snapshot")] {
        // The root without that role, signed by its root key (so only the role is wrong);
        // each a new version, as the key signs no version twice.
        let mut doc = root.clone();
        doc["signed"]["version"] = version.into();
        doc["signed"]["roles"]
            .as_object_mut()
            .unwrap()
            .remove(missing);
        let path = d.join("root.final.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        agent.tuf_sign(&path, &root_id, &["--gun", gun]).ok();
        let err = agent
            .dct(&[
                "trust",
                "--server",
                &server.url,
                "init",
                gun,
                "--root-from",
                ds,
            ])
            .fails(1, &format!("the root has no {missing} role"));
        assert!(!err.contains("h2 protocol error"), "{err}");
        // The agent is still there.
        agent.dct(&["status"]).ok();
    }
}
