//! cosign signatures from keys behind the agent: the real cosign v3.1.3 (tests/go-tools.sh)
//! with the `sigstore-kms-dct` plugin on PATH (installed by `dct cosign install`), a real
//! docker-registry holding images pushed by skopeo. Both of cosign's formats (classic
//! `.sig`, the v3 default bundle), verified by cosign with `--key dct://KEYID` and with
//! the exported PEM; refusals by policy, blobs, a locked token; the audit log.

use std::path::{Path, PathBuf};
use std::process::Command;

use dct_tests::notary::NotaryStack;
use dct_tests::registry::Registry;
use dct_tests::{gotools, Agent, Run, SoftHsm};
use sha2::{Digest, Sha256};

/// No transparency log (private infrastructure): what cosign v3.1.3 wants for that.
const NO_TLOG_SIGN: [&str; 3] = ["--use-signing-config=false", "--tlog-upload=false", "-y"];
const NO_TLOG_VERIFY: &str = "--insecure-ignore-tlog=true";
const CLASSIC: &str = "--new-bundle-format=false";

/// cosign, the plugin and the registry's CA, for one agent.
struct Cosign {
    home: tempfile::TempDir,
    /// Where `dct cosign install` linked the plugin.
    plugin_dir: PathBuf,
    socket: PathBuf,
    ca: PathBuf,
}

impl Cosign {
    fn new(agent: &Agent, stack: &NotaryStack) -> Cosign {
        let home = tempfile::tempdir().unwrap();
        let plugin_dir = home.path().join("bin");
        let dir = plugin_dir.to_str().unwrap();
        let out = agent.dct(&["cosign", "install", "--dir", dir]).ok();
        assert!(out.stdout.contains("sigstore-kms-dct"), "{}", out.stdout);
        // Not on the test's PATH: dct says so.
        assert!(out.stderr.contains("not on PATH"), "{}", out.stderr);
        assert!(
            std::fs::symlink_metadata(plugin_dir.join("sigstore-kms-dct"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        Cosign {
            home,
            plugin_dir,
            socket: agent.socket.clone(),
            ca: stack.ca.clone(),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        let path = format!(
            "{}:{}",
            self.plugin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(gotools::cosign())
            .args(args)
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("DCT_SOCKET", &self.socket)
            .env("SSL_CERT_FILE", &self.ca)
            .env_remove("COSIGN_PASSWORD")
            .output()
            .expect("cosign");
        Run(out)
    }

    fn sign(&self, key: &str, image: &str, extra: &[&str]) -> Run {
        let key = format!("dct://{key}");
        let mut args = vec!["sign", "--key", &key];
        args.extend(NO_TLOG_SIGN);
        args.extend(extra);
        args.push(image);
        self.run(&args)
    }

    fn verify(&self, key: &str, image: &str, extra: &[&str]) -> Run {
        let mut args = vec!["verify", "--key", key, NO_TLOG_VERIFY];
        args.extend(extra);
        args.push(image);
        self.run(&args)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }
}

/// Asserts a cosign run succeeded; returns stdout + stderr.
#[track_caller]
fn ok(r: &Run) -> String {
    assert_eq!(
        r.code(),
        0,
        "cosign failed:\nstdout: {}\nstderr: {}",
        r.stdout(),
        r.stderr()
    );
    format!("{}{}", r.stdout(), r.stderr())
}

/// Asserts a cosign run failed with `needle` in its output; returns the output.
#[track_caller]
fn fails(r: &Run, needle: &str) -> String {
    let all = format!("{}{}", r.stdout(), r.stderr());
    assert_ne!(r.code(), 0, "cosign succeeded: {all}");
    assert!(all.contains(needle), "output lacks {needle:?}: {all}");
    all
}

fn digest_of(manifest: &[u8]) -> String {
    format!("sha256:{}", dct_tests::hex(&Sha256::digest(manifest)))
}

/// The tags of `repo` in the registry (skopeo).
fn tags(registry: &Registry, repo: &str) -> Vec<String> {
    let certs = registry.dir.path().join("certs");
    let out = Command::new("skopeo")
        .args(["list-tags", "--cert-dir", certs.to_str().unwrap()])
        .arg(format!("docker://{}/{repo}", registry.host))
        .env("HOME", registry.dir.path())
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect()
}

/// The tag cosign's classic signature of `digest` goes to (and the referrers tag schema
/// its bundles use on a registry without the referrers API).
fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}
fn referrers_tag(digest: &str) -> String {
    digest.replace(':', "-")
}

fn audit(agent: &Agent) -> Vec<serde_json::Value> {
    std::fs::read_to_string(agent.audit_path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn public_pem(agent: &Agent, key: &str, dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    agent
        .dct(&["cosign", "public-key", key, "-o", path.to_str().unwrap()])
        .ok();
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    path.display().to_string()
}

/// A targets key of `repo` signs it both ways; cosign verifies with the key through the
/// plugin and with the exported PEM; another key and another digest do not verify.
fn sign_and_verify_both_formats(agent: &Agent, cosign: &Cosign, registry: &Registry, key: &str) {
    let repo = format!("{}/example.com/app", registry.host);
    let image = |d: &str| format!("{repo}@{d}");
    let signed = digest_of(&registry.push("example.com/app", "v1", "app v1"));
    let unsigned = digest_of(&registry.push("example.com/app", "v2", "app v2"));
    let other_key = agent.generate("targets", Some(&repo));
    let pem = public_pem(agent, key, cosign.home.path(), "pub.pem");
    let other_pem = public_pem(agent, &other_key, cosign.home.path(), "other.pem");
    let dct_key = format!("dct://{key}");
    let annotation = format!("dct.repository={repo}");

    // Classic: a `.sig` tag.
    let out = ok(&cosign.sign(key, &image(&signed), &[CLASSIC]));
    assert!(
        out.contains(&format!("Pushing signature to: {repo}")),
        "{out}"
    );
    assert!(tags(registry, "example.com/app").contains(&sig_tag(&signed)));
    for k in [dct_key.as_str(), pem.as_str()] {
        let out = ok(&cosign.verify(k, &image(&signed), &[CLASSIC]));
        assert!(
            out.contains(&format!("\"docker-manifest-digest\":\"{signed}\"")),
            "{out}"
        );
        assert!(out.contains("The signatures were verified against the specified public key"));
    }
    fails(
        &cosign.verify(&other_pem, &image(&signed), &[CLASSIC]),
        "no matching signatures",
    );
    fails(
        &cosign.verify(&dct_key, &image(&unsigned), &[CLASSIC]),
        "no signatures found",
    );

    // The v3 default: a Sigstore bundle (DSSE), bound to the repository by annotation.
    let out = ok(&cosign.sign(key, &image(&signed), &["-a", &annotation]));
    assert!(out.contains("Pushing signature to"), "{out}");
    assert!(tags(registry, "example.com/app").contains(&referrers_tag(&signed)));
    for k in [dct_key.as_str(), pem.as_str()] {
        let out = ok(&cosign.verify(k, &image(&signed), &["-a", &annotation]));
        assert!(
            out.contains(&format!("\"docker-manifest-digest\":\"{signed}\"")),
            "{out}"
        );
        assert!(
            out.contains("\"type\":\"https://sigstore.dev/cosign/sign/v1\""),
            "{out}"
        );
        assert!(
            out.contains(&format!("\"dct.repository\":\"{repo}\"")),
            "{out}"
        );
    }
    fails(
        &cosign.verify(&other_pem, &image(&signed), &[]),
        "no matching attestations",
    );
    fails(
        &cosign.verify(
            &pem,
            &image(&signed),
            &["-a", "dct.repository=example.com/else"],
        ),
        "missing or incorrect annotation",
    );
    fails(
        &cosign.verify(&pem, &image(&unsigned), &[]),
        "no signatures found",
    );

    // A bundle naming no repository would hold for the digest in every repository: refused
    // for a key of one repository, with the way to name it.
    let out = fails(
        &cosign.sign(key, &image(&unsigned), &[]),
        "naming no repository",
    );
    assert!(out.contains("-a dct.repository="), "{out}");
    assert!(!tags(registry, "example.com/app").contains(&referrers_tag(&unsigned)));

    let recs = audit(agent);
    let signs: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["action"] == "sign" && r["key_id"] == key)
        .collect();
    let artifacts: Vec<&str> = signs
        .iter()
        .filter_map(|r| r["artifact"].as_str())
        .collect();
    assert!(
        artifacts.contains(&format!("cosign-simplesigning {signed}").as_str()),
        "{recs:#?}"
    );
    assert!(
        artifacts.contains(&format!("cosign-dsse {signed}").as_str()),
        "{recs:#?}"
    );
    assert!(
        signs.iter().all(|r| r["gun"] == repo.as_str()),
        "{signs:#?}"
    );
    let refused = recs
        .iter()
        .find(|r| r["action"] == "refuse" && r["artifact"] == format!("cosign-dsse {unsigned}"))
        .unwrap_or_else(|| panic!("no refusal audited: {recs:#?}"));
    assert!(refused["outcome"]
        .as_str()
        .unwrap()
        .contains("policy (guns)"));
}

#[test]
fn cosign_signs_and_verifies_both_formats_with_a_softhsm_key() {
    let stack = NotaryStack::start();
    let registry = Registry::start(&stack);
    let (_hsm, agent) = Agent::on_fresh_token("cosign", "1234");
    let cosign = Cosign::new(&agent, &stack);
    let repo = format!("{}/example.com/app", registry.host);
    let key = agent.generate("targets", Some(&repo));
    sign_and_verify_both_formats(&agent, &cosign, &registry, &key);

    // cosign attest: the statement's subject names the repository.
    let digest = digest_of(&registry.push("example.com/app", "v9", "attested"));
    let image = format!("{repo}@{digest}");
    let predicate = cosign.file("provenance.json");
    std::fs::write(&predicate, br#"{"buildType":"https://example.com/build"}"#).unwrap();
    let dct_key = format!("dct://{key}");
    let mut args = vec!["attest", "--key", &dct_key, "--type", "slsaprovenance"];
    args.extend(["--predicate", predicate.to_str().unwrap()]);
    args.extend(NO_TLOG_SIGN);
    args.push(&image);
    ok(&cosign.run(&args));
    let out = ok(&cosign.run(&[
        "verify-attestation",
        "--key",
        &dct_key,
        "--type",
        "slsaprovenance",
        NO_TLOG_VERIFY,
        &image,
    ]));
    assert!(out.contains("Verification for"), "{out}");
    assert!(audit(&agent).iter().any(|r| r["action"] == "sign"
        && r["artifact"] == format!("cosign-dsse {digest}")
        && r["gun"] == repo.as_str()));
}

#[test]
fn cosign_policy_refusals_blobs_and_a_locked_token() {
    let stack = NotaryStack::start();
    let registry = Registry::start(&stack);
    let host = registry.host.clone();
    let hsm = SoftHsm::new("cosignpol", "1234");
    let config = format!(
        "{}\n[[policy]]\nrole = \"targets/limited\"\nguns = [\"{host}/example.com/app*\"]\n\n\
         [[policy]]\nrole = \"targets/blobs\"\nguns = [\"{host}/example.com/app\"]\noci = [\"cosign\", \"blob\"]\n",
        hsm.agent_config()
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    let cosign = Cosign::new(&agent, &stack);
    let limited = agent.generate("targets/limited", Some(&format!("{host}/example.com/app")));
    let app = digest_of(&registry.push("example.com/app2", "v1", "app2"));
    let other = digest_of(&registry.push("example.com/other", "v1", "other"));

    // Within its patterns: signed.
    ok(&cosign.sign(
        &limited,
        &format!("{host}/example.com/app2@{app}"),
        &[CLASSIC],
    ));
    assert!(tags(&registry, "example.com/app2").contains(&sig_tag(&app)));

    // Outside them: refused, in both formats, nothing pushed, the refusal audited with
    // the repository and the digest.
    let img = format!("{host}/example.com/other@{other}");
    let out = fails(&cosign.sign(&limited, &img, &[CLASSIC]), "policy (guns)");
    assert!(out.contains(&format!("{host}/example.com/app*")), "{out}");
    let annotation = format!("dct.repository={host}/example.com/other");
    fails(
        &cosign.sign(&limited, &img, &["-a", &annotation]),
        "policy (guns)",
    );
    assert_eq!(tags(&registry, "example.com/other"), ["v1"]);
    let recs = audit(&agent);
    let refusals: Vec<_> = recs
        .iter()
        .filter(|r| r["action"] == "refuse" && r["gun"] == format!("{host}/example.com/other"))
        .collect();
    assert_eq!(refusals.len(), 2, "{recs:#?}");
    assert_eq!(
        refusals[0]["artifact"],
        format!("cosign-simplesigning {other}")
    );
    assert_eq!(refusals[1]["artifact"], format!("cosign-dsse {other}"));

    // A blob: refused by default, with how to allow it; no bundle written.
    let blob = cosign.file("blob.txt");
    std::fs::write(&blob, b"release notes\n").unwrap();
    let bundle = cosign.file("blob.bundle");
    let sign_blob = |key: &str| {
        let key = format!("dct://{key}");
        let mut args = vec![
            "sign-blob",
            "--key",
            &key,
            "--bundle",
            bundle.to_str().unwrap(),
        ];
        args.extend(NO_TLOG_SIGN);
        args.push(blob.to_str().unwrap());
        cosign.run(&args)
    };
    let out = fails(&sign_blob(&limited), "policy (oci)");
    assert!(out.contains("oci = [\"blob\"]"), "{out}");
    assert!(!bundle.exists());
    let blob_digest = digest_of(b"release notes\n");
    assert!(audit(&agent)
        .iter()
        .any(|r| r["action"] == "refuse" && r["artifact"] == format!("blob {blob_digest}")));

    // Where the policy allows blobs: sign-blob and verify-blob.
    let blobs = agent.generate("targets/blobs", Some(&format!("{host}/example.com/app")));
    ok(&sign_blob(&blobs));
    let pem = public_pem(&agent, &blobs, cosign.home.path(), "blobs.pem");
    for k in [format!("dct://{blobs}"), pem] {
        let out = ok(&cosign.run(&[
            "verify-blob",
            "--key",
            &k,
            "--bundle",
            bundle.to_str().unwrap(),
            NO_TLOG_VERIFY,
            blob.to_str().unwrap(),
        ]));
        assert!(out.contains("Verified OK"), "{out}");
    }
    std::fs::write(&blob, b"release notes, changed\n").unwrap();
    fails(
        &cosign.run(&[
            "verify-blob",
            "--key",
            &format!("dct://{blobs}"),
            "--bundle",
            bundle.to_str().unwrap(),
            NO_TLOG_VERIFY,
            blob.to_str().unwrap(),
        ]),
        "invalid signature",
    );

    // A locked token: cosign fails with the fix, nothing signed.
    agent.dct(&["lock"]).ok();
    let app3 = digest_of(&registry.push("example.com/app3", "v1", "app3"));
    let out = fails(
        &cosign.sign(
            &limited,
            &format!("{host}/example.com/app3@{app3}"),
            &[CLASSIC],
        ),
        "dct unlock --token cosignpol",
    );
    assert!(out.contains("is locked"), "{out}");
    assert_eq!(tags(&registry, "example.com/app3"), ["v1"]);
    let recs = audit(&agent);
    let app3: Vec<_> = recs
        .iter()
        .filter(|r| r["artifact"] == format!("cosign-simplesigning {app3}"))
        .collect();
    assert!(app3.iter().all(|r| r["action"] == "refuse"), "{app3:#?}");
    assert!(
        app3.iter()
            .any(|r| r["outcome"].as_str().unwrap().contains("locked")),
        "{recs:#?}"
    );
}

#[test]
fn cosign_signs_with_a_key_on_the_virtual_yubikey_over_piv_and_through_ykcs11() {
    use dct_tests::piv::{CardOptions, VirtualPiv};
    const CARD_PIN: &str = "123456";
    const YKCS11: &str = "/usr/lib/x86_64-linux-gnu/libykcs11.so";
    let stack = NotaryStack::start();
    let registry = Registry::start(&stack);
    let card = VirtualPiv::start(CardOptions::default());
    let piv = format!("piv:{}", card.serial());
    let repo = format!("{}/example.com/app", registry.host);

    // Over PIV: both formats, the key and the PEM, another key and digest refused.
    let agent = Agent::start_with_config(
        None,
        &format!(
            "[[piv]]\nserial = {}\nmanagement_key = \"default\"\n",
            card.serial()
        ),
    );
    agent.unlock_token(&piv, CARD_PIN, &[]).ok();
    let cosign = Cosign::new(&agent, &stack);
    let key = agent.generate("targets", Some(&repo));
    sign_and_verify_both_formats(&agent, &cosign, &registry, &key);
    let recs = audit(&agent);
    assert!(recs
        .iter()
        .any(|r| r["action"] == "sign" && r["key_id"] == key.as_str()));
    drop(agent);

    // Through Yubico's PKCS#11 module: the same key, found by its certificate, signs a
    // new image (classic format), verified with the PEM exported over PIV.
    let pem = cosign.file("pub.pem");
    let out = Command::new("pkcs11-tool")
        .args(["--module", YKCS11, "-L"])
        .output()
        .expect("pkcs11-tool");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let label = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("token label")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no token in ykcs11: {text}"));
    let agent = Agent::start_with_config(
        None,
        &format!("[[pkcs11]]\nmodule = \"{YKCS11}\"\ntoken = \"{label}\"\n"),
    );
    agent.unlock_token(&label, CARD_PIN, &[]).ok();
    let cosign = Cosign {
        socket: agent.socket.clone(),
        ..cosign
    };
    let digest = digest_of(&registry.push("example.com/app", "v3", "app v3"));
    let image = format!("{repo}@{digest}");
    ok(&cosign.sign(&key, &image, &[CLASSIC]));
    let out = ok(&cosign.verify(pem.to_str().unwrap(), &image, &[CLASSIC]));
    assert!(
        out.contains(&format!("\"docker-manifest-digest\":\"{digest}\"")),
        "{out}"
    );
    let annotation = format!("dct.repository={repo}");
    ok(&cosign.sign(&key, &image, &["-a", &annotation]));
    ok(&cosign.verify(&format!("dct://{key}"), &image, &["-a", &annotation]));
}

#[test]
fn cosign_confirmation_shows_the_repository_and_digest() {
    let stack = NotaryStack::start();
    let registry = Registry::start(&stack);
    let repo = format!("{}/example.com/app", registry.host);
    let hsm = SoftHsm::new("cosignconfirm", "1234");
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("pinentry.jsonl");
    let config = format!(
        "{}\n[[policy]]\nrole = \"targets\"\nconfirm = true\n\n[confirm]\nprogram = {:?}\n\
         args = [\"--answer\", \"yes\", \"--record\", {:?}]\ntimeout = \"20s\"\n",
        hsm.agent_config(),
        dct_tests::bin("test-pinentry").display().to_string(),
        record.display().to_string(),
    );
    let mut agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    let cosign = Cosign::new(&agent, &stack);
    let key = agent.generate("targets", Some(&repo));
    let digest = digest_of(&registry.push("example.com/app", "v1", "confirmed"));
    let image = format!("{repo}@{digest}");

    // Yes: signed, after a dialog naming the repository and the digest.
    ok(&cosign.sign(&key, &image, &[CLASSIC]));
    let shown: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["cmd"] == "SETDESC")
        .map(|r| r["arg"].as_str().unwrap().to_string())
        .collect();
    let dialog = shown.join("\n");
    assert!(dialog.contains(&format!("Repository: {repo}")), "{dialog}");
    assert!(
        dialog.contains(&format!("Image digest: {digest}")),
        "{dialog}"
    );
    assert!(dialog.contains("simple signing"), "{dialog}");

    // No (the same agent, its confirmation program now answering no): nothing signed,
    // nothing pushed, the refusal audited.
    let cfg = agent.dir.path().join("agent.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"--answer\", \"yes\"", "\"--answer\", \"no\""),
    )
    .unwrap();
    agent.restart();
    agent.unlock(&hsm);
    let annotation = format!("dct.repository={repo}");
    fails(
        &cosign.sign(&key, &image, &["-a", &annotation]),
        "policy (confirm)",
    );
    assert!(!tags(&registry, "example.com/app").contains(&referrers_tag(&digest)));
    let recs = audit(&agent);
    assert!(
        recs.iter().any(|r| r["action"] == "refuse"
            && r["artifact"] == format!("cosign-dsse {digest}")
            && r["outcome"].as_str().unwrap().contains("confirm")),
        "{recs:#?}"
    );
    assert!(recs.iter().any(|r| r["action"] == "sign"
        && r["artifact"] == format!("cosign-simplesigning {digest}")
        && r["outcome"].as_str().unwrap().starts_with("ok, confirmed")));
}
