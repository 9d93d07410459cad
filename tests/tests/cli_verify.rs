//! `dct tuf verify` through a real agent that holds no key, on the real notary 0.7
//! repository and tampered copies of it; CLI exit codes.

use std::path::Path;

use dct_tests::{fixture_dir, Agent};

const GUN: &str = "example.com/app";
const AT: &str = "2026-11-23T00:00:00Z";

fn copy_repo(dst: &Path) {
    for f in [
        "root.json",
        "targets.json",
        "snapshot.json",
        "timestamp.json",
    ] {
        std::fs::copy(fixture_dir("notary-0.7/metadata").join(f), dst.join(f)).unwrap();
    }
}

fn verify(agent: &Agent, dir: &Path, at: &str) -> dct_tests::Run {
    agent.dct(&[
        "tuf",
        "verify",
        dir.to_str().unwrap(),
        "--gun",
        GUN,
        "--at",
        at,
    ])
}

#[test]
fn verifies_the_real_notary_repository() {
    let agent = Agent::start(None);
    let dir = tempfile::tempdir().unwrap();
    copy_repo(dir.path());
    let out = verify(&agent, dir.path(), AT).ok();
    assert!(
        out.stdout
            .contains("example.com/app: verified; root trusted as given (not pinned"),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains("sha256:a4bba2aec97f95071fa9b9f612e966a89fc070ccaed26f30743c329abfd98fdc"));
    let json = agent
        .dct(&[
            "--json",
            "tuf",
            "verify",
            dir.path().to_str().unwrap(),
            "--gun",
            GUN,
            "--at",
            AT,
        ])
        .json();
    assert_eq!(json["valid"], true);
    let targets = json["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "targets")
        .unwrap();
    assert_eq!(targets["version"], 2);
    assert_eq!(
        targets["signed_by"][0],
        "4887b4aa2cb6bff5e64a33424e07bd6333faefd023a05ae86f0cae2dcecce4f9"
    );
    assert_eq!(targets["targets"].as_array().unwrap().len(), 2);
}

#[test]
fn rejects_tampered_repositories_naming_the_role_and_check() {
    let agent = Agent::start(None);
    let case = |name: &str, edit: &dyn Fn(&Path), at: &str, role: &str, check: &str| {
        let dir = tempfile::tempdir().unwrap();
        copy_repo(dir.path());
        edit(dir.path());
        let err = verify(&agent, dir.path(), at).fails(1, "verification failed");
        assert!(
            err.contains(&format!("{role}: ")) && err.contains(check),
            "{name}: {err}"
        );
    };
    // A flipped byte in each role's signed part: its pinning role or its own signature fails.
    for (role, pinned_by) in [
        ("root", "root"),
        ("targets", "snapshot"),
        ("snapshot", "timestamp"),
        ("timestamp", "timestamp"),
    ] {
        case(
            role,
            &|d: &Path| {
                let p = d.join(format!("{role}.json"));
                let mut b = std::fs::read(&p).unwrap();
                let pos = b.windows(9).position(|w| w == b"\"version\"").unwrap() + 10;
                b[pos] = if b[pos] == b'7' { b'8' } else { b'7' };
                std::fs::write(&p, b).unwrap();
            },
            AT,
            pinned_by,
            "",
        );
    }
    // Timestamp alone has nothing pinning it: its signature must fail.
    case(
        "timestamp signature",
        &|d: &Path| {
            let p = d.join("timestamp.json");
            let s = std::fs::read_to_string(&p)
                .unwrap()
                .replace("\"version\":1", "\"version\":7");
            std::fs::write(&p, s).unwrap();
        },
        AT,
        "timestamp",
        "0 valid signature(s) of the 1 required",
    );
    // A removed signature (on root, whose hash snapshot pins: re-pinning is not possible
    // without the snapshot key, so show the signature check on timestamp instead).
    case(
        "removed signature",
        &|d: &Path| {
            let p = d.join("timestamp.json");
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            v["signatures"] = serde_json::json!([]);
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        },
        AT,
        "timestamp",
        "no signatures",
    );
    // Swapped role files.
    case(
        "swapped",
        &|d: &Path| {
            std::fs::rename(d.join("targets.json"), d.join("tmp")).unwrap();
            std::fs::rename(d.join("snapshot.json"), d.join("targets.json")).unwrap();
            std::fs::rename(d.join("tmp"), d.join("snapshot.json")).unwrap();
        },
        AT,
        "timestamp",
        "snapshot.json does not match",
    );
    // Expired timestamp as of a later time.
    case(
        "expired",
        &|_: &Path| {},
        "2026-12-07T00:00:00Z",
        "timestamp",
        "expired at 2026-12-06",
    );
    // targets.json still validly signed (whitespace does not change the canonical form) but
    // its bytes no longer match what snapshot pinned.
    case(
        "snapshot mismatch",
        &|d: &Path| {
            let p = d.join("targets.json");
            let mut b = std::fs::read(&p).unwrap();
            b.push(b'\n');
            std::fs::write(&p, b).unwrap();
        },
        AT,
        "snapshot",
        "targets.json does not match",
    );
    // A missing role file.
    case(
        "missing",
        &|d: &Path| std::fs::remove_file(d.join("snapshot.json")).unwrap(),
        AT,
        "snapshot",
        "missing",
    );
    // Not JSON.
    case(
        "not json",
        &|d: &Path| std::fs::write(d.join("root.json"), "nope").unwrap(),
        AT,
        "root",
        "not JSON",
    );
}

#[test]
fn exit_codes_and_unreachable_agent() {
    let agent = Agent::start(None);
    // Usage error.
    assert_eq!(agent.dct(&["tuf", "verify"]).code(), 2);
    // --help documents the exit codes.
    let help = agent.dct(&["--help"]).ok().stdout;
    assert!(help.contains("3  agent unreachable"), "{help}");
    // Unreachable agent: distinct code, says how to start it.
    let dir = tempfile::tempdir().unwrap();
    let run = dct_tests::Run(
        std::process::Command::new(dct_tests::bin("dct"))
            .args(["status"])
            .env("DCT_SOCKET", dir.path().join("none.sock"))
            .output()
            .unwrap(),
    );
    let err = run.fails(3, "agent not running at");
    assert!(err.contains("start it with `dct-agent`"), "{err}");
    // A bad --at.
    agent
        .dct(&[
            "tuf",
            "verify",
            fixture_dir("notary-0.7/metadata").to_str().unwrap(),
            "--gun",
            GUN,
            "--at",
            "yesterday",
        ])
        .fails(1, "not RFC 3339");
    // An agent with no tokens says so.
    let status = agent.dct(&["--json", "status"]).json();
    assert_eq!(status["tokens"].as_array().unwrap().len(), 0);
    agent
        .dct(&["unlock", "--pin-file", "/dev/null"])
        .fails(1, "no tokens configured");
}

#[test]
fn root_pinning_by_certificate_or_canonical_id() {
    let agent = Agent::start(None);
    let dir = fixture_dir("notary-0.7/metadata");
    let dir = dir.to_str().unwrap();
    for pin in [
        "c78536bb57a473cfc8d0c5b8c358e4dcb18d3b26766884041d22aa4b0d26e717",
        "6c8afbe159c6ec668099a2529f3e8b4fcccac34dbccf82e296fbe38821102d6c",
    ] {
        let out = agent
            .dct(&[
                "tuf",
                "verify",
                dir,
                "--gun",
                GUN,
                "--at",
                AT,
                "--root-key",
                pin,
            ])
            .ok();
        assert!(
            out.stdout
                .contains("example.com/app: verified (root pinned)"),
            "{}",
            out.stdout
        );
    }
    let other = "15c14862492972614909e9d1905db060278a00043974b966b9cde5940b8fe493";
    let err = agent
        .dct(&[
            "tuf",
            "verify",
            dir,
            "--gun",
            GUN,
            "--at",
            AT,
            "--root-key",
            other,
        ])
        .fails(1, "root: ");
    assert!(err.contains("is not pinned"), "{err}");
}

/// Repositories signed in the test with test keys (targets: v1; targets/releases: v2;
/// targets/alice: v2, a1), mutated, verified offline as notary and docker decide.
#[test]
fn mutated_repositories_decide_as_notary_offline() {
    use dct_tests::mutate::{self, Repo, STRANGER};
    use serde_json::json;
    let agent = Agent::start(None);
    let gun = "example.com/mutated";
    let k = mutate::keys(gun, 40);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("repo");
    let tuf_verify = |json: bool| {
        let mut args = vec!["tuf", "verify", d.to_str().unwrap(), "--gun", gun];
        if json {
            args.insert(0, "--json");
        }
        agent.dct(&args)
    };
    let role = |out: &serde_json::Value, name: &str| {
        out["roles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["role"] == name)
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .clone()
    };

    // A target with no sha256, or a short one: unusable, never printed as a digest.
    let mut r = Repo::new(&k);
    let short = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 16]);
    r.role("targets")["targets"]["v1"] = json!({"hashes": {}, "length": 4});
    r.role("targets")["targets"]["v3"] = json!({"hashes": {"sha256": short}, "length": 4});
    r.write(&k, &d);
    let out = tuf_verify(false).ok();
    // Table rows: ROLE TARGET DIGEST SIZE.
    let digests: Vec<(&str, &str)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[2].starts_with("sha256:")).then(|| (f[1], f[2]))
        })
        .collect();
    assert!(
        digests.iter().all(|(t, _)| *t != "v1" && *t != "v3"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("targets lists v1 without a usable digest: no sha256"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("sha256 hash is 16 bytes, not 32"),
        "{}",
        out.stderr
    );
    let j = tuf_verify(true).json();
    let t = role(&j, "targets");
    assert_eq!(t["targets"].as_array().unwrap().len(), 0, "{t}");
    assert_eq!(t["unusable"][0]["name"], "v1");
    assert_eq!(t["unusable"][1]["name"], "v3");
    assert_eq!(role(&j, "targets/releases")["targets"][0]["name"], "v2");

    // Not base64: notary fails the repository, and so does this.
    let mut r = Repo::new(&k);
    r.role("targets")["targets"]["v1"] = json!({"hashes": {"sha256": "%%%"}, "length": 4});
    r.write(&k, &d);
    tuf_verify(false).fails(
        1,
        "targets: malformed: target \"v1\": sha256 hash is not base64",
    );

    // An expired delegation, or one signed by a key it does not list: skipped with its
    // reason, the other roles verify.
    for (edit, why) in [
        (
            &(|r: &mut Repo| r.role("targets/alice")["expires"] = json!(dct_tests::expires_in(-1)))
                as &dyn Fn(&mut Repo),
            "expired at",
        ),
        (
            &|r: &mut Repo| {
                r.signers.insert("targets/alice".into(), vec![STRANGER]);
            },
            "0 valid signature(s) of the 1 required",
        ),
        (
            &|r: &mut Repo| r.role("targets")["delegations"]["roles"][1]["keyids"] = json!([]),
            "it has no keys",
        ),
    ] {
        let mut r = Repo::new(&k);
        edit(&mut r);
        r.write(&k, &d);
        let out = tuf_verify(false).ok();
        assert!(out.stdout.contains("sha256:"), "{}", out.stdout);
        assert!(
            out.stderr
                .contains("targets/alice skipped, its targets untrusted: "),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains(why), "{why}: {}", out.stderr);
        let j = tuf_verify(true).json();
        assert_eq!(j["valid"], true);
        assert_eq!(j["skipped"][0]["role"], "targets/alice");
        assert_eq!(j["skipped"][0]["targets"], json!(["a1", "v2"]));
        assert_eq!(role(&j, "targets")["targets"][0]["name"], "v1");
        assert_eq!(role(&j, "targets/releases")["targets"][0]["name"], "v2");
        assert!(j["roles"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["role"] != "targets/alice"));
    }

    // targets itself expired: everything fails.
    let mut r = Repo::new(&k);
    r.role("targets")["expires"] = json!(dct_tests::expires_in(-1));
    r.write(&k, &d);
    tuf_verify(false).fails(1, "targets: expired at");

    // A role file published but neither listed in the snapshot nor delegated: ignored.
    let mut r = Repo::new(&k);
    r.signed.insert(
        "targets/stray".into(),
        json!({"_type": "Targets", "expires": dct_tests::expires_in(30), "version": 1,
            "targets": {"v1": mutate::meta(b"stray\n")}, "delegations": {"keys": {}, "roles": []}}),
    );
    r.unlisted.push("targets/stray".into());
    r.write(&k, &d);
    let out = tuf_verify(false).ok();
    assert!(
        out.stderr.contains(
            "targets/stray is published but neither listed in the snapshot nor delegated: ignored"
        ),
        "{}",
        out.stderr
    );

    // A root certificate for a wildcard of the GUN (as notary's pinning accepts it).
    let kw = mutate::keys("example.com/*", 40);
    Repo::new(&kw).write(&kw, &d);
    tuf_verify(false).ok();
    let kw = mutate::keys("*", 40);
    Repo::new(&kw).write(&kw, &d);
    tuf_verify(false).fails(1, "is not the GUN");
}

#[test]
fn signature_methods_in_another_case_verify_as_in_notary() {
    let agent = Agent::start(None);
    let dir = tempfile::tempdir().unwrap();
    copy_repo(dir.path());
    let p = dir.path().join("timestamp.json");
    let s = std::fs::read_to_string(&p).unwrap();
    assert!(s.contains("\"method\":\"ecdsa\""));
    std::fs::write(
        &p,
        s.replace("\"method\":\"ecdsa\"", "\"method\":\"ECDSA\""),
    )
    .unwrap();
    verify(&agent, dir.path(), AT).ok();
    std::fs::write(
        &p,
        s.replace("\"method\":\"ecdsa\"", "\"method\":\"rsapss\""),
    )
    .unwrap();
    verify(&agent, dir.path(), AT).fails(1, "timestamp: ");
}
