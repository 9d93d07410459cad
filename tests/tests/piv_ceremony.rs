//! Root-key ceremonies with a YubiKey among the tokens (the virtual PIV card behind a real
//! pcscd): a 2-of-3 root over two SoftHSM2 tokens and the card, signed in separate agent
//! processes and published to the real notary-server; and the YubiKey backup choice, a root
//! key made in memory, written to an encrypted Notary key file and imported onto the card.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use dct_tests::notary::{notary_list, trust, NotaryStack};
use dct_tests::piv::{CardOptions, VirtualPiv};
use dct_tests::{hex, Agent, SoftHsm};
use serde_json::Value;
use sha2::{Digest, Sha256};

const PIN: &str = "ceremony-pin-31";
const CARD_PIN: &str = "123456";

fn piv_config(card: &VirtualPiv) -> String {
    format!(
        "[[piv]]\nserial = {}\nmanagement_key = \"default\"\n",
        card.serial()
    )
}

fn unlock(agent: &Agent, token: &str, pin: &str) {
    agent.unlock_token(token, pin, &[]).ok();
}

fn json_file(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ceremony(agent: &Agent, stack: &NotaryStack, args: &[&str]) -> dct_tests::Run {
    let mut all = vec![
        "ceremony",
        "--server",
        &stack.url,
        "--tlscacert",
        stack.ca.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    agent.dct(&all)
}

#[test]
fn a_two_of_three_root_with_a_yubikey_signed_apart_and_published() {
    let stack = NotaryStack::start();
    let card = VirtualPiv::start(CardOptions::default());
    let piv = format!("piv:{}", card.serial());
    let gun = "registry.example.com/yubiceremony";
    let hsm = SoftHsm::new("root-a", PIN);
    let dir_a = hsm.token_dir();
    let dir_b = hsm.add_token("root-b");

    // The ceremony machine: two SoftHSM2 tokens and the YubiKey.
    let mut config = String::new();
    for l in ["root-a", "root-b"] {
        config.push_str(&format!(
            "[[pkcs11]]\nmodule = \"{}\"\ntoken = \"{l}\"\n",
            dct_tests::SOFTHSM_MODULE
        ));
    }
    config.push_str(&piv_config(&card));
    let a = Agent::start_with_config(Some(&hsm), &config);
    unlock(&a, "root-a", PIN);
    unlock(&a, "root-b", PIN);
    unlock(&a, &piv, CARD_PIN);
    let cdir = tempfile::tempdir().unwrap();
    let d = cdir.path().join("ceremony");
    let ds = d.to_str().unwrap();
    let out = ceremony(
        &a,
        &stack,
        &[
            "root",
            "init",
            gun,
            "--dir",
            ds,
            "--keys",
            "3",
            "--threshold",
            "2",
            "--token",
            "root-a",
            "--token",
            "root-b",
            "--token",
            &piv,
            "--operator",
            "alice",
        ],
    )
    .ok();
    // The card's root certificate is signed on the card: touch "always" asks for a touch.
    assert!(out.stderr.contains("touch your YubiKey"), "{}", out.stderr);
    let cer = json_file(&d.join("ceremony.json"));
    let keys = cer["root_keys"].as_array().unwrap();
    let by_token = |t: &str| {
        keys.iter()
            .find(|k| k["token"] == t)
            .unwrap_or_else(|| panic!("no key on {t}: {cer}"))
            .clone()
    };
    let yk = by_token(&piv);
    assert_eq!(yk["backend"], "piv");
    assert_eq!(yk["slot"], "9c");
    assert_eq!(yk["pin_policy"], "always");
    assert_eq!(yk["touch_policy"], "always");
    assert_eq!(yk["origin"], "generated on the token");
    assert_eq!(yk["token_serial"], card.serial().to_string());
    assert!(
        yk["token_model"]
            .as_str()
            .unwrap()
            .contains("YubiKey 5.4.3"),
        "{yk}"
    );
    let soft = by_token("root-b");
    assert_eq!(soft["pin_policy"], "token login (PKCS#11 user PIN)");
    let md = std::fs::read_to_string(d.join("transcript.md")).unwrap();
    assert!(md.contains("\"pin_policy\":\"always\""), "{md}");
    drop(a);

    // The YubiKey signs on its own machine (an agent with only the card) ...
    let y = Agent::start_with_config(None, &piv_config(&card));
    unlock(&y, &piv, CARD_PIN);
    let yk_id = yk["key_id"].as_str().unwrap();
    let out = ceremony(
        &y,
        &stack,
        &["sign", ds, "--key", yk_id, "--operator", "yuki"],
    )
    .ok();
    assert!(out.stdout.contains("1 of 2"), "{}", out.stdout);
    ceremony(&y, &stack, &["finish", ds]).fails(1, "1 of 2");
    drop(y);
    // ... and token b on another, with its own token directory.
    let hsm_b = SoftHsm::carry(&dir_b, "root-b", PIN);
    let b = Agent::start(Some(&hsm_b));
    b.unlock(&hsm_b);
    let b_id = soft["key_id"].as_str().unwrap();
    let out = ceremony(
        &b,
        &stack,
        &["sign", ds, "--key", b_id, "--operator", "bob"],
    )
    .ok();
    assert!(out.stdout.contains("2 of 2"), "{}", out.stdout);
    ceremony(&b, &stack, &["finish", ds]).ok();

    // Published with the targets key (on token a); the real notary client accepts it.
    let hsm_a = SoftHsm::carry(&dir_a, "root-a", PIN);
    let a2 = Agent::start(Some(&hsm_a));
    a2.unlock(&hsm_a);
    trust(&a2, &stack, &["init", gun, "--root-from", ds]).ok();
    let content = b"signed under a root with a YubiKey\n";
    let digest = format!("sha256:{}", hex(&Sha256::digest(content)));
    trust(
        &a2,
        &stack,
        &[
            "sign",
            &format!("{gun}:v1"),
            "--digest",
            &digest,
            "--size",
            &content.len().to_string(),
        ],
    )
    .ok();
    let rows = notary_list(&stack, gun, &[]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, hex(&Sha256::digest(content)));
    let published = json_file(&d.join("root.final.json"));
    let signers: Vec<&str> = published["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["keyid"].as_str().unwrap())
        .collect();
    assert!(signers.contains(&yk_id), "{signers:?}");
    ceremony(&a2, &stack, &["verify", ds]).ok();
}

#[test]
fn a_yubikey_root_key_with_an_encrypted_backup_file() {
    let stack = NotaryStack::start();
    let card = VirtualPiv::start(CardOptions::default());
    let piv = format!("piv:{}", card.serial());
    let gun = "registry.example.com/backed-up";
    let hsm = SoftHsm::new("dct", PIN);
    let agent = Agent::start_with_config(
        Some(&hsm),
        &format!("{}{}", hsm.agent_config(), piv_config(&card)),
    );
    unlock(&agent, "dct", PIN);
    unlock(&agent, &piv, CARD_PIN);
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("ceremony");
    let backup = work.path().join("root-backup.key");
    let pass = work.path().join("pass");
    std::fs::write(&pass, "correct horse battery\n").unwrap();

    // Too short a passphrase is refused before anything is made.
    let short = work.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    ceremony(
        &agent,
        &stack,
        &[
            "root",
            "init",
            gun,
            "--dir",
            d.to_str().unwrap(),
            "--keys",
            "1",
            "--threshold",
            "1",
            "--token",
            &piv,
            "--targets-token",
            "dct",
            "--backup-file",
            &format!("{piv}={}", backup.display()),
            "--backup-passphrase-file",
            short.to_str().unwrap(),
        ],
    )
    .fails(2, "at least 8 characters");
    assert!(!backup.exists());

    ceremony(
        &agent,
        &stack,
        &[
            "root",
            "init",
            gun,
            "--dir",
            d.to_str().unwrap(),
            "--keys",
            "1",
            "--threshold",
            "1",
            "--token",
            &piv,
            "--targets-token",
            "dct",
            "--backup-file",
            &format!("{piv}={}", backup.display()),
            "--backup-passphrase-file",
            pass.to_str().unwrap(),
        ],
    )
    .ok();
    // The backup: a Notary key file, owner-only, recorded by its hash.
    let file = std::fs::read(&backup).unwrap();
    let text = String::from_utf8(file.clone()).unwrap();
    assert!(
        text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{text}"
    );
    assert!(text.contains("role: root"), "{text}");
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cer = json_file(&d.join("ceremony.json"));
    let key = &cer["root_keys"][0];
    assert_eq!(
        key["origin"],
        "imported (made in the agent's memory for its backup file)"
    );
    assert!(
        key["backup"]
            .as_str()
            .unwrap()
            .contains(&hex(&Sha256::digest(&file))),
        "{key}"
    );
    let key_id = key["key_id"].as_str().unwrap();
    // An imported key has no attestation.
    agent
        .dct(&["key", "attest", key_id])
        .fails(1, "only keys generated on the card");

    // openssl opens the backup with the passphrase (without Notary's PEM headers, which
    // it takes for legacy encryption headers); its public key is the card's key.
    let bare: String = text
        .lines()
        .filter(|l| !l.contains(": "))
        .map(|l| format!("{l}\n"))
        .collect();
    let bare_path = work.path().join("bare.key");
    std::fs::write(&bare_path, bare).unwrap();
    let pubkey = Command::new("openssl")
        .args(["pkey", "-in", bare_path.to_str().unwrap(), "-passin"])
        .arg(format!("file:{}", pass.display()))
        .arg("-pubout")
        .output()
        .unwrap();
    assert!(pubkey.status.success(), "openssl pkey: {pubkey:?}");
    let cert = work.path().join("root.pem");
    std::fs::write(
        &cert,
        agent.dct(&["key", "export-public", key_id]).ok().stdout,
    )
    .unwrap();
    let card_pub = Command::new("openssl")
        .args(["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"])
        .output()
        .unwrap();
    assert_eq!(pubkey.stdout, card_pub.stdout);

    // The card signs the root; published, the notary client accepts it.
    let ds = d.to_str().unwrap();
    ceremony(&agent, &stack, &["sign", ds, "--key", key_id]).ok();
    ceremony(&agent, &stack, &["finish", ds]).ok();
    trust(&agent, &stack, &["init", gun, "--root-from", ds]).ok();
    trust(
        &agent,
        &stack,
        &[
            "sign",
            &format!("{gun}:v1"),
            "--digest",
            &format!("sha256:{}", "ab".repeat(32)),
            "--size",
            "7",
        ],
    )
    .ok();
    assert_eq!(notary_list(&stack, gun, &[])[0].0, "v1");
}
