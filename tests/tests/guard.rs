//! Guarding the keys: the audit log (hash chain, durable before a signature leaves, signing
//! stops when it cannot be written, `dct audit verify` finds tampering) and who may talk to
//! the agent (another uid is refused before any RPC, and audited).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dct_tests::{Agent, SoftHsm};
use serde_json::Value;
use sha2::{Digest, Sha256};

const GUN: &str = "example.com/guarded";
const SIGNED: &str = r#"{"_type":"Targets","delegations":{"keys":{},"roles":[]},"expires":"2028-01-01T00:00:00Z","targets":{},"version":1}"#;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A targets document to sign, written beside the agent.
fn document(agent: &Agent, name: &str) -> std::path::PathBuf {
    let path = agent.dir.path().join(name);
    std::fs::write(&path, format!(r#"{{"signed":{SIGNED},"signatures":[]}}"#)).unwrap();
    path
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn audit_log_chains_every_key_use_and_finds_tampering() {
    let (_hsm, agent) = Agent::on_fresh_token("audit", "1357");
    let key = agent.generate("targets", Some(GUN));
    let doc = document(&agent, "targets.json");
    agent.tuf_sign(&doc, &key, &["--gun", GUN]).ok();
    // A refusal: the key belongs to another GUN.
    let other = document(&agent, "other.json");
    agent
        .tuf_sign(&other, &key, &["--gun", "example.com/else"])
        .fails(1, "belongs to");

    let log = agent.audit_path();
    let recs = records(&log);
    let actions: Vec<&str> = recs.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["unlock", "create_key", "sign", "refuse"],
        "{recs:#?}"
    );
    let sign = &recs[2];
    assert_eq!(sign["key_id"], key.as_str());
    assert_eq!(sign["role"], "targets");
    assert_eq!(sign["gun"], GUN);
    assert_eq!(sign["sha256"], hex(&Sha256::digest(SIGNED.as_bytes())));
    assert_eq!(sign["outcome"], "ok");
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(sign["peer"]["local"]["uid"], uid);
    assert!(sign["peer"]["local"]["pid"].as_i64().unwrap() > 0);
    assert!(recs[3]["outcome"].as_str().unwrap().contains("belongs to"));
    assert_eq!(recs[3]["gun"], "example.com/else");
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
    }
    assert!(!std::fs::read_to_string(&log).unwrap().contains("1357"));
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Sound: with the file, and as the agent's own log (checked against its count).
    let out = agent.dct(&["audit", "verify"]).ok();
    assert!(out.stdout.contains("4 records"), "{}", out.stdout);
    let file = log.to_str().unwrap();
    agent.dct(&["audit", "verify", file]).ok();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let check = |name: &str, content: String, needle: &str| {
        let p = agent.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        agent
            .dct(&["audit", "verify", p.to_str().unwrap()])
            .fails(1, needle);
    };
    // A changed record (the signed GUN rewritten) breaks the chain at the next line.
    check(
        "changed.log",
        format!(
            "{}\n{}\n{}\n{}\n",
            lines[0],
            lines[1],
            lines[2].replace(GUN, "example.com/forged"),
            lines[3]
        ),
        "line 4",
    );
    // A removed record, and two swapped records.
    check(
        "removed.log",
        format!("{}\n{}\n{}\n", lines[0], lines[1], lines[3]),
        "line 3",
    );
    check(
        "swapped.log",
        format!("{}\n{}\n{}\n{}\n", lines[0], lines[2], lines[1], lines[3]),
        "line 2",
    );
    // Records cut from the end: only the agent's own count shows it.
    std::fs::write(&log, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
    agent.dct(&["audit", "verify"]).fails(1, "cut from the end");
}

#[test]
fn an_unwritable_audit_log_stops_signing() {
    // A full disk: opening works, writing fails.
    let hsm = SoftHsm::new("full", "2468");
    let config = format!("audit_log = \"/dev/full\"\n{}", hsm.agent_config());
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    agent
        .dct(&["key", "generate", "--role", "targets", "--gun", GUN])
        .fails(1, "audit log");
    // The key was made before its record failed: signing with it must still be refused,
    // and the document left as it was.
    let list = agent.dct(&["--json", "key", "list"]).json();
    let key = list["keys"][0]["key_id"].as_str().unwrap().to_string();
    let doc = document(&agent, "targets.json");
    let before = std::fs::read(&doc).unwrap();
    agent
        .tuf_sign(&doc, &key, &["--gun", GUN])
        .fails(1, "audit log");
    assert_eq!(std::fs::read(&doc).unwrap(), before);
    let status = agent.dct(&["--json", "status"]).json();
    assert!(
        status["audit"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot write"),
        "{status}"
    );

    // A log that cannot even be opened (a directory): refused from the start.
    let hsm = SoftHsm::new("nolog", "2468");
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "audit_log = {:?}\n{}",
        dir.path().display().to_string(),
        hsm.agent_config()
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    agent
        .dct(&["key", "generate", "--role", "targets", "--gun", GUN])
        .fails(1, "audit log");
}

/// Runs the probe as uid/gid 65534 (nobody) against `socket`: "served" or "closed".
fn probe_as_nobody(agent: &Agent) -> String {
    // The agent keeps its socket private; open the way for this test only.
    let run = agent.socket.parent().unwrap();
    for d in [agent.dir.path(), run] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // The probe binary where nobody can run it.
    let bin_dir = agent.dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let probe = bin_dir.join("uds_probe");
    dct_tests::install_program(&dct_tests::bin("uds_probe"), &probe);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&probe)
        .arg(&agent.socket)
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn another_user_is_refused_before_any_rpc_and_audited() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let (_hsm, agent) = Agent::on_fresh_token("peers", "1111");
    assert_eq!(probe_as_nobody(&agent), "closed");
    // The refusal is recorded (asynchronously: wait for it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let refusal = loop {
        let found = records(&agent.audit_path())
            .into_iter()
            .find(|r| r["action"] == "refuse");
        if let Some(r) = found {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no refusal recorded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(refusal["peer"]["local"]["uid"], 65534);
    assert!(refusal["outcome"]
        .as_str()
        .unwrap()
        .contains("connection refused"));

    // Allowed by the config: served.
    let hsm = SoftHsm::new("allowed", "1111");
    let config = format!("allowed_uids = [65534]\n{}", hsm.agent_config());
    let agent = Agent::start_with_config(Some(&hsm), &config);
    assert_eq!(probe_as_nobody(&agent), "served");
}

/// Signs `doc` with `key`; whether the agent signed.
fn try_sign(agent: &Agent, key: &str) -> dct_tests::Run {
    let doc = document(agent, "ttl.json");
    agent.tuf_sign(&doc, key, &["--gun", GUN])
}

#[test]
fn unlock_ttls_lock_the_token() {
    // Idle: two seconds without a signature locks it.
    let hsm = SoftHsm::new("idle", "4321");
    let config = format!("{}idle_ttl = \"2s\"\n", hsm.agent_config());
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    let key = agent.generate("targets", Some(GUN));
    try_sign(&agent, &key).ok();
    std::thread::sleep(std::time::Duration::from_millis(3200));
    let status = agent.dct(&["--json", "status"]).json();
    assert_eq!(status["tokens"][0]["unlocked"], false, "{status}");
    try_sign(&agent, &key).fails(1, "locked");
    let recs = records(&agent.audit_path());
    assert!(
        recs.iter()
            .any(|r| r["action"] == "lock" && r["outcome"].as_str().unwrap().contains("idle TTL")),
        "{recs:#?}"
    );

    // Hard: locked three seconds after unlock even while in use.
    let hsm = SoftHsm::new("hard", "4321");
    let config = format!(
        "{}idle_ttl = \"1h\"\nhard_ttl = \"3s\"\n",
        hsm.agent_config()
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    let key = agent.generate("targets", Some(GUN));
    for _ in 0..2 {
        try_sign(&agent, &key).ok();
        std::thread::sleep(std::time::Duration::from_millis(800));
    }
    std::thread::sleep(std::time::Duration::from_millis(2000));
    try_sign(&agent, &key).fails(1, "locked");
    // Unlocking again starts a new period.
    agent.unlock(&hsm);
    try_sign(&agent, &key).ok();
}

#[test]
fn bad_ttls_are_refused_at_start() {
    let hsm = SoftHsm::new("badttl", "4321");
    let cfg = hsm.dir.path().join("agent.toml");
    std::fs::write(&cfg, format!("{}idle_ttl = \"soon\"\n", hsm.agent_config())).unwrap();
    let out = std::process::Command::new(dct_tests::bin("dct-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(hsm.dir.path().join("run/agent.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a duration"),
        "{out:?}"
    );
}

/// A targets document for `GUN` with this version and expiry.
fn targets_doc(
    agent: &Agent,
    name: &str,
    version: u64,
    expires: &str,
    tag: &str,
) -> std::path::PathBuf {
    let path = agent.dir.path().join(name);
    let signed = format!(
        r#"{{"_type":"Targets","delegations":{{"keys":{{}},"roles":[]}},"expires":"{expires}","targets":{{"{tag}":{{"hashes":{{"sha256":"pLuirsl/lQcfqbn2EulmqJ/AcMyu0m8wdDwymr/Zj9w="}},"length":16}}}},"version":{version}}}"#
    );
    std::fs::write(&path, format!(r#"{{"signed":{signed},"signatures":[]}}"#)).unwrap();
    path
}

#[test]
fn policy_refusals_name_their_rule() {
    let hsm = SoftHsm::new("policy", "8642");
    let config = format!(
        "{}\n[[policy]]\nrole = \"targets\"\nmax_expiry = \"30d\"\nguns = [\"example.com/*\"]\n\n[[policy]]\nrole = \"targets/ci\"\nroles = [\"targets/ci\"]\n",
        hsm.agent_config()
    );
    let mut agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    let targets = agent.generate("targets", Some(GUN));
    let root = agent.generate("root", Some(GUN));
    let ci = agent.generate("targets/ci", Some(GUN));
    let soon = dct_tests::expires_in(20);

    // Role: a root key does not sign targets; a delegation key limited to its own role.
    let doc = targets_doc(&agent, "a.json", 1, &soon, "a");
    agent
        .tuf_sign(&doc, &root, &["--gun", GUN])
        .fails(1, "a root document must be");
    agent
        .tuf_sign(&doc, &ci, &["--gun", GUN, "--role", "targets/releases"])
        .fails(1, "policy (roles)");
    // GUN: the key's own, and the rule's patterns.
    agent
        .tuf_sign(&doc, &targets, &["--gun", "example.com/other"])
        .fails(1, "belongs to");
    // Expiry beyond the rule's 30 days.
    let far = targets_doc(&agent, "far.json", 1, &dct_tests::expires_in(60), "a");
    agent
        .tuf_sign(&far, &targets, &["--gun", GUN])
        .fails(1, "policy (max_expiry)");

    // Versions never go back, nor fork, even across a restart.
    agent.tuf_sign(&doc, &targets, &["--gun", GUN]).ok();
    let v2 = targets_doc(&agent, "v2.json", 2, &soon, "b");
    agent.tuf_sign(&v2, &targets, &["--gun", GUN]).ok();
    agent.restart();
    agent.unlock(&hsm);
    let back = targets_doc(&agent, "back.json", 1, &soon, "c");
    agent
        .tuf_sign(&back, &targets, &["--gun", GUN])
        .fails(1, "policy (version)");
    let fork = targets_doc(&agent, "fork.json", 2, &soon, "d");
    agent
        .tuf_sign(&fork, &targets, &["--gun", GUN])
        .fails(1, "policy (version)");
    // The same document again, and the next version, are fine.
    let again = targets_doc(&agent, "again.json", 2, &soon, "b");
    agent.tuf_sign(&again, &targets, &["--gun", GUN]).ok();
    let v3 = targets_doc(&agent, "v3.json", 3, &soon, "e");
    agent.tuf_sign(&v3, &targets, &["--gun", GUN]).ok();

    // Every refusal is in the audit log with its rule.
    let refusals: Vec<String> = records(&agent.audit_path())
        .iter()
        .filter(|r| r["action"] == "refuse")
        .map(|r| r["outcome"].as_str().unwrap().to_string())
        .collect();
    for rule in [
        "policy (roles)",
        "policy (max_expiry)",
        "policy (version)",
        "belongs to",
    ] {
        assert!(
            refusals.iter().any(|o| o.contains(rule)),
            "{rule}: {refusals:#?}"
        );
    }

    // A bad rule stops the agent at start.
    let bad = format!(
        "{}\n[[policy]]\nrole = \"targets\"\nkey = \"abcd\"\n",
        hsm.agent_config()
    );
    let cfg = hsm.dir.path().join("bad.toml");
    std::fs::write(&cfg, bad).unwrap();
    let out = std::process::Command::new(dct_tests::bin("dct-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(hsm.dir.path().join("run2/agent.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly one of key or role"));
}

#[test]
fn requests_are_bounded_in_number_time_and_size() {
    // A trust server that accepts connections and never answers holds a request open.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let hsm = SoftHsm::new("limits", "9753");
    let config = format!(
        "max_concurrent_requests = 1\nrequest_timeout = \"2s\"\nmax_request_bytes = 65536\n{}",
        hsm.agent_config()
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    let hold = std::process::Command::new(dct_tests::bin("dct"))
        .env("DCT_SOCKET", &agent.socket)
        .args(["trust", "--server", &url, "inspect", "example.com/slow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The one slot is taken: refused at once, not queued.
    let busy = agent.dct(&["status"]);
    let err = busy.fails(1, "");
    assert!(err.contains("Too many active requests"), "{err}");
    // The held request ends at the deadline, saying so.
    let out = hold.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("timeout") || err.contains("deadline"), "{err}");
    // Free again.
    agent.dct(&["status"]).ok();
    // Too large a request.
    let big = agent.dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 200_000]).unwrap();
    let err = agent.tuf_sign(&big, "abcd", &[]).fails(1, "");
    assert!(
        err.to_lowercase().contains("too large")
            || err.contains("exhausted")
            || err.contains("length"),
        "{err}"
    );
    drop(silent);
}

#[test]
fn a_token_on_its_final_pin_try_is_not_tried_without_force() {
    let hsm = SoftHsm::new("finaltry", "1212");
    let mut agent = Agent::start(Some(&hsm));
    // One wrong PIN: SoftHSM2 reports the count low; the agent says so and does not retry.
    agent
        .dct_env(&["unlock"], &[("DCT_PIN", "9999")])
        .fails(1, "wrong PIN");
    let status = agent.dct(&["--json", "status"]).json();
    assert_eq!(status["tokens"][0]["pin"]["count_low"], true, "{status}");
    // The token now reports a final try (CKF_USER_PIN_FINAL_TRY).
    agent.stop();
    hsm.add_token_flag(0x0002_0000);
    agent.restart();
    let status = agent.dct(&["--json", "status"]).json();
    assert_eq!(status["tokens"][0]["pin"]["final_try"], true, "{status}");
    let pin = agent.dir.path().join("pin");
    std::fs::write(&pin, "1212\n").unwrap();
    let pin = pin.to_str().unwrap();
    // Not even the right PIN is sent without --force: a wrong one would lock the token.
    agent
        .dct(&["unlock", "--pin-file", pin])
        .fails(1, "one PIN try left");
    let status = agent.dct(&["--json", "status"]).json();
    assert_eq!(status["tokens"][0]["unlocked"], false);
    agent.dct(&["unlock", "--pin-file", pin, "--force"]).ok();
    let status = agent.dct(&["--json", "status"]).json();
    assert_eq!(status["tokens"][0]["unlocked"], true);
    let outcomes: Vec<String> = records(&agent.audit_path())
        .iter()
        .filter(|r| r["action"] == "unlock")
        .map(|r| r["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert!(outcomes[1].contains("one PIN try left"), "{outcomes:?}");
}

#[test]
fn pins_and_passphrases_leave_no_trace_in_the_agents_memory() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: reading another process's memory needs root");
        return;
    }
    let pin = "Zq7-unique-PIN-4711";
    let hsm = SoftHsm::new("memory", pin);
    let agent = Agent::start(Some(&hsm));
    // A wrong PIN first, then the right one.
    agent
        .dct_env(&["unlock"], &[("DCT_PIN", "Wq8-wrong-PIN-0815")])
        .fails(1, "wrong PIN");
    agent.dct_env(&["unlock"], &[("DCT_PIN", pin)]).ok();
    // A passphrase-protected key file imported onto the token.
    let fixture = dct_tests::fixture_dir("notary-0.7");
    let key = std::fs::read_dir(fixture.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains("role: targets")
        })
        .expect("a targets key file");
    let passphrase = "test-targets-passphrase";
    agent
        .dct_env(
            &["key", "import", key.to_str().unwrap()],
            &[("NOTARY_TARGETS_PASSPHRASE", passphrase)],
        )
        .ok();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = agent.pid();
    for secret in [pin, "Wq8-wrong-PIN-0815", passphrase] {
        assert_eq!(
            dct_tests::memory_hits(pid, secret.as_bytes()),
            0,
            "{secret} found in the agent's memory"
        );
    }
    // The check itself can find things: the key's label is there.
    assert!(dct_tests::memory_hits(pid, b"dct:targets:") > 0);
}

#[test]
fn a_key_with_confirm_is_never_approved_by_its_client() {
    let hsm = SoftHsm::new("confirm", "6543");
    let config = format!(
        "{}\n[[policy]]\nrole = \"targets\"\nconfirm = true\n",
        hsm.agent_config()
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    let key = agent.generate("targets", Some(GUN));
    let doc = targets_doc(&agent, "c.json", 1, &dct_tests::expires_in(30), "release-1");
    let before = std::fs::read(&doc).unwrap();
    let path = doc.to_str().unwrap().to_string();
    let args = [
        "tuf",
        "sign",
        path.as_str(),
        "--key",
        key.as_str(),
        "--gun",
        GUN,
    ];

    // The client's own terminal no longer counts: whatever the client does, without the
    // agent's confirmation program nothing is signed, and the refusal is audited.
    agent.dct(&args).fails(1, "confirmation program");
    assert_eq!(std::fs::read(&doc).unwrap(), before);
    let recs = records(&agent.audit_path());
    assert!(
        recs.iter().any(|r| r["action"] == "refuse"
            && r["outcome"]
                .as_str()
                .is_some_and(|o| o.contains("policy (confirm)"))),
        "{recs:#?}"
    );
    assert!(!recs.iter().any(
        |r| r["action"] == "sign" && r["outcome"].as_str().is_some_and(|o| o.starts_with("ok"))
    ));
}
