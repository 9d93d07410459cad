//! Docker Content Trust end to end: our agent on a real SoftHSM2 token publishing to the
//! real notary-server (with the real notary-signer), checked by the real notary client
//! from fresh trust directories and by `docker trust inspect` where the docker CLI exists.

use std::process::Command;

use dct_tests::hex;
use dct_tests::notary::{docker_inspect, notary_list, trust, NotaryStack};
use dct_tests::{Agent, Run, SoftHsm};
use sha2::{Digest, Sha256};

/// A running agent on a fresh token, unlocked.
fn agent_on(label: &str) -> (SoftHsm, Agent) {
    Agent::on_fresh_token(label, "7777")
}

fn sign(agent: &Agent, stack: &NotaryStack, image: &str, content: &[u8]) -> Run {
    sign_with(agent, stack, image, content, &[])
}

/// `dct trust [FLAGS] sign IMAGE --digest sha256(content) --size len(content)`.
fn sign_with(
    agent: &Agent,
    stack: &NotaryStack,
    image: &str,
    content: &[u8],
    flags: &[&str],
) -> Run {
    let digest = format!("sha256:{}", hex(&Sha256::digest(content)));
    let size = content.len().to_string();
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["sign", image, "--digest", &digest, "--size", &size]);
    trust(agent, stack, &args)
}

#[test]
fn init_sign_inspect_agree_with_the_real_notary_tools() {
    let stack = NotaryStack::start();
    let (_hsm, agent) = agent_on("dct");
    let gun = "registry.example.com/app";
    let init = trust(&agent, &stack, &["--json", "init", gun]).json();
    let (v1, v2) = (b"manifest one\n".to_vec(), vec![7u8; 4096]);
    sign(&agent, &stack, &format!("{gun}:v1"), &v1).ok();
    let out = sign(&agent, &stack, &format!("{gun}:v2"), &v2).ok();
    assert!(out.stdout.contains("in targets"), "{}", out.stdout);

    // The real notary client, trusting on first use from a fresh directory.
    let rows = notary_list(&stack, gun, &[]);
    assert_eq!(
        rows,
        vec![row("v1", &v1, "targets"), row("v2", &v2, "targets"),]
    );
    let trust_dir = tempfile::tempdir().unwrap();
    let ok = stack.notary(trust_dir.path(), &["verify", gun, "v1"], Some(&v1));
    assert!(
        ok.status.success(),
        "notary verify: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(ok.stdout, v1, "notary verify passes the content through");
    let bad = stack.notary(
        trust_dir.path(),
        &["verify", gun, "v1"],
        Some(b"other content"),
    );
    assert!(
        !bad.status.success(),
        "notary verify accepted other content"
    );

    // Our inspect: tags, signer, administrative keys as init reported them.
    let ins = trust(&agent, &stack, &["--json", "inspect", gun]).json();
    assert_eq!(ins["signed_tags"][0]["tag"], "v1");
    assert_eq!(
        ins["signed_tags"][0]["digest"],
        format!("sha256:{}", hex(&Sha256::digest(&v1)))
    );
    assert_eq!(ins["signed_tags"][0]["signers"][0], "Repo Admin");
    assert_eq!(
        ins["administrative_keys"]["root"][0]["key_id"],
        init["root_key_id"]
    );
    assert_eq!(
        ins["administrative_keys"]["root"][0]["canonical_id"],
        init["root_canonical_id"]
    );
    assert_eq!(
        ins["administrative_keys"]["repository"][0],
        init["targets_key_id"]
    );
    let one = trust(&agent, &stack, &["--json", "inspect", &format!("{gun}:v2")]).json();
    assert_eq!(one["signed_tags"].as_array().unwrap().len(), 1);

    // The keys live on the token: root (with its certificate for the GUN) and targets.
    let keys = agent.dct(&["--json", "key", "list"]).json();
    let roles: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["root", "targets"]);

    // docker trust inspect, with no daemon, where the docker CLI is installed.
    if let Some(text) = docker_inspect(&stack, &format!("{gun}:v1")) {
        assert!(text.contains(&hex(&Sha256::digest(&v1))), "{text}");
        assert!(text.contains("Repo Admin"), "{text}");
        assert!(
            text.contains(init["root_key_id"].as_str().unwrap()),
            "{text}"
        );
        assert!(
            text.contains(init["targets_key_id"].as_str().unwrap()),
            "{text}"
        );
    }
}

#[test]
fn sign_initialises_a_repository_that_has_no_trust_data() {
    let stack = NotaryStack::start();
    let (_hsm, agent) = agent_on("dct");
    let gun = "registry.example.com/fresh";
    let out = sign(&agent, &stack, &format!("{gun}:1.0"), b"m").ok();
    assert!(
        out.stderr.contains("initialised trust data"),
        "{}",
        out.stderr
    );
    let rows = notary_list(&stack, gun, &[]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "1.0");
}

#[test]
fn bad_input_and_server_failures_change_nothing() {
    let mut stack = NotaryStack::start();
    let (_hsm, agent) = agent_on("dct");
    let gun = "registry.example.com/app";
    trust(&agent, &stack, &["init", gun]).ok();
    sign(&agent, &stack, &format!("{gun}:v1"), b"one").ok();
    let before = notary_list(&stack, gun, &[]);

    trust(&agent, &stack, &["inspect", "registry.example.com/unknown"])
        .fails(1, "no trust data for registry.example.com/unknown");
    trust(
        &agent,
        &stack,
        &[
            "sign",
            &format!("{gun}:v2"),
            "--digest",
            "sha256:abcd",
            "--size",
            "4",
        ],
    )
    .fails(1, "not 64 hex characters");
    trust(
        &agent,
        &stack,
        &[
            "sign",
            &format!("{gun}:v2"),
            "--digest",
            "md5:abcd",
            "--size",
            "4",
        ],
    )
    .fails(2, "sha256:");
    let digest = format!("sha256:{}", hex(&Sha256::digest(b"x")));
    trust(
        &agent,
        &stack,
        &[
            "sign",
            &format!("{gun}:-bad"),
            "--digest",
            &digest,
            "--size",
            "1",
        ],
    )
    .fails(1, "invalid tag");
    trust(
        &agent,
        &stack,
        &["sign", gun, "--digest", &digest, "--size", "1"],
    )
    .fails(2, "has no tag");
    trust(&agent, &stack, &["init", gun]).fails(1, "already has trust data");
    assert_eq!(notary_list(&stack, gun, &[]), before, "the server changed");

    // No server given at all.
    agent
        .dct(&["trust", "inspect", gun])
        .fails(1, "no trust server");
    // The server down: a clear error, not a hang.
    stack.stop();
    let err = sign(&agent, &stack, &format!("{gun}:v3"), b"three").fails(1, "unreachable");
    assert!(err.contains(&stack.url), "{err}");
}

#[test]
fn a_repository_recreated_with_another_root_is_refused_on_trust_on_first_use() {
    let stack = NotaryStack::start();
    let (_h1, first) = agent_on("one");
    let gun = "registry.example.com/app";
    sign(&first, &stack, &format!("{gun}:v1"), b"one").ok();
    // The repository is deleted on the server and re-created by someone with another root.
    let tmp = tempfile::tempdir().unwrap();
    let del = stack.notary(tmp.path(), &["delete", gun, "--remote"], None);
    assert!(
        del.status.success(),
        "notary delete: {}",
        String::from_utf8_lossy(&del.stderr)
    );
    // The agent that trusted it will not silently re-create it under a fresh root.
    let err = sign(&first, &stack, &format!("{gun}:v2"), b"two").fails(1, "already trusts a root");
    assert!(err.contains("deleted, or this is an attack"), "{err}");
    let (_h2, second) = agent_on("two");
    sign(&second, &stack, &format!("{gun}:evil"), b"evil").ok();
    // The first agent trusted the old root: it refuses the new one.
    let err = trust(&first, &stack, &["inspect", gun]).fails(1, "differs from the trusted one");
    assert!(err.contains("not signed by the trusted root keys"), "{err}");
}

/// `docker trust inspect --pretty` output, where the docker CLI is installed.
#[test]
fn signers_sign_in_their_delegation_and_releases_and_revoke_removes_tags() {
    let stack = NotaryStack::start();
    let (_hsm, agent) = agent_on("dct");
    let gun = "registry.example.com/team";
    trust(&agent, &stack, &["init", gun]).ok();
    // Alice's key on the token; her public key exported as docker writes it (a role header).
    let alice = agent.generate("targets/alice", Some(gun));
    let pem = agent
        .dct(&["key", "export-public", &alice[..12]])
        .ok()
        .stdout;
    assert!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----\nrole: targets/alice\n\n"),
        "{pem}"
    );
    let pem_path = agent.dir.path().join("alice.pub");
    std::fs::write(&pem_path, &pem).unwrap();
    let added = trust(
        &agent,
        &stack,
        &[
            "--json",
            "signer",
            "add",
            "alice",
            gun,
            "--key",
            pem_path.to_str().unwrap(),
        ],
    )
    .json();
    assert_eq!(added["key_id"], alice.as_str());

    // Signing now goes to targets/releases and targets/alice, not targets.
    let v1 = b"release manifest\n";
    let out = sign(&agent, &stack, &format!("{gun}:v1"), v1).ok();
    assert!(
        out.stdout.contains("targets/alice") && out.stdout.contains("targets/releases"),
        "{}",
        out.stdout
    );
    let rows = notary_list(&stack, gun, &["--roles", "targets/releases"]);
    assert_eq!(rows, vec![row("v1", v1, "targets/releases")]);
    let ins = trust(&agent, &stack, &["--json", "inspect", gun]).json();
    assert_eq!(
        ins["signed_tags"][0]["signers"],
        serde_json::json!(["alice"])
    );
    assert_eq!(ins["signers"][0]["name"], "alice");
    assert_eq!(ins["signers"][0]["keys"][0], alice.as_str());
    if let Some(text) = docker_inspect(&stack, gun) {
        assert!(text.contains("alice"), "{text}");
        assert!(text.contains(&hex(&Sha256::digest(v1))), "{text}");
    }

    // Revoke: the tag is gone for both tools.
    trust(&agent, &stack, &["revoke", &format!("{gun}:v1")]).ok();
    assert!(notary_list(&stack, gun, &["--roles", "targets/releases"]).is_empty());
    let ins = trust(&agent, &stack, &["--json", "inspect", gun]).json();
    assert_eq!(ins["signed_tags"].as_array().unwrap().len(), 0);
    if let Some(text) = docker_inspect(&stack, gun) {
        assert!(
            !text.contains(&hex(&Sha256::digest(v1))),
            "docker still shows the revoked tag: {text}"
        );
    }
    trust(&agent, &stack, &["revoke", &format!("{gun}:v1")]).fails(1, "is not signed in any role");

    // Signer names Docker forbids, then removing the signer.
    trust(
        &agent,
        &stack,
        &["signer", "add", "releases", gun, "--key-id", &alice],
    )
    .fails(1, "invalid signer name");
    trust(
        &agent,
        &stack,
        &["signer", "add", "Bad_Name", gun, "--key-id", &alice],
    )
    .fails(1, "invalid signer name");
    trust(&agent, &stack, &["signer", "remove", "alice", gun]).ok();
    let ins = trust(&agent, &stack, &["--json", "inspect", gun]).json();
    assert_eq!(ins["signers"].as_array().unwrap().len(), 0);
    trust(&agent, &stack, &["signer", "remove", "alice", gun]).fails(1, "has no signer alice");
    // With no delegation left, signing goes to targets again, and notary agrees.
    sign(&agent, &stack, &format!("{gun}:v2"), b"two").ok();
    let rows = notary_list(&stack, gun, &[]);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0.as_str(), rows[0].3.as_str()), ("v2", "targets"));
}

#[test]
fn a_repository_made_by_the_notary_client_is_taken_over_by_importing_its_keys() {
    let stack = NotaryStack::start();
    let gun = "registry.example.com/legacy";
    let ndir = notary_made_repo(&stack, gun, b"legacy v1\n");
    let (_hsm, agent) = agent_on("dct");
    // Import the publisher's targets and snapshot keys (notary keeps the snapshot key locally).
    let mut imported = Vec::new();
    for entry in std::fs::read_dir(ndir.path().join("private")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let role = if text.contains("role: targets") {
            "targets"
        } else if text.contains("role: snapshot") {
            "snapshot"
        } else {
            continue;
        };
        // A wrong passphrase first: a clear error, nothing imported.
        let bad = agent.dir.path().join("bad-pass");
        std::fs::write(&bad, "nope\n").unwrap();
        agent
            .dct(&[
                "key",
                "import",
                path.to_str().unwrap(),
                "--passphrase-file",
                bad.to_str().unwrap(),
            ])
            .fails(1, "wrong passphrase");
        let var = format!("NOTARY_{}_PASSPHRASE", role.to_uppercase());
        let pass = format!("test-{role}-passphrase");
        let id = agent
            .dct_env(&["key", "import", path.to_str().unwrap()], &[(&var, &pass)])
            .ok()
            .stdout;
        // Notary names key files by canonical key ID.
        assert_eq!(id.trim(), path.file_stem().unwrap().to_str().unwrap());
        imported.push(role);
    }
    imported.sort();
    assert_eq!(imported, ["snapshot", "targets"]);
    let keys = agent.dct(&["--json", "key", "list"]).json();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);

    // A fresh agent will not sign on a root it has never seen, unless told to.
    let v2 = b"ours v2\n";
    sign(&agent, &stack, &format!("{gun}:v2"), v2).fails(1, "--trust-on-first-use");
    // Our agent signs a tag: targets and snapshot on the token, the server makes the timestamp.
    sign_with(
        &agent,
        &stack,
        &format!("{gun}:v2"),
        v2,
        &["--trust-on-first-use"],
    )
    .ok();
    // The notary client that made the repository still trusts it and sees both tags ...
    let list = stack.notary(ndir.path(), &["list", gun], None);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success() && text.contains("v1") && text.contains(&hex(&Sha256::digest(v2))),
        "{text}"
    );
    // ... and can go on publishing to it.
    let v3 = agent_dir_file(ndir.path(), "v3.txt", b"legacy v3\n");
    for args in [vec!["add", gun, "v3", &v3], vec!["publish", gun]] {
        let out = stack.notary(ndir.path(), &args, None);
        assert!(
            out.status.success(),
            "notary {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ins = trust(&agent, &stack, &["--json", "inspect", gun]).json();
    let tags: Vec<&str> = ins["signed_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["v1", "v2", "v3"]);
}

fn agent_dir_file(dir: &std::path::Path, name: &str, content: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn key_rotation_keeps_clients_that_trusted_the_old_root() {
    let stack = NotaryStack::start();
    let (_hsm, agent) = agent_on("dct");
    let gun = "registry.example.com/rotate";
    let init = trust(&agent, &stack, &["--json", "init", gun]).json();
    sign(&agent, &stack, &format!("{gun}:v1"), b"one").ok();
    // A notary client trusts the repository as it is now.
    let ndir = tempfile::tempdir().unwrap();
    let list = |tag: &str| {
        let out = stack.notary(ndir.path(), &["list", gun], None);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "notary list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(tag), "{text}");
    };
    list("v1");
    let rotate = |role: &str, extra: &[&str]| {
        let mut args = vec!["--json", "key", "rotate", gun, role];
        args.extend_from_slice(extra);
        trust(&agent, &stack, &args).json()["key_id"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let targets = rotate("targets", &[]);
    assert_ne!(targets, init["targets_key_id"].as_str().unwrap());
    sign(&agent, &stack, &format!("{gun}:v2"), b"two").ok();
    list("v2");
    let ins = trust(&agent, &stack, &["--json", "inspect", gun]).json();
    assert_eq!(
        ins["administrative_keys"]["repository"][0],
        targets.as_str()
    );

    let snapshot = rotate("snapshot", &["--server-managed"]);
    assert_ne!(snapshot, init["snapshot_key_id"].as_str().unwrap());
    rotate("timestamp", &[]);
    sign(&agent, &stack, &format!("{gun}:v3"), b"three").ok();
    list("v3");

    // Root: the notary client that cached the old root follows the cross-signed new one.
    let root = rotate("root", &[]);
    assert_ne!(root, init["root_key_id"].as_str().unwrap());
    list("v3");
    let ins = trust(&agent, &stack, &["--json", "inspect", gun]).json();
    assert_eq!(
        ins["administrative_keys"]["root"][0]["key_id"],
        root.as_str()
    );
    assert_eq!(
        ins["administrative_keys"]["root"].as_array().unwrap().len(),
        1
    );
    sign(&agent, &stack, &format!("{gun}:v4"), b"four").ok();
    list("v4");
    if let Some(text) = docker_inspect(&stack, &format!("{gun}:v4")) {
        assert!(
            text.contains(&root) && text.contains(&targets),
            "docker: {text}"
        );
        assert!(
            text.contains(&hex(&Sha256::digest(b"four"))),
            "docker: {text}"
        );
    }

    trust(&agent, &stack, &["key", "rotate", gun, "releases"]).fails(1, "cannot rotate");
    trust(
        &agent,
        &stack,
        &["key", "rotate", gun, "targets", "--server-managed"],
    )
    .fails(1, "server-managed");
}

#[test]
fn sign_resolves_the_digest_from_the_registry_or_a_manifest_file() {
    let stack = NotaryStack::start();
    let registry = dct_tests::registry::Registry::start(&stack);
    let (_hsm, agent) = agent_on("dct");
    let served = registry.push("team/app", "v1", "hello from v1");
    let gun = format!("{}/team/app", registry.host);
    // No digest given: the agent asks the registry (HTTPS with the same CA).
    trust(&agent, &stack, &["sign", &format!("{gun}:v1")]).ok();
    // A manifest file: its exact bytes.
    let manifest = agent.dir.path().join("manifest.json");
    std::fs::write(&manifest, b"{\"schemaVersion\":2}").unwrap();
    trust(
        &agent,
        &stack,
        &[
            "sign",
            &format!("{gun}:v2"),
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    )
    .ok();
    let rows = notary_list(&stack, &gun, &[]);
    assert_eq!(
        rows,
        vec![
            row("v1", &served, "targets"),
            row("v2", b"{\"schemaVersion\":2}", "targets"),
        ]
    );
    // A tag the registry does not have.
    trust(&agent, &stack, &["sign", &format!("{gun}:nope")]).fails(1, "is not in the registry");
}

#[test]
fn root_pinning_from_the_config_and_verification_needs_no_key() {
    let stack = NotaryStack::start();
    let (_hsm, agent) = agent_on("dct");
    let gun = "registry.example.com/pinned";
    let init = trust(&agent, &stack, &["--json", "init", gun]).json();
    sign(&agent, &stack, &format!("{gun}:v1"), b"one").ok();
    let pinned = |id: &str| {
        Agent::start_with_config(
            None,
            &format!("[trust.pinning.certs]\n\"registry.example.com/*\" = [\"{id}\"]\n"),
        )
    };
    // Pinned to the root's certificate ID, or its canonical ID: accepted, by an agent with no token.
    for id in [
        init["root_key_id"].as_str().unwrap(),
        init["root_canonical_id"].as_str().unwrap(),
    ] {
        let a = pinned(id);
        let ins = trust(&a, &stack, &["--json", "inspect", gun]).json();
        assert_eq!(ins["signed_tags"][0]["tag"], "v1");
    }
    // Pinned to another key: refused, though trust on first use would have accepted it.
    let a = pinned(init["targets_key_id"].as_str().unwrap());
    let err = trust(&a, &stack, &["inspect", gun]).fails(1, "does not verify");
    assert!(err.contains("is not pinned"), "{err}");
}

#[test]
fn a_local_snapshot_key_on_the_token_signs_every_snapshot() {
    let stack = NotaryStack::start();
    let (_hsm, agent) = agent_on("dct");
    let gun = "registry.example.com/localsnap";
    let init = trust(&agent, &stack, &["--json", "init", gun, "--local-snapshot"]).json();
    let keys = agent.dct(&["--json", "key", "list"]).json();
    let snap = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "snapshot")
        .expect("snapshot key on the token");
    assert_eq!(snap["key_id"], init["snapshot_key_id"]);
    sign(&agent, &stack, &format!("{gun}:v1"), b"one").ok();
    sign(&agent, &stack, &format!("{gun}:v2"), b"two").ok();
    let rows = notary_list(&stack, gun, &[]);
    assert_eq!(
        rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["v1", "v2"]
    );
}

#[test]
fn the_file_backend_signs_with_existing_notary_key_files() {
    let stack = NotaryStack::start();
    let gun = "registry.example.com/files";
    let ndir = notary_made_repo(&stack, gun, b"files v1\n");
    let private = ndir.path().join("private");
    let label = format!("file:{}", private.display());
    let agent = Agent::start_with_config(
        None,
        &format!("[[file]]\ndir = {:?}\n", private.display().to_string()),
    );
    // Listed from the files while locked: IDs from the names, roles from the headers.
    let keys = agent.dct(&["--json", "key", "list"]).json();
    let mut roles: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["role"].as_str().unwrap())
        .collect();
    roles.sort();
    assert_eq!(roles, ["root", "snapshot", "targets"]);
    // Locked: signing says so.
    sign_with(
        &agent,
        &stack,
        &format!("{gun}:v2"),
        b"two",
        &["--trust-on-first-use"],
    )
    .fails(1, "locked: run dct unlock");
    // A wrong passphrase opens nothing.
    agent
        .dct_env(&["unlock", "--token", &label], &[("DCT_PIN", "wrong")])
        .fails(1, "wrong PIN");
    // The passphrases notary reads, from the environment.
    let out = agent
        .dct_env(
            &["unlock", "--token", &label],
            &[
                ("NOTARY_TARGETS_PASSPHRASE", "test-targets-passphrase"),
                ("NOTARY_SNAPSHOT_PASSPHRASE", "test-snapshot-passphrase"),
            ],
        )
        .ok();
    assert!(
        out.stdout.contains("NOTARY_TARGETS_PASSPHRASE")
            && out.stdout.contains("NOTARY_SNAPSHOT_PASSPHRASE"),
        "{}",
        out.stdout
    );
    sign_with(
        &agent,
        &stack,
        &format!("{gun}:v2"),
        b"two",
        &["--trust-on-first-use"],
    )
    .ok();
    let list = stack.notary(ndir.path(), &["list", gun], None);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success() && text.contains("v1") && text.contains("v2"),
        "{text}"
    );
    agent.dct(&["lock"]).ok();
    sign(&agent, &stack, &format!("{gun}:v3"), b"three").fails(1, "locked: run dct unlock");
}

#[test]
fn concurrent_signing_of_one_repository_loses_no_tag() {
    let stack = NotaryStack::start();
    let (_hsm, agent) = agent_on("dct");
    let gun = "registry.example.com/busy";
    trust(&agent, &stack, &["init", gun]).ok();
    // Eight CI jobs sign eight tags at once through one agent.
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (agent, stack) = (&agent, &stack);
                s.spawn(move || {
                    sign(
                        agent,
                        stack,
                        &format!("{gun}:t{i}"),
                        format!("tag {i}").as_bytes(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &runs {
        r.ok();
    }
    let rows = notary_list(&stack, gun, &[]);
    assert_eq!(rows.len(), 8, "{rows:?}");
}

#[test]
fn two_agents_racing_see_the_servers_reason_and_lose_nothing() {
    let stack = NotaryStack::start();
    let (hsm, a) = agent_on("shared");
    let gun = "registry.example.com/race";
    trust(&a, &stack, &["init", gun]).ok();
    // A second agent process on the same token.
    let b = Agent::start(Some(&hsm));
    b.unlock(&hsm);
    let runs: Vec<(usize, Run)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (agent, stack) = (if i % 2 == 0 { &a } else { &b }, &stack);
                s.spawn(move || {
                    let image = format!("{gun}:t{i}");
                    (
                        i,
                        sign_with(
                            agent,
                            stack,
                            &image,
                            format!("tag {i}").as_bytes(),
                            &["--trust-on-first-use"],
                        ),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // A publish the server refused says why and changed nothing; signing again succeeds.
    let refused = runs.iter().filter(|(_, r)| r.code() != 0).count();
    eprintln!("{refused} of 8 concurrent publishes were refused by the server");
    for (i, r) in runs {
        if r.code() != 0 {
            r.fails(1, "A newer version of metadata is already available");
            let agent = if i % 2 == 0 { &a } else { &b };
            sign_with(
                agent,
                &stack,
                &format!("{gun}:t{i}"),
                format!("tag {i}").as_bytes(),
                &["--trust-on-first-use"],
            )
            .ok();
        }
    }
    assert_eq!(notary_list(&stack, gun, &[]).len(), 8);
}

#[test]
fn a_server_replaying_older_metadata_is_refused() {
    let stack = NotaryStack::start();
    let (_hsm, agent) = agent_on("dct");
    let gun = "registry.example.com/rollback";
    trust(&agent, &stack, &["init", gun]).ok();
    sign(&agent, &stack, &format!("{gun}:t1"), b"one").ok();
    // Capture the repository as it is now (targets v2), with the real notary client.
    let ndir = tempfile::tempdir().unwrap();
    let out = stack.notary(ndir.path(), &["list", gun], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let captured = ndir.path().join("tuf").join(gun).join("metadata");
    // The repository moves on: t1 revoked, t2 signed.
    trust(&agent, &stack, &["revoke", &format!("{gun}:t1")]).ok();
    sign(&agent, &stack, &format!("{gun}:t2"), b"two").ok();
    // A server replaying the captured, still validly signed and unexpired metadata.
    let replay = dct_tests::replay::Replay::start(gun, captured);
    let run = agent.dct(&["trust", "--server", &replay.url, "inspect", gun]);
    run.fails(1, "refusing a rollback");
    // Nor will the agent sign on it (which would bring the revoked t1 back).
    let digest = format!("sha256:{}", hex(&Sha256::digest(b"three")));
    agent
        .dct(&[
            "trust",
            "--server",
            &replay.url,
            "sign",
            &format!("{gun}:t3"),
            "--digest",
            &digest,
            "--size",
            "5",
        ])
        .fails(1, "refusing a rollback");
    // A fresh agent that never saw the newer versions has nothing to compare with.
    let fresh = Agent::start(None);
    let ins = fresh
        .dct(&["--json", "trust", "--server", &replay.url, "inspect", gun])
        .json();
    assert_eq!(ins["signed_tags"][0]["tag"], "t1");
}

#[test]
fn the_file_backend_writes_keys_the_notary_client_signs_with() {
    use std::os::unix::fs::PermissionsExt;
    let stack = NotaryStack::start();
    let gun = "registry.example.com/written";
    let dir = tempfile::tempdir().unwrap();
    let label = format!("file:{}", dir.path().display());
    let agent = Agent::start_with_config(
        None,
        &format!("[[file]]\ndir = {:?}\n", dir.path().display().to_string()),
    );
    let generate = |role: &str| {
        agent.dct(&[
            "key", "generate", "--role", role, "--gun", gun, "--token", &label,
        ])
    };
    // Locked: no passphrase to encrypt a new key with yet.
    generate("targets/releases").fails(1, "locked");
    // An empty directory takes the first passphrase for the keys it will hold (here the one
    // the test harness gives the notary client for delegation keys).
    agent
        .dct_env(
            &["unlock", "--token", &label],
            &[("DCT_PIN", "test-delegation-passphrase")],
        )
        .ok();
    let id = generate("targets/releases").ok().stdout.trim().to_string();
    generate("root").fails(1, "does not make root keys");
    let path = dir.path().join(format!("{id}.key"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\nrole: targets/releases\n\n"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // openssl decrypts it (PBES2, PBKDF2-HMAC-SHA1, AES-256-CBC).
    let bare: String = text
        .lines()
        .filter(|l| !l.contains(": "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.path().join("bare.pem"), bare).unwrap();
    let out = Command::new("openssl")
        .args(["pkcs8", "-passin", "pass:test-delegation-passphrase", "-in"])
        .arg(dir.path().join("bare.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The real notary client signs with it: a repository of its own delegates
    // targets/releases to the key, the file goes into its key directory, it publishes.
    let pubkey = agent.dir.path().join("releases.pub");
    std::fs::write(
        &pubkey,
        agent.dct(&["key", "export-public", &id]).ok().stdout,
    )
    .unwrap();
    let ndir = tempfile::tempdir().unwrap();
    let content = agent_dir_file(
        ndir.path(),
        "v1.txt",
        b"signed by notary with our key file\n",
    );
    let notary = |args: &[&str]| {
        let out = stack.notary(ndir.path(), args, None);
        assert!(
            out.status.success(),
            "notary {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    notary(&["init", gun]);
    notary(&["publish", gun]);
    notary(&[
        "delegation",
        "add",
        gun,
        "targets/releases",
        pubkey.to_str().unwrap(),
        "--all-paths",
    ]);
    notary(&["publish", gun]);
    std::fs::copy(&path, ndir.path().join("private").join(format!("{id}.key"))).unwrap();
    notary(&["add", gun, "v1", &content, "--roles", "targets/releases"]);
    notary(&["publish", gun]);
    let rows = notary_list(&stack, gun, &["--roles", "targets/releases"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Locked and unlocked again with the same passphrase, the agent opens it; not with another.
    agent.dct(&["lock"]).ok();
    agent
        .dct_env(&["unlock", "--token", &label], &[("DCT_PIN", "wrong")])
        .fails(1, "wrong PIN");
    agent
        .dct_env(
            &["unlock", "--token", &label],
            &[("DCT_PIN", "test-delegation-passphrase")],
        )
        .ok();
}

#[test]
fn an_imported_notary_root_key_rotates_the_root_of_a_notary_repository() {
    let stack = NotaryStack::start();
    let gun = "registry.example.com/oldroot";
    let ndir = notary_made_repo(&stack, gun, b"v1\n");
    let (_hsm, agent) = agent_on("dct");
    // The root key moves to the token with no certificate stored there; the snapshot key
    // too, since this repository keeps it client-side and a new root needs a new snapshot.
    for entry in std::fs::read_dir(ndir.path().join("private")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for role in ["root", "snapshot"] {
            if text.contains(&format!("role: {role}")) {
                let var = format!("NOTARY_{}_PASSPHRASE", role.to_uppercase());
                let pass = format!("test-{role}-passphrase");
                agent
                    .dct_env(&["key", "import", path.to_str().unwrap()], &[(&var, &pass)])
                    .ok();
            }
        }
    }
    let new_root = trust(
        &agent,
        &stack,
        &[
            "--json",
            "--trust-on-first-use",
            "key",
            "rotate",
            gun,
            "root",
        ],
    )
    .json()["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The notary client that made the repository follows the rotation (the new root is
    // signed by the old key under the certificate ID the old root lists).
    let list = stack.notary(ndir.path(), &["list", gun], None);
    assert!(
        list.status.success(),
        "notary list: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("v1"));
    let ins = trust(&agent, &stack, &["--json", "inspect", gun]).json();
    assert_eq!(
        ins["administrative_keys"]["root"][0]["key_id"],
        new_root.as_str()
    );
}

#[test]
fn plain_http_server_and_an_existing_root_key() {
    let stack = NotaryStack::start_plain_http();
    assert!(stack.url.starts_with("http://"));
    let (_hsm, agent) = agent_on("dct");
    // A root key made beforehand, named at init: its certificate for the GUN is made then.
    let gun = "registry.example.com/plain";
    let root = agent.generate("root", None);
    let init = trust(
        &agent,
        &stack,
        &["--json", "init", gun, "--root-key", &root[..10]],
    )
    .json();
    assert_eq!(init["root_canonical_id"], root.as_str());
    sign(&agent, &stack, &format!("{gun}:v1"), b"over http").ok();
    let rows = notary_list(&stack, gun, &[]);
    assert_eq!(rows[0].0, "v1");
    // A targets key named as a root key is refused.
    let other = "registry.example.com/plain2";
    let targets = agent.generate("targets", Some(other));
    trust(&agent, &stack, &["init", other, "--root-key", &targets]).fails(1, "not a root key");
}

#[test]
fn the_registry_digest_with_basic_auth() {
    let stack = NotaryStack::start();
    let registry = dct_tests::registry::Registry::start_with_auth(&stack, "ci-user", "ci-secret");
    let (_hsm, agent) = agent_on("dct");
    let served = registry.push("team/private", "v1", "private v1");
    let gun = format!("{}/team/private", registry.host);
    let image = format!("{gun}:v1");
    let args = [
        "trust",
        "--server",
        &stack.url,
        "--tlscacert",
        stack.ca.to_str().unwrap(),
        "sign",
        &image,
    ];
    // Without credentials the registry's refusal is shown and nothing is signed.
    agent.dct(&args).fails(1, "401");
    // With them (from the environment only), the digest the registry serves is signed.
    let out = agent
        .dct_env(
            &args,
            &[
                ("DCT_REGISTRY_USERNAME", "ci-user"),
                ("DCT_REGISTRY_PASSWORD", "ci-secret"),
            ],
        )
        .ok();
    assert!(
        out.stdout.contains(&hex(&Sha256::digest(&served))),
        "{}",
        out.stdout
    );
    let rows = notary_list(&stack, &gun, &[]);
    assert_eq!(rows, vec![row("v1", &served, "targets")]);
}

/// A repository the real notary client made and published with tag v1 (its keys in the
/// returned trust directory).
fn notary_made_repo(stack: &NotaryStack, gun: &str, v1: &[u8]) -> tempfile::TempDir {
    let ndir = tempfile::tempdir().unwrap();
    let content = agent_dir_file(ndir.path(), "v1.txt", v1);
    for args in [
        vec!["init", gun],
        vec!["add", gun, "v1", &content],
        vec!["publish", gun],
    ] {
        let out = stack.notary(ndir.path(), &args, None);
        assert!(
            out.status.success(),
            "notary {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ndir
}

/// A `notary list` row for `tag` signed over `content` in `role`.
fn row(tag: &str, content: &[u8], role: &str) -> (String, String, String, String) {
    (
        tag.into(),
        hex(&Sha256::digest(content)),
        content.len().to_string(),
        role.into(),
    )
}

/// The version of `gun`'s targets role the notary-server serves.
fn targets_version(stack: &NotaryStack, gun: &str) -> u64 {
    let url = format!("{}/v2/{gun}/_trust/tuf/targets.json", stack.url);
    let out = std::process::Command::new("curl")
        .args(["-sf", "--cacert", stack.ca.to_str().unwrap(), &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {url}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["signed"]["version"].as_u64().unwrap()
}

#[test]
fn many_tags_in_one_signed_update() {
    let stack = NotaryStack::start();
    let (_hsm, agent) = agent_on("many");
    let gun = "registry.example.com/many";
    // Two tags on the command line would need the registry; the list file carries digests.
    // More tags than one piece of the stream carries (10,000): still one update.
    let n = dct_proto::MAX_TAGS_PER_PIECE + 250;
    let contents: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("manifest {i}\n").into_bytes())
        .collect();
    let mut list = String::from("# tag digest size\n\n");
    for (i, c) in contents.iter().enumerate() {
        list.push_str(&format!(
            "{gun}:t{i} sha256:{} {}\n",
            hex(&Sha256::digest(c)),
            c.len()
        ));
    }
    let file = agent.dir.path().join("tags.txt");
    std::fs::write(&file, &list).unwrap();
    let run = trust(
        &agent,
        &stack,
        &["--json", "sign", "--from", file.to_str().unwrap()],
    );
    assert!(
        run.stderr().contains(&format!(
            "{n} tags sent; the agent signs and publishes them as one update"
        )),
        "{}",
        run.stderr()
    );
    let out = run.json();
    let listed = out["tags"].as_array().unwrap();
    assert_eq!(listed.len(), n);
    assert_eq!(
        listed[n - 1]["digest"],
        format!("sha256:{}", hex(&Sha256::digest(&contents[n - 1])))
    );
    assert_eq!(out["initialized"], true);

    // One publish: the real notary client sees every tag with its digest, and one version
    // of targets (init wrote version 1, this update version 2).
    assert_eq!(targets_version(&stack, gun), 2);
    let rows = notary_list(&stack, gun, &[]);
    let mut want: Vec<_> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| row(&format!("t{i}"), c, "targets"))
        .collect();
    want.sort();
    let mut rows = rows;
    rows.sort();
    assert_eq!(rows, want);
    let ins = trust(&agent, &stack, &["--json", "inspect", gun]).json();
    assert_eq!(ins["signed_tags"].as_array().unwrap().len(), n);

    // A list longer than --part-size is signed and published in parts, one after another;
    // the answer lists every tag, and the real notary client sees the new digests of two
    // tags signed again.
    let more: Vec<Vec<u8>> = (0..5).map(|i| format!("more {i}\n").into_bytes()).collect();
    let (a, b, c) = (
        format!("t{n}"),
        format!("t{}", n + 1),
        format!("t{}", n + 2),
    );
    let names = ["t0", "t1", a.as_str(), b.as_str(), c.as_str()];
    let mut list = String::new();
    for (n, c) in names.iter().zip(&more) {
        list.push_str(&format!(
            "{gun}:{n} sha256:{} {}\n",
            hex(&Sha256::digest(c)),
            c.len()
        ));
    }
    std::fs::write(&file, &list).unwrap();
    let parts = &["--json", "sign", "--part-size", "2", "--from"];
    let run = trust(
        &agent,
        &stack,
        &[parts, &[file.to_str().unwrap()][..]].concat(),
    );
    assert_eq!(run.json()["tags"].as_array().unwrap().len(), 5);
    let err = run.stderr();
    for part in [
        "part 1 of 3: 2 tags signed and published (2 of 5)",
        "part 2 of 3: 2 tags signed and published (4 of 5)",
        "part 3 of 3: 1 tags signed and published (5 of 5)",
    ] {
        assert!(err.contains(part), "{err}");
    }
    assert_eq!(targets_version(&stack, gun), 5);
    let rows = notary_list(&stack, gun, &[]);
    assert_eq!(rows.len(), n + 3);
    for (n, c) in names.iter().zip(&more) {
        assert!(rows.contains(&row(n, c, "targets")), "{n}: {rows:?}");
    }
    // A part refused after one was published: what was published stays, and the error says
    // how far it got and that the same command finishes it.
    let d = hex(&Sha256::digest(b"g"));
    std::fs::write(
        &file,
        format!("{gun}:g1 sha256:{d} 1\n{gun}:g2 sha256:{d} 1\n{gun}:-bad sha256:{d} 1\n"),
    )
    .unwrap();
    let run = trust(
        &agent,
        &stack,
        &[&parts[1..], &[file.to_str().unwrap()][..]].concat(),
    );
    assert_ne!(run.code(), 0);
    let err = run.stderr();
    assert!(
        err.contains("2 of 3 tags signed and published in 1 part(s); part 2 of 2 failed"),
        "{err}"
    );
    assert!(err.contains("run the same command again"), "{err}");
    let rows = notary_list(&stack, gun, &[]);
    assert!(rows.contains(&row("g1", b"g", "targets")), "{rows:?}");
    assert_eq!(rows.len(), n + 5);

    // Refusals: two repositories, --digest with many tags, a malformed line, a repeat.
    let two = trust(
        &agent,
        &stack,
        &["sign", &format!("{gun}:a"), "registry.example.com/other:b"],
    );
    two.fails(2, "one repository");
    let digest = format!("sha256:{}", "a".repeat(64));
    trust(
        &agent,
        &stack,
        &[
            "sign",
            "--from",
            file.to_str().unwrap(),
            "--digest",
            &digest,
            "--size",
            "1",
        ],
    )
    .fails(2, "--from");
    std::fs::write(&file, format!("{gun}:x sha256:zz 1\n")).unwrap();
    trust(&agent, &stack, &["sign", "--from", file.to_str().unwrap()]).fails(2, "line 1");
    let d = hex(&Sha256::digest(b"x"));
    std::fs::write(
        &file,
        format!("{gun}:x sha256:{d} 1\n{gun}:x sha256:{d} 1\n"),
    )
    .unwrap();
    trust(&agent, &stack, &["sign", "--from", file.to_str().unwrap()]).fails(2, "twice");
}
