//! Running the agent as people run agents: started on demand by socket activation
//! (systemd's LISTEN_FDS protocol, here through Debian's `systemd-socket-activate`), and
//! the shipped systemd units checked by `systemd-analyze verify`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use dct_tests::{bin, Agent, SoftHsm};
use serde_json::Value;

const GUN: &str = "example.com/activated";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn dct_starts_a_socket_activated_agent_on_first_use_and_signs() {
    assert!(
        have("systemd-socket-activate"),
        "install systemd (softhsm/install-deps.sh)"
    );
    let hsm = SoftHsm::new("activated", "2468");
    let mut agent = Agent::start_socket_activated(Some(&hsm), &hsm.agent_config());
    // Nothing has connected yet: systemd-socket-activate listens, no agent runs.
    let listener_pid = agent.pid();
    let comm = std::fs::read_to_string(format!("/proc/{listener_pid}/comm")).unwrap();
    assert_eq!(
        comm.trim(),
        "systemd-socket-",
        "the agent must not run before first use"
    );

    // The first command starts the agent (same pid, exec'd with the socket passed).
    let status = agent.dct(&["--json", "status"]).json();
    assert!(status["tokens"].is_array(), "{status}");
    let comm = std::fs::read_to_string(format!("/proc/{listener_pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "dct-agent");
    assert!(
        agent.log_text().contains("socket-activated on"),
        "{}",
        agent.log_text()
    );

    // The passed socket had systemd-socket-activate's mode (0644 under umask 022): the
    // agent made it private, as its own.
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // It serves like any agent: unlock, make a key, sign, verified by the agent's own
    // verifier and audited.
    agent.unlock(&hsm);
    let key = agent.generate("targets", Some(GUN));
    let doc = agent.dir.path().join("targets.json");
    std::fs::write(
        &doc,
        r#"{"signed":{"_type":"Targets","delegations":{"keys":{},"roles":[]},"expires":"2028-01-01T00:00:00Z","targets":{},"version":1},"signatures":[]}"#,
    )
    .unwrap();
    agent.tuf_sign(&doc, &key, &["--gun", GUN]).ok();
    let signed: Value = serde_json::from_slice(&std::fs::read(&doc).unwrap()).unwrap();
    assert_eq!(signed["signatures"][0]["keyid"], key.as_str(), "{signed}");
    let audit = std::fs::read_to_string(agent.audit_path()).unwrap();
    assert!(audit.lines().any(|l| l.contains("\"action\":\"sign\"")));

    // At stop the socket stays: it is systemd's (RemoveOnStop is the unit's business).
    assert!(agent.stop());
    assert!(agent.socket.exists());
}

#[test]
fn a_passed_socket_others_can_reach_is_refused() {
    let hsm = SoftHsm::new("activated-open", "2468");
    let agent = Agent::start_socket_activated(Some(&hsm), &hsm.agent_config());
    // A socket directory others may enter: the agent refuses to serve, as for its own.
    let run = agent.socket.parent().unwrap();
    std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = agent.dct(&["status"]);
    assert_ne!(out.code(), 0, "{}", out.stderr());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !agent.log_text().contains("must be private") {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        agent.log_text().contains("chmod 700"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn an_inherited_listen_fds_for_another_process_is_ignored() {
    // LISTEN_PID names another process: the variables were inherited, not meant for this
    // one; the agent binds its own socket instead of taking fd 3.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run").join("agent.sock");
    let mut child = Command::new(bin("dct-agent"))
        .arg("--socket")
        .arg(&socket)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .env("XDG_STATE_HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not bind its own socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), nix::unistd::getuid().as_raw());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(!socket.exists(), "its own socket is removed at stop");
}

/// The shipped units, with ExecStart pointed at the built binary, pass
/// `systemd-analyze verify` (system and user managers) without a warning.
#[test]
fn the_systemd_units_verify() {
    assert!(
        have("systemd-analyze"),
        "install systemd (softhsm/install-deps.sh)"
    );
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/systemd");
    let tmp = tempfile::tempdir().unwrap();
    let agent_bin = bin("dct-agent");
    let authz_bin = bin("dct-authz");
    let copy = |rel: &str| {
        let text = std::fs::read_to_string(units.join(rel)).unwrap();
        if rel.ends_with(".service") {
            assert!(
                text.contains("/usr/bin/dct-agent") || text.contains("/usr/bin/dct-authz"),
                "{rel} runs the packaged binary"
            );
        }
        let name = Path::new(rel).file_name().unwrap();
        let to = tmp.path().join(name);
        std::fs::write(
            &to,
            text.replace("/usr/bin/dct-agent", agent_bin.to_str().unwrap())
                .replace("/usr/bin/dct-authz", authz_bin.to_str().unwrap()),
        )
        .unwrap();
        to
    };
    let system = copy("system/dct-agent-signer.service");
    let authz = copy("system/dct-authz.service");
    let socket = copy("user/dct-agent.socket");
    let service = copy("user/dct-agent.service");
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    for (user, files) in [
        (false, vec![&system, &authz]),
        (true, vec![&socket, &service]),
    ] {
        let mut c = Command::new("systemd-analyze");
        if user {
            c.arg("--user").env("XDG_RUNTIME_DIR", runtime.path());
        }
        c.args(["verify", "--man=no"]).args(files);
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "user={user}: {stderr}"
        );
    }
    // The hardening of the notary-signer unit, as systemd rates it (lower is better; 1.9
    // when written).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=30"])
        .arg(&system)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
