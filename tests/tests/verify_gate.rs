//! The deploy gate: `dct trust verify` against the real notary-server, on repositories made
//! by our agent and by the real notary client, served by an agent that holds no key.

use dct_tests::hex;
use dct_tests::notary::{openssl, p256_key, trust, NotaryStack};
use dct_tests::{Agent, Run};
use sha2::{Digest, Sha256};

fn sign(agent: &Agent, stack: &NotaryStack, image: &str, content: &[u8]) {
    let digest = format!("sha256:{}", hex(&Sha256::digest(content)));
    let size = content.len().to_string();
    trust(
        agent,
        stack,
        &["sign", image, "--digest", &digest, "--size", &size],
    )
    .ok();
}

/// An agent with no token at all: a production host running the gate.
fn gate(extra_config: &str) -> Agent {
    Agent::start_with_config(None, extra_config)
}

/// The root's certificate key ID, as inspect reports it.
fn root_key_id(agent: &Agent, stack: &NotaryStack, gun: &str) -> String {
    let ins = trust(agent, stack, &["--json", "inspect", gun]).json();
    ins["administrative_keys"]["root"][0]["key_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_gate_passes_signed_tags_and_names_each_failed_check() {
    let stack = NotaryStack::start();
    let (_hsm, signer) = Agent::on_fresh_token("gate-signer", "2222");
    let gun = "registry.example.com/gated";
    let (c1, c2) = (b"manifest one\n".to_vec(), b"manifest two\n".to_vec());
    trust(&signer, &stack, &["init", gun]).ok();
    sign(&signer, &stack, &format!("{gun}:v1"), &c1);
    sign(&signer, &stack, &format!("{gun}:v2"), &c2);
    let d1 = format!("sha256:{}", hex(&Sha256::digest(&c1)));
    let d2 = format!("sha256:{}", hex(&Sha256::digest(&c2)));

    let g = gate("");
    let v1 = format!("{gun}:v1");
    // Passes, with the digest printed for `docker pull IMAGE@...`.
    let out = trust(&g, &stack, &["verify", &v1]).ok();
    assert!(out.stdout.contains(&d1), "{}", out.stdout);
    let printed = trust(&g, &stack, &["verify", &v1, "--print-digest"]).ok();
    assert_eq!(printed.stdout.trim(), d1);
    let j = trust(&g, &stack, &["--json", "verify", &v1]).json();
    assert_eq!(j["verified"], true);
    assert_eq!(j["signers"][0], "Repo Admin");
    assert_eq!(j["role"], "targets");
    assert_eq!(j["size"], c1.len());
    trust(&g, &stack, &["verify", &v1, "--digest", &d1]).ok();
    trust(&g, &stack, &["verify", &v1, "--signer", "Repo Admin"]).ok();

    // Each failure: exit 1, one line naming the check.
    let one_line = |r: Run, needle: &str| {
        let err = r.fails(1, needle);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    };
    one_line(
        trust(&g, &stack, &["verify", &v1, "--digest", &d2]),
        "digest:",
    );
    one_line(
        trust(&g, &stack, &["verify", &format!("{gun}:nope")]),
        "tag:",
    );
    one_line(
        trust(&g, &stack, &["verify", &v1, "--signer", "alice"]),
        "signer:",
    );
    one_line(
        trust(&g, &stack, &["verify", "registry.example.com/unknown:v1"]),
        "has no trust data",
    );
    // Revoked.
    trust(&signer, &stack, &["revoke", &v1]).ok();
    one_line(trust(&g, &stack, &["verify", &v1]), "is not signed");
    trust(&g, &stack, &["verify", &format!("{gun}:v2")]).ok();

    // Pinning: a wrong pin fails, the right one passes; TOFU can be disabled; the notary
    // client's own config file carries over.
    let root_id = root_key_id(&signer, &stack, gun);
    let wrong = gate(&format!(
        "[trust.pinning.certs]\n\"{gun}\" = [\"{}\"]\n",
        "ab".repeat(32)
    ));
    one_line(
        trust(&wrong, &stack, &["verify", &format!("{gun}:v2")]),
        "trust data:",
    );
    let pinned = gate(&format!(
        "[trust.pinning]\ndisable_tofu = true\n[trust.pinning.certs]\n\"registry.example.com/*\" = [\"{root_id}\"]\n"
    ));
    let j = trust(&pinned, &stack, &["--json", "verify", &format!("{gun}:v2")]).json();
    assert_eq!(j["trust"], "pinned");
    let no_tofu = gate("[trust.pinning]\ndisable_tofu = true\n");
    one_line(
        trust(&no_tofu, &stack, &["verify", &format!("{gun}:v2")]),
        "root:",
    );
    let notary_cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        notary_cfg.path(),
        serde_json::json!({"trust_pinning": {"disable_tofu": true, "certs": {gun: [root_id]}}})
            .to_string(),
    )
    .unwrap();
    let from_notary = gate(&format!(
        "[trust]\nnotary_config = {:?}\n",
        notary_cfg.path().display().to_string()
    ));
    trust(&from_notary, &stack, &["verify", &format!("{gun}:v2")]).ok();

    // Offline from the cached data; stale data refused, saying so.
    let v2 = format!("{gun}:v2");
    g.dct(&["trust", "verify", &v2, "--offline"]).ok();
    let later = dct_tests::expires_in(20);
    one_line(
        g.dct(&["trust", "verify", &v2, "--offline", "--at", &later]),
        "expired",
    );
    drop(stack);
    g.dct(&["trust", "verify", &v2, "--offline", "--print-digest"])
        .ok();
    let fresh = gate("");
    one_line(
        fresh.dct(&["trust", "verify", &v2, "--offline"]),
        "no cached trust data",
    );
}

#[test]
fn the_gate_reads_repositories_the_notary_client_made() {
    let stack = NotaryStack::start();
    let gun = "registry.example.com/by-notary";
    let ndir = tempfile::tempdir().unwrap();
    let d = ndir.path();
    let notary = |args: &[&str]| {
        let out = stack.notary(d, args, None);
        assert!(
            out.status.success(),
            "notary {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(d.join("v1.txt"), b"v1 by notary\n").unwrap();
    std::fs::write(d.join("qa.txt"), b"qa only\n").unwrap();
    // A delegation targets/qa (not releases) with a key the notary client holds.
    p256_key(d, "qa.key");
    openssl(d, &["ec", "-in", "qa.key", "-pubout", "-out", "qa.pub"]);
    notary(&["init", gun]);
    notary(&["add", gun, "v1", d.join("v1.txt").to_str().unwrap()]);
    notary(&["publish", gun]);
    notary(&[
        "key",
        "import",
        d.join("qa.key").to_str().unwrap(),
        "--role",
        "targets/qa",
        "--gun",
        gun,
    ]);
    notary(&[
        "delegation",
        "add",
        gun,
        "targets/qa",
        d.join("qa.pub").to_str().unwrap(),
        "--all-paths",
    ]);
    notary(&["publish", gun]);
    notary(&[
        "add",
        gun,
        "qaonly",
        d.join("qa.txt").to_str().unwrap(),
        "--roles",
        "targets/qa",
    ]);
    notary(&["publish", gun]);

    let g = gate("");
    let out = trust(&g, &stack, &["verify", &format!("{gun}:v1")]).ok();
    assert!(
        out.stdout.contains(&format!(
            "sha256:{}",
            hex(&Sha256::digest(b"v1 by notary\n"))
        )),
        "{}",
        out.stdout
    );
    trust(&g, &stack, &["verify", &format!("{gun}:qaonly")]).fails(1, "signed only in targets/qa");
}

#[test]
fn a_rotated_root_passes_and_a_recreated_repository_is_refused() {
    let stack = NotaryStack::start();
    let (_hsm, signer) = Agent::on_fresh_token("rot-signer", "3333");
    let gun = "registry.example.com/rotating";
    let content = b"manifest\n".to_vec();
    trust(&signer, &stack, &["init", gun]).ok();
    sign(&signer, &stack, &format!("{gun}:v1"), &content);
    let g = gate("");
    let image = format!("{gun}:v1");
    trust(&g, &stack, &["verify", &image]).ok();

    // A proper rotation (cross-signed): the TOFU gate follows, a pin on the new key passes.
    trust(&signer, &stack, &["key", "rotate", gun, "root"]).ok();
    let j = trust(&g, &stack, &["--json", "verify", &image]).json();
    assert_eq!(j["trust"], "cached");
    let new_root = root_key_id(&signer, &stack, gun);
    let pinned = gate(&format!(
        "[trust.pinning]\ndisable_tofu = true\n[trust.pinning.certs]\n\"{gun}\" = [\"{new_root}\"]\n"
    ));
    trust(&pinned, &stack, &["verify", &image]).ok();

    // Deleted and made again with a new root: the gate that trusted the old one refuses,
    // as the notary client does.
    let ndir = tempfile::tempdir().unwrap();
    let out = stack.notary(ndir.path(), &["delete", gun, "--remote"], None);
    assert!(out.status.success(), "notary delete: {out:?}");
    let (_hsm2, other) = Agent::on_fresh_token("rot-other", "4444");
    trust(&other, &stack, &["init", gun]).ok();
    sign(&other, &stack, &image, &content);
    let err = trust(&g, &stack, &["verify", &image]).fails(1, "trust data:");
    assert!(err.contains("root"), "{err}");
    eprintln!("recreated repository: {err}");
}

#[test]
fn ca_pinning_accepts_roots_the_ca_issued_and_nothing_else() {
    let stack = NotaryStack::start();
    let gun = "registry.example.com/ca-rooted";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA, and a root key whose certificate (CN = GUN) the CA issued.
    for (name, subj) in [
        ("ca", "/CN=dct test root CA"),
        ("other-ca", "/CN=another CA"),
    ] {
        p256_key(d, &format!("{name}.key"));
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                subj,
                "-days",
                "30",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
    p256_key(d, "root.key");
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "root.key",
            "-subj",
            &format!("/CN={}", gun.replace('/', "\\/")),
            "-out",
            "root.csr",
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "root.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            "ext.cnf",
            "-out",
            "root.crt",
        ],
    );
    // The notary client imports only encrypted root keys (PKCS#8, PBES2 with SHA-1 PRF).
    let _notary_dir = publish_with_root_cert(&stack, d, gun, b"released under the CA\n");
    let image = format!("{gun}:v1");
    let pin = |ca: &str, g: &str| {
        gate(&format!(
            "[trust.pinning]\ndisable_tofu = true\n[trust.pinning.ca]\n\"{g}\" = {:?}\n",
            d.join(ca).display().to_string()
        ))
    };
    let good = pin("ca.crt", "registry.example.com/*");
    let j = trust(&good, &stack, &["--json", "verify", &image]).json();
    assert_eq!(j["trust"], "pinned");
    let other = pin("other-ca.crt", gun);
    trust(&other, &stack, &["verify", &image]).fails(1, "pinned CA");
    // A repository whose root certificate is self-signed (made by our agent) fails the pin.
    let (_hsm, signer) = Agent::on_fresh_token("ca-self", "5555");
    let own = "registry.example.com/self-rooted";
    trust(&signer, &stack, &["init", own]).ok();
    sign(&signer, &stack, &format!("{own}:v1"), b"x\n");
    trust(&good, &stack, &["verify", &format!("{own}:v1")]).fails(1, "pinned CA");
}

/// A repository signed with test keys, served over HTTP by a stand-in server
/// (dct_tests::replay) from `dir`, for a gate on `gun`.
fn serve(
    gun: &str,
    r: &dct_tests::mutate::Repo,
    k: &[dct_tests::mutate::Key],
) -> (tempfile::TempDir, dct_tests::replay::Replay) {
    let dir = tempfile::tempdir().unwrap();
    r.write(k, dir.path());
    let replay = dct_tests::replay::Replay::start(gun, dir.path().to_path_buf());
    (dir, replay)
}

#[test]
fn the_gate_refuses_unusable_targets_and_never_prints_them_as_digests() {
    use dct_tests::mutate::{self, Repo};
    use serde_json::json;
    let g = gate("");
    let short = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 16]);
    let d2 = format!("sha256:{}", hex(&Sha256::digest(b"two\n")));
    for (n, (role, entry, why)) in [
        ("targets", json!({"hashes": {}, "length": 4}), "no sha256"),
        ("targets", json!({"length": 4}), "no sha256"),
        ("targets", json!({"hashes": {"sha256": short}, "length": 4}), "16 bytes, not 32"),
        ("targets", json!({"hashes": {"sha256": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 32])}}), "no length"),
        // Docker takes the tag from targets/releases: a valid entry in targets does not
        // stand in for an unusable one there.
        ("targets/releases", json!({"hashes": {}, "length": 4}), "no sha256"),
    ]
    .into_iter()
    .enumerate()
    {
        let gun = format!("registry.example.com/unusable{n}");
        let k = mutate::keys(&gun, 60);
        let mut r = Repo::new(&k);
        r.role(role)["targets"]["v1"] = entry;
        let (_dir, server) = serve(&gun, &r, &k);
        let image = format!("{gun}:v1");
        let online = |extra: &[&str]| {
            let mut args = vec!["trust", "--server", &server.url, "verify", &image];
            args.extend_from_slice(extra);
            g.dct(&args)
        };
        for run in [
            online(&[]),
            online(&["--print-digest"]),
            g.dct(&["trust", "verify", &image, "--offline", "--print-digest"]),
        ] {
            let err = run.fails(1, &format!("tag: {gun}:v1 in {role} is unusable"));
            assert!(err.contains(why), "{err}");
            assert_eq!(run.stdout(), "", "printed as a digest");
        }
        // The other tags are unaffected.
        let v2 = format!("{gun}:v2");
        let printed = g
            .dct(&["trust", "--server", &server.url, "verify", &v2, "--print-digest"])
            .ok();
        assert_eq!(printed.stdout.trim(), d2);
    }
}

#[test]
fn a_failing_delegation_untrusts_only_its_own_tags_at_the_gate() {
    use dct_tests::mutate::{self, Repo, STRANGER};
    use serde_json::json;
    let g = gate("");
    let d1 = format!("sha256:{}", hex(&Sha256::digest(b"one\n")));
    let d2 = format!("sha256:{}", hex(&Sha256::digest(b"two\n")));
    type Edit = dyn Fn(&mut Repo);
    let cases: [(&str, &Edit, &str); 4] = [
        (
            "expired",
            &|r| r.role("targets/alice")["expires"] = json!(dct_tests::expires_in(-1)),
            "expired at",
        ),
        (
            "stranger",
            &|r| {
                r.signers.insert("targets/alice".into(), vec![STRANGER]);
            },
            "0 valid signature(s) of the 1 required",
        ),
        (
            "threshold",
            &|r| r.role("targets")["delegations"]["roles"][1]["threshold"] = json!(2),
            "1 valid signature(s) of the 2 required",
        ),
        (
            "keyless",
            &|r| r.role("targets")["delegations"]["roles"][1]["keyids"] = json!([]),
            "it has no keys",
        ),
    ];
    for (name, edit, why) in cases {
        let gun = format!("registry.example.com/skip-{name}");
        let k = mutate::keys(&gun, 70);
        let mut r = Repo::new(&k);
        edit(&mut r);
        let (_dir, server) = serve(&gun, &r, &k);
        let verify = |tag: &str, extra: &[&str]| {
            let image = format!("{gun}:{tag}");
            let mut args = vec!["trust", "--server", &server.url, "verify", &image];
            args.extend_from_slice(extra);
            let online = g.dct(&args);
            let mut args = vec!["trust", "verify", &image, "--offline"];
            args.extend_from_slice(extra);
            (online, g.dct(&args))
        };
        // Tags of other roles pass, the output naming the skipped delegation and why.
        let (online, offline) = verify("v1", &[]);
        for run in [&online, &offline] {
            let out = run.ok();
            assert!(out.stdout.contains(&d1), "{}", out.stdout);
            assert!(
                out.stderr.contains("warning: targets/alice skipped") && out.stderr.contains(why),
                "{name}: {}",
                out.stderr
            );
        }
        let j = g
            .dct(&[
                "--json",
                "trust",
                "--server",
                &server.url,
                "verify",
                &format!("{gun}:v2"),
            ])
            .json();
        assert_eq!(j["digest"], d2.as_str());
        assert_eq!(j["role"], "targets/releases");
        assert_eq!(j["skipped"][0]["role"], "targets/alice");
        // v2 is in releases and in the skipped targets/alice: alice does not count.
        let (online, offline) = verify("v2", &["--signer", "alice"]);
        for run in [online, offline] {
            let err = run.fails(1, "signer: ");
            assert!(
                err.contains("not by alice (targets/alice lists it but is skipped: ")
                    && err.contains(why),
                "{name}: {err}"
            );
        }
        // a1 is signed only in the skipped delegation: not signed, with the reason.
        let (online, offline) = verify("a1", &[]);
        for run in [online, offline] {
            let err = run.fails(1, "tag: ");
            assert!(
                err.contains(
                    "is not signed by a trusted role (targets/alice lists it but is skipped: "
                ) && err.contains(why),
                "{name}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }

    // targets/releases skipped: a tag it lists is refused, never taken from elsewhere;
    // tags in targets pass.
    let gun = "registry.example.com/skip-releases";
    let k = mutate::keys(gun, 80);
    let mut r = Repo::new(&k);
    r.role("targets/releases")["expires"] = json!(dct_tests::expires_in(-1));
    r.role("targets")["targets"]["v2"] = mutate::meta(b"older two\n");
    let (_dir, server) = serve(gun, &r, &k);
    g.dct(&[
        "trust",
        "--server",
        &server.url,
        "verify",
        &format!("{gun}:v1"),
    ])
    .ok();
    let err = g
        .dct(&[
            "trust",
            "--server",
            &server.url,
            "verify",
            &format!("{gun}:v2"),
        ])
        .fails(1, "tag: ");
    assert!(
        err.contains("targets/releases, where docker takes it from, is skipped: expired at"),
        "{err}"
    );
    // inspect resolves tags the same way: v2 is not shown with targets' digest.
    let ins = g
        .dct(&["--json", "trust", "--server", &server.url, "inspect", gun])
        .json();
    let shown: Vec<&str> = ins["signed_tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["tag"].as_str())
        .collect();
    assert_eq!(shown, ["v1"], "{ins}");

    // targets itself failing still fails everything.
    let gun = "registry.example.com/skip-targets";
    let k = mutate::keys(gun, 90);
    let mut r = Repo::new(&k);
    r.role("targets")["expires"] = json!(dct_tests::expires_in(-1));
    let (_dir, server) = serve(gun, &r, &k);
    g.dct(&[
        "trust",
        "--server",
        &server.url,
        "verify",
        &format!("{gun}:v1"),
    ])
    .fails(1, "targets: expired at");
}

/// notary accepts a delegation rolled back to an older version under a newer snapshot;
/// the gate, having seen the newer one, refuses the repository.
#[test]
fn stricter_than_notary_a_rolled_back_delegation_is_refused() {
    use dct_tests::mutate::{self, Repo};
    let g = gate("");
    let gun = "registry.example.com/rolled-back";
    let k = mutate::keys(gun, 100);
    let mut r = Repo::new(&k);
    r.role("targets/releases")["version"] = serde_json::json!(2);
    r.snapshot_version = 2;
    let (dir, server) = serve(gun, &r, &k);
    let image = format!("{gun}:v2");
    g.dct(&["trust", "--server", &server.url, "verify", &image])
        .ok();
    // The same repository with releases back at version 1, under a newer snapshot.
    r.role("targets/releases")["version"] = serde_json::json!(1);
    r.snapshot_version = 3;
    r.write(&k, dir.path());
    g.dct(&["trust", "--server", &server.url, "verify", &image])
        .fails(1, "refusing a rollback");
}

/// notary falls back to targets when the snapshot stops listing a delegation; the gate,
/// having seen it, refuses the repository.
#[test]
fn stricter_than_notary_a_snapshot_that_stops_listing_a_seen_delegation_is_refused() {
    use dct_tests::mutate::{self, Repo};
    let g = gate("");
    let gun = "registry.example.com/unlisted";
    let k = mutate::keys(gun, 110);
    let mut r = Repo::new(&k);
    let (dir, server) = serve(gun, &r, &k);
    let image = format!("{gun}:v1");
    g.dct(&["trust", "--server", &server.url, "verify", &image])
        .ok();
    r.unlisted.push("targets/releases".into());
    r.snapshot_version = 2;
    r.write(&k, dir.path());
    g.dct(&["trust", "--server", &server.url, "verify", &image])
        .fails(1, "no longer lists targets/releases");
}

/// The real notary client removes a signer's key, leaving targets/alice with no keys on the
/// real notary-server: notary and the gate skip it, every other tag still passes.
#[test]
fn a_delegation_whose_keys_notary_removed_is_skipped_as_notary_skips_it() {
    let stack = NotaryStack::start();
    let gun = "registry.example.com/keyless";
    let ndir = tempfile::tempdir().unwrap();
    let d = ndir.path();
    let notary = |args: &[&str]| {
        let out = stack.notary(d, args, None);
        assert!(
            out.status.success(),
            "notary {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    std::fs::write(d.join("v1.txt"), b"v1 by admin\n").unwrap();
    std::fs::write(d.join("a1.txt"), b"a1 by alice\n").unwrap();
    p256_key(d, "alice.key");
    openssl(
        d,
        &["ec", "-in", "alice.key", "-pubout", "-out", "alice.pub"],
    );
    notary(&["init", gun]);
    notary(&["add", gun, "v1", d.join("v1.txt").to_str().unwrap()]);
    notary(&["publish", gun]);
    notary(&[
        "key",
        "import",
        d.join("alice.key").to_str().unwrap(),
        "--role",
        "targets/alice",
        "--gun",
        gun,
    ]);
    let added = notary(&[
        "delegation",
        "add",
        gun,
        "targets/alice",
        d.join("alice.pub").to_str().unwrap(),
        "--all-paths",
    ]);
    notary(&["publish", gun]);
    notary(&[
        "add",
        gun,
        "a1",
        d.join("a1.txt").to_str().unwrap(),
        "--roles",
        "targets/alice",
    ]);
    notary(&["publish", gun]);
    let g = gate("");
    trust(
        &g,
        &stack,
        &["verify", &format!("{gun}:a1"), "--signer", "alice"],
    )
    .fails(1, "signed only in targets/alice");
    // The signer's key is removed: notary rewrites targets with targets/alice keyless.
    let key_id = added
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .unwrap_or_else(|| panic!("no key ID in {added:?}"))
        .to_string();
    notary(&["delegation", "remove", gun, "targets/alice", &key_id]);
    notary(&["publish", gun]);

    // notary lists v1 (and not a1); so does the gate, naming targets/alice and why.
    let rows = dct_tests::notary::notary_list(&stack, gun, &[]);
    assert!(rows.iter().any(|r| r.0 == "v1"), "{rows:?}");
    assert!(rows.iter().all(|r| r.0 != "a1"), "{rows:?}");
    let d1 = format!("sha256:{}", hex(&Sha256::digest(b"v1 by admin\n")));
    let v1 = format!("{gun}:v1");
    let out = trust(&g, &stack, &["verify", &v1]).ok();
    assert!(out.stdout.contains(&d1), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("warning: targets/alice skipped, its tags untrusted: it has no keys"),
        "{}",
        out.stderr
    );
    let a1 = format!("{gun}:a1");
    for run in [
        trust(&g, &stack, &["verify", &a1]),
        g.dct(&["trust", "verify", &a1, "--offline"]),
    ] {
        let err = run.fails(1, "tag: ");
        assert!(
            err.contains("is not signed by a trusted role (targets/alice lists it but is skipped: it has no keys"),
            "{err}"
        );
    }
    g.dct(&["trust", "verify", &v1, "--offline"]).ok();
    if let Some(shown) = dct_tests::notary::docker_inspect(&stack, &v1) {
        assert!(shown.contains(&d1[7..]), "{shown}");
    }
}

/// A root certificate whose CN is a wildcard of the GUN (`registry.example.com/*`), made with
/// openssl and published by the real notary client: notary and the gate both accept it.
#[test]
fn a_root_certificate_for_a_wildcard_of_the_gun_passes_as_in_notary() {
    let stack = NotaryStack::start();
    let gun = "registry.example.com/wild";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    p256_key(d, "root.key");
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "root.key",
            "-subj",
            "/CN=registry.example.com\\/*",
            "-out",
            "root.csr",
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509", "-req", "-in", "root.csr", "-signkey", "root.key", "-days", "20", "-extfile",
            "ext.cnf", "-out", "root.crt",
        ],
    );
    let _notary_dir = publish_with_root_cert(&stack, d, gun, b"under a wildcard root\n");
    let rows = dct_tests::notary::notary_list(&stack, gun, &[]);
    assert!(rows.iter().any(|r| r.0 == "v1"), "{rows:?}");
    let g = gate("");
    let out = trust(&g, &stack, &["verify", &format!("{gun}:v1")]).ok();
    assert!(
        out.stdout
            .contains(&hex(&Sha256::digest(b"under a wildcard root\n"))),
        "{}",
        out.stdout
    );
}

/// Encrypts `d/root.key` as the notary client imports root keys (PKCS#8, PBES2 with a
/// SHA-1 PRF), then has the real notary client init `gun` with it and `d/root.crt`, add
/// tag v1 with `content` and publish. Returns the notary client's trust directory.
fn publish_with_root_cert(
    stack: &NotaryStack,
    d: &std::path::Path,
    gun: &str,
    content: &[u8],
) -> tempfile::TempDir {
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "root.key",
            "-out",
            "root-enc.key",
            "-v2",
            "aes-256-cbc",
            "-v2prf",
            "hmacWithSHA1",
            "-passout",
            "pass:test-root-passphrase",
        ],
    );
    let ndir = tempfile::tempdir().unwrap();
    let file = d.join("v1.txt");
    std::fs::write(&file, content).unwrap();
    for args in [
        vec![
            "init",
            gun,
            "--rootkey",
            d.join("root-enc.key").to_str().unwrap(),
            "--rootcert",
            d.join("root.crt").to_str().unwrap(),
        ],
        vec!["add", gun, "v1", file.to_str().unwrap()],
        vec!["publish", gun],
    ] {
        let out = stack.notary(ndir.path(), &args, None);
        assert!(out.status.success(), "notary {args:?}: {out:?}");
    }
    ndir
}
