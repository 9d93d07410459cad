//! The `piv` backend (the `yubikey` crate over PC/SC) against the virtual PIV card behind a
//! real pcscd: the same contract as the SoftHSM2 backend (generate, find, sign, verify,
//! lock/unlock, wrong PIN with tries left, last-try refusal, removal and re-insertion),
//! plus what only cards have (slot policies, touch notices, attestation, management keys).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dct_tests::piv::{CardOptions, VirtualPiv};
use dct_tests::Agent;

const PIN: &str = "123456";

fn agent_for(card: &VirtualPiv, extra: &str) -> Agent {
    Agent::start_with_config(
        None,
        &format!(
            "[[piv]]\nserial = {}\nmanagement_key = \"default\"\n{extra}",
            card.serial()
        ),
    )
}

fn token(card: &VirtualPiv) -> String {
    format!("piv:{}", card.serial())
}

fn unlock(agent: &Agent, card: &VirtualPiv, pin: &str, extra: &[&str]) -> dct_tests::Run {
    agent.unlock_token(&token(card), pin, extra)
}

fn keys(agent: &Agent) -> Vec<serde_json::Value> {
    agent.dct(&["--json", "key", "list"]).json()["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn key<'a>(keys: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    keys.iter()
        .find(|k| k["key_id"] == id)
        .unwrap_or_else(|| panic!("key {id} not listed: {keys:?}"))
}

fn token_status(agent: &Agent, label: &str) -> serde_json::Value {
    let st = agent.dct(&["--json", "status"]).json();
    st["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == label)
        .cloned()
        .unwrap_or_else(|| panic!("token {label} not in status: {st}"))
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl")
}

/// Signs a minimal targets document with `key_id` and checks the signature with the key's
/// public part (p256, independent of the agent's verifier).
fn sign_and_check(agent: &Agent, dir: &Path, key_id: &str, gun: &str, version: u64) {
    let doc = serde_json::json!({
        "signed": {"_type": "Targets", "delegations": {"keys": {}, "roles": []},
                    "expires": dct_tests::expires_in(30), "targets": {}, "version": version},
        "signatures": []
    });
    let path = dir.join("targets.json");
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    agent
        .dct(&[
            "tuf",
            "sign",
            path.to_str().unwrap(),
            "--key",
            key_id,
            "--role",
            "targets",
            "--gun",
            gun,
        ])
        .ok();
    let signed: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let sig = &signed["signatures"][0];
    assert_eq!(sig["keyid"], key_id);
    assert_eq!(sig["method"], "ecdsa");
    // Checked with p256 against the key's SPKI, over the canonical JSON of "signed".
    use base64::Engine as _;
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    let k = key(&keys(agent), key_id).clone();
    let b64 = base64::engine::general_purpose::STANDARD;
    let spki = b64
        .decode(k["tuf_key"]["keyval"]["public"].as_str().unwrap())
        .unwrap();
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
    let raw = b64.decode(sig["sig"].as_str().unwrap()).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&raw).expect("raw r||s, 64 bytes");
    let msg = dct_agent::tuf::cjson::to_vec(&signed["signed"]).unwrap();
    vk.verify(&msg, &sig).expect("signature verifies");
}

#[test]
fn piv_keys_generate_list_sign_and_survive_an_agent_restart() {
    let card = VirtualPiv::start(CardOptions::default());
    let mut agent = agent_for(&card, "");
    let label = token(&card);

    // Locked, present, tries shown, the management key's algorithm detected (3DES on 5.4).
    let st = token_status(&agent, &label);
    assert_eq!(st["present"], true, "{st}");
    assert_eq!(st["unlocked"], false, "{st}");
    assert_eq!(st["backend"], "piv");
    assert_eq!(st["serial"], card.serial().to_string());
    assert!(st["model"].as_str().unwrap().contains("3DES"), "{st}");
    assert_eq!(st["pin"]["tries_left"], 3, "{st}");

    // Locked: no key is made.
    agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "root",
            "--gun",
            "example.com/app",
        ])
        .fails(1, "locked");

    unlock(&agent, &card, PIN, &[]).ok();
    let root = agent.generate("root", Some("example.com/app"));
    let targets = agent.generate("targets", Some("example.com/app"));
    let listed = keys(&agent);
    let r = key(&listed, &root);
    assert_eq!(r["role"], "root");
    assert_eq!(r["gun"], "example.com/app");
    assert_eq!(r["backend"], "piv");
    assert_eq!(
        r["detail"], "slot 9c, PIN always, touch always, generated on the card",
        "{r}"
    );
    assert_eq!(r["tuf_key"]["keytype"], "ecdsa-x509");
    let t = key(&listed, &targets);
    assert_eq!(
        t["detail"],
        "slot 9a, PIN once, touch never, generated on the card"
    );
    assert_eq!(t["tuf_key"]["keytype"], "ecdsa");

    // The root certificate the card holds in 9c, read by Yubico's own tool, is the one
    // the key lists with; its signature (made on the card) verifies with openssl.
    let out = Command::new("yubico-piv-tool")
        .args(["-a", "read-certificate", "-s", "9c"])
        .output()
        .expect("yubico-piv-tool");
    assert!(out.status.success(), "{out:?}");
    let pem = String::from_utf8(out.stdout).unwrap();
    let cert = agent.dir.path().join("root.pem");
    std::fs::write(&cert, &pem).unwrap();
    let listed_pem = agent.dct(&["key", "export-public", &root]).ok().stdout;
    assert_eq!(pem.trim(), listed_pem.trim());
    let c = cert.to_str().unwrap();
    let v = openssl(&["verify", "-partial_chain", "-CAfile", c, c]);
    assert!(v.status.success(), "openssl verify: {v:?}");
    let subj = openssl(&["x509", "-in", c, "-noout", "-subject"]);
    assert_eq!(
        String::from_utf8_lossy(&subj.stdout).trim(),
        "subject=CN = example.com/app"
    );

    sign_and_check(&agent, agent.dir.path(), &targets, "example.com/app", 1);

    // A new agent finds the keys from the slot certificates alone.
    agent.restart();
    let again = keys(&agent);
    assert_eq!(key(&again, &root)["role"], "root");
    assert_eq!(key(&again, &targets)["gun"], "example.com/app");
    // ... and, unlocked again, signs with them.
    agent
        .dct(&["tuf", "sign", "/nonexistent", "--key", &targets])
        .fails(1, "nonexistent");
    unlock(&agent, &card, PIN, &[]).ok();
    sign_and_check(&agent, agent.dir.path(), &targets, "example.com/app", 2);

    // Locking forgets the PIN: signing is refused until the next unlock.
    agent.dct(&["lock", "--all"]).ok();
    assert_eq!(token_status(&agent, &label)["unlocked"], false);
    let doc = agent.dir.path().join("targets.json");
    agent
        .dct(&["tuf", "sign", doc.to_str().unwrap(), "--key", &targets])
        .fails(1, "locked");
}

#[test]
fn piv_pin_tries_are_shown_and_the_last_one_needs_force() {
    let card = VirtualPiv::start(CardOptions::default());
    let agent = agent_for(&card, "");
    let label = token(&card);

    let err = unlock(&agent, &card, "999999", &[]).fails(1, "wrong PIN");
    assert!(err.contains("2 tries left"), "{err}");
    assert!(err.contains("not retried"), "{err}");
    assert_eq!(token_status(&agent, &label)["pin"]["tries_left"], 2);
    let err = unlock(&agent, &card, "999998", &[]).fails(1, "wrong PIN");
    assert!(err.contains("1 try left"), "{err}");

    // One try left: even the right PIN is not tried without --force.
    let err = unlock(&agent, &card, PIN, &[]).fails(1, "one PIN try left");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(token_status(&agent, &label)["pin"]["tries_left"], 1);
    assert_eq!(token_status(&agent, &label)["unlocked"], false);

    // With --force it is tried, works, and the card's counter is back to 3.
    unlock(&agent, &card, PIN, &["--force"]).ok();
    let st = token_status(&agent, &label);
    assert_eq!(st["unlocked"], true, "{st}");
    assert_eq!(st["pin"]["tries_left"], 3, "{st}");

    // A PIN of the wrong length never reaches the card.
    agent.dct(&["lock", "--all"]).ok();
    unlock(&agent, &card, "123456789", &[]).fails(1, "6 to 8 characters");
    assert_eq!(token_status(&agent, &label)["pin"]["tries_left"], 3);

    // The audit log has every attempt.
    let audit = std::fs::read_to_string(agent.audit_path()).unwrap();
    assert_eq!(audit.matches("\"action\":\"unlock\"").count(), 5, "{audit}");
}

#[test]
fn piv_card_removal_locks_and_reinsertion_needs_no_restart() {
    let mut card = VirtualPiv::start(CardOptions::default());
    let agent = agent_for(&card, "");
    let label = token(&card);
    unlock(&agent, &card, PIN, &[]).ok();
    let targets = agent.generate("targets", Some("example.com/app"));

    card.remove();
    let err = agent
        .dct(&["tuf", "sign", "/dev/null", "--key", &targets])
        .fails(1, "");
    assert!(
        err.contains("card absent") || err.contains("no key"),
        "while removed: {err}"
    );
    let st = token_status(&agent, &label);
    assert_eq!(st["present"], false, "{st}");
    assert!(
        st["error"].as_str().unwrap_or("").contains("card absent"),
        "{st}"
    );

    card.reinsert();
    // Back, found again, but locked: the card forgot its PIN state.
    let st = token_status(&agent, &label);
    assert_eq!(st["present"], true, "{st}");
    assert_eq!(st["unlocked"], false, "{st}");
    assert!(
        st["error"].as_str().unwrap_or("").contains("removed"),
        "{st}"
    );
    assert_eq!(key(&keys(&agent), &targets)["role"], "targets");
    unlock(&agent, &card, PIN, &[]).ok();
    sign_and_check(&agent, agent.dir.path(), &targets, "example.com/app", 1);
}

#[test]
fn piv_aes_management_key_touch_notice_and_attestation() {
    let card = VirtualPiv::start(CardOptions {
        version: (5, 7, 1),
        touch_delay: Duration::from_millis(300),
        ..CardOptions::default()
    });
    let agent = agent_for(&card, "");
    let label = token(&card);
    let st = token_status(&agent, &label);
    assert!(st["model"].as_str().unwrap().contains("AES-192"), "{st}");
    unlock(&agent, &card, PIN, &[]).ok();

    // The root key's certificate is signed with touch "always": the CLI shows the notice.
    let run = agent.dct(&[
        "key",
        "generate",
        "--role",
        "root",
        "--gun",
        "example.com/app",
    ]);
    let ok = run.ok();
    let root = ok.stdout.trim().to_string();
    assert!(
        ok.stderr
            .contains(&format!("touch your YubiKey (serial {})", card.serial())),
        "stderr: {}",
        ok.stderr
    );

    // A key in a slot of the user's choosing, with policies of the user's choosing.
    let run = agent.dct(&[
        "key",
        "generate",
        "--role",
        "targets",
        "--gun",
        "example.com/app",
        "--slot",
        "85",
        "--pin-policy",
        "never",
        "--touch-policy",
        "cached",
    ]);
    let targets = run.ok().stdout.trim().to_string();
    assert_eq!(
        key(&keys(&agent), &targets)["detail"],
        "slot 85, PIN never, touch cached, generated on the card"
    );
    // An occupied slot is refused, and a policy the card does not know.
    agent
        .dct(&[
            "key", "generate", "--role", "targets", "--gun", "x/y", "--slot", "85",
        ])
        .fails(1, "already holds");
    agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "targets",
            "--gun",
            "x/y",
            "--pin-policy",
            "sometimes",
        ])
        .fails(1, "PIN policy");

    // Attestation: chains to the card maker's CA and is for this key.
    let out = agent.dir.path().join("attest.pem");
    agent
        .dct(&["key", "attest", &root, "--out", out.to_str().unwrap()])
        .ok();
    let pem = std::fs::read_to_string(&out).unwrap();
    let split = pem.find("-----END CERTIFICATE-----").unwrap() + 26;
    let (att, f9) = pem.split_at(split);
    let (att_path, f9_path) = (
        agent.dir.path().join("att.pem"),
        agent.dir.path().join("f9.pem"),
    );
    std::fs::write(&att_path, att).unwrap();
    std::fs::write(&f9_path, f9).unwrap();
    let ca = card.attestation_ca_pem();
    let v = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        "-untrusted",
        f9_path.to_str().unwrap(),
        att_path.to_str().unwrap(),
    ]);
    assert!(v.status.success(), "openssl verify: {v:?}");
    let att_key = openssl(&[
        "x509",
        "-in",
        att_path.to_str().unwrap(),
        "-noout",
        "-pubkey",
    ]);
    let root_cert = agent.dir.path().join("root.pem");
    std::fs::write(
        &root_cert,
        agent.dct(&["key", "export-public", &root]).ok().stdout,
    )
    .unwrap();
    let cert_key = openssl(&[
        "x509",
        "-in",
        root_cert.to_str().unwrap(),
        "-noout",
        "-pubkey",
    ]);
    assert!(att_key.status.success() && !att_key.stdout.is_empty());
    assert_eq!(
        att_key.stdout, cert_key.stdout,
        "attested key is the root key"
    );

    // A key on a SoftHSM2-like backend has no attestation: a clear error, not a panic.
    agent.dct(&["key", "attest", "ffff"]).fails(1, "no key");
}

#[test]
fn piv_management_key_from_a_file_and_a_wrong_one() {
    let card = VirtualPiv::start(CardOptions::default());
    // Change the card's management key with Yubico's tool.
    let new_key = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a09080";
    let out = Command::new("yubico-piv-tool")
        .args(["-a", "set-mgm-key", "-n", new_key])
        .output()
        .expect("yubico-piv-tool");
    assert!(out.status.success(), "set-mgm-key: {out:?}");

    // The factory key no longer works: a clear refusal, nothing generated.
    let agent = agent_for(&card, "");
    unlock(&agent, &card, PIN, &[]).ok();
    agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "targets",
            "--gun",
            "example.com/app",
        ])
        .fails(1, "refused the management key");
    drop(agent);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mgm.hex");
    std::fs::write(&file, format!("{new_key}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent = Agent::start_with_config(
        None,
        &format!(
            "[[piv]]\nserial = {}\nmanagement_key_file = {:?}\n",
            card.serial(),
            file.display().to_string()
        ),
    );
    unlock(&agent, &card, PIN, &[]).ok();
    let targets = agent.generate("targets", Some("example.com/app"));
    sign_and_check(&agent, agent.dir.path(), &targets, "example.com/app", 1);
}

#[test]
fn piv_pin_protected_aes_management_key() {
    let card = VirtualPiv::start(CardOptions {
        version: (5, 7, 1),
        ..CardOptions::default()
    });
    let config = format!("[[piv]]\nserial = {}\n", card.serial());

    // A factory card has no PIN-protected management key: the default ("protected") says
    // so, and nothing is made.
    let agent = Agent::start_with_config(None, &config);
    unlock(&agent, &card, PIN, &[]).ok();
    agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "targets",
            "--gun",
            "example.com/app",
        ])
        .fails(1, "no PIN-protected management key");
    drop(agent);

    // Protect a new AES-192 management key with the PIN (as `ykman piv access
    // change-management-key --protect` does), through the yubikey crate.
    {
        let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial()))
            .expect("open the card");
        yk.verify_pin(PIN.as_bytes()).unwrap();
        let factory = yubikey::MgmKey::get_default(&yk).unwrap();
        assert_eq!(factory.algorithm_id(), yubikey::MgmAlgorithmId::Aes192);
        yk.authenticate(&factory).unwrap();
        let key = yubikey::MgmKey::from_bytes(
            [
                0x5au8, 0x31, 0x77, 0x02, 0x9c, 0xd4, 0x18, 0x66, 0xe0, 0x3b, 0x4f, 0xa2, 0x11,
                0x8d, 0x70, 0xc5, 0x29, 0xbe, 0x46, 0x93, 0x0d, 0xf7, 0x62, 0x1a,
            ],
            Some(yubikey::MgmAlgorithmId::Aes192),
        )
        .unwrap();
        key.set_protected(&mut yk).unwrap();
    }

    let agent = Agent::start_with_config(None, &config);
    let st = token_status(&agent, &token(&card));
    assert!(st["model"].as_str().unwrap().contains("AES-192"), "{st}");
    unlock(&agent, &card, PIN, &[]).ok();
    let targets = agent.generate("targets", Some("example.com/app"));
    sign_and_check(&agent, agent.dir.path(), &targets, "example.com/app", 1);
}
