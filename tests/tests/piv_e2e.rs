//! Docker Content Trust with the root key on a YubiKey: the virtual PIV card behind a real
//! pcscd, the targets key on SoftHSM2, the real notary-server / notary-signer, checked by
//! the real notary client and `docker trust inspect`. Once over PIV directly (the `piv`
//! backend), once through Yubico's PKCS#11 module (libykcs11) and once through OpenSC's.

use std::process::Command;

use dct_tests::notary::{docker_inspect, notary_list, trust, NotaryStack};
use dct_tests::piv::{CardOptions, VirtualPiv};
use dct_tests::{hex, Agent, SoftHsm};
use sha2::{Digest, Sha256};

const CARD_PIN: &str = "123456";
const YKCS11: &str = "/usr/lib/x86_64-linux-gnu/libykcs11.so";
const OPENSC: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";

fn unlock(agent: &Agent, token: &str, pin: &str) {
    agent.unlock_token(token, pin, &[]).ok();
}

/// The token label a PKCS#11 module gives the card (from pkcs11-tool -L).
fn module_token_label(module: &str) -> String {
    let out = Command::new("pkcs11-tool")
        .args(["--module", module, "-L"])
        .output()
        .expect("pkcs11-tool");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("token label")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no token in {module}: {text}"))
}

/// init with `root` (on the card) and a targets key on SoftHSM2, sign a tag, and check it
/// with the real notary client from a fresh trust directory and with docker trust inspect.
fn publish_and_check(agent: &Agent, stack: &NotaryStack, gun: &str, root: &str) {
    let init = trust(
        agent,
        stack,
        &["--json", "init", gun, "--root-key", root, "--token", "dct"],
    )
    .json();
    assert_eq!(init["root_key_id"], root, "{init}");
    let content = format!("manifest of {gun}\n").into_bytes();
    let digest = format!("sha256:{}", hex(&Sha256::digest(&content)));
    let size = content.len().to_string();
    let image = format!("{gun}:v1");
    trust(
        agent,
        stack,
        &["sign", &image, "--digest", &digest, "--size", &size],
    )
    .ok();

    let rows = notary_list(stack, gun, &[]);
    assert_eq!(
        rows,
        vec![(
            "v1".to_string(),
            hex(&Sha256::digest(&content)),
            size.clone(),
            "targets".to_string()
        )]
    );
    let inspected = docker_inspect(stack, &image).expect("docker CLI installed");
    assert!(
        inspected.contains(&hex(&Sha256::digest(&content))),
        "{inspected}"
    );
    assert!(inspected.contains(root), "{inspected}");
    assert!(
        inspected.contains(init["targets_key_id"].as_str().unwrap()),
        "{inspected}"
    );
}

#[test]
fn a_root_key_on_a_yubikey_over_piv_and_through_ykcs11_and_opensc() {
    let stack = NotaryStack::start();
    let card = VirtualPiv::start(CardOptions::default());
    let hsm = SoftHsm::new("dct", "7777");
    let piv = format!("piv:{}", card.serial());

    // 1. Over PIV: the root key generated on the card, its Notary root certificate made
    //    and signed there (PIN and touch "always"); the targets key on SoftHSM2.
    let agent = Agent::start_with_config(
        Some(&hsm),
        &format!(
            "{}[[piv]]\nserial = {}\nmanagement_key = \"default\"\n",
            hsm.agent_config(),
            card.serial()
        ),
    );
    unlock(&agent, "dct", &hsm.pin);
    unlock(&agent, &piv, CARD_PIN);
    let gun1 = "registry.example.com/piv";
    let root1 = agent
        .dct(&[
            "key", "generate", "--role", "root", "--gun", gun1, "--token", &piv,
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    publish_and_check(&agent, &stack, gun1, &root1);

    // Two more root keys for the module runs: in retired slot 82 with the default PIN policy
    // (always: the module must log in again before each signature), and in 9d (OpenSC
    // shows retired slots only with a key history object) with PIN once.
    let gun2 = "registry.example.com/ykcs11";
    let root2 = agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "root",
            "--gun",
            gun2,
            "--token",
            &piv,
            "--slot",
            "82",
            "--touch-policy",
            "never",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let gun3 = "registry.example.com/opensc";
    let root3 = agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "root",
            "--gun",
            gun3,
            "--token",
            &piv,
            "--slot",
            "9d",
            "--pin-policy",
            "once",
            "--touch-policy",
            "never",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    drop(agent);

    // 2. Through Yubico's PKCS#11 module (slot 82) and OpenSC's (slot 9d): the agent finds
    //    the card's keys by their certificates and signs root.json with them.
    for (module, gun, root) in [(YKCS11, gun2, &root2), (OPENSC, gun3, &root3)] {
        let label = module_token_label(module);
        let agent = Agent::start_with_config(
            Some(&hsm),
            &format!(
                "{}[[pkcs11]]\nmodule = \"{module}\"\ntoken = \"{label}\"\n",
                hsm.agent_config()
            ),
        );
        let keys = agent
            .dct(&["--json", "key", "list", "--token", &label])
            .json();
        let listed = keys["keys"].as_array().unwrap();
        let found = listed
            .iter()
            .find(|k| k["key_id"] == root.as_str())
            .unwrap_or_else(|| panic!("{module}: root key {root} not listed: {keys}"));
        assert_eq!(found["role"], "root");
        assert_eq!(found["gun"], gun);
        assert_eq!(found["detail"], "named by its certificate (PIV)");
        unlock(&agent, "dct", &hsm.pin);
        unlock(&agent, &label, CARD_PIN);
        publish_and_check(&agent, &stack, gun, root);
    }
}
