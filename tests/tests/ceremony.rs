//! Root-key ceremonies: a 2-of-3 root across three SoftHSM2 tokens, signed in separate
//! agent processes with separate token directories, published to the real notary-server,
//! accepted by the real notary client; an under-signed root refused by us and by the server.

use dct_tests::notary::{trust, NotaryStack};
use dct_tests::{hex, Agent, SoftHsm};
use serde_json::Value;
use sha2::{Digest, Sha256};

const PIN: &str = "ceremony-pin-31";

/// An agent serving every named token of `hsm`, each unlocked.
fn agent_on_tokens(hsm: &SoftHsm, labels: &[&str]) -> Agent {
    let config: String = labels
        .iter()
        .map(|l| {
            format!(
                "[[pkcs11]]\nmodule = \"{}\"\ntoken = \"{l}\"\n",
                dct_tests::SOFTHSM_MODULE
            )
        })
        .collect();
    let agent = Agent::start_with_config(Some(hsm), &config);
    let pin = agent.dir.path().join("pin");
    std::fs::write(&pin, PIN).unwrap();
    for l in labels {
        agent
            .dct(&["unlock", "--token", l, "--pin-file", pin.to_str().unwrap()])
            .ok();
    }
    agent
}

fn json_file(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_two_of_three_root_made_signed_apart_and_published() {
    let stack = NotaryStack::start();
    let gun = "registry.example.com/ceremonial";
    // The ceremony machine: three tokens.
    let hsm = SoftHsm::new("root-a", PIN);
    let dir_a = hsm.token_dir();
    let dir_b = hsm.add_token("root-b");
    let dir_c = hsm.add_token("root-c");
    let a = agent_on_tokens(&hsm, &["root-a", "root-b", "root-c"]);
    let cdir = tempfile::tempdir().unwrap();
    let d = cdir.path().join("ceremony");
    let ds = d.to_str().unwrap();
    let cer = |agent: &Agent, args: &[&str]| {
        let mut all = vec![
            "ceremony",
            "--server",
            &stack.url,
            "--tlscacert",
            stack.ca.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        agent.dct(&all)
    };
    cer(
        &a,
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
            "root-c",
            "--operator",
            "alice",
        ],
    )
    .ok();
    let ceremony = json_file(&d.join("ceremony.json"));
    let keys: Vec<(String, String)> = ceremony["root_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["token"].as_str().unwrap().to_string(),
                k["key_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 3);
    let root: Value = json_file(&d.join("root.json"));
    assert_eq!(root["signed"]["roles"]["root"]["threshold"], 2);
    assert_eq!(root["signatures"].as_array().unwrap().len(), 0);
    cer(&a, &["finish", ds]).fails(1, "0 of 2");
    // The ceremony machine keeps only the first key's token from here on.
    drop(a);

    // Token b on another machine: one signature is not enough, for us or for the server.
    let hsm_b = SoftHsm::carry(&dir_b, "root-b", PIN);
    let b = Agent::start(Some(&hsm_b));
    b.unlock(&hsm_b);
    let key_b = &keys.iter().find(|(t, _)| t == "root-b").unwrap().1;
    let out = cer(&b, &["sign", ds, "--key", key_b, "--operator", "bob"]).ok();
    assert!(out.stdout.contains("1 of 2"), "{}", out.stdout);
    cer(&b, &["finish", ds]).fails(1, "1 of 2");
    let one_sig = std::fs::read(d.join("root.json")).unwrap();
    let opts = dct_agent::trust::notary::ServerOpts {
        url: stack.url.clone(),
        ca_pem: Some(std::fs::read(&stack.ca).unwrap()),
        trust_on_first_use: false,
    };
    let client = dct_agent::trust::notary::NotaryClient::new(&opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(client.publish(gun, vec![("root".into(), one_sig.clone())]));
    let err = refused
        .expect_err("notary-server took a 1-of-2 root")
        .to_string();
    assert!(err.contains("ErrBadRoot"), "{err}");
    // And we refuse to publish it, even when it is passed off as finished.
    std::fs::write(d.join("root.final.json"), &one_sig).unwrap();
    trust(&b, &stack, &["init", gun, "--root-from", ds])
        .fails(1, "not signed by its own root keys");
    std::fs::remove_file(d.join("root.final.json")).unwrap();

    // Token c elsewhere again: the second signature completes it.
    let hsm_c = SoftHsm::carry(&dir_c, "root-c", PIN);
    let c = Agent::start(Some(&hsm_c));
    c.unlock(&hsm_c);
    let key_c = &keys.iter().find(|(t, _)| t == "root-c").unwrap().1;
    let out = cer(&c, &["sign", ds, "--key", key_c, "--operator", "carol"]).ok();
    assert!(out.stdout.contains("2 of 2"), "{}", out.stdout);
    cer(&c, &["finish", ds, "--operator", "carol"]).ok();

    // Published from the ceremony machine (it holds the targets key, on token a).
    let hsm_a = SoftHsm::carry(&dir_a, "root-a", PIN);
    let a2 = Agent::start(Some(&hsm_a));
    a2.unlock(&hsm_a);
    trust(&a2, &stack, &["init", gun, "--root-from", ds]).ok();
    let content = b"ceremonial release\n";
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
    let fresh = tempfile::tempdir().unwrap();
    let list = stack.notary(fresh.path(), &["list", gun], None);
    assert!(list.status.success(), "notary list: {list:?}");
    assert!(String::from_utf8_lossy(&list.stdout).contains("v1"));
    let served = stack.notary(fresh.path(), &["verify", gun, "v1"], Some(content));
    assert!(served.status.success(), "notary verify: {served:?}");

    // The transcript: four steps, each file's hash as it is now where it was last written.
    let t = json_file(&d.join("transcript.json"));
    let steps: Vec<&str> = t
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["root init", "sign", "sign", "finish"]);
    assert_eq!(t[0]["operator"], "alice");
    assert_eq!(t[2]["operator"], "carol");
    let fin = hex(&Sha256::digest(
        std::fs::read(d.join("root.final.json")).unwrap(),
    ));
    assert_eq!(t[3]["files"]["root.final.json"], fin.as_str());
    for k in t[0]["details"]["root_keys"].as_array().unwrap() {
        assert_eq!(k["extractable"], false);
        assert_eq!(k["certificate_sha256"].as_str().unwrap().len(), 64);
    }
    let md = std::fs::read_to_string(d.join("transcript.md")).unwrap();
    assert!(md.contains("operator: bob") && md.contains(&fin), "{md}");

    // verify: sound as it is; a changed file and a missing signature are found.
    let out = cer(&a2, &["verify", ds]).ok();
    assert!(
        out.stdout.contains("2 of 2 root signatures, finished"),
        "{}",
        out.stdout
    );
    let copy = |name: &str| {
        let to = cdir.path().join(name);
        std::fs::create_dir(&to).unwrap();
        for f in std::fs::read_dir(&d).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
        to
    };
    let changed = copy("changed");
    let text = std::fs::read_to_string(changed.join("ceremony.json")).unwrap();
    std::fs::write(
        changed.join("ceremony.json"),
        text.replace("\"threshold\": 2", "\"threshold\": 1"),
    )
    .unwrap();
    cer(&a2, &["verify", changed.to_str().unwrap()]).fails(1, "ceremony.json changed after step 1");
    let unsigned = copy("unsigned");
    let mut root = json_file(&unsigned.join("root.final.json"));
    root["signatures"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["keyid"] != key_c.as_str());
    std::fs::write(
        unsigned.join("root.final.json"),
        serde_json::to_vec(&root).unwrap(),
    )
    .unwrap();
    let err = cer(&a2, &["verify", unsigned.to_str().unwrap()]).fails(1, "");
    assert!(err.contains(&format!("signature by {key_c}")), "{err}");
}

#[test]
fn root_rotations_by_ceremony_keep_clients_that_trusted_the_old_root() {
    let stack = NotaryStack::start();
    let gun = "registry.example.com/rotated-by-ceremony";
    let hsm = SoftHsm::new("t1", PIN);
    for l in ["t2", "t3", "t4"] {
        hsm.add_token(l);
    }
    let a = agent_on_tokens(&hsm, &["t1", "t2", "t3", "t4"]);
    let cer = |args: &[&str]| {
        let mut all = vec![
            "ceremony",
            "--server",
            &stack.url,
            "--tlscacert",
            stack.ca.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        a.dct(&all)
    };
    // 1 of 1, on t1; a notary client trusts it.
    let init = trust(&a, &stack, &["--json", "init", gun, "--token", "t1"]).json();
    let first_root = init["root_key_id"].as_str().unwrap().to_string();
    let content = b"v1\n";
    let digest = format!("sha256:{}", hex(&Sha256::digest(content)));
    trust(
        &a,
        &stack,
        &[
            "sign",
            &format!("{gun}:v1"),
            "--digest",
            &digest,
            "--size",
            "3",
        ],
    )
    .ok();
    let reader = tempfile::tempdir().unwrap();
    let list = |what: &str| {
        let out = stack.notary(reader.path(), &["list", gun], None);
        assert!(out.status.success(), "{what}: notary list: {out:?}");
    };
    list("1 of 1");

    // To 2 of 3 (t2, t3, t4).
    let work = tempfile::tempdir().unwrap();
    let d1 = work.path().join("to-2-of-3");
    let d1s = d1.to_str().unwrap();
    cer(&[
        "root",
        "rotate",
        gun,
        "--dir",
        d1s,
        "--keys",
        "3",
        "--threshold",
        "2",
        "--token",
        "t2",
        "--token",
        "t3",
        "--token",
        "t4",
    ])
    .ok();
    let new_keys: Vec<String> = json_file(&d1.join("ceremony.json"))["root_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_string())
        .collect();
    cer(&["sign", d1s, "--key", &new_keys[0]]).ok();
    cer(&["sign", d1s, "--key", &new_keys[1]]).ok();
    // Signed only by the new keys: refused by us and by notary-server.
    cer(&["finish", d1s]).fails(1, "by the current root keys");
    let opts = dct_agent::trust::notary::ServerOpts {
        url: stack.url.clone(),
        ca_pem: Some(std::fs::read(&stack.ca).unwrap()),
        trust_on_first_use: false,
    };
    let client = dct_agent::trust::notary::NotaryClient::new(&opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let only_new = std::fs::read(d1.join("root.json")).unwrap();
    let err = rt
        .block_on(client.publish(gun, vec![("root".into(), only_new)]))
        .expect_err("notary-server took a root the old keys did not sign")
        .to_string();
    assert!(err.contains("ErrBadRoot"), "{err}");
    // With the old key too: published, and the client that trusted 1-of-1 follows.
    cer(&["sign", d1s, "--key", &first_root]).ok();
    cer(&["finish", d1s]).ok();
    trust(&a, &stack, &["publish-root", gun, d1s]).ok();
    list("2 of 3");
    let root: Value = serde_json::from_slice(
        &std::fs::read(
            reader
                .path()
                .join("tuf")
                .join(gun)
                .join("metadata")
                .join("root.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(root["signed"]["roles"]["root"]["threshold"], 2);
    assert_eq!(root["signed"]["version"], 2);

    // And back to 1 of 1 (a new key on t1), signed by 2 of the 3 and the new key.
    let d2 = work.path().join("to-1-of-1");
    let d2s = d2.to_str().unwrap();
    cer(&[
        "root",
        "rotate",
        gun,
        "--dir",
        d2s,
        "--keys",
        "1",
        "--threshold",
        "1",
        "--token",
        "t1",
    ])
    .ok();
    let back: String = json_file(&d2.join("ceremony.json"))["root_keys"][0]["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    cer(&["sign", d2s, "--key", &new_keys[2]]).ok();
    cer(&["finish", d2s]).fails(1, "1 of 2 signatures by the current root keys");
    cer(&["sign", d2s, "--key", &new_keys[0]]).ok();
    cer(&["sign", d2s, "--key", &back]).ok();
    cer(&["finish", d2s]).ok();
    cer(&["verify", d2s]).ok();
    trust(&a, &stack, &["publish-root", gun, d2s]).ok();
    list("back to 1 of 1");
    // Still signing: the repository works under the new root.
    trust(
        &a,
        &stack,
        &[
            "sign",
            &format!("{gun}:v2"),
            "--digest",
            &digest,
            "--size",
            "3",
        ],
    )
    .ok();
    let fresh = tempfile::tempdir().unwrap();
    let out = stack.notary(fresh.path(), &["list", gun], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("v2"),
        "{out:?}"
    );
}

/// What pkcs11-tool says of the private keys on a token.
fn private_key_access(hsm: &SoftHsm, label: &str) -> String {
    let out = std::process::Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &hsm.conf)
        .args([
            "--module",
            dct_tests::SOFTHSM_MODULE,
            "--token-label",
            label,
        ])
        .args([
            "--login",
            "--pin",
            PIN,
            "--list-objects",
            "--type",
            "privkey",
        ])
        .output()
        .expect("pkcs11-tool (opensc)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_root_key_backed_up_wrapped_into_another_token_signs_as_the_original() {
    let stack = NotaryStack::start();
    let gun = "registry.example.com/backed-up";
    let hsm = SoftHsm::new("primary", PIN);
    let backup_dir = hsm.add_token("backup");
    let a = agent_on_tokens(&hsm, &["primary", "backup"]);
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("ceremony");
    let ds = d.to_str().unwrap();
    // An offline ceremony: the server's timestamp and snapshot keys fetched beforehand.
    let opts = dct_agent::trust::notary::ServerOpts {
        url: stack.url.clone(),
        ca_pem: Some(std::fs::read(&stack.ca).unwrap()),
        trust_on_first_use: false,
    };
    let client = dct_agent::trust::notary::NotaryClient::new(&opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for role in ["timestamp", "snapshot"] {
        let k = rt.block_on(client.get_server_key(gun, role)).unwrap();
        std::fs::write(
            work.path().join(format!("{role}.key")),
            k.to_value().to_string(),
        )
        .unwrap();
    }
    let (ts, sn) = (
        work.path().join("timestamp.key"),
        work.path().join("snapshot.key"),
    );
    a.dct(&[
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
        "primary",
        "--backup",
        "primary=backup",
        "--timestamp-key",
        ts.to_str().unwrap(),
        "--snapshot-key",
        sn.to_str().unwrap(),
    ])
    .ok();
    let key = json_file(&d.join("ceremony.json"))["root_keys"][0].clone();
    assert_eq!(key["extractable"], true);
    assert!(key["backup"]
        .as_str()
        .unwrap()
        .contains("wrapped into token backup"));
    let key_id = key["key_id"].as_str().unwrap().to_string();
    // The copy: sensitive, not extractable; the original: sensitive (wrappable only).
    let copy = private_key_access(&hsm, "backup");
    assert!(
        copy.contains("sensitive") && !copy.contains(" extractable"),
        "{copy}"
    );
    let original = private_key_access(&hsm, "primary");
    eprintln!("backup: {copy}\nprimary: {original}");
    assert!(original.contains("sensitive"), "{original}");
    // The backup token alone, on another machine, signs the root as the original key.
    let hsm_b = SoftHsm::carry(&backup_dir, "backup", PIN);
    let b = Agent::start(Some(&hsm_b));
    b.unlock(&hsm_b);
    let listed = b.dct(&["--json", "key", "list"]).json();
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["key_id"] == key_id.as_str()),
        "{listed}"
    );
    b.dct(&["ceremony", "sign", ds, "--key", &key_id]).ok();
    b.dct(&["ceremony", "finish", ds]).ok();
    // Published (the targets key is on the primary token), accepted by the notary client.
    trust(&a, &stack, &["init", gun, "--root-from", ds]).ok();
    let fresh = tempfile::tempdir().unwrap();
    let out = stack.notary(fresh.path(), &["list", gun], None);
    assert!(out.status.success(), "{out:?}");
    let root = json_file(&d.join("root.final.json"));
    assert_eq!(root["signatures"][0]["keyid"], key_id.as_str());
    // Nothing on disk holds a private key in the clear.
    for dir in [work.path(), a.dir.path(), b.dir.path()] {
        for entry in walk(dir) {
            let text = std::fs::read(&entry).unwrap_or_default();
            assert!(
                !text.windows(11).any(|w| w == b"PRIVATE KEY"),
                "{} holds a private key",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}
