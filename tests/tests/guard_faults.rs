//! The guard under races, faults and a hostile client: two requests for one version at
//! once (over the dct API and the notary-signer API), a publish that fails halfway and is
//! retried (through a proxy answering 503), a stale POST to the real notary-server that
//! signs through the agent, an audit log moved aside, a client approving its own signature.

use std::path::Path;

use dct_proto::dct::v1 as pb;
use dct_proto::notary as npb;
use dct_tests::faulty::FaultyProxy;
use dct_tests::notary::{notary_list, pki, signer_agent, NotaryStack, SignerAt};
use dct_tests::signer_client::{channel, clients};
use dct_tests::{hex, Agent, SoftHsm};
use serde_json::Value;
use sha2::{Digest, Sha256};

const GUN: &str = "registry.example.com/guard";

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The dct API on the agent's socket, from this test.
async fn agent_client(socket: &Path) -> pb::agent_client::AgentClient<tonic::transport::Channel> {
    let path = socket.to_path_buf();
    let ch = tonic::transport::Endpoint::try_from("http://dct-agent.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .unwrap();
    pb::agent_client::AgentClient::new(ch)
}

fn targets_file(version: u64, tag: &str) -> Vec<u8> {
    let sha = base64_sha(tag.as_bytes());
    format!(
        r#"{{"signed":{{"_type":"Targets","delegations":{{"keys":{{}},"roles":[]}},"expires":"{}","targets":{{"{tag}":{{"hashes":{{"sha256":"{sha}"}},"length":{}}}}},"version":{version}}},"signatures":[]}}"#,
        dct_tests::expires_in(30),
        tag.len()
    )
    .into_bytes()
}

fn base64_sha(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b))
}

#[test]
fn racing_requests_for_one_version_never_both_sign_over_the_dct_api() {
    let (_hsm, agent) = Agent::on_fresh_token("race", "2222");
    let key = agent.generate("targets", Some(GUN));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (both, one, pairs) = rt.block_on(async {
        let c = agent_client(&agent.socket).await;
        let (mut both, mut one) = (0, 0);
        let pairs = 200u64;
        for v in 1..=pairs {
            let req = |tag: &str| pb::SignMetadataRequest {
                document: targets_file(v, tag),
                key_id: key.clone(),
                gun: GUN.into(),
                ..Default::default()
            };
            let (mut a, mut b) = (c.clone(), c.clone());
            let (ra, rb) = (req("left"), req("right"));
            let (x, y) = tokio::join!(async move { a.sign_metadata(ra).await }, async move {
                b.sign_metadata(rb).await
            });
            match (x.is_ok(), y.is_ok()) {
                (true, true) => both += 1,
                (true, false) | (false, true) => one += 1,
                (false, false) => {}
            }
            for r in [x, y].into_iter().filter_map(Result::err) {
                assert_eq!(r.code(), tonic::Code::PermissionDenied, "{r:?}");
                assert!(r.message().contains("policy (version)"), "{r:?}");
            }
        }
        (both, one, pairs)
    });
    assert_eq!(both, 0, "{both} of {pairs} pairs were both signed");
    // Each version was signed exactly once (one of the two won), and the log says so.
    assert_eq!(one, pairs);
    let signed = records(&agent.audit_path())
        .into_iter()
        .filter(|r| r["action"] == "sign" && r["outcome"] == "ok")
        .count();
    assert_eq!(signed as u64, pairs);
}

/// The `signed` part of a timestamp notary-server would send, canonical.
fn timestamp_content(version: u64, nonce: &str) -> Vec<u8> {
    format!(
        r#"{{"_type":"Timestamp","expires":"{}","meta":{{"snapshot":{{"hashes":{{"sha256":"{}"}},"length":1}}}},"version":{version}}}"#,
        dct_tests::expires_in(10),
        base64_sha(nonce.as_bytes())
    )
    .into_bytes()
}

#[test]
fn racing_requests_for_one_version_never_both_sign_over_the_notary_signer_api() {
    let pki = pki();
    let (_hsm, agent, port) = signer_agent(pki.path(), "race-signer");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (both, repeats_ok, lower_refused) = rt.block_on(async {
        let ch = channel(port, pki.path(), true).await.unwrap();
        let (mut km, signer) = clients(ch);
        let key = km
            .create_key(npb::CreateKeyRequest {
                algorithm: "ecdsa".into(),
                gun: GUN.into(),
                role: "timestamp".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let id = key.key_info.unwrap().key_id.unwrap();
        let sign = |content: Vec<u8>| {
            let mut s = signer.clone();
            let id = id.clone();
            async move {
                s.sign(npb::SignatureRequest {
                    key_id: Some(id),
                    content,
                })
                .await
            }
        };
        let mut both = 0;
        for v in 1..=100u64 {
            let (x, y) = tokio::join!(
                sign(timestamp_content(v, "a")),
                sign(timestamp_content(v, "b"))
            );
            if x.is_ok() && y.is_ok() {
                both += 1;
            }
        }
        // Later, notary-server may repeat its highest version with other content (as it
        // does after a failed store), never go lower.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let repeat = sign(timestamp_content(100, "c")).await.is_ok();
        let lower = sign(timestamp_content(99, "d")).await;
        (
            both,
            repeat,
            matches!(lower, Err(s) if s.code() == tonic::Code::PermissionDenied),
        )
    });
    assert_eq!(both, 0, "{both} of 100 pairs were both signed");
    assert!(repeats_ok, "a repeat of the highest version was refused");
    assert!(lower_refused, "a lower version was signed");
    drop(agent);
}

/// `dct trust ARGS` through `proxy` to a plain-HTTP notary-server.
fn via(agent: &Agent, proxy: &FaultyProxy, args: &[&str]) -> dct_tests::Run {
    let url = proxy.url();
    let mut all = vec!["trust", "--server", url.as_str()];
    all.extend_from_slice(args);
    agent.dct(&all)
}

fn sign_args<'a>(image: &'a str, digest: &'a str, size: &'a str) -> Vec<&'a str> {
    vec!["sign", image, "--digest", digest, "--size", size]
}

#[test]
fn a_publish_failed_halfway_can_be_retried_for_every_trust_operation() {
    let stack = NotaryStack::start_plain_http();
    let proxy = FaultyProxy::start(stack.port);
    let (_hsm, agent) = Agent::on_fresh_token("retry", "3333");
    let gun = "registry.example.com/retry";
    let image = format!("{gun}:v1");
    let digest = format!("sha256:{}", hex(&Sha256::digest(b"one")));

    // Each operation: the server's answer to its publish is a 503; the retry succeeds.
    let step = |name: &str, args: &[&str]| {
        proxy.fail_next_posts(1);
        let failed = via(&agent, &proxy, args);
        assert_ne!(failed.code(), 0, "{name}: the 503 did not fail it");
        assert!(
            failed.stderr().contains("503"),
            "{name}: {}",
            failed.stderr()
        );
        let retried = via(&agent, &proxy, args);
        assert_eq!(
            retried.code(),
            0,
            "{name}: retry refused: {}",
            retried.stderr()
        );
    };
    step("init", &["init", gun]);
    step("sign", &sign_args(&image, &digest, "3"));
    let alice = agent.generate("targets/releases", Some(gun));
    step(
        "signer add",
        &["signer", "add", "alice", gun, "--key-id", &alice],
    );
    let v2 = format!("{gun}:v2");
    let d2 = format!("sha256:{}", hex(&Sha256::digest(b"two")));
    step("sign v2", &sign_args(&v2, &d2, "3"));
    step("revoke", &["revoke", &image]);
    step("rotate", &["key", "rotate", gun, "targets"]);
    assert!(proxy.failed.load(std::sync::atomic::Ordering::SeqCst) >= 6);

    // The real notary client agrees with what was published.
    let rows = notary_list(&stack, gun, &[]);
    let tags: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert!(tags.contains(&"v2") && !tags.contains(&"v1"), "{rows:?}");

    // A different document under a version the server took is still refused: the ledger
    // holds targets as published at the server's version.
    let ledger = records(&agent.audit_path());
    assert!(
        ledger
            .iter()
            .any(|r| r["action"] == "publish" && r["role"] == "targets"),
        "{ledger:#?}"
    );
}

#[test]
fn a_killed_agent_does_not_lock_out_the_retry() {
    let stack = NotaryStack::start_plain_http();
    let proxy = FaultyProxy::start(stack.port);
    let (hsm, mut agent) = Agent::on_fresh_token("killed", "4444");
    let gun = "registry.example.com/killed";
    // Signed, never published (the server failed), then the agent dies (SIGKILL: no
    // checkpoint at shutdown): the retry after a restart goes through.
    proxy.fail_next_posts(1);
    via(&agent, &proxy, &["init", gun]).fails(1, "503");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = agent.stop();
    // The killed agent left its socket behind; the harness waits for a new one.
    let _ = std::fs::remove_file(&agent.socket);
    agent.restart();
    agent.unlock(&hsm);
    via(&agent, &proxy, &["init", gun]).ok();
    assert_eq!(
        notary_list(&stack, gun, &[]).len(),
        0,
        "a fresh repository has no tags"
    );
}

#[test]
fn a_stale_post_to_notary_server_does_not_lock_its_signer_out() {
    let pki = pki();
    let (_hsm, agent, port) = signer_agent(pki.path(), "stale");
    let stack = NotaryStack::start_on(pki, true, SignerAt::External(port));
    let (_h2, user) = Agent::on_fresh_token("stale-user", "5555");
    let gun = "registry.example.com/stale";
    let trust = |args: &[&str]| dct_tests::notary::trust(&user, &stack, args);
    trust(&["init", gun]).ok();
    let digest = format!("sha256:{}", hex(&Sha256::digest(b"one")));
    trust(&sign_args(&format!("{gun}:v1"), &digest, "3")).ok();

    // Anyone may POST the public targets.json back: notary-server has the agent sign a new
    // snapshot and timestamp, then fails to store them (the targets version is not new).
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("targets");
    let base = format!("{}/v2/{gun}/_trust/tuf", stack.url);
    let ca = stack.ca.to_str().unwrap();
    let get = std::process::Command::new("curl")
        .args(["-sf", "--cacert", ca, "-o"])
        .arg(&targets)
        .arg(format!("{base}/targets.json"))
        .status()
        .unwrap();
    assert!(get.success());
    let post = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            ca,
            "-F",
        ])
        .arg(format!("files=@{};filename=targets", targets.display()))
        .arg(format!("{base}/"))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&post.stdout).into_owned();
    assert_ne!(code, "200", "notary-server took a stale targets.json");
    // (The agent refuses a second document of one version within a second of the first as
    // a race; notary-server's retry of that version comes with the next publish.)
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // Publishing goes on working, and the timestamp keeps being renewed.
    for tag in ["v2", "v3"] {
        let d = format!("sha256:{}", hex(&Sha256::digest(tag.as_bytes())));
        trust(&sign_args(&format!("{gun}:{tag}"), &d, "2")).ok();
    }
    let rows = notary_list(&stack, gun, &[]);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let recs = records(&agent.audit_path());
    assert!(
        !recs
            .iter()
            .any(|r| r["action"] == "refuse" && r["role"] == "timestamp"),
        "{recs:#?}"
    );
}

#[test]
fn moving_the_audit_log_aside_forgets_no_version() {
    let hsm = SoftHsm::new("moved", "6666");
    let mut agent = Agent::start(Some(&hsm));
    agent.unlock(&hsm);
    let key = agent.generate("targets", Some(GUN));
    let docs = tempfile::tempdir().unwrap();
    let doc = |v: u64, tag: &str| {
        let p = docs.path().join(format!("t{v}{tag}.json"));
        std::fs::write(&p, targets_file(v, tag)).unwrap();
        p
    };
    let v2 = doc(2, "b");
    agent.tuf_sign(&v2, &key, &["--gun", GUN]).ok();
    assert!(agent.stop());
    // Rotated away (as logrotate does): a new, empty log.
    std::fs::rename(
        agent.audit_path(),
        agent.audit_path().with_extension("log.1"),
    )
    .unwrap();
    agent.restart();
    agent.unlock(&hsm);
    let v1 = doc(1, "a");
    agent
        .tuf_sign(&v1, &key, &["--gun", GUN])
        .fails(1, "would go back");
    let other_v2 = doc(2, "c");
    agent
        .tuf_sign(&other_v2, &key, &["--gun", GUN])
        .fails(1, "second, different version");
    agent.tuf_sign(&doc(3, "d"), &key, &["--gun", GUN]).ok();

    // A crash, and the log moved away: the agent refuses to start rather than forget,
    // until told to go on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = agent.stop();
    std::fs::rename(
        agent.audit_path(),
        agent.audit_path().with_extension("log.2"),
    )
    .unwrap();
    // (Bounded: an agent that did start is stopped by `timeout`.)
    let out = std::process::Command::new("timeout")
        .arg("5")
        .arg(dct_tests::bin("dct-agent"))
        .arg("--config")
        .arg(agent.dir.path().join("agent.toml"))
        .arg("--socket")
        .arg(agent.dir.path().join("run2").join("agent.sock"))
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{err}\nledger: {}",
        std::fs::read_to_string(agent.dir.path().join("versions.ledger")).unwrap_or_default()
    );
    assert!(err.contains("--accept-ledger-gap"), "{err}");
}

#[test]
fn a_client_cannot_approve_its_own_signature() {
    let hsm = SoftHsm::new("selfapprove", "7777");
    let config = format!(
        "{}\n[[policy]]\nrole = \"targets\"\nconfirm = true\n",
        hsm.agent_config()
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    let key = agent.generate("targets", Some(GUN));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(async {
        let mut c = agent_client(&agent.socket).await;
        c.sign_metadata(pb::SignMetadataRequest {
            document: targets_file(1, "x"),
            key_id: key.clone(),
            gun: GUN.into(),
            confirm_ticket: "00".repeat(16),
            ..Default::default()
        })
        .await
        .unwrap_err()
    });
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("cannot approve its own"), "{err:?}");
    let recs = records(&agent.audit_path());
    assert!(
        recs.iter().any(|r| r["action"] == "refuse"
            && r["outcome"]
                .as_str()
                .is_some_and(|o| o.contains("cannot approve its own"))),
        "{recs:#?}"
    );
}
