//! The main job on an embedded default: a fresh local SoftHSM2 token behind a real
//! dct-agent, keys generated on the token, a whole Notary repository signed with them and
//! verified. Run by `softhsm/demo.sh` (which installs SoftHSM2 and builds first).

use std::path::PathBuf;

use dct_tests::{repo, Agent, SoftHsm};

const GUN: &str = "registry.example.com/demo/app";

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/dct-demo".into()),
    );
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("create output dir");

    println!("== a fresh SoftHSM2 token \"dct-demo\"");
    let hsm = SoftHsm::new("dct-demo", &format!("{:08}", std::process::id()));
    println!("   SOFTHSM2_CONF={}", hsm.conf.display());

    println!("== dct-agent serving that token");
    let mut agent = Agent::start(Some(&hsm));
    agent.echo = true;
    println!("   socket {} (pid {})", agent.socket.display(), agent.pid());
    agent.dct(&["status"]).ok();
    agent.unlock(&hsm);

    println!("== keys generated on the token, and a repository for {GUN} signed with them");
    let dir = out.join("repo");
    let k = repo::build(
        &agent,
        &dir,
        GUN,
        (b"image manifest v1\n", b"image manifest v2\n"),
    );
    agent.dct(&["key", "list"]).ok();

    println!("== the repository verified");
    agent
        .dct(&[
            "tuf",
            "verify",
            dir.to_str().unwrap_or_default(),
            "--gun",
            GUN,
        ])
        .ok();

    agent.dct(&["lock"]).ok();
    let clean = agent.stop();
    println!(
        "== agent stopped (clean: {clean}, socket removed: {}); metadata kept in {}",
        !agent.socket.exists(),
        dir.display()
    );
    println!("   root key {} (certificate ID; CN = {GUN})", k.root);
    assert!(clean, "agent did not stop cleanly");
}
