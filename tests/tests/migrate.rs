//! `dct migrate` (issue 17): a DCT repository signed by the agent against the real
//! notary-server, its images in a real registry (pushed by skopeo), migrated to cosign
//! signatures written by the agent and checked by the real cosign CLI.

use std::process::{Command, Output};

use dct_tests::notary::{trust, NotaryStack};
use dct_tests::registry::Registry;
use dct_tests::{gotools, hex, Agent};
use sha2::{Digest, Sha256};

fn digest(manifest: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(manifest)))
}

/// The PEM public key of the agent's targets key for `gun`, and its ID.
fn targets_key(agent: &Agent, gun: &str) -> (String, String) {
    dct_tests::key_pem(agent, gun, "targets")
}

fn cosign_verify(stack: &NotaryStack, pubkey: &std::path::Path, image: &str) -> Output {
    Command::new(gotools::cosign())
        .args(["verify", "--insecure-ignore-tlog", "--key"])
        .arg(pubkey)
        .arg("--registry-cacert")
        .arg(&stack.ca)
        .arg(image)
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap()
}

#[test]
fn migrate_signs_what_dct_signed_skips_moved_tags_and_resumes() {
    let stack = NotaryStack::start();
    let registry = Registry::start(&stack);
    let host = registry.host.clone();
    let (_hsm, agent) = Agent::on_fresh_token("migrate", "2222");
    let gun = format!("{host}/team/app");
    let tags = ["v1", "v2", "v3", "v4", "v5", "v6"];
    let manifests: Vec<Vec<u8>> = tags
        .iter()
        .map(|t| registry.push_runnable("team/app", t, &format!("app {t}")))
        .collect();
    let images: Vec<String> = tags.iter().map(|t| format!("{gun}:{t}")).collect();
    let mut args = vec!["sign"];
    args.extend(images.iter().map(String::as_str));
    trust(&agent, &stack, &["init", &gun]).ok();
    trust(&agent, &stack, &args).ok();
    // v5 and v6 move in the registry after they were signed.
    let moved5 = registry.push_runnable("team/app", "v5", "app v5, moved");
    registry.push_runnable("team/app", "v6", "app v6, moved");
    let (key_id, pem) = targets_key(&agent, &gun);
    let dir = tempfile::tempdir().unwrap();
    let pubkey = dir.path().join("targets.pub");
    std::fs::write(&pubkey, pem).unwrap();
    let srv = [
        "--server",
        &stack.url,
        "--tlscacert",
        stack.ca.to_str().unwrap(),
    ];
    let migrate = |extra: &[&str]| {
        let mut a = vec![
            "--json", "migrate", &gun, "--to", "cosign", "--key", &key_id,
        ];
        a.extend_from_slice(&srv);
        a.extend_from_slice(extra);
        agent.dct(&a)
    };

    // A dry run signs nothing.
    let dry = migrate(&["--dry-run"]).json();
    assert_eq!(dry["summary"]["would_sign"], 4, "{dry}");
    assert_eq!(dry["summary"]["moved"], 2, "{dry}");
    assert!(
        !cosign_verify(&stack, &pubkey, &format!("{gun}@{}", digest(&manifests[0])))
            .status
            .success()
    );

    let run = migrate(&[]);
    let out = run.json();
    assert_eq!(out["summary"]["signed"], 4, "{out}");
    assert_eq!(out["summary"]["moved"], 2, "{out}");
    let stderr = run.stderr();
    assert!(stderr.contains("[6/6]"), "progress: {stderr}");
    assert!(
        stderr.contains("moved (the registry now serves"),
        "{stderr}"
    );

    // The real cosign accepts every migrated digest with the targets key ...
    for (t, m) in tags.iter().zip(&manifests).take(4) {
        let v = cosign_verify(&stack, &pubkey, &format!("{gun}@{}", digest(m)));
        assert!(
            v.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        assert!(String::from_utf8_lossy(&v.stdout).contains(&digest(m)));
    }
    // ... and refuses the moved tags (no signature for what they serve now), and another key.
    let v = cosign_verify(&stack, &pubkey, &format!("{gun}:v5"));
    assert!(!v.status.success());
    assert!(
        !cosign_verify(&stack, &pubkey, &format!("{gun}@{}", digest(&moved5)))
            .status
            .success()
    );
    let other = dir.path().join("other.pub");
    let (_h2, stranger) = Agent::on_fresh_token("migrate-other", "3333");
    trust(&stranger, &stack, &["init", &format!("{host}/team/other")]).ok();
    std::fs::write(
        &other,
        targets_key(&stranger, &format!("{host}/team/other")).1,
    )
    .unwrap();
    assert!(
        !cosign_verify(&stack, &other, &format!("{gun}@{}", digest(&manifests[0])))
            .status
            .success()
    );

    // A second run signs nothing again.
    let again = migrate(&[]).json();
    assert_eq!(again["summary"]["already_signed"], 4, "{again}");
    assert_eq!(again["summary"]["signed"], 0, "{again}");

    // An agent that never saw the repository's root refuses to migrate it.
    let (other_id, _) = targets_key(&stranger, &format!("{host}/team/other"));
    let mut a = vec!["migrate", &gun, "--to", "cosign", "--key", &other_id];
    a.extend_from_slice(&srv);
    let refused = stranger.dct(&a);
    assert_eq!(refused.code(), 1, "{}", refused.stderr());
    assert!(
        refused.stderr().contains("neither pinned nor cached"),
        "{}",
        refused.stderr()
    );
    // A key whose policy does not allow cosign signatures (the root key) is refused per
    // tag, and nothing is written for a new tag.
    let m7 = registry.push_runnable("team/app", "v7", "app v7");
    trust(&agent, &stack, &["sign", &format!("{gun}:v7")]).ok();
    let keys = agent.dct(&["--json", "key", "list"]).json()["keys"].clone();
    let root_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "root")
        .unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut a = vec!["migrate", &gun, "--to", "cosign", "--key", &root_id];
    a.extend_from_slice(&srv);
    let refused = agent.dct(&a);
    assert_eq!(refused.code(), 1, "{}", refused.stderr());
    assert!(
        refused.stderr().contains("policy (oci)"),
        "{}",
        refused.stderr()
    );
    assert!(
        !cosign_verify(&stack, &pubkey, &format!("{gun}@{}", digest(&m7)))
            .status
            .success()
    );
    let audit = std::fs::read_to_string(agent.audit_path()).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"refuse\"") && l.contains("policy (oci)")),
        "the refusal is audited"
    );
}

#[test]
fn dual_signing_publishes_dct_and_writes_cosign_in_one_operation() {
    let stack = NotaryStack::start();
    let registry = Registry::start(&stack);
    let host = registry.host.clone();
    let (_hsm, agent) = Agent::on_fresh_token("dual", "2222");
    let gun = format!("{host}/team/dual");
    let no_oci = format!("{host}/team/dct-only");
    // Another agent whose targets keys may not make OCI signatures.
    let hsm2 = dct_tests::SoftHsm::new("dual-no-oci", "3333");
    let config = format!(
        "{}[[policy]]\nrole = \"targets\"\noci = []\n",
        hsm2.agent_config()
    );
    let strict = Agent::start_with_config(Some(&hsm2), &config);
    strict.unlock(&hsm2);
    let m1 = registry.push_runnable("team/dual", "v1", "dual v1");
    let srv = [
        "--server",
        &stack.url,
        "--tlscacert",
        stack.ca.to_str().unwrap(),
    ];
    let sign_with = |agent: &Agent, image: &str| {
        let mut a = vec!["--json", "trust", "sign", image, "--also", "cosign"];
        a.extend_from_slice(&srv);
        agent.dct(&a)
    };
    let sign = |image: &str| sign_with(&agent, image);
    let out = sign(&format!("{gun}:v1")).json();
    assert_eq!(out["also"][0]["ok"], true, "{out}");
    assert_eq!(out["also"][0]["format"], "cosign", "{out}");
    // The notary client sees the DCT signature, cosign the OCI one, for the same digest.
    let listed = dct_tests::notary::notary_list(&stack, &gun, &[]);
    assert!(
        listed
            .iter()
            .any(|(t, d, _, _)| t == "v1" && format!("sha256:{d}") == digest(&m1)),
        "{listed:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let pubkey = dir.path().join("t.pub");
    std::fs::write(&pubkey, targets_key(&agent, &gun).1).unwrap();
    let v = cosign_verify(&stack, &pubkey, &format!("{gun}:v1"));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    // A refused OCI signature leaves DCT published and says how to finish.
    let m2 = registry.push_runnable("team/dct-only", "v1", "dct only");
    let run = sign_with(&strict, &format!("{no_oci}:v1"));
    let err = run.fails(1, "signed in DCT, but 1 of 1 cosign signature(s) failed");
    assert!(err.contains("dct migrate"), "{err}");
    let j: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(j["also"][0]["ok"], false, "{j}");
    assert!(
        j["also"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("policy (oci)"),
        "{j}"
    );
    let listed = dct_tests::notary::notary_list(&stack, &no_oci, &[]);
    assert!(
        listed
            .iter()
            .any(|(t, d, _, _)| t == "v1" && format!("sha256:{d}") == digest(&m2)),
        "{listed:?}"
    );
    std::fs::write(&pubkey, targets_key(&strict, &no_oci).1).unwrap();
    assert!(!cosign_verify(&stack, &pubkey, &format!("{no_oci}:v1"))
        .status
        .success());
}

/// `n` distinct manifests of one runnable image (an annotation each), pushed as tags
/// t0..t{n-1}.
fn push_many(registry: &Registry, name: &str, n: usize) -> Vec<Vec<u8>> {
    let base = registry.push_runnable(name, "t0", "many");
    let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
    let mut out = vec![base];
    for i in 1..n {
        v["annotations"] = serde_json::json!({"dct.test.n": i.to_string()});
        let bytes = serde_json::to_vec(&v).unwrap();
        out.push(registry.put_manifest(name, &format!("t{i}"), &bytes));
    }
    out
}

#[test]
fn a_notary_client_repository_of_200_tags_migrates_but_for_its_moved_tags() {
    let stack = NotaryStack::start();
    let registry = Registry::start(&stack);
    let host = registry.host.clone();
    let gun = format!("{host}/legacy/app");
    let manifests = push_many(&registry, "legacy/app", 200);

    // The real notary client signs all 200 tags (the manifests' digests and sizes).
    let ndir = tempfile::tempdir().unwrap();
    let out = stack.notary(ndir.path(), &["init", &gun], None);
    assert!(out.status.success(), "notary init: {out:?}");
    for (i, m) in manifests.iter().enumerate() {
        let (size, sha) = (m.len().to_string(), hex(&Sha256::digest(m)));
        let tag = format!("t{i}");
        let out = stack.notary(
            ndir.path(),
            &["addhash", &gun, &tag, &size, "--sha256", &sha],
            None,
        );
        assert!(out.status.success(), "notary addhash: {out:?}");
    }
    let out = stack.notary(ndir.path(), &["publish", &gun], None);
    assert!(out.status.success(), "notary publish: {out:?}");
    // Two tags move in the registry afterwards.
    let moved = [7usize, 142];
    for i in moved {
        let mut v: serde_json::Value = serde_json::from_slice(&manifests[i]).unwrap();
        v["annotations"] = serde_json::json!({"dct.test.moved": "yes"});
        registry.put_manifest(
            "legacy/app",
            &format!("t{i}"),
            &serde_json::to_vec(&v).unwrap(),
        );
    }

    // The agent: the notary client's root pinned, its targets key imported into SoftHSM2.
    let root: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            ndir.path()
                .join("tuf")
                .join(&gun)
                .join("metadata")
                .join("root.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let root_id = root["signed"]["roles"]["root"]["keyids"][0]
        .as_str()
        .unwrap()
        .to_string();
    let hsm = dct_tests::SoftHsm::new("legacy", "2222");
    let agent = Agent::start_with_config(
        Some(&hsm),
        &format!(
            "{}[trust.pinning.certs]\n\"{gun}\" = [\"{root_id}\"]\n",
            hsm.agent_config()
        ),
    );
    agent.unlock(&hsm);
    let targets_file = std::fs::read_dir(ndir.path().join("private"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains("role: targets")
        })
        .unwrap();
    let key_id = agent
        .dct_env(
            &["key", "import", targets_file.to_str().unwrap()],
            &[("NOTARY_TARGETS_PASSPHRASE", "test-targets-passphrase")],
        )
        .ok()
        .stdout
        .trim()
        .to_string();
    let (_, pem) = targets_key(&agent, &gun);
    let dir = tempfile::tempdir().unwrap();
    let pubkey = dir.path().join("targets.pub");
    std::fs::write(&pubkey, pem).unwrap();

    let srv = [
        "--server",
        &stack.url,
        "--tlscacert",
        stack.ca.to_str().unwrap(),
    ];
    // A signing CA on the token and a leaf for the imported key, for Notation.
    let ca = agent
        .dct(&["--json", "notation", "ca", "init", "--name", "Legacy CA"])
        .json();
    let ca_key = ca["key"]["key_id"].as_str().unwrap().to_string();
    agent
        .dct(&["notation", "cert", "issue", &key_id, "--ca", &ca_key])
        .ok();
    let config = dir.path().join("notation");
    agent
        .dct(&[
            "notation",
            "export-trust",
            config.join("notation").to_str().unwrap(),
            "--scope",
            &gun,
        ])
        .ok();
    let migrate = || {
        let mut a = vec![
            "--json",
            "migrate",
            &gun,
            "--to",
            "cosign,notation",
            "--key",
            &key_id,
        ];
        a.extend_from_slice(&srv);
        agent.dct(&a).json()
    };
    let out = migrate();
    // 198 in each format; the two moved tags reported in each.
    assert_eq!(out["summary"]["signed"], 396, "{}", out["summary"]);
    assert_eq!(out["summary"]["moved"], 4, "{}", out["summary"]);
    let moved_tags: Vec<&str> = out["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["outcome"] == "moved" && t["format"] == "cosign")
        .map(|t| t["tag"].as_str().unwrap())
        .collect();
    assert_eq!(moved_tags, ["t142", "t7"]);

    // The real cosign accepts every migrated digest (four at a time) and refuses the
    // moved tags.
    let ok: Vec<usize> = (0..200).filter(|i| !moved.contains(i)).collect();
    std::thread::scope(|s| {
        for chunk in ok.chunks(50) {
            let (stack, pubkey, gun, manifests, config) =
                (&stack, &pubkey, &gun, &manifests, &config);
            s.spawn(move || {
                for &i in chunk {
                    let image = format!("{gun}@{}", digest(&manifests[i]));
                    let v = cosign_verify(stack, pubkey, &image);
                    assert!(
                        v.status.success(),
                        "t{i}: {}",
                        String::from_utf8_lossy(&v.stderr)
                    );
                    let v = notation(config, stack, &["verify", &image]);
                    assert!(
                        v.status.success(),
                        "notation t{i}: {}",
                        String::from_utf8_lossy(&v.stderr)
                    );
                }
            });
        }
    });
    for i in moved {
        assert!(!cosign_verify(&stack, &pubkey, &format!("{gun}:t{i}"))
            .status
            .success());
        assert!(
            !notation(&config, &stack, &["verify", &format!("{gun}:t{i}")])
                .status
                .success()
        );
    }
    // A second run does nothing.
    let again = migrate();
    assert_eq!(
        again["summary"]["already_signed"], 396,
        "{}",
        again["summary"]
    );
    assert_eq!(again["summary"]["signed"], 0);
}

/// The real notation CLI with its own configuration directory.
fn notation(config: &std::path::Path, stack: &NotaryStack, args: &[&str]) -> Output {
    Command::new(gotools::notation())
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("HOME", config)
        .env("SSL_CERT_FILE", &stack.ca)
        .output()
        .unwrap()
}

#[test]
fn migrate_and_dual_sign_to_notation_verified_by_notation_and_cosign() {
    let stack = NotaryStack::start();
    let registry = Registry::start(&stack);
    let host = registry.host.clone();
    let (_hsm, agent) = Agent::on_fresh_token("migrate-notation", "2222");
    let gun = format!("{host}/team/notated");
    let m1 = registry.push_runnable("team/notated", "t1", "one");
    let m2 = registry.push_runnable("team/notated", "t2", "two");
    trust(&agent, &stack, &["init", &gun]).ok();
    trust(
        &agent,
        &stack,
        &["sign", &format!("{gun}:t1"), &format!("{gun}:t2")],
    )
    .ok();
    let (key_id, pem) = targets_key(&agent, &gun);
    let srv = [
        "--server",
        &stack.url,
        "--tlscacert",
        stack.ca.to_str().unwrap(),
    ];
    let migrate = || {
        let mut a = vec![
            "--json",
            "migrate",
            &gun,
            "--to",
            "notation,cosign",
            "--key",
            &key_id,
        ];
        a.extend_from_slice(&srv);
        agent.dct(&a)
    };
    // Without a certificate chain, Notation signatures are refused per tag, cosign's made.
    let run = migrate();
    assert_eq!(run.code(), 1);
    let out: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(out["summary"]["failed"], 2, "{out}");
    assert_eq!(out["summary"]["signed"], 2, "{out}");
    assert!(
        run.stdout().contains("no certificate chain"),
        "{}",
        run.stdout()
    );

    // A signing CA on the token, a leaf for the targets key; then Notation too.
    let ca = agent
        .dct(&["--json", "notation", "ca", "init", "--name", "Migration CA"])
        .json();
    let ca_key = ca["key"]["key_id"].as_str().unwrap().to_string();
    agent
        .dct(&["notation", "cert", "issue", &key_id, "--ca", &ca_key])
        .ok();
    let out = migrate().json();
    assert_eq!(out["summary"]["signed"], 2, "{out}");
    assert_eq!(out["summary"]["already_signed"], 2, "{out}");

    // The real notation verifies with the exported trust store and policy.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    agent
        .dct(&[
            "notation",
            "export-trust",
            config.join("notation").to_str().unwrap(),
            "--scope",
            &gun,
        ])
        .ok();
    for m in [&m1, &m2] {
        let v = notation(
            &config,
            &stack,
            &["verify", &format!("{gun}@{}", digest(m))],
        );
        assert!(
            v.status.success(),
            "{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    // A second run does nothing in either format.
    let again = migrate().json();
    assert_eq!(again["summary"]["already_signed"], 4, "{again}");

    // Dual signing in both formats: DCT, Notation and cosign all verify the new tag.
    let m3 = registry.push_runnable("team/notated", "t3", "three");
    let mut a = vec![
        "--json",
        "trust",
        "sign",
        &format!("{gun}:t3"),
        "--also",
        "notation,cosign",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    a.extend(srv.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = agent.dct(&a).json();
    let also = out["also"].as_array().unwrap();
    assert_eq!(also.len(), 2, "{out}");
    assert!(also.iter().all(|x| x["ok"] == true), "{out}");
    let v = notation(
        &config,
        &stack,
        &["verify", &format!("{gun}@{}", digest(&m3))],
    );
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let pubkey = dir.path().join("t.pub");
    std::fs::write(&pubkey, pem).unwrap();
    let v = cosign_verify(&stack, &pubkey, &format!("{gun}:t3"));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let listed = dct_tests::notary::notary_list(&stack, &gun, &[]);
    assert!(listed.iter().any(|(t, _, _, _)| t == "t3"), "{listed:?}");
    // Notation refuses a digest nobody signed.
    let m4 = registry.push_runnable("team/notated", "t4", "four, unsigned");
    let v = notation(
        &config,
        &stack,
        &["verify", &format!("{gun}@{}", digest(&m4))],
    );
    assert!(!v.status.success());
}
