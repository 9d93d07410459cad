//! Confirmation the client cannot forge: the real agent starts its own confirmation program
//! (tests/src/bin/test_pinentry.rs, speaking pinentry's Assuan), shows it what the signature
//! changes and signs only on its yes; the audit log says who approved.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dct_tests::repo::{key, keys};
use dct_tests::{bin, expires_in, Agent, SoftHsm};
use serde_json::{json, Value};

const GUN: &str = "example.com/confirmed";
const SHA: &str = "pLuirsl/lQcfqbn2EulmqJ/AcMyu0m8wdDwymr/Zj9w=";

/// An agent whose targets and root keys sign only after its test pinentry says yes; the
/// pinentry records what it was shown into `record`.
struct Setup {
    _hsm: SoftHsm,
    agent: Agent,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

fn setup(label: &str, answer: &str, timeout: &str) -> Setup {
    let hsm = SoftHsm::new(label, "2468");
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("pinentry.jsonl");
    let config = format!(
        "{}\n[[policy]]\nrole = \"targets\"\nconfirm = true\n\n[[policy]]\nrole = \"root\"\nconfirm = true\n\n\
         [confirm]\nprogram = {:?}\nargs = [\"--answer\", {answer:?}, \"--record\", {:?}]\ntimeout = {timeout:?}\n",
        hsm.agent_config(),
        bin("test-pinentry").display().to_string(),
        record.display().to_string(),
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    Setup {
        _hsm: hsm,
        agent,
        record,
        _dir: dir,
    }
}

/// The pinentry's record: one JSON object per line.
fn record(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every SETDESC the pinentry was shown, unescaped.
fn shown(path: &Path) -> Vec<String> {
    let rec = record(path);
    let bad: Vec<&Value> = rec
        .iter()
        .filter(|r| r.get("violation").is_some())
        .collect();
    assert!(bad.is_empty(), "Assuan violations: {bad:#?}");
    rec.iter()
        .filter(|r| r["cmd"] == "SETDESC")
        .map(|r| r["arg"].as_str().unwrap().to_string())
        .collect()
}

fn audit(agent: &Agent) -> Vec<Value> {
    std::fs::read_to_string(agent.audit_path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_doc(dir: &Path, name: &str, signed: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        serde_json::to_vec(&json!({"signed": signed, "signatures": []})).unwrap(),
    )
    .unwrap();
    p
}

fn targets(version: u64, targets: Value, delegations: Value) -> Value {
    json!({"_type": "Targets", "expires": expires_in(30), "version": version,
           "targets": targets, "delegations": delegations})
}

fn no_delegations() -> Value {
    json!({"keys": {}, "roles": []})
}

fn file() -> Value {
    json!({"hashes": {"sha256": SHA}, "length": 16})
}

/// The canonical `signed` bytes of a signed file as the agent wrote it.
fn raw_signed(bytes: &[u8]) -> Vec<u8> {
    let start = b"{\"signed\":".len();
    let end = bytes
        .windows(14)
        .rposition(|w| w == b",\"signatures\":")
        .unwrap();
    bytes[start..end].to_vec()
}

#[test]
fn the_user_saying_no_signs_nothing_and_the_refusal_is_audited() {
    let s = setup("confirm-no", "no", "20s");
    let k = s.agent.generate("targets", Some(GUN));
    let doc = write_doc(
        s.agent.dir.path(),
        "t.json",
        &targets(1, json!({"v1": file()}), no_delegations()),
    );
    let before = std::fs::read(&doc).unwrap();
    s.agent
        .tuf_sign(&doc, &k, &["--gun", GUN])
        .fails(1, "policy (confirm): the user declined");
    assert_eq!(std::fs::read(&doc).unwrap(), before, "the file was written");

    let recs = audit(&s.agent);
    assert!(
        recs.iter().any(|r| r["action"] == "refuse"
            && r["key_id"] == k.as_str()
            && r["outcome"]
                .as_str()
                .is_some_and(|o| o.contains("declined"))),
        "{recs:#?}"
    );
    assert!(
        !recs.iter().any(|r| r["action"] == "sign"),
        "a signature was recorded: {recs:#?}"
    );
    // The user was asked, with what the signature is.
    let descs = shown(&s.record);
    assert_eq!(descs.len(), 1, "{descs:#?}");
    assert!(descs[0].contains("Role: \"targets\""), "{}", descs[0]);
    assert!(
        descs[0].contains(&format!("GUN: \"{GUN}\"")),
        "{}",
        descs[0]
    );
    assert!(descs[0].contains(&format!("Key ID: {k}")), "{}", descs[0]);
    assert!(descs[0].contains("+ \"v1\""), "{}", descs[0]);
    let title = record(&s.record)
        .into_iter()
        .find(|r| r["cmd"] == "SETTITLE")
        .unwrap();
    assert_eq!(title["arg"], format!("dct-agent: sign targets of {GUN}?"));
    // The program's stderr (a raw escape sequence) is not in the agent's log.
    assert!(
        !s.agent.log_text().contains('\u{1b}'),
        "{}",
        s.agent.log_text()
    );
}

#[test]
fn the_user_saying_yes_signs_and_the_audit_names_the_program() {
    let s = setup("confirm-yes", "yes", "20s");
    let k = s.agent.generate("targets", Some(GUN));
    let doc = write_doc(
        s.agent.dir.path(),
        "t.json",
        &targets(1, json!({"v1": file()}), no_delegations()),
    );
    s.agent.tuf_sign(&doc, &k, &["--gun", GUN]).ok();

    // The signature verifies under the key's public key over the canonical bytes.
    let signed = std::fs::read(&doc).unwrap();
    let v: Value = serde_json::from_slice(&signed).unwrap();
    let sig = &v["signatures"][0];
    assert_eq!(sig["keyid"], k.as_str());
    let raw = B64.decode(sig["sig"].as_str().unwrap()).unwrap();
    let all = keys(&s.agent);
    let spki = B64
        .decode(
            key(&all, &k)["tuf_key"]["keyval"]["public"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
    vk.verify(
        &raw_signed(&signed),
        &p256::ecdsa::Signature::from_slice(&raw).unwrap(),
    )
    .expect("the signature verifies");

    let recs = audit(&s.agent);
    let sign = recs
        .iter()
        .find(|r| r["action"] == "sign")
        .unwrap_or_else(|| panic!("{recs:#?}"));
    assert_eq!(
        sign["outcome"],
        format!("ok, confirmed by {}", bin("test-pinentry").display())
    );
    assert_eq!(sign["version"], 1);
    // The dialog: the texts, the timeout from agent.toml, one CONFIRM, then goodbye.
    let cmds: Vec<String> = record(&s.record)
        .iter()
        .filter_map(|r| r["cmd"].as_str().map(str::to_string))
        .filter(|c| c != "OPTION")
        .collect();
    assert_eq!(
        cmds,
        [
            "SETTITLE",
            "SETOK",
            "SETCANCEL",
            "SETTIMEOUT",
            "SETDESC",
            "CONFIRM",
            "BYE"
        ]
    );
    let timeout = record(&s.record)
        .into_iter()
        .find(|r| r["cmd"] == "SETTIMEOUT")
        .unwrap();
    assert_eq!(timeout["arg"], "20");
}

#[test]
fn the_summary_shows_a_new_delegation_to_a_new_key() {
    let s = setup("confirm-deleg", "yes", "20s");
    let k = s.agent.generate("targets", Some(GUN));
    let rel = s.agent.generate("targets/releases", Some(GUN));
    let dir = s.agent.dir.path();
    let v1 = write_doc(
        dir,
        "v1.json",
        &targets(1, json!({"v1": file()}), no_delegations()),
    );
    s.agent.tuf_sign(&v1, &k, &["--gun", GUN]).ok();

    let all = keys(&s.agent);
    let v2 = write_doc(
        dir,
        "v2.json",
        &targets(
            2,
            json!({"v1": file()}),
            json!({"keys": {&rel: key(&all, &rel)["tuf_key"]},
                   "roles": [{"name": "targets/releases", "keyids": [&rel], "threshold": 1,
                              "paths": ["releases/", "stable/"]}]}),
        ),
    );
    let prev = v1.to_str().unwrap();
    s.agent
        .tuf_sign(&v2, &k, &["--gun", GUN, "--previous", prev])
        .ok();
    let descs = shown(&s.record);
    assert_eq!(descs.len(), 2, "{descs:#?}");
    let d = &descs[1];
    assert!(d.contains("Version: 1 -> 2"), "{d}");
    assert!(
        d.contains("Targets: 0 added, 0 removed, 0 changed, 1 unchanged"),
        "{d}"
    );
    assert!(
        d.contains(&format!(
            "+ delegation \"targets/releases\": keys [{rel}], threshold 1, paths [\"releases/\", \"stable/\"]"
        )),
        "{d}"
    );
    assert!(d.contains("Delegation keys: 1 added, 0 removed"), "{d}");
    assert!(d.contains(&format!("+ key {rel} (ecdsa)")), "{d}");
    // The first signature had nothing to compare with.
    assert!(descs[0].contains("no previous version"), "{}", descs[0]);
    // A previous version the key never signed is no base for a diff.
    let forged = write_doc(
        dir,
        "forged.json",
        &targets(
            2,
            json!({"v1": file()}),
            json!({"keys": {&rel: key(&all, &rel)["tuf_key"]},
                   "roles": [{"name": "targets/releases", "keyids": [&rel], "threshold": 1,
                              "paths": ["releases/", "stable/"]}]}),
        ),
    );
    let v3 = write_doc(
        dir,
        "v3.json",
        &targets(
            3,
            json!({"v1": file()}),
            json!({"keys": {&rel: key(&all, &rel)["tuf_key"]},
                   "roles": [{"name": "targets/releases", "keyids": [&rel], "threshold": 1,
                              "paths": ["releases/", "stable/"]}]}),
        ),
    );
    s.agent
        .tuf_sign(
            &v3,
            &k,
            &["--gun", GUN, "--previous", forged.to_str().unwrap()],
        )
        .ok();
    let d = &shown(&s.record)[2];
    assert!(d.contains("no previous version"), "{d}");
    assert!(d.contains("+ delegation \"targets/releases\""), "{d}");
}

#[test]
fn the_summary_of_a_root_rotation_shows_each_roles_keys_and_threshold() {
    let s = setup("confirm-root", "yes", "20s");
    let a = &s.agent;
    let r1 = a.generate("root", Some(GUN));
    let t1 = a.generate("targets", Some(GUN));
    let sn = a.generate("snapshot", Some(GUN));
    let ts = a.generate("timestamp", Some(GUN));
    let all = keys(a);
    let obj = |all: &[Value], id: &str| key(all, id)["tuf_key"].clone();
    let role = |ids: &[&str], t: u64| json!({"keyids": ids, "threshold": t});
    let v1 = write_doc(
        a.dir.path(),
        "root1.json",
        &json!({"_type": "Root", "consistent_snapshot": false, "expires": expires_in(365),
            "version": 1,
            "keys": {&r1: obj(&all, &r1), &t1: obj(&all, &t1), &sn: obj(&all, &sn),
                     &ts: obj(&all, &ts)},
            "roles": {"root": role(&[&r1], 1), "targets": role(&[&t1], 1),
                      "snapshot": role(&[&sn], 1), "timestamp": role(&[&ts], 1)}}),
    );
    a.tuf_sign(&v1, &r1, &["--gun", GUN]).ok();

    // Rotation: a second root key (threshold 2) and a new targets key.
    let r2 = a.generate("root", Some(GUN));
    let t2 = a.generate("targets", Some(GUN));
    let all = keys(a);
    let v2 = write_doc(
        a.dir.path(),
        "root2.json",
        &json!({"_type": "Root", "consistent_snapshot": false, "expires": expires_in(365),
            "version": 2,
            "keys": {&r1: obj(&all, &r1), &r2: obj(&all, &r2), &t2: obj(&all, &t2),
                     &sn: obj(&all, &sn), &ts: obj(&all, &ts)},
            "roles": {"root": role(&[&r1, &r2], 2), "targets": role(&[&t2], 1),
                      "snapshot": role(&[&sn], 1), "timestamp": role(&[&ts], 1)}}),
    );
    let before = shown(&s.record).len();
    a.tuf_sign(
        &v2,
        &r1,
        &["--gun", GUN, "--previous", v1.to_str().unwrap()],
    )
    .ok();
    // The dialog of v2, all its pages (keys of 64 hex digits make it long).
    let d = &shown(&s.record)[before..].join("\n");
    assert!(d.contains("Role: \"root\""), "{d}");
    assert!(d.contains("Version: 1 -> 2"), "{d}");
    assert!(
        d.contains(&format!(
            "~ \"root\": keys +[{r2}]; threshold 1 -> 2; now keys [{r1}, {r2}], threshold 2"
        )),
        "{d}"
    );
    assert!(
        d.contains(&format!(
            "~ \"targets\": keys +[{t2}] -[{t1}]; now keys [{t2}], threshold 1"
        )),
        "{d}"
    );
    assert!(
        d.contains(&format!(
            "= \"snapshot\": keys [{sn}], threshold 1 (unchanged)"
        )),
        "{d}"
    );
    assert!(
        d.contains(&format!(
            "= \"timestamp\": keys [{ts}], threshold 1 (unchanged)"
        )),
        "{d}"
    );
    assert!(d.contains("Keys: 2 added, 1 removed, 0 changed"), "{d}");
    assert!(d.contains(&format!("+ key {r2} (ecdsa-x509)")), "{d}");
    assert!(d.contains(&format!("- key {t1} (ecdsa)")), "{d}");
    assert!(d.contains("consistent_snapshot: false"), "{d}");
}

#[test]
fn hostile_target_names_are_shown_escaped() {
    let s = setup("confirm-esc", "no", "20s");
    let k = s.agent.generate("targets", Some(GUN));
    let name = "evil\u{1b}[2J\u{1b}[31mOK\nsigned\u{202e}gpj.exe\u{2066}";
    let doc = write_doc(
        s.agent.dir.path(),
        "t.json",
        &targets(1, json!({name: file()}), no_delegations()),
    );
    s.agent
        .tuf_sign(&doc, &k, &["--gun", GUN])
        .fails(1, "declined");
    let descs = shown(&s.record);
    let d = &descs[0];
    assert!(
        d.contains(r#"+ "evil\x1b[2J\x1b[31mOK\nsigned\u{202e}gpj.exe\u{2066}""#),
        "{d}"
    );
    for c in ['\u{1b}', '\u{202e}', '\u{2066}'] {
        assert!(!d.contains(c), "raw {c:?} shown: {d:?}");
    }
    // The only real line breaks are the summary's own: the name is on one line.
    assert!(
        d.lines()
            .any(|l| l.contains("evil") && l.contains("gpj.exe")),
        "{d}"
    );
}

#[test]
fn a_long_summary_is_paged_and_needs_yes_on_every_page() {
    let many = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("release/{i:03}/{}", "x".repeat(60)), file()))
            .collect::<serde_json::Map<String, Value>>()
            .into()
    };
    // Yes to the first page only: refused.
    let s = setup("confirm-pages", "yes,no", "20s");
    let k = s.agent.generate("targets", Some(GUN));
    let doc = write_doc(
        s.agent.dir.path(),
        "t.json",
        &targets(1, many(80), no_delegations()),
    );
    let err = s
        .agent
        .tuf_sign(&doc, &k, &["--gun", GUN])
        .fails(1, "policy (confirm): the user declined");
    assert!(err.contains("page 2/"), "{err}");
    let descs = shown(&s.record);
    assert_eq!(descs.len(), 2, "stopped at the first no");
    let pages: usize = descs[0]
        .strip_prefix("(page 1/")
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", descs[0]));
    assert!(pages > 2, "{pages}");
    assert!(descs[1].starts_with(&format!("(page 2/{pages})\n")));
    assert!(!audit(&s.agent).iter().any(|r| r["action"] == "sign"));
    drop(s);

    // Yes to every page: signed, every page was shown, every entry (the first 50 in full)
    // on one of them.
    let s = setup("confirm-pages2", "yes", "20s");
    let k = s.agent.generate("targets", Some(GUN));
    let doc = write_doc(
        s.agent.dir.path(),
        "t.json",
        &targets(1, many(80), no_delegations()),
    );
    s.agent.tuf_sign(&doc, &k, &["--gun", GUN]).ok();
    let descs = shown(&s.record);
    assert!(descs.len() > 2);
    let all = descs.join("\n");
    assert!(all.contains("Targets: 80 added"), "{all}");
    for i in 0..50 {
        assert!(all.contains(&format!("release/{i:03}/")), "{i} missing");
    }
    assert!(all.contains("... and 30 more"), "{all}");
}

#[test]
fn no_answer_in_time_is_no_and_the_program_is_stopped() {
    let s = setup("confirm-hang", "hang", "1s");
    let k = s.agent.generate("targets", Some(GUN));
    let doc = write_doc(
        s.agent.dir.path(),
        "t.json",
        &targets(1, json!({"v1": file()}), no_delegations()),
    );
    let t0 = Instant::now();
    let err = s
        .agent
        .tuf_sign(&doc, &k, &["--gun", GUN])
        .fails(1, "policy (confirm)");
    assert!(err.contains("no answer within 1s"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert!(!audit(&s.agent).iter().any(|r| r["action"] == "sign"));
    // The hanging program is gone (killed and reaped).
    let pid = record(&s.record)
        .iter()
        .find_map(|r| r["start"].as_u64())
        .unwrap();
    let gone = |pid: u64| !Path::new(&format!("/proc/{pid}")).exists();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone(pid), "test-pinentry {pid} still runs");
    // The agent still works: the next dialog starts.
    s.agent
        .tuf_sign(&doc, &k, &["--gun", GUN])
        .fails(1, "no answer within 1s");
}

/// Starts the agent on `confirm` and returns (exit status, stderr) once it exits.
fn agent_refusing(confirm: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "trust_dir = {:?}\naudit_log = {:?}\n[confirm]\n{confirm}",
            dir.path().join("trust").display().to_string(),
            dir.path().join("audit.log").display().to_string(),
        ),
    )
    .unwrap();
    let mut child = Command::new(bin("dct-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.path().join("run").join("agent.sock"))
        .env_remove("DCT_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(_st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dct-agent started with {confirm:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_agent_refuses_to_start_without_a_working_confirmation_program() {
    let (st, err) = agent_refusing("program = \"/nonexistent/pinentry-dct\"\n");
    assert!(!st.success());
    assert!(
        err.contains("[confirm] program /nonexistent/pinentry-dct: no such file"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("pinentry");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    let (st, err) = agent_refusing(&format!("program = {:?}\n", plain.display().to_string()));
    assert!(!st.success());
    assert!(err.contains("not an executable file"), "{err}");
    let (st, err) = agent_refusing(&format!(
        "program = {:?}\ntimeout = \"soon\"\n",
        bin("test-pinentry").display().to_string()
    ));
    assert!(!st.success());
    assert!(err.contains("[confirm] timeout"), "{err}");
}

#[test]
fn without_a_program_a_yubikey_touch_on_every_signature_is_the_approval() {
    use dct_tests::piv::{CardOptions, VirtualPiv};
    let card = VirtualPiv::start(CardOptions::default());
    let token = format!("piv:{}", card.serial());
    // No [confirm] program: only the card's own touch can approve.
    let agent = Agent::start_with_config(
        None,
        &format!(
            "[[piv]]\nserial = {}\nmanagement_key = \"default\"\n\n[[policy]]\nrole = \"targets\"\nconfirm = true\n",
            card.serial()
        ),
    );
    agent.unlock_token(&token, "123456", &[]).ok();
    let generate = |slot: &str, touch: &str| {
        agent
            .dct(&[
                "key",
                "generate",
                "--role",
                "targets",
                "--gun",
                GUN,
                "--token",
                &token,
                "--slot",
                slot,
                "--touch-policy",
                touch,
            ])
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    let always = generate("82", "always");
    let cached = generate("83", "cached");
    let doc = |name: &str| {
        write_doc(
            agent.dir.path(),
            name,
            &targets(1, json!({"v1": file()}), no_delegations()),
        )
    };

    agent
        .tuf_sign(&doc("a.json"), &always, &["--gun", GUN])
        .ok();
    // A touch that may have been given for another signature is no approval of this one.
    agent
        .tuf_sign(&doc("c.json"), &cached, &["--gun", GUN])
        .fails(1, "none is configured");
    let recs = audit(&agent);
    let signed: Vec<&Value> = recs.iter().filter(|r| r["action"] == "sign").collect();
    assert_eq!(signed.len(), 1, "{recs:#?}");
    assert_eq!(signed[0]["key_id"], always.as_str());
    assert_eq!(
        signed[0]["outcome"],
        format!(
            "ok, confirmed by a touch of YubiKey serial {} (touch policy always)",
            card.serial()
        )
    );
    assert!(recs.iter().any(|r| r["action"] == "refuse"
        && r["key_id"] == cached.as_str()
        && r["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("policy (confirm)"))));
}

#[test]
fn a_client_that_gives_up_ends_the_dialog() {
    let s = setup("confirm-gone", "hang", "60s");
    let k = s.agent.generate("targets", Some(GUN));
    let doc = write_doc(
        s.agent.dir.path(),
        "t.json",
        &targets(1, json!({"v1": file()}), no_delegations()),
    );
    let before = std::fs::read(&doc).unwrap();
    let mut client = Command::new(bin("dct"))
        .args([
            "tuf",
            "sign",
            doc.to_str().unwrap(),
            "--key",
            &k,
            "--gun",
            GUN,
        ])
        .env("DCT_SOCKET", &s.agent.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The dialog is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        let rec = record(&s.record);
        if rec.iter().any(|r| r["cmd"] == "CONFIRM") {
            break rec.iter().find_map(|r| r["start"].as_u64()).unwrap();
        }
        assert!(Instant::now() < deadline, "no dialog: {rec:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    client.kill().unwrap();
    client.wait().unwrap();
    // The agent stops waiting for the user: the program is killed long before its 60s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "test-pinentry {pid} still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(&doc).unwrap(), before);
    assert!(!audit(&s.agent).iter().any(|r| r["action"] == "sign"));
}

#[test]
fn one_dialog_at_a_time() {
    let s = setup("confirm-one", "slow", "20s");
    // Three keys (the ledger lets each sign its version 1).
    let ks: Vec<String> = (0..3)
        .map(|_| s.agent.generate("targets", Some(GUN)))
        .collect();
    let docs: Vec<PathBuf> = (0..3)
        .map(|i| {
            write_doc(
                s.agent.dir.path(),
                &format!("t{i}.json"),
                &targets(1, json!({format!("v{i}"): file()}), no_delegations()),
            )
        })
        .collect();
    // Three clients at once.
    let clients: Vec<std::process::Child> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Command::new(bin("dct"))
                .args([
                    "tuf",
                    "sign",
                    d.to_str().unwrap(),
                    "--key",
                    &ks[i],
                    "--gun",
                    GUN,
                ])
                .env("DCT_SOCKET", &s.agent.socket)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each program's whole dialog (start .. BYE) before the next one starts.
    let rec = record(&s.record);
    let pids: Vec<u64> = rec.iter().filter_map(|r| r["start"].as_u64()).collect();
    assert_eq!(pids.len(), 3, "{rec:#?}");
    let mut current = None;
    for r in &rec {
        let pid = r["pid"].as_u64().unwrap();
        if r.get("start").is_some() {
            assert_eq!(
                current, None,
                "a second dialog started during one: {rec:#?}"
            );
            current = Some(pid);
        } else {
            assert_eq!(current, Some(pid), "{rec:#?}");
            if r["cmd"] == "BYE" {
                current = None;
            }
        }
    }
    let ok = audit(&s.agent)
        .iter()
        .filter(|r| r["action"] == "sign")
        .count();
    assert_eq!(ok, 3);
}
