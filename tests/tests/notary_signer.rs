//! The agent as notary-server's signer: the real notary-server (`trust_service.type:
//! remote`) pointed at the agent's `[notary_signer]` listener, keys on a real SoftHSM2
//! token, the whole round trip checked with the real notary client; and the API itself
//! checked from a gRPC client (mutual TLS, health, key scope, content checks).

use std::path::Path;

use dct_proto::notary as pb;
use dct_tests::notary::{
    pki, signer_agent, signer_agent_with, wait_listening, NotaryStack, SignerAt,
};
use dct_tests::signer_client::{channel, clients};
use dct_tests::Agent;
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use serde_json::Value;
use tonic::Code;

fn notary_ok(stack: &NotaryStack, dir: &Path, args: &[&str]) -> String {
    let out = stack.notary(dir, args, None);
    assert!(
        out.status.success(),
        "notary {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The keyid of the one signature on a role file the notary client cached.
fn cached_signer(trust_dir: &Path, gun: &str, role: &str) -> String {
    let path = trust_dir
        .join("tuf")
        .join(gun)
        .join("metadata")
        .join(format!("{role}.json"));
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let sigs = doc["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 1, "{role}: {sigs:?}");
    sigs[0]["keyid"].as_str().unwrap().to_string()
}

/// The agent's keys of `role` for `gun`, by canonical ID.
fn token_keys(agent: &Agent, role: &str, gun: &str) -> Vec<String> {
    let list = agent.dct(&["--json", "key", "list"]).json();
    list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["role"] == role && k["gun"] == gun)
        .map(|k| k["canonical_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn notary_server_signs_with_keys_on_the_agents_token() {
    let gun = "example.com/hsm-backed";
    let pki = pki();
    let (_hsm, mut agent, port) = signer_agent(pki.path(), "notary-signer");
    let stack = NotaryStack::start_on(pki, true, SignerAt::External(port));

    // The publisher: the real notary client, its own root/targets/snapshot keys.
    let publisher = tempfile::tempdir().unwrap();
    let v1 = publisher.path().join("v1.txt");
    std::fs::write(&v1, b"release one\n").unwrap();
    let v1s = v1.to_str().unwrap();
    notary_ok(&stack, publisher.path(), &["init", gun]);
    notary_ok(&stack, publisher.path(), &["add", gun, "v1", v1s]);
    notary_ok(&stack, publisher.path(), &["publish", gun]);

    // The timestamp key notary-server made lives on the token, and signed timestamp.json.
    let ts_keys = token_keys(&agent, "timestamp", gun);
    assert_eq!(ts_keys.len(), 1, "{ts_keys:?}");
    let reader = tempfile::tempdir().unwrap();
    let listed = notary_ok(&stack, reader.path(), &["list", gun]);
    assert!(listed.contains("v1"), "{listed}");
    assert_eq!(cached_signer(reader.path(), gun, "timestamp"), ts_keys[0]);
    let verify = stack.notary(
        reader.path(),
        &["verify", gun, "v1"],
        Some(b"release one\n"),
    );
    assert!(verify.status.success(), "{verify:?}");
    let bad = stack.notary(reader.path(), &["verify", gun, "v1"], Some(b"tampered\n"));
    assert!(!bad.status.success());

    // Hand the snapshot key to the server: it is made on the token too.
    notary_ok(
        &stack,
        publisher.path(),
        &["key", "rotate", gun, "snapshot", "--server-managed"],
    );
    let v2 = publisher.path().join("v2.txt");
    std::fs::write(&v2, b"release two\n").unwrap();
    notary_ok(
        &stack,
        publisher.path(),
        &["add", gun, "v2", v2.to_str().unwrap()],
    );
    notary_ok(&stack, publisher.path(), &["publish", gun]);
    let sn_keys = token_keys(&agent, "snapshot", gun);
    assert_eq!(sn_keys.len(), 1, "{sn_keys:?}");
    let reader2 = tempfile::tempdir().unwrap();
    let listed = notary_ok(&stack, reader2.path(), &["list", gun]);
    assert!(listed.contains("v1") && listed.contains("v2"), "{listed}");
    assert_eq!(cached_signer(reader2.path(), gun, "snapshot"), sn_keys[0]);
    assert_eq!(cached_signer(reader2.path(), gun, "timestamp"), ts_keys[0]);

    // The keys survive an agent restart (the PIN file unlocks again): the server goes on
    // signing with the same keys, and the reader that trusted them before follows.
    agent.restart();
    wait_listening(port, &agent);
    let v3 = publisher.path().join("v3.txt");
    std::fs::write(&v3, b"release three\n").unwrap();
    notary_ok(
        &stack,
        publisher.path(),
        &["add", gun, "v3", v3.to_str().unwrap()],
    );
    // notary-server's gRPC client saw the signer go away and redials with backoff (about
    // a second): publish until it is back, as an operator would. The change stays staged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = stack.notary(publisher.path(), &["publish", gun], None);
        if out.status.success() {
            break;
        }
        let err = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            err.contains("Unavailable") && std::time::Instant::now() < deadline,
            "publish after restart: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let listed = notary_ok(&stack, reader2.path(), &["list", gun]);
    assert!(listed.contains("v3"), "{listed}");
    assert_eq!(cached_signer(reader2.path(), gun, "timestamp"), ts_keys[0]);
    assert_eq!(cached_signer(reader2.path(), gun, "snapshot"), sn_keys[0]);
    assert_eq!(token_keys(&agent, "timestamp", gun), ts_keys);
    assert!(
        agent.log_text().contains("unlocked from its PIN file"),
        "{}",
        agent.log_text()
    );
    assert!(!agent.log_text().contains("signer-pin-2468"));

    // Every signature notary-server asked for is in the audit log, under its certificate.
    let audit = std::fs::read_to_string(agent.audit_path()).unwrap();
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let signs: Vec<&Value> = records.iter().filter(|r| r["action"] == "sign").collect();
    assert!(signs
        .iter()
        .any(|r| r["key_id"] == ts_keys[0].as_str() && r["role"] == "timestamp"));
    assert!(signs
        .iter()
        .any(|r| r["key_id"] == sn_keys[0].as_str() && r["role"] == "snapshot"));
    for r in &signs {
        assert_eq!(r["peer"]["tls"]["subject"], "CN=127.0.0.1", "{r}");
        assert_eq!(r["gun"], gun);
        assert_eq!(r["sha256"].as_str().unwrap().len(), 64);
    }
    assert_eq!(
        records
            .iter()
            .filter(|r| r["action"] == "create_key")
            .count(),
        2,
        "timestamp and snapshot keys made: {audit}"
    );
    agent.dct(&["audit", "verify"]).ok();
}

#[test]
fn notary_signer_api_refuses_strangers_and_signs_only_what_fits() {
    let pki = pki();
    let (hsm, agent, port) = signer_agent(pki.path(), "api-checks");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // No client certificate: no API.
        if let Ok(ch) = channel(port, pki.path(), false).await {
            let (mut km, _) = clients(ch);
            let r = km.get_key_info(pb::KeyId { id: "ab".repeat(32) }).await;
            assert!(r.is_err(), "a client without a certificate was served");
        }
        let ch = channel(port, pki.path(), true).await.expect("mTLS channel");

        // Health, as notary-server checks it.
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
        for service in [
            "grpc.health.v1.Health.KeyManagement",
            "grpc.health.v1.Health.Signer",
        ] {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health")
                .into_inner();
            assert_eq!(r.status, 1, "{service}: SERVING");
        }

        let (mut km, mut signer) = clients(ch);
        let gun = "example.com/api";
        let created = km
            .create_key(pb::CreateKeyRequest {
                algorithm: "ecdsa".into(),
                gun: gun.into(),
                role: "timestamp".into(),
            })
            .await
            .expect("create")
            .into_inner();
        let id = created.key_info.unwrap().key_id.unwrap().id;
        assert_eq!(token_keys(&agent, "timestamp", gun), vec![id.clone()]);
        let info = km
            .get_key_info(pb::KeyId { id: id.clone() })
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.role, "timestamp");
        assert_eq!(info.public_key, created.public_key);
        assert_eq!(info.key_info.unwrap().algorithm.unwrap().algorithm, "ecdsa");

        // A timestamp key signs a Timestamp; the signature verifies over the content.
        let soon = dct_tests::expires_in(7);
        let content = format!(r#"{{"_type":"Timestamp","expires":"{soon}","meta":{{"snapshot":{{"hashes":{{"sha256":"AAAA"}},"length":1}}}},"version":3}}"#).into_bytes();
        let content = content.as_slice();
        let sig = signer
            .sign(pb::SignatureRequest {
                key_id: Some(pb::KeyId { id: id.clone() }),
                content: content.to_vec(),
            })
            .await
            .expect("sign")
            .into_inner();
        assert_eq!(sig.algorithm.unwrap().algorithm, "ecdsa");
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&info.public_key).unwrap();
        let s = p256::ecdsa::Signature::from_slice(&sig.content).expect("raw r||s");
        vk.verify(content, &s).expect("signature verifies");

        // ... and nothing else.
        let snapshot = format!(r#"{{"_type":"Snapshot","expires":"{soon}","meta":{{}},"version":3}}"#).into_bytes();
        let e = signer
            .sign(pb::SignatureRequest {
                key_id: Some(pb::KeyId { id: id.clone() }),
                content: snapshot.to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = signer
            .sign(pb::SignatureRequest {
                key_id: Some(pb::KeyId { id: id.clone() }),
                content: b"\x00not json".to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        // Only server roles, only ecdsa.
        for (alg, role, code) in [
            ("ecdsa", "root", Code::PermissionDenied),
            ("ecdsa", "targets", Code::PermissionDenied),
            ("rsa", "timestamp", Code::InvalidArgument),
        ] {
            let e = km
                .create_key(pb::CreateKeyRequest {
                    algorithm: alg.into(),
                    gun: gun.into(),
                    role: role.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), code, "{alg} {role}: {e:?}");
        }

        // The user's own keys on the same token are invisible to the server.
        let targets = agent.generate("targets", Some(gun));
        let list = agent.dct(&["--json", "key", "list"]).json();
        let canon = list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == targets.as_str() || k["canonical_id"] == targets.as_str())
            .map(|k| k["canonical_id"].as_str().unwrap().to_string())
            .expect("targets key listed");
        for req in [canon.clone(), "00".repeat(32)] {
            let e = km.get_key_info(pb::KeyId { id: req.clone() }).await.unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
            let e = signer
                .sign(pb::SignatureRequest {
                    key_id: Some(pb::KeyId { id: req }),
                    content: content.to_vec(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
        }
        km.delete_key(pb::KeyId { id: canon.clone() }).await.expect("no-op");
        assert!(token_keys(&agent, "targets", gun).contains(&canon));

        // Locked token: a clear refusal, not a hang or a crash.
        agent.dct(&["lock"]).ok();
        let e = signer
            .sign(pb::SignatureRequest {
                key_id: Some(pb::KeyId { id: id.clone() }),
                content: content.to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("locked"), "{e:?}");
        agent.unlock(&hsm);

        // Delete: gone from the token; deleting again is fine, as notary-signer does.
        km.delete_key(pb::KeyId { id: id.clone() }).await.expect("delete");
        assert!(token_keys(&agent, "timestamp", gun).is_empty());
        let e = km.get_key_info(pb::KeyId { id: id.clone() }).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        km.delete_key(pb::KeyId { id }).await.expect("idempotent delete");
    });
}

/// notary-server asks the signer's health before using it: with an audit log that cannot
/// be written nothing would be signed, so the agent says NOT_SERVING (a healthy agent says
/// SERVING in `the_api_checks_its_callers_and_what_it_signs`).
#[test]
fn health_is_not_serving_while_the_audit_log_cannot_be_written() {
    let pki = pki();
    // A full disk: the log opens, every write fails (the PIN file's unlock is the first).
    let (_hsm, agent, port) =
        signer_agent_with(pki.path(), "audit-health", "audit_log = \"/dev/full\"\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = channel(port, pki.path(), true).await.expect("mTLS channel");
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "grpc.health.v1.Health.Signer".into(),
                })
                .await
                .expect("health")
                .into_inner();
            if r.status == 2 {
                break; // NOT_SERVING
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still status {} with a failing audit log",
                r.status
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    // For the audit log's sake, not the token's: the token is unlocked and present.
    let log = agent.log_text();
    assert!(
        log.contains("the audit log cannot be written; reporting NOT_SERVING"),
        "{log}"
    );
}

/// notary-server's traffic: many repositories, each with its own timestamp key made just
/// before, signing at once with versions counting up. Every signature verifies under its
/// repository's key, each is in the audit log once, and a version going back is refused
/// (the default policy) even in the burst. Made to catch the key lookup and the key
/// handles going wrong when keys are new and requests race (a burst right after CreateKey
/// once made every request list the whole token).
#[test]
fn many_repositories_sign_at_once_with_their_own_keys() {
    let pki = pki();
    let (_hsm, agent, port) = signer_agent(pki.path(), "burst");
    let rt = tokio::runtime::Runtime::new().unwrap();
    const REPOS: usize = 12;
    const VERSIONS: u64 = 6;
    let soon = dct_tests::expires_in(7);
    let timestamp = move |v: u64| {
        format!(r#"{{"_type":"Timestamp","expires":"{soon}","meta":{{"snapshot":{{"hashes":{{"sha256":"AAAA"}},"length":{v}}}}},"version":{v}}}"#).into_bytes()
    };
    let signed = rt.block_on(async {
        let ch = channel(port, pki.path(), true).await.expect("mTLS channel");
        let (km, signer) = clients(ch);
        let mut made = tokio::task::JoinSet::new();
        for r in 0..REPOS {
            let mut km = km.clone();
            made.spawn(async move {
                km.create_key(pb::CreateKeyRequest {
                    algorithm: "ecdsa".into(),
                    gun: format!("example.com/burst/r{r}"),
                    role: "timestamp".into(),
                })
                .await
                .expect("create")
                .into_inner()
            });
        }
        let keys = made.join_all().await;
        let mut repos = tokio::task::JoinSet::new();
        for k in keys {
            let id = k.key_info.unwrap().key_id.unwrap().id;
            let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&k.public_key).unwrap();
            let mut signer = signer.clone();
            let timestamp = timestamp.clone();
            repos.spawn(async move {
                for v in 1..=VERSIONS {
                    let content = timestamp(v);
                    let sig = signer
                        .sign(pb::SignatureRequest {
                            key_id: Some(pb::KeyId { id: id.clone() }),
                            content: content.clone(),
                        })
                        .await
                        .unwrap_or_else(|e| panic!("version {v} of key {id}: {e:?}"))
                        .into_inner();
                    let s = p256::ecdsa::Signature::from_slice(&sig.content).expect("r||s");
                    vk.verify(&content, &s).expect("signature verifies");
                }
                // Back a version, other content: refused.
                let e = signer
                    .sign(pb::SignatureRequest {
                        key_id: Some(pb::KeyId { id: id.clone() }),
                        content: timestamp(VERSIONS - 2)
                            .into_iter()
                            .map(|b| if b == b'A' { b'B' } else { b })
                            .collect(),
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
                id
            });
        }
        repos.join_all().await
    });
    let log = std::fs::read_to_string(agent.audit_path()).unwrap();
    for id in signed {
        let records: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["key_id"] == id.as_str())
            .collect();
        let signs = records.iter().filter(|r| r["action"] == "sign").count();
        let refusals = records.iter().filter(|r| r["action"] == "refuse").count();
        assert_eq!(signs as u64, VERSIONS, "key {id}: {records:?}");
        assert_eq!(refusals, 1, "key {id}: {records:?}");
    }
}
