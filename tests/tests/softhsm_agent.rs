//! The agent on a real SoftHSM2 token: unlock/lock, keys generated on the token and found
//! again by a new agent, Notary-exact signatures checked by openssl and by our verifier,
//! a root certificate made on the token, a whole repository signed with token keys, and
//! bad input.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dct_tests::repo::{self, key, keys, sign};
use dct_tests::{fixture_dir, Agent, SoftHsm};
use serde_json::Value;
use sha2::{Digest, Sha256};

const GUN: &str = "example.com/app";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The exact bytes of `signed` in a file we wrote (our output is canonical).
fn raw_signed(bytes: &[u8]) -> Vec<u8> {
    let start = b"{\"signed\":".len();
    let end = bytes
        .windows(14)
        .rposition(|w| w == b",\"signatures\":")
        .unwrap();
    bytes[start..end].to_vec()
}

#[test]
fn unlock_lock_and_pin_errors() {
    let hsm = SoftHsm::new("pins", "1234");
    let agent = Agent::start(Some(&hsm));
    // Socket directory 0700, socket 0600.
    let dir_mode = std::fs::metadata(agent.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    let sock_mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!((dir_mode, sock_mode), (0o700, 0o600));

    let status = agent.dct(&["--json", "status"]).json();
    assert_eq!(status["tokens"][0]["label"], "pins");
    assert_eq!(status["tokens"][0]["unlocked"], false);
    assert_eq!(status["tokens"][0]["present"], true);

    // Locked: key generation says how to unlock.
    agent
        .dct(&["key", "generate", "--role", "targets", "--gun", GUN])
        .fails(1, "locked: run dct unlock");

    // Wrong PIN: one attempt, an Unauthenticated error with what the token says of tries.
    let bad = agent.dir.path().join("bad");
    std::fs::write(&bad, "9999\n").unwrap();
    let err = agent
        .dct(&["unlock", "--pin-file", bad.to_str().unwrap()])
        .fails(1, "wrong PIN for token \"pins\"");
    assert!(
        err.contains("not retried") && err.contains("tries left: low"),
        "{err}"
    );
    assert_eq!(agent.log_text().matches("unlock failed").count(), 1);
    assert_eq!(
        agent.dct(&["--json", "status"]).json()["tokens"][0]["unlocked"],
        false
    );
    // The PIN never reaches the log.
    assert!(!agent.log_text().contains("9999"));

    // DCT_PIN for CI.
    agent.dct_env(&["unlock"], &[("DCT_PIN", "1234")]).ok();
    assert_eq!(
        agent.dct(&["--json", "status"]).json()["tokens"][0]["unlocked"],
        true
    );
    let id = agent.generate("targets", Some(GUN));
    assert_eq!(id.len(), 64);
    agent.dct(&["lock"]).ok();
    let doc = agent.dir.path().join("t.json");
    std::fs::write(
        &doc,
        std::fs::read(fixture_dir("notary-0.7/metadata/targets.json")).unwrap(),
    )
    .unwrap();
    agent
        .tuf_sign(&doc, &id, &[])
        .fails(1, "locked: run dct unlock");
    // Unknown token, no PIN source and no terminal.
    agent
        .dct(&[
            "unlock",
            "--token",
            "nope",
            "--pin-file",
            bad.to_str().unwrap(),
        ])
        .fails(1, "no token \"nope\"");
    agent.dct(&["unlock"]).fails(2, "--pin-file");
    assert!(!agent.log_text().contains("1234"));
}

#[test]
fn keys_live_on_the_token_and_a_new_agent_finds_them() {
    let hsm = SoftHsm::new("keys", "4321");
    let mut agent = Agent::start(Some(&hsm));
    agent.unlock(&hsm);
    let targets = agent.generate("targets", Some(GUN));
    let snapshot = agent.generate("snapshot", Some(GUN));
    let releases = agent.generate("targets/releases", Some(GUN));
    let root = agent.generate("root", Some(GUN));
    let before = keys(&agent);
    assert_eq!(before.len(), 4);
    for k in &before {
        // Each key ID is the SHA-256 of the canonical JSON of its TUF key object.
        let obj = &k["tuf_key"];
        let canonical = format!(
            "{{\"keytype\":\"{}\",\"keyval\":{{\"private\":null,\"public\":\"{}\"}}}}",
            obj["keytype"].as_str().unwrap(),
            obj["keyval"]["public"].as_str().unwrap()
        );
        assert_eq!(
            k["key_id"].as_str().unwrap(),
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        assert!(k["uri"]
            .as_str()
            .unwrap()
            .starts_with("pkcs11:token=keys;id=%"));
    }
    assert_eq!(key(&before, &targets)["role"], "targets");
    assert_eq!(key(&before, &snapshot)["role"], "snapshot");
    assert_eq!(key(&before, &releases)["role"], "targets/releases");
    let r = key(&before, &root);
    assert_eq!(
        (r["role"].as_str(), r["gun"].as_str()),
        (Some("root"), Some(GUN))
    );
    assert_eq!(r["tuf_key"]["keytype"], "ecdsa-x509");
    assert_ne!(r["canonical_id"], r["key_id"]);

    // The private keys are sensitive and non-extractable on the token.
    let out = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &hsm.conf)
        .args([
            "--module",
            dct_tests::SOFTHSM_MODULE,
            "--token-label",
            "keys",
            "--login",
            "--pin",
            "4321",
            "--list-objects",
            "--type",
            "privkey",
        ])
        .output();
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.matches("never extractable").count(), 4, "{text}");
        assert!(
            text.contains("label:      dct:targets:example.com/app"),
            "{text}"
        );
    }

    // A new agent process on the same token lists the same keys, even while locked.
    agent.restart();
    assert_eq!(keys(&agent), before);
    assert!(agent.stop(), "agent did not exit cleanly on SIGTERM");
    assert!(!agent.socket.exists(), "socket left behind");
}

#[test]
fn signatures_are_notary_exact_and_checked_by_openssl() {
    let (_hsm, agent) = Agent::on_fresh_token("sign", "1111");
    let targets = agent.generate("targets", Some(GUN));
    let all = keys(&agent);
    let spki = B64
        .decode(
            key(&all, &targets)["tuf_key"]["keyval"]["public"]
                .as_str()
                .unwrap(),
        )
        .unwrap();

    // Sign the real notary targets.json: its own signature stays, ours is added.
    let doc = agent.dir.path().join("targets.json");
    let original = std::fs::read(fixture_dir("notary-0.7/metadata/targets.json")).unwrap();
    std::fs::write(&doc, &original).unwrap();
    sign(&agent, &doc, &targets[..8], &["--gun", GUN]);
    let signed = std::fs::read(&doc).unwrap();
    assert_eq!(
        raw_signed(&signed),
        raw_signed(&original),
        "signed part changed"
    );
    let v: Value = serde_json::from_slice(&signed).unwrap();
    let sigs = v["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 2);
    assert_eq!(sigs[1]["keyid"], targets.as_str());
    assert_eq!(sigs[1]["method"], "ecdsa");
    let raw = B64.decode(sigs[1]["sig"].as_str().unwrap()).unwrap();
    assert_eq!(raw.len(), 64, "raw r||s");

    // Independent check 1: p256 over the canonical bytes.
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&raw).unwrap();
    vk.verify(&raw_signed(&signed), &sig)
        .expect("p256 verifies");

    // Independent check 2: openssl, with the signature converted to DER.
    let d = agent.dir.path();
    std::fs::write(d.join("pub.der"), &spki).unwrap();
    std::fs::write(d.join("msg"), raw_signed(&signed)).unwrap();
    std::fs::write(d.join("sig.der"), sig.to_der().as_bytes()).unwrap();
    let out = Command::new("openssl")
        .current_dir(d)
        .args([
            "dgst",
            "-sha256",
            "-keyform",
            "DER",
            "-verify",
            "pub.der",
            "-signature",
            "sig.der",
            "msg",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK");

    // Signing again replaces our signature rather than adding a second one.
    sign(&agent, &doc, &targets, &[]);
    let v: Value = serde_json::from_slice(&std::fs::read(&doc).unwrap()).unwrap();
    assert_eq!(v["signatures"].as_array().unwrap().len(), 2);
    // --out - writes to stdout and leaves the file alone.
    let out = agent.tuf_sign(&doc, &targets, &["--out", "-"]).ok();
    assert!(out.stdout.starts_with("{\"signed\":{\"_type\":\"Targets\""));
}

#[test]
fn root_certificate_made_on_the_token() {
    let (_hsm, agent) = Agent::on_fresh_token("root", "2222");
    let root = agent.generate("root", Some(GUN));
    let all = keys(&agent);
    let k = key(&all, &root);
    let pem = B64
        .decode(k["tuf_key"]["keyval"]["public"].as_str().unwrap())
        .unwrap();
    let pem = String::from_utf8(pem).unwrap();
    // Go's pem.Encode layout.
    assert!(
        pem.starts_with("-----BEGIN CERTIFICATE-----\n")
            && pem.ends_with("-----END CERTIFICATE-----\n")
    );
    let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(body[..body.len() - 1].iter().all(|l| l.len() == 64));
    let path = agent.dir.path().join("root.pem");
    std::fs::write(&path, &pem).unwrap();
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Subject: CN = example.com/app"), "{text}");
    assert!(text.contains("Issuer: CN = example.com/app"));
    assert!(text.contains("ecdsa-with-SHA256"));
    assert!(text.contains("Digital Signature, Key Encipherment"));
    assert!(text.contains("Code Signing"));
    assert!(text.contains("CA:FALSE"));
    // The self-signature (DER, made on the token) verifies.
    let out = Command::new("openssl")
        .args(["verify", "-check_ss_sig", "-CAfile"])
        .arg(&path)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The canonical ID is the ID of the plain ecdsa key of the certificate's public key.
    let spki = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let spki_pem = String::from_utf8(spki.stdout).unwrap();
    let b64: String = spki_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let obj =
        format!("{{\"keytype\":\"ecdsa\",\"keyval\":{{\"private\":null,\"public\":\"{b64}\"}}}}");
    assert_eq!(
        k["canonical_id"].as_str().unwrap(),
        hex(&Sha256::digest(obj.as_bytes()))
    );
}

#[test]
fn a_whole_repository_signed_on_the_token_verifies() {
    let (_hsm, agent) = Agent::on_fresh_token("repo", "3333");
    let dir = agent.dir.path().join("repo");
    let v1 = b"release one\n";
    let k = repo::build(&agent, &dir, GUN, (v1, b"release two\n"));
    let out = agent
        .dct(&[
            "--json",
            "tuf",
            "verify",
            dir.to_str().unwrap(),
            "--gun",
            GUN,
        ])
        .json();
    assert_eq!(out["valid"], true, "{out}");
    let role = |name: &str| {
        out["roles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["role"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(role("root")["signed_by"][0], k.root.as_str());
    assert_eq!(role("timestamp")["signed_by"][0], k.timestamp.as_str());
    assert_eq!(
        role("targets")["targets"][0]["digest"],
        format!("sha256:{}", hex(&Sha256::digest(v1)))
    );
    assert_eq!(role("targets/releases")["targets"][0]["name"], "v2");
    assert_eq!(
        role("targets/releases")["signed_by"][0],
        k.releases.as_str()
    );
    // The same repository checked for another GUN fails on the root certificate.
    agent
        .dct(&[
            "tuf",
            "verify",
            dir.to_str().unwrap(),
            "--gun",
            "example.com/other",
        ])
        .fails(1, "root: ");
    // A delegation file changed after signing: snapshot no longer pins it.
    let rel = dir.join("targets/releases.json");
    let mut b = std::fs::read(&rel).unwrap();
    b.push(b' ');
    std::fs::write(&rel, b).unwrap();
    agent
        .dct(&["tuf", "verify", dir.to_str().unwrap(), "--gun", GUN])
        .fails(1, "snapshot: targets/releases.json does not match");
}

#[test]
fn bad_input_gets_clear_errors_and_the_agent_keeps_serving() {
    let (_hsm, agent) = Agent::on_fresh_token("bad", "5555");
    let targets = agent.generate("targets", Some(GUN));
    let root = agent.generate("root", Some(GUN));
    let d = agent.dir.path();
    let fixture = std::fs::read(fixture_dir("notary-0.7/metadata/targets.json")).unwrap();

    // Not JSON.
    std::fs::write(d.join("junk.json"), "this is not json").unwrap();
    agent
        .tuf_sign(&d.join("junk.json"), &targets, &[])
        .fails(1, "not JSON");
    // Wrong _type for the key: a root key asked to sign targets, a targets key a snapshot.
    std::fs::write(d.join("t.json"), &fixture).unwrap();
    agent
        .tuf_sign(&d.join("t.json"), &root, &[])
        .fails(1, "a root document must be \"Root\"");
    let snap = std::fs::read(fixture_dir("notary-0.7/metadata/snapshot.json")).unwrap();
    std::fs::write(d.join("s.json"), &snap).unwrap();
    agent
        .tuf_sign(&d.join("s.json"), &targets, &[])
        .fails(1, "must be \"Targets\"");
    // A targets key asked to sign as a delegation, or for another GUN.
    agent
        .tuf_sign(&d.join("t.json"), &targets, &["--role", "targets/x"])
        .fails(1, "does not sign targets/x");
    agent
        .tuf_sign(&d.join("t.json"), &targets, &["--gun", "example.com/b"])
        .fails(1, "belongs to \"example.com/app\"");
    // A malformed document of the right _type.
    std::fs::write(
        d.join("m.json"),
        r#"{"signed":{"_type":"Targets","version":"two"},"signatures":[]}"#,
    )
    .unwrap();
    agent
        .tuf_sign(&d.join("m.json"), &targets, &[])
        .fails(1, "not a valid Targets");
    // Unknown key ID.
    agent
        .tuf_sign(&d.join("t.json"), "abcdef0123", &[])
        .fails(1, "no key abcdef0123");
    agent
        .tuf_sign(&d.join("t.json"), "zz", &[])
        .fails(1, "is not a key ID");
    // Nothing was written on refusal.
    assert_eq!(std::fs::read(d.join("t.json")).unwrap(), fixture);
    // A 100 MiB request is refused with a size error.
    let big = d.join("big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100 * 1024 * 1024)
        .unwrap();
    agent.tuf_sign(&big, &targets, &[]).fails(1, "too large");
    std::fs::remove_file(&big).unwrap();
    // Invalid role and GUN on generate.
    agent
        .dct(&["key", "generate", "--role", "Targets/X", "--gun", GUN])
        .fails(1, "invalid role");
    agent
        .dct(&["key", "generate", "--role", "targets"])
        .fails(1, "needs --gun");
    // Still serving, still unlocked, and still signing.
    let status = agent.dct(&["--json", "status"]).json();
    assert_eq!(status["tokens"][0]["unlocked"], true);
    agent.tuf_sign(&d.join("t.json"), &targets, &[]).ok();
    assert!(!agent.log_text().contains("panicked"));
}

#[test]
fn a_public_object_changed_without_the_pin_cannot_widen_what_a_key_signs() {
    let (hsm, agent) = Agent::on_fresh_token("tamper", "6666");
    let id = agent.generate("targets", Some(GUN));
    let spki = B64
        .decode(
            key(&keys(&agent), &id)["tuf_key"]["keyval"]["public"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let pub_der = agent.dir.path().join("pub.der");
    std::fs::write(&pub_der, &spki).unwrap();
    // Without logging in, replace the public object by one labelled for another GUN.
    let p11 = |args: &[&str]| {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &hsm.conf)
            .args([
                "--module",
                dct_tests::SOFTHSM_MODULE,
                "--token-label",
                "tamper",
            ])
            .args(args)
            .output()
            .expect("pkcs11-tool (OpenSC) is installed by softhsm/install-deps.sh");
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    p11(&[
        "--delete-object",
        "--type",
        "pubkey",
        "--label",
        "dct:targets:example.com/app",
    ]);
    p11(&[
        "--write-object",
        pub_der.to_str().unwrap(),
        "--type",
        "pubkey",
        "--id",
        &id,
        "--label",
        "dct:targets:example.com/b",
    ]);
    let listed = keys(&agent);
    assert_eq!(
        key(&listed, &id)["gun"],
        "example.com/b",
        "the forged public label is what lists"
    );
    // The private key's own label (which needs the PIN to change) decides: refused.
    let doc = agent.dir.path().join("t.json");
    std::fs::copy(fixture_dir("notary-0.7/metadata/targets.json"), &doc).unwrap();
    agent
        .tuf_sign(&doc, &id, &["--gun", "example.com/b"])
        .fails(1, "its public object may have been altered");
}

#[test]
fn the_socket_is_only_for_our_own_user() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: needs root to run an agent as another user");
        return;
    }
    // An agent run by another user (nobody) at a path we are told to use.
    let dir = tempfile::tempdir().unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    nix::unistd::chown(dir.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock_dir = dir.path().join("run");
    let socket = sock_dir.join("agent.sock");
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new("setpriv")
        .args([
            "--reuid",
            &nobody.uid.to_string(),
            "--regid",
            &nobody.gid.to_string(),
            "--clear-groups",
        ])
        .arg(dct_tests::bin("dct-agent"))
        .arg("--socket")
        .arg(&socket)
        .env("HOME", dir.path())
        .env("NO_COLOR", "1")
        .stderr(log)
        .spawn()
        .expect("setpriv (util-linux)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "agent as nobody did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The CLI refuses to talk to it (no PIN sent), with the unreachable exit code.
    let run = dct_tests::Run(
        Command::new(dct_tests::bin("dct"))
            .args(["unlock", "--pin-file", "/dev/null"])
            .env("DCT_SOCKET", &socket)
            .output()
            .unwrap(),
    );
    run.fails(3, "served by uid");
    // And the agent refuses us before any RPC.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut buf = [0u8; 16];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "the agent answered another user"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let text = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(
        text.contains("refused connection from another user"),
        "{text}"
    );
}
