//! The main job on an embedded default: a fresh local SoftHSM2 token behind a real
//! dct-agent and a local notary stack (notary-server + notary-signer); a repository
//! initialised, tags signed and inspected, and the real notary client agreeing. Then a
//! whole repository signed offline and verified. Run by `softhsm/demo.sh` (which installs
//! SoftHSM2 and notary and builds first).

use std::path::PathBuf;

use dct_tests::notary::NotaryStack;
use dct_tests::{repo, Agent, SoftHsm};
use sha2::{Digest, Sha256};

const GUN: &str = "registry.example.com/demo/app";

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/dct-demo".into()),
    );
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("create output dir");

    println!("== a fresh SoftHSM2 token \"dct-demo\" and a local notary stack");
    let hsm = SoftHsm::new("dct-demo", &format!("{:08}", std::process::id()));
    let stack = NotaryStack::start();
    println!("   SOFTHSM2_CONF={}", hsm.conf.display());
    println!("   notary-server {} (CA {})", stack.url, stack.ca.display());

    println!("== dct-agent serving that token");
    let mut agent = Agent::start(Some(&hsm));
    agent.echo = true;
    println!("   socket {} (pid {})", agent.socket.display(), agent.pid());
    agent.dct(&["status"]).ok();
    agent.unlock(&hsm);

    println!("== Docker Content Trust against the notary-server");
    let server = [
        "trust",
        "--server",
        &stack.url,
        "--tlscacert",
        stack.ca.to_str().unwrap_or_default(),
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        server.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        agent.dct(&refs).ok()
    };
    run(with(&["init", GUN]));
    let manifest = b"{\"schemaVersion\":2,\"demo\":true}\n";
    let digest = format!("sha256:{}", hex(&Sha256::digest(manifest)));
    let size = manifest.len().to_string();
    run(with(&[
        "sign",
        &format!("{GUN}:1.0"),
        "--digest",
        &digest,
        "--size",
        &size,
    ]));
    run(with(&["inspect", GUN]));
    println!("$ notary -s {} -d <fresh trust dir> list {GUN}", stack.url);
    let fresh = tempfile::tempdir().expect("tempdir");
    let list = stack.notary(fresh.path(), &["list", GUN], None);
    print!("{}", String::from_utf8_lossy(&list.stdout));
    assert!(
        list.status.success(),
        "notary list failed: {}",
        String::from_utf8_lossy(&list.stderr)
    );

    println!("== offline: a whole repository signed with keys on the token, then verified");
    let dir = out.join("repo");
    let offline_gun = "registry.example.com/demo/offline";
    repo::build(
        &agent,
        &dir,
        offline_gun,
        (b"image manifest v1\n", b"image manifest v2\n"),
    );
    agent.dct(&["key", "list"]).ok();
    agent
        .dct(&[
            "tuf",
            "verify",
            dir.to_str().unwrap_or_default(),
            "--gun",
            offline_gun,
        ])
        .ok();

    agent.dct(&["lock"]).ok();
    let clean = agent.stop();
    println!(
        "== agent stopped (clean: {clean}, socket removed: {}); offline metadata kept in {}",
        !agent.socket.exists(),
        dir.display()
    );
    assert!(clean, "agent did not stop cleanly");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
