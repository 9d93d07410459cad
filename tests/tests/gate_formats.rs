//! One deploy gate for DCT and cosign (issue 17): `dct verify IMAGE --policy FILE` against
//! the real notary-server and a real registry, with cosign signatures written by the agent
//! (`--also cosign`) and by the real cosign CLI with its own key, m of n across formats, and
//! on a host with no agent running (a keyless agent started for the check).

use std::process::Command;

use dct_tests::notary::{trust, NotaryStack};
use dct_tests::registry::Registry;
use dct_tests::{bin, gotools, hex, Agent, Run};
use sha2::{Digest, Sha256};

fn digest(manifest: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(manifest)))
}

fn pem_of(agent: &Agent, gun: &str, role: &str) -> (String, String) {
    dct_tests::key_pem(agent, gun, role)
}

fn one_line(r: Run, needle: &str) -> String {
    let err = r.fails(1, needle);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

#[test]
fn the_gate_counts_dct_and_cosign_signers_m_of_n() {
    let mut stack = NotaryStack::start();
    let registry = Registry::start(&stack);
    let host = registry.host.clone();
    let (_hsm, agent) = Agent::on_fresh_token("gate-formats", "2222");
    let gun = format!("{host}/team/gated");
    let m1 = registry.push_runnable("team/gated", "v1", "gated v1");
    let m2 = registry.push_runnable("team/gated", "v2", "gated v2");
    let (url, ca_file) = (stack.url.clone(), stack.ca.clone());
    let srv = ["--server", &url, "--tlscacert", ca_file.to_str().unwrap()];
    let dct = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend_from_slice(&srv);
        agent.dct(&a)
    };
    // v1: DCT and the agent's cosign signature; v2: DCT only.
    dct(&["trust", "sign", &format!("{gun}:v1"), "--also", "cosign"]).ok();
    dct(&["trust", "sign", &format!("{gun}:v2")]).ok();
    let root_id = trust(&agent, &stack, &["--json", "inspect", &gun]).json()["administrative_keys"]
        ["root"][0]["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("targets.pub"),
        pem_of(&agent, &gun, "targets").1,
    )
    .unwrap();

    // The CI's own cosign key, signing v2 with the real cosign.
    let cosign = gotools::cosign();
    let keygen = Command::new(&cosign)
        .args(["generate-key-pair"])
        .current_dir(dir.path())
        .env("COSIGN_PASSWORD", "ci")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let signed = Command::new(&cosign)
        .args([
            "sign",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--use-signing-config=false",
            "--new-bundle-format=false",
            "-y",
            "--registry-cacert",
        ])
        .arg(&stack.ca)
        .arg(format!("{gun}@{}", digest(&m2)))
        .current_dir(dir.path())
        .env("COSIGN_PASSWORD", "ci")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );

    let policy = |require: u32, dct_root: &str| {
        let file = dir
            .path()
            .join(format!("policy-{require}-{}.toml", &dct_root[..8]));
        std::fs::write(
            &file,
            format!(
                r#"[[scope]]
repositories = ["{host}/team/*"]
require = {require}

[[scope.signer]]
name = "dct"
dct = {{ root_keys = ["{dct_root}"] }}

[[scope.signer]]
name = "agent-cosign"
cosign = {{ public_key = "targets.pub" }}

[[scope.signer]]
name = "ci"
cosign = {{ public_key = "cosign.pub" }}
"#
            ),
        )
        .unwrap();
        file.to_str().unwrap().to_string()
    };
    let two = policy(2, &root_id);
    let one = policy(1, &root_id);
    let verify = |image: &str, policy: &str| dct(&["--json", "verify", image, "--policy", policy]);

    // v1: DCT and the agent's cosign key (2 of 3).
    let j = verify(&format!("{gun}:v1"), &two).json();
    assert_eq!(j["digest"], digest(&m1), "{j}");
    let passed: Vec<&str> = j["signers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["passed"] == true)
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(passed, ["dct", "agent-cosign"], "{j}");
    // v2: DCT and the CI's cosign key (2 of 3).
    let j = verify(&format!("{gun}:v2"), &two).json();
    assert_eq!(j["digest"], digest(&m2), "{j}");
    // Each format alone, one required: DCT (v2), the agent's cosign key (v1), the CI's (v2).
    let alone = |name: &str, spec: serde_json::Value| {
        let file = dir.path().join(format!("alone-{name}.json"));
        std::fs::write(
            &file,
            serde_json::json!({"scope": [{"repositories": [gun], "signer": [spec]}]}).to_string(),
        )
        .unwrap();
        file.to_str().unwrap().to_string()
    };
    let dct_alone = alone(
        "dct",
        serde_json::json!({"name": "dct", "dct": {"root_keys": [root_id]}}),
    );
    verify(&format!("{gun}:v2"), &dct_alone).ok();
    let agent_alone = alone(
        "agent",
        serde_json::json!({"name": "a", "cosign": {"public_key": "targets.pub"}}),
    );
    verify(&format!("{gun}:v1"), &agent_alone).ok();
    let ci_alone = alone(
        "ci",
        serde_json::json!({"name": "ci", "cosign": {"public_key": "cosign.pub"}}),
    );
    verify(&format!("{gun}:v2"), &ci_alone).ok();
    // Printed for docker pull.
    let out = dct(&[
        "verify",
        &format!("{gun}:v1"),
        "--policy",
        &two,
        "--print-digest",
    ])
    .ok();
    assert_eq!(out.stdout.trim(), digest(&m1));

    // A root no pin names: DCT fails, one cosign signer is not two.
    let wrong_root = policy(2, &"ab".repeat(32));
    let err = one_line(
        dct(&["verify", &format!("{gun}:v1"), "--policy", &wrong_root]),
        "signers: 1 of the 2 required",
    );
    assert!(err.contains("dct: "), "{err}");
    // A digest no signer vouches for: nobody passes, even with one required.
    let other = format!("{gun}@sha256:{}", "cd".repeat(32));
    one_line(
        dct(&["verify", &other, "--policy", &one]),
        "signers: 0 of the 1 required",
    );
    // v2 is not signed by the agent's cosign key: with only that key in the policy it fails.
    let only_agent = dir.path().join("only-agent.json");
    std::fs::write(
        &only_agent,
        serde_json::json!({"scope": [{"repositories": [gun], "signer": [
            {"name": "agent-cosign", "cosign": {"public_key": "targets.pub"}}]}]})
        .to_string(),
    )
    .unwrap();
    let err = one_line(
        dct(&[
            "verify",
            &format!("{gun}:v2"),
            "--policy",
            only_agent.to_str().unwrap(),
        ]),
        "no cosign signature",
    );
    assert!(err.contains("another key"), "{err}");
    // Notation: a CA on the token, a leaf for the targets key, v2 signed in Notation too.
    let ca = agent
        .dct(&["--json", "notation", "ca", "init", "--name", "Gate CA"])
        .json();
    let ca_key = ca["key"]["key_id"].as_str().unwrap().to_string();
    let targets_id = pem_of(&agent, &gun, "targets").0;
    agent
        .dct(&["notation", "cert", "issue", &targets_id, "--ca", &ca_key])
        .ok();
    let listed = agent.dct(&["--json", "key", "list"]).json()["keys"].clone();
    let subject = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == targets_id.as_str())
        .and_then(|k| k["notation_certificate"]["subject"].as_str())
        .unwrap()
        .to_string();
    let trust_dir = dir.path().join("notation-trust");
    agent
        .dct(&[
            "notation",
            "export-trust",
            trust_dir.to_str().unwrap(),
            "--scope",
            &gun,
        ])
        .ok();
    let ca_pem = trust_dir.join("truststore/x509/ca/dct/dct-ca-1.pem");
    assert!(ca_pem.exists());
    dct(&["migrate", &gun, "--to", "notation", "--key", &targets_id]).ok();
    let notation_policy = |identity: &str, require: u32| {
        let file = dir
            .path()
            .join(format!("n-{require}-{}.json", identity.len()));
        std::fs::write(
            &file,
            serde_json::json!({"scope": [{"repositories": [gun], "require": require, "signer": [
                {"name": "release", "notation": {"trust_store": ca_pem.to_str().unwrap(),
                    "identities": [identity]}},
                {"name": "ci", "cosign": {"public_key": "cosign.pub"}}]}]})
            .to_string(),
        )
        .unwrap();
        file.to_str().unwrap().to_string()
    };
    // v2: Notation (the migrated signature) and the CI's cosign key, 2 of 2.
    let j = verify(&format!("{gun}:v2"), &notation_policy(&subject, 2)).json();
    assert_eq!(j["digest"], digest(&m2), "{j}");
    // An identity the leaf is not: Notation does not count.
    let err = one_line(
        dct(&[
            "verify",
            &format!("{gun}:v2"),
            "--policy",
            &notation_policy("CN=someone else", 2),
        ]),
        "not a trusted identity",
    );
    assert!(err.contains("ci passed"), "{err}");
    // v1 has no CI signature: Notation alone is 1 of 2 (v1 was migrated to Notation too).
    one_line(
        dct(&[
            "verify",
            &format!("{gun}:v1"),
            "--policy",
            &notation_policy(&subject, 2),
        ]),
        "signers: 1 of the 2 required",
    );

    // A Notation signature that expires (the real notation, through the plugin): it
    // counts until it expires, then the gate names the expiry.
    let m3 = registry.push_runnable("team/gated", "v3", "gated v3");
    let config = dir.path().join("notation-config");
    agent
        .dct_env(
            &["notation", "install"],
            &[("XDG_CONFIG_HOME", config.to_str().unwrap())],
        )
        .ok();
    let signed = Command::new(gotools::notation())
        .args([
            "sign",
            "--plugin",
            "dct",
            "--id",
            &targets_id,
            "--expiry",
            "4s",
        ])
        .arg(format!("{gun}@{}", digest(&m3)))
        .env("XDG_CONFIG_HOME", &config)
        .env("HOME", &config)
        .env("SSL_CERT_FILE", &stack.ca)
        .env("DCT_SOCKET", &agent.socket)
        .output()
        .unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let expiring = notation_policy(&subject, 1);
    let image3 = format!("{gun}@{}", digest(&m3));
    verify(&image3, &expiring).ok();
    std::thread::sleep(std::time::Duration::from_secs(5));
    one_line(
        dct(&["verify", &image3, "--policy", &expiring]),
        "expired at",
    );

    // A repository no scope covers; a misspelt policy.
    one_line(
        dct(&[
            "verify",
            &format!("{host}/elsewhere/app:v1"),
            "--policy",
            &one,
        ]),
        "policy: no scope",
    );
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        "[[scope]]\nrepositories = [\"x/*\"]\nrequires = 1\n[[scope.signer]]\nname = \"a\"\ncosign = { public_key = \"cosign.pub\" }\n",
    )
    .unwrap();
    let r = dct(&[
        "verify",
        &format!("{gun}:v1"),
        "--policy",
        typo.to_str().unwrap(),
    ]);
    assert_ne!(r.code(), 0);
    assert!(r.stderr().contains("requires"), "{}", r.stderr());

    // No agent running (a production host): a keyless one is started for the check.
    let nowhere = dir.path().join("no-agent.sock");
    let mut cmd = Command::new(bin("dct"));
    cmd.args(["--json", "verify", &format!("{gun}:v1"), "--policy", &two])
        .args(srv)
        .env("DCT_SOCKET", &nowhere)
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .env("XDG_RUNTIME_DIR", dir.path().join("runtime"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["digest"], digest(&m1), "{j}");
    assert!(!nowhere.exists());

    // Offline: no trust server, no registry. What the online checks saw decides: the tag's
    // digest, the cached DCT data, the OCI signatures that passed (checked again in full).
    let two_of_notation = notation_policy(&subject, 2);
    drop(registry);
    stack.stop();
    let j = dct(&[
        "--json",
        "verify",
        &format!("{gun}:v2"),
        "--policy",
        &two_of_notation,
        "--offline",
    ])
    .json();
    assert_eq!(j["digest"], digest(&m2), "{j}");
    let j = dct(&[
        "--json",
        "verify",
        &format!("{gun}:v1"),
        "--policy",
        &two,
        "--offline",
    ])
    .json();
    assert_eq!(j["digest"], digest(&m1), "{j}");
    // A tag never checked online has no digest to go by.
    one_line(
        dct(&[
            "verify",
            &format!("{gun}:v9"),
            "--policy",
            &one,
            "--offline",
        ]),
        "offline: no digest",
    );
}
