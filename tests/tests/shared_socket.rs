//! One agent for several users: `allowed_uids` with `socket_group` in agent.toml, and
//! `dct --agent-uid` naming the agent's user. Real second and third users (made by the test,
//! which then needs root): the allowed user lists, unlocks and signs; a user of the group
//! who is not in allowed_uids is refused by the agent, and audited; a user outside the group
//! does not reach the socket at all; and the CLI talks to another user's agent only when told
//! which user, so no PIN goes to an agent nobody named.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use dct_tests::{Agent, OtherUser, SoftHsm};
use serde_json::Value;

const GUN: &str = "example.com/shared";
const SIGNED: &str = r#"{"_type":"Targets","delegations":{"keys":{},"roles":[]},"expires":"2028-01-01T00:00:00Z","targets":{},"version":1}"#;
const GROUP: &str = "dcttest";

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A directory of `user`'s own (their HOME here; documents and PIN files go in it).
fn home_of(agent: &Agent, user: &OtherUser) -> PathBuf {
    let home = agent.dir.path().join(format!("home-{}", user.name));
    std::fs::create_dir_all(&home).unwrap();
    nix::unistd::chown(
        &home,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )
    .unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    home
}

/// Writes `bytes` to `path` as `user`'s file, mode 0600.
fn write_as(user: &OtherUser, path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )
    .unwrap();
}

fn unlocked(agent: &Agent) -> bool {
    agent.dct(&["--json", "status"]).json()["tokens"][0]["unlocked"] == true
}

#[test]
fn a_shared_socket_serves_allowed_users_who_name_the_agent() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: needs root to make and act as other users");
        return;
    }
    let gid = dct_tests::system_group(GROUP);
    let second = dct_tests::system_user("dcttest2", &[GROUP]);
    let third = dct_tests::system_user("dcttest3", &[GROUP]);
    let nobody = OtherUser {
        name: "nobody".into(),
        uid: 65534,
        gid: 65534,
    };
    let own = nix::unistd::getuid().as_raw();
    assert_ne!(second.uid, own);

    let hsm = SoftHsm::new("shared", "2468");
    let config = format!(
        "allowed_uids = [{}]\nsocket_group = \"{GROUP}\"\n{}",
        second.uid,
        hsm.agent_config()
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    let key = agent.generate("targets", Some(GUN));

    // The socket and its directory: the group's, nothing for others.
    let run = std::fs::metadata(agent.socket.parent().unwrap()).unwrap();
    assert_eq!((run.mode() & 0o777, run.gid()), (0o750, gid));
    let sock = std::fs::symlink_metadata(&agent.socket).unwrap();
    assert_eq!((sock.mode() & 0o777, sock.gid()), (0o660, gid));

    let home2 = home_of(&agent, &second);
    let agent_uid = own.to_string();

    // Without --agent-uid the second user's dct refuses the root-run agent, naming the option.
    let err = agent
        .dct_as(&second, &home2, &["key", "list"], &[])
        .fails(3, "--agent-uid");
    assert!(err.contains(&format!("served by uid {own}")), "{err}");
    assert!(err.contains("DCT_AGENT_UID"), "{err}");
    // Nor does a PIN go to it: the token stays locked, and no unlock is recorded for them.
    agent.dct(&["lock"]).ok();
    let pin2 = home2.join("pin");
    write_as(&second, &pin2, format!("{}\n", hsm.pin).as_bytes());
    let pin2s = pin2.to_str().unwrap();
    agent
        .dct_as(&second, &home2, &["unlock", "--pin-file", pin2s], &[])
        .fails(3, "--agent-uid");
    // Naming another uid than the agent's is no better.
    agent
        .dct_as(
            &second,
            &home2,
            &["--agent-uid", "4242", "unlock", "--pin-file", pin2s],
            &[],
        )
        .fails(3, "nor by --agent-uid 4242");
    assert!(!unlocked(&agent));
    let from_second = |recs: &[Value], action: &str| {
        recs.iter()
            .filter(|r| r["action"] == action && r["peer"]["local"]["uid"] == second.uid)
            .count()
    };
    assert_eq!(from_second(&records(&agent.audit_path()), "unlock"), 0);

    // Naming the agent's user: the second user unlocks (the PIN sealed), lists and signs.
    agent
        .dct_as(
            &second,
            &home2,
            &["--agent-uid", &agent_uid, "unlock", "--pin-file", pin2s],
            &[],
        )
        .ok();
    assert!(unlocked(&agent));
    let listed = agent
        .dct_as(
            &second,
            &home2,
            &["--json", "key", "list"],
            &[("DCT_AGENT_UID", &agent_uid)],
        )
        .json();
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["key_id"] == key.as_str()),
        "{listed}"
    );
    let doc = home2.join("targets.json");
    write_as(
        &second,
        &doc,
        format!(r#"{{"signed":{SIGNED},"signatures":[]}}"#).as_bytes(),
    );
    agent
        .dct_as(
            &second,
            &home2,
            &[
                "--agent-uid",
                &agent_uid,
                "tuf",
                "sign",
                doc.to_str().unwrap(),
                "--key",
                &key,
                "--gun",
                GUN,
            ],
            &[],
        )
        .ok();
    let signed: Value = serde_json::from_slice(&std::fs::read(&doc).unwrap()).unwrap();
    assert_eq!(signed["signatures"][0]["keyid"], key.as_str(), "{signed}");
    let recs = records(&agent.audit_path());
    assert_eq!(from_second(&recs, "unlock"), 1, "{recs:#?}");
    assert_eq!(from_second(&recs, "sign"), 1, "{recs:#?}");

    // The third user reaches the socket (the group's) but is not in allowed_uids: the agent
    // refuses the connection before any RPC, and records it.
    let home3 = home_of(&agent, &third);
    agent
        .dct_as(
            &third,
            &home3,
            &["--agent-uid", &agent_uid, "key", "list"],
            &[],
        )
        .fails(3, "allowed_uids");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let refusal = loop {
        let found = records(&agent.audit_path())
            .into_iter()
            .find(|r| r["action"] == "refuse" && r["peer"]["local"]["uid"] == third.uid);
        if let Some(r) = found {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no refusal recorded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        refusal["outcome"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{refusal}"
    );
    assert!(!records(&agent.audit_path())
        .iter()
        .any(|r| r["peer"]["local"]["uid"] == third.uid && r["action"] != "refuse"));

    // Outside the group the socket cannot even be reached.
    let home_n = home_of(&agent, &nobody);
    agent
        .dct_as(
            &nobody,
            &home_n,
            &["--agent-uid", &agent_uid, "status"],
            &[],
        )
        .fails(3, "ermission denied");
}

/// `dct-agent --config CONFIG`: its exit status and stderr (it must not start).
fn agent_refuses(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "audit_log = {:?}\ntrust_dir = {:?}\n{config}",
            dir.path().join("audit.log").display().to_string(),
            dir.path().join("trust").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(dct_tests::bin("dct-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.path().join("run").join("agent.sock"))
        .env_remove("DCT_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the agent started with {config:?}");
    assert!(!dir.path().join("run").join("agent.sock").exists());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_socket_is_shared_only_with_allowed_uids_and_never_with_everyone() {
    let err = agent_refuses("socket_group = 0\n");
    assert!(err.contains("allowed_uids"), "{err}");
    let err = agent_refuses("socket_mode = \"0660\"\n");
    assert!(err.contains("allowed_uids"), "{err}");
    let err = agent_refuses("allowed_uids = [4242]\nsocket_mode = \"0666\"\n");
    assert!(err.contains("never world-accessible"), "{err}");
    let err = agent_refuses("allowed_uids = [4242]\nsocket_group = \"no-such-group-dct\"\n");
    assert!(err.contains("no such group"), "{err}");

    // Without the options: private, as before, allowed_uids or not.
    let agent = Agent::start_with_config(None, "allowed_uids = [4242]\n");
    let run = std::fs::metadata(agent.socket.parent().unwrap()).unwrap();
    assert_eq!(run.mode() & 0o777, 0o700);
    let sock = std::fs::symlink_metadata(&agent.socket).unwrap();
    assert_eq!(sock.mode() & 0o777, 0o600);
    agent.dct(&["status"]).ok();
}

#[test]
fn a_shared_socket_directory_looser_than_0750_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o770)).unwrap();
    let gid = nix::unistd::getegid().as_raw();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "allowed_uids = [4242]\nsocket_group = {gid}\naudit_log = {:?}\ntrust_dir = {:?}\n",
            dir.path().join("audit.log").display().to_string(),
            dir.path().join("trust").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(dct_tests::bin("dct-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(run.join("agent.sock"))
        .env_remove("DCT_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 750"), "{err}");
}

#[test]
fn a_shared_socket_the_group_cannot_reach_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = closed.join("run").join("agent.sock");
    let gid = nix::unistd::getegid().as_raw();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "allowed_uids = [4242]\nsocket_group = {gid}\naudit_log = {:?}\ntrust_dir = {:?}\n",
            dir.path().join("audit.log").display().to_string(),
            dir.path().join("trust").display().to_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let mut child = Command::new(dct_tests::bin("dct-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(&socket)
        .env_remove("DCT_SOCKET")
        .env("DCT_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("group {gid} cannot pass {}", closed.display())),
        "{text}"
    );
}
