//! Engine enforcement (issue 19): the real dockerd (Debian docker.io) with dct-authz as its
//! authorization plugin pulls and creates containers from signed images only. Images are
//! pushed to a real registry by skopeo and signed by the agent on a SoftHSM2 token against
//! the real notary stack.

use std::path::Path;
use std::process::Command;

use dct_tests::dockerd::{Dockerd, Plugin, DOCKERD};
use dct_tests::notary::{trust, NotaryStack};
use dct_tests::registry::Registry;
use dct_tests::{bin, hex, Agent};
use sha2::{Digest, Sha256};

fn digest(manifest: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(manifest)))
}

fn audit(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn dockerd_pulls_and_creates_only_signed_images_through_dct_authz() {
    if !Path::new(DOCKERD).exists() {
        panic!("{DOCKERD} missing: run softhsm/install-deps.sh (docker.io)");
    }
    let mut stack = NotaryStack::start();
    let registry = Registry::start(&stack);
    let host = registry.host.clone();
    let (_hsm, signer) = Agent::on_fresh_token("authz-signer", "2222");
    let m1 = registry.push_runnable("team/app", "v1", "app v1");
    let m2 = registry.push_runnable("team/app", "v2", "app v2, never signed");
    registry.push_runnable("outside/app", "v1", "outside the pins");
    let gun = format!("{host}/team/app");
    let init = trust(&signer, &stack, &["--json", "init", &gun]).json();
    let root_id = init["root_key_id"].as_str().unwrap().to_string();
    trust(&signer, &stack, &["sign", &format!("{gun}:v1")]).ok();
    // v3: signed, then re-pointed in the registry (below).
    registry.push_runnable("team/app", "v3", "app v3");
    trust(&signer, &stack, &["sign", &format!("{gun}:v3")]).ok();
    let (d1, d2) = (digest(&m1), digest(&m2));
    // team/short: its own root, pinned by its exact name; its trust data is made to expire
    // soon (below), to be refused once expired while the server is down.
    registry.push_runnable("team/short", "v1", "short-lived trust data");
    let short_gun = format!("{host}/team/short");
    let short_root = trust(&signer, &stack, &["--json", "init", &short_gun]).json()["root_key_id"]
        .as_str()
        .unwrap()
        .to_string();
    trust(&signer, &stack, &["sign", &format!("{short_gun}:v1")]).ok();

    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let name = format!(
        "dct-test-{}-{}",
        std::process::id(),
        &hex(&Sha256::digest(w.to_str().unwrap().as_bytes()))[..8]
    );
    let trust_cfg = format!(
        "[trust]\nserver = {:?}\ntlscacert = {:?}\n",
        stack.url,
        stack.ca.display().to_string()
    );
    let pins = format!(
        "[trust.pinning.certs]\n\"{host}/team/*\" = [\"{root_id}\"]\n\"{short_gun}\" = [\"{short_root}\"]\n"
    );
    let enforced = format!("mode = \"enforced\"\nunpinned = \"deny\"\n{trust_cfg}{pins}");
    let plugin_sock = w.join("plugin").join("authz.sock");
    let docker_dir = tempfile::tempdir().unwrap();
    let docker_sock = docker_dir.path().join("docker.sock");
    let mut plugin = Plugin::start(w, &docker_sock, &enforced, &[]);
    let dockerd = Dockerd::start(docker_dir, &name, &plugin_sock, &host);

    // Enforced, unpinned = deny.
    let v1 = format!("{gun}:v1");
    dockerd.ok(&["pull", &v1]);
    let err = dockerd.refused(&["pull", &format!("{gun}:v2")], &name, "is not signed");
    assert!(err.contains(&format!("{gun}:v2")), "{err}");
    dockerd.refused(
        &["pull", &format!("{host}/outside/app:v1")],
        &name,
        "outside every pinned repository",
    );
    dockerd.refused(&["pull", &format!("{gun}@{d2}")], &name, "no signed tag of");
    dockerd.ok(&["pull", &format!("{gun}@{d1}")]);
    let id = dockerd.ok(&["create", "--network", "none", &v1]);
    assert!(!id.trim().is_empty());
    // Requests it does not judge pass.
    dockerd.ok(&["images"]);
    dockerd.ok(&["image", "inspect", &v1]);
    let log = plugin.log_text();
    assert!(log.contains("denied"), "{log}");
    let a = audit(w);
    assert!(
        a.iter().any(|l| l["decision"] == "deny"
            && l["method"] == "POST"
            && l["image"] == format!("{gun}:v2")
            && l.get("user").is_some()),
        "{a:?}"
    );
    assert!(
        a.iter()
            .any(|l| l["decision"] == "allow" && l["image"] == v1),
        "{a:?}"
    );

    // Permissive, from MCR's daemon.json block as it is: what enforced denies is allowed,
    // and logged.
    drop(plugin);
    let daemon_json = w.join("mcr-daemon.json");
    std::fs::write(
        &daemon_json,
        serde_json::json!({
            "debug": false,
            "content-trust": {
                "trust-pinning": {
                    "root-keys": {format!("{host}/team/*"): [root_id]},
                    "library-images": []
                },
                "mode": "permissive"
            }
        })
        .to_string(),
    )
    .unwrap();
    let cfg_file = w.join("authz.toml");
    let check = Command::new(bin("dct-authz"))
        .args([
            "--config",
            cfg_file.to_str().unwrap(),
            "--daemon-json",
            daemon_json.to_str().unwrap(),
            "--check",
        ])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let eff: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    // The file still says enforced: the config's mode wins over daemon.json's.
    assert_eq!(eff["mode"], "enforced", "{eff}");
    plugin = Plugin::start(
        w,
        &dockerd.sock,
        &format!("unpinned = \"deny\"\n{trust_cfg}"),
        &["--daemon-json", daemon_json.to_str().unwrap()],
    );
    dockerd.ok(&["pull", &format!("{gun}:v2")]);
    dockerd.ok(&["pull", &format!("{host}/outside/app:v1")]);
    let log = plugin.log_text();
    assert!(
        log.contains("permissive: enforced mode would deny"),
        "{log}"
    );
    let a = audit(w);
    assert!(
        a.iter()
            .any(|l| l["decision"] == "would deny" && l["image"] == format!("{gun}:v2")),
        "{a:?}"
    );

    // Enforced again: an image re-tagged locally to a signed name does not run; the
    // signed one does.
    drop(plugin);
    plugin = Plugin::start(w, &dockerd.sock, &enforced, &[]);
    dockerd.ok(&["tag", &format!("{gun}:v2"), &v1]);
    dockerd.refused(
        &["create", "--network", "none", &v1],
        &name,
        "digest differs from the signed one",
    );
    dockerd.ok(&["tag", &format!("{host}/outside/app:v1"), &v1]);
    dockerd.refused(
        &["create", "--network", "none", &v1],
        &name,
        "digest differs from the signed one",
    );
    dockerd.refused(
        &[
            "create",
            "--network",
            "none",
            &format!("{host}/outside/app:v1"),
        ],
        &name,
        "outside every pinned repository",
    );
    dockerd.ok(&["pull", &v1]);
    dockerd.ok(&["create", "--network", "none", &v1]);
    // By image ID (dockerd takes any ID prefix): its repository digest must be signed.
    let id_of = |image: &str| {
        dockerd
            .ok(&["image", "inspect", "-f", "{{.Id}}", image])
            .trim()
            .to_string()
    };
    let signed_id = id_of(&v1);
    dockerd.ok(&["create", "--network", "none", &signed_id]);
    let unsigned_id = id_of(&format!("{gun}:v2"));
    let short = &unsigned_id.trim_start_matches("sha256:")[..6];
    dockerd.refused(
        &["create", "--network", "none", short],
        &name,
        "(by ID) is not signed",
    );

    // unpinned = allow: repositories no pin covers pass; pinned ones are still checked.
    drop(plugin);
    plugin = Plugin::start(
        w,
        &dockerd.sock,
        &enforced.replace("unpinned = \"deny\"", "unpinned = \"allow\""),
        &[],
    );
    dockerd.ok(&["pull", &format!("{host}/outside/app:v1")]);
    dockerd.ok(&[
        "create",
        "--network",
        "none",
        &format!("{host}/outside/app:v1"),
    ]);
    dockerd.refused(&["pull", &format!("{gun}:v2")], &name, "is not signed");
    drop(plugin);
    // Named signers required for the repository: v1, signed in targets by the owner only,
    // is refused by tag and by digest, naming the missing signer.
    plugin = Plugin::start(
        w,
        &dockerd.sock,
        &format!("{enforced}[signers]\n\"{host}/team/*\" = [\"alice\"]\n"),
        &[],
    );
    let err = dockerd.refused(&["pull", &v1], &name, "alice");
    assert!(err.contains(&v1), "{err}");
    dockerd.refused(&["pull", &format!("{gun}@{d1}")], &name, "alice");
    drop(plugin);
    plugin = Plugin::start(w, &dockerd.sock, &enforced, &[]);

    // Trust data made by the real notary client (the target is the manifest's bytes, as
    // docker signs a tag), pinned to the root the notary client made.
    let m4 = registry.push_runnable("team/by-notary", "v1", "signed by the notary client");
    let ngun = format!("{host}/team/by-notary");
    let ndir = tempfile::tempdir().unwrap();
    let manifest = ndir.path().join("manifest.json");
    std::fs::write(&manifest, &m4).unwrap();
    for args in [
        vec!["init", ngun.as_str()],
        vec!["add", ngun.as_str(), "v1", manifest.to_str().unwrap()],
        vec!["publish", ngun.as_str()],
    ] {
        let out = stack.notary(ndir.path(), &args, None);
        assert!(out.status.success(), "notary {args:?}: {out:?}");
    }
    let root: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            ndir.path()
                .join("tuf")
                .join(&ngun)
                .join("metadata")
                .join("root.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let notary_root = root["signed"]["roles"]["root"]["keyids"][0]
        .as_str()
        .unwrap()
        .to_string();
    drop(plugin);
    // The exact entry wins over the team/* pattern (the agent's root).
    plugin = Plugin::start(
        w,
        &dockerd.sock,
        &format!("{enforced}\"{ngun}\" = [\"{notary_root}\"]\n"),
        &[],
    );
    let nv1 = format!("{ngun}:v1");
    dockerd.ok(&["pull", &nv1]);
    dockerd.ok(&["create", "--network", "none", &nv1]);
    dockerd.refused(&["pull", &format!("{ngun}:v2")], &name, "is not signed");
    drop(plugin);
    plugin = Plugin::start(w, &dockerd.sock, &enforced, &[]);
    // Pinned to the agent's root instead (the team/* pattern): the notary client's root is
    // not the pinned one, so its tag is refused.
    dockerd.refused(&["pull", &nv1], &name, "is not pinned");

    // A signed tag re-pointed in the registry after signing: refused at pull (the plugin
    // asks the registry which digest it serves for the tag), so nothing is stored; a
    // create, which pulls, is refused the same way.
    let v3 = format!("{gun}:v3");
    let moved = registry.push_runnable("team/app", "v3", "app v3, re-pointed after signing");
    let err = dockerd.refused(&["pull", &v3], &name, "digest differs from the signed one");
    assert!(err.contains(&digest(&moved)), "{err}");
    assert!(!dockerd.docker(&["image", "inspect", &v3]).status.success());
    let out = dockerd.docker(&["create", "--network", "none", &v3]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("digest differs from the signed one"),
        "{stderr}"
    );
    assert!(
        audit(w)
            .iter()
            .any(|l| l["decision"] == "deny" && l["image"] == v3),
        "the refused answer is audited"
    );

    // team/short's targets re-signed to expire in 20 s, published, pulled (and cached).
    let short_v1 = format!("{short_gun}:v1");
    let expiry = expire_soon(&signer, &stack, &short_gun, 20);
    dockerd.ok(&["pull", &short_v1]);

    // The trust server down: cached trust data decides while unexpired; expired or none
    // cached fails closed.
    stack.stop();
    dockerd.ok(&["pull", &short_v1]);
    let wait = expiry.saturating_duration_since(std::time::Instant::now());
    std::thread::sleep(wait + std::time::Duration::from_secs(2));
    let err = dockerd.refused(&["pull", &short_v1], &name, "expired");
    assert!(err.contains("targets"), "{err}");
    assert!(
        audit(w)
            .iter()
            .any(|l| l["decision"] == "deny" && l["image"] == short_v1),
        "the expired refusal is audited"
    );
    dockerd.ok(&["pull", &v1]);
    dockerd.ok(&["pull", &format!("{gun}@{d1}")]);
    dockerd.refused(&["pull", &format!("{gun}@{d2}")], &name, "no signed tag of");
    dockerd.ok(&["create", "--network", "none", &v1]);
    let err = dockerd.refused(&["pull", &format!("{gun}:v2")], &name, "is not signed");
    assert!(err.contains("judged from cached trust data"), "{err}");
    drop(plugin);
    std::fs::remove_dir_all(w.join("cache")).unwrap();
    let _plugin = Plugin::start(w, &dockerd.sock, &enforced, &[]);
    dockerd.refused(&["pull", &v1], &name, "cannot be checked");
}

/// Re-signs `gun`'s targets with the agent's targets key (`dct tuf sign`), made to expire
/// `secs` from now, and publishes it to the notary-server (which signs a new snapshot and
/// timestamp); returns when it expires.
fn expire_soon(agent: &Agent, stack: &NotaryStack, gun: &str, secs: u64) -> std::time::Instant {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets");
    let base = format!("{}/v2/{gun}/_trust/tuf", stack.url);
    let ca = stack.ca.to_str().unwrap();
    let get = Command::new("curl")
        .args(["-sSf", "--cacert", ca, "-o"])
        .arg(&file)
        .arg(format!("{base}/targets.json"))
        .output()
        .unwrap();
    assert!(
        get.status.success(),
        "GET {base}/targets.json: {}",
        String::from_utf8_lossy(&get.stderr)
    );
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let version = doc["signed"]["version"].as_u64().unwrap();
    let at = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs as i64);
    doc["signed"]["version"] = (version + 1).into();
    doc["signed"]["expires"] = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
        .into();
    doc["signatures"] = serde_json::json!([]);
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let keys = agent.dct(&["--json", "key", "list"]).json()["keys"].clone();
    let key = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "targets" && k["gun"] == gun)
        .unwrap_or_else(|| panic!("no targets key for {gun}: {keys}"));
    let id = key["key_id"].as_str().unwrap();
    agent
        .dct(&[
            "tuf",
            "sign",
            file.to_str().unwrap(),
            "--key",
            id,
            "--role",
            "targets",
            "--gun",
            gun,
        ])
        .ok();
    let post = Command::new("curl")
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
        .arg(format!("files=@{};filename=targets", file.display()))
        .arg(format!("{base}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&post.stdout), "200", "publish");
    at
}
