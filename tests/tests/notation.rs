//! Notation signatures from keys on SoftHSM2 tokens, end to end with the real `notation`
//! CLI (v1.3.2, tests/go-tools.sh) and a real registry (docker-registry 2.8, the image
//! pushed by skopeo): a signing CA made on one token, a leaf issued for a key on another,
//! `notation sign` through the `notation-dct` plugin, `notation verify` with the exported
//! trust store and policy, `notation inspect`; and the failures users meet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dct_tests::registry::Registry;
use dct_tests::{gotools, notary, Agent, SoftHsm, SOFTHSM_MODULE};
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// One user's Notation: its own configuration directory, the registry's CA trusted.
struct Notation {
    config: PathBuf,
    ca: PathBuf,
    socket: PathBuf,
}

impl Notation {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(gotools::notation())
            .args(args)
            .env("XDG_CONFIG_HOME", &self.config)
            .env("HOME", &self.config)
            .env("SSL_CERT_FILE", &self.ca)
            .env("DCT_SOCKET", &self.socket)
            .env_remove("DCT_AGENT_UID")
            .output()
            .expect("notation");
        eprintln!(
            "$ notation {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "notation {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Asserts failure; returns stdout and stderr together.
    #[track_caller]
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "notation {args:?} succeeded");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn dir(&self) -> PathBuf {
        self.config.join("notation")
    }
}

/// Two tokens, the agent over both, both unlocked.
fn two_tokens() -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new("ca-token", "1234");
    hsm.add_token("sign-token");
    let config = format!(
        "[[pkcs11]]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken = \"ca-token\"\n\n\
         [[pkcs11]]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken = \"sign-token\"\n\n\
         [[policy]]\nrole = \"targets\"\nmax_signature_lifetime = \"30d\"\n"
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock_token("ca-token", "1234", &[]).ok();
    agent.unlock_token("sign-token", "1234", &[]).ok();
    (hsm, agent)
}

fn audit(agent: &Agent) -> String {
    std::fs::read_to_string(agent.audit_path()).unwrap()
}

fn notation_for(agent: &Agent, pki: &Path) -> (tempfile::TempDir, Notation) {
    let home = tempfile::tempdir().unwrap();
    let n = Notation {
        config: home.path().to_path_buf(),
        ca: pki.join("ca.crt"),
        socket: agent.socket.clone(),
    };
    (home, n)
}

#[test]
fn notation_signs_and_verifies_with_keys_on_tokens() {
    let (_hsm, agent) = two_tokens();
    let pki = notary::pki();
    let registry = Registry::start_with_pki(pki.path());
    let repo = format!("{}/app", registry.host);
    let image = format!("{repo}@sha256:{}", sha(&registry.push("app", "v1", "one")));
    let other = format!("{repo}@sha256:{}", sha(&registry.push("app", "v2", "two")));

    // The signing CA on one token, the signing key on the other.
    let ca = agent.dct(&[
        "--json",
        "notation",
        "ca",
        "init",
        "--name",
        "Test Signing CA",
        "--token",
        "ca-token",
    ]);
    let ca = ca.json();
    let ca_key = ca["key"]["key_id"].as_str().unwrap().to_string();
    assert_eq!(ca["key"]["role"], "notation-ca");
    assert_eq!(ca["key"]["token"], "ca-token");
    let transcript = std::fs::read_to_string(ca["transcript"].as_str().unwrap()).unwrap();
    assert!(transcript.contains(&ca_key), "{transcript}");
    assert!(transcript.contains("Certificate SHA-256: "), "{transcript}");
    let key = agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "targets",
            "--gun",
            &repo,
            "--token",
            "sign-token",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    // Before its certificate, Notation cannot use the key.
    let (_home0, n0) = notation_for(&agent, pki.path());
    agent
        .dct_env(
            &["notation", "install"],
            &[("XDG_CONFIG_HOME", n0.config.to_str().unwrap())],
        )
        .ok();
    let out = n0.fails(&["sign", "--plugin", "dct", "--id", &key, &image]);
    assert!(out.contains("has no certificate chain"), "{out}");

    let issued = agent
        .dct(&[
            "--json",
            "notation",
            "cert",
            "issue",
            &key,
            "--ca",
            &ca_key,
            "--days",
            "30",
            "--cn",
            "Release signing",
        ])
        .json();
    assert_eq!(issued["certificate_chain"].as_array().unwrap().len(), 2);
    let listed = agent.dct(&["--json", "key", "list"]).json();
    let entry = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == key.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        entry["notation_certificate"]["subject"],
        "CN=Release signing"
    );
    let table = agent.dct(&["key", "list"]).ok().stdout;
    assert!(table.contains("NOTATION CERTIFICATE"), "{table}");
    assert!(table.contains("CN=Release signing"), "{table}");

    // The plugin, installed as Notation wants it: a regular executable file.
    let (_home, n) = notation_for(&agent, pki.path());
    let installed = agent
        .dct_env(
            &["notation", "install"],
            &[("XDG_CONFIG_HOME", n.config.to_str().unwrap())],
        )
        .ok()
        .stdout;
    let plugin = n.dir().join("plugins/dct/notation-dct");
    assert!(installed.contains(plugin.to_str().unwrap()), "{installed}");
    let meta = std::fs::symlink_metadata(&plugin).unwrap();
    assert!(meta.file_type().is_file());
    let plugins = n.ok(&["plugin", "ls"]);
    assert!(plugins.contains("SIGNATURE_GENERATOR.RAW"), "{plugins}");

    // Sign in both envelopes. docker-registry 2.8 has no referrers API: notation 1.3
    // falls back to the referrers tag schema by itself (no flag needed).
    n.ok(&["key", "add", "hw", "--plugin", "dct", "--id", &key]);
    n.ok(&["sign", "--key", "hw", "--expiry", "24h", &image]);
    n.ok(&[
        "sign",
        "--key",
        "hw",
        "--signature-format",
        "cose",
        "--expiry",
        "24h",
        &image,
    ]);
    let log = audit(&agent);
    let digest = image.rsplit('@').next().unwrap();
    assert!(log.contains(&format!("notation-jws {digest}")), "{log}");
    assert!(log.contains(&format!("notation-cose {digest}")), "{log}");
    assert!(
        log.contains("signing leaf"),
        "the leaf's signing is audited: {log}"
    );

    // The policy's lifetime: a signature without expiry, or longer than 30 days, refused.
    let out = n.fails(&["sign", "--key", "hw", &image]);
    assert!(out.contains("never expires"), "{out}");
    assert!(out.contains("max_signature_lifetime"), "{out}");

    // Verify with the exported trust store and policy.
    let export = agent
        .dct(&[
            "--json",
            "notation",
            "export-trust",
            n.dir().to_str().unwrap(),
            "--scope",
            &repo,
        ])
        .json();
    assert_eq!(export["trust_store"], "ca:dct");
    let policy = std::fs::read_to_string(n.dir().join("trustpolicy.oci.json")).unwrap();
    assert!(policy.contains(&repo), "{policy}");
    let verified = n.ok(&["verify", &image]);
    assert!(verified.contains("Successfully verified"), "{verified}");
    let inspect = n.ok(&["inspect", "--output", "json", &image]);
    assert!(inspect.contains("CN=Release signing"), "{inspect}");
    assert!(inspect.contains("CN=Test Signing CA"), "{inspect}");
    assert!(inspect.contains("application/jose+json"), "{inspect}");
    assert!(inspect.contains("application/cose"), "{inspect}");

    // Not for a digest the signatures do not cover.
    let out = n.fails(&["verify", &other]);
    assert!(out.contains("no signature is associated"), "{out}");

    // Not against another CA's trust store.
    let other_ca = agent
        .dct(&[
            "--json", "notation", "ca", "init", "--name", "Other CA", "--token", "ca-token",
        ])
        .json();
    let (_home2, n2) = notation_for(&agent, pki.path());
    agent
        .dct(&[
            "notation",
            "export-trust",
            n2.dir().to_str().unwrap(),
            "--scope",
            &repo,
            "--ca",
            other_ca["key"]["key_id"].as_str().unwrap(),
        ])
        .ok();
    let out = n2.fails(&["verify", &image]);
    assert!(out.contains("signature verification failed"), "{out}");

    // A CA key signs certificates only: even with its own certificate kept as its chain,
    // the guard refuses it an image signature, and audits the refusal.
    let ca_pem = n.dir().join("truststore/x509/ca/dct/dct-ca-1.pem");
    agent
        .dct(&[
            "notation",
            "cert",
            "import",
            &ca_key,
            ca_pem.to_str().unwrap(),
        ])
        .ok();
    let out = n.fails(&[
        "sign", "--plugin", "dct", "--id", &ca_key, "--expiry", "1h", &image,
    ]);
    assert!(out.contains("signs certificates only"), "{out}");
    assert!(
        audit(&agent)
            .lines()
            .any(|l| l.contains("\"refuse\"") && l.contains("signs certificates only")),
        "refusal audited"
    );
    // And a key that is not a CA's signs no certificate.
    agent
        .dct(&["notation", "cert", "issue", &ca_key, "--ca", &key])
        .fails(1, "not a Notation signing CA");
}

#[test]
fn notation_failures_are_plugin_errors_and_audited() {
    let (_hsm, agent) = two_tokens();
    let pki = notary::pki();
    let registry = Registry::start_with_pki(pki.path());
    let repo = format!("{}/web", registry.host);
    let image = format!("{repo}@sha256:{}", sha(&registry.push("web", "v1", "web")));
    let ca_key = agent
        .dct(&[
            "--json", "notation", "ca", "init", "--name", "CA", "--token", "ca-token",
        ])
        .json()["key"]["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "targets",
            "--gun",
            &repo,
            "--token",
            "sign-token",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    agent
        .dct(&[
            "notation",
            "cert",
            "issue",
            &key,
            "--ca",
            &ca_key,
            "--subject",
            "CN=Web release,O=Example,ST=WA,C=US",
        ])
        .ok();
    // A snapshot key: the default policy lets it make no OCI signatures.
    let snapshot = agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "snapshot",
            "--gun",
            &repo,
            "--token",
            "sign-token",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    agent
        .dct(&["notation", "cert", "issue", &snapshot, "--ca", &ca_key])
        .ok();
    let (_home, n) = notation_for(&agent, pki.path());
    agent
        .dct_env(
            &["notation", "install"],
            &[("XDG_CONFIG_HOME", n.config.to_str().unwrap())],
        )
        .ok();

    // Unknown key: a validation error naming it, audited as a refusal.
    let out = n.fails(&["sign", "--plugin", "dct", "--id", "feedbeef00", &image]);
    assert!(out.contains("no key feedbeef00"), "{out}");
    let log = audit(&agent);
    assert!(
        log.lines()
            .any(|l| l.contains("\"refuse\"") && l.contains("feedbeef00")),
        "{log}"
    );

    // Refused by policy: the rule named, nothing signed, audited.
    let out = n.fails(&[
        "sign", "--plugin", "dct", "--id", &snapshot, "--expiry", "1h", &image,
    ]);
    assert!(out.contains("policy (oci)"), "{out}");
    let log = audit(&agent);
    assert!(
        log.lines()
            .any(|l| l.contains("\"refuse\"") && l.contains(&snapshot[..16]) && l.contains("oci")),
        "{log}"
    );

    // A locked token: the message says to unlock it; audited.
    agent.dct(&["lock", "--token", "sign-token"]).ok();
    let out = n.fails(&[
        "sign", "--plugin", "dct", "--id", &key, "--expiry", "1h", &image,
    ]);
    assert!(out.contains("dct unlock --token sign-token"), "{out}");
    let log = audit(&agent);
    assert!(
        log.lines()
            .any(|l| l.contains("\"refuse\"") && l.contains("locked") && l.contains(&key[..16])),
        "{log}"
    );
    // Nothing was signed: no signature in the registry.
    agent.unlock_token("sign-token", "1234", &[]).ok();
    let listed = n.ok(&["ls", &image]);
    assert!(
        !listed.contains("application/vnd.cncf.notary.signature"),
        "{listed}"
    );

    // After its expiry, the signature no longer verifies.
    // Trusted by its subject, as Notation's trustedIdentities name it.
    agent
        .dct(&[
            "notation",
            "export-trust",
            n.dir().to_str().unwrap(),
            "--scope",
            &repo,
            "--identity",
            "x509.subject: C=US, ST=WA, O=Example, CN=Web release",
        ])
        .ok();
    let signed = std::time::Instant::now();
    n.ok(&[
        "sign", "--plugin", "dct", "--id", &key, "--expiry", "6s", &image,
    ]);
    n.ok(&["verify", &image]);
    std::thread::sleep(std::time::Duration::from_secs(7).saturating_sub(signed.elapsed()));
    let out = n.fails(&["verify", "--verbose", &image]);
    assert!(out.contains("signature verification failed"), "{out}");
    assert!(out.contains("expired"), "{out}");
}

/// A key on a YubiKey (the virtual PIV card behind a real pcscd), its leaf issued by a CA
/// whose key is on SoftHSM2: signed over PIV, then through Yubico's PKCS#11 module.
#[test]
fn notation_signs_with_a_key_on_the_card_over_piv_and_ykcs11() {
    use dct_tests::piv::{CardOptions, VirtualPiv, YKCS11_MODULE};
    const CARD_PIN: &str = "123456";
    let card = VirtualPiv::start(CardOptions::default());
    let hsm = SoftHsm::new("dct", "7777");
    let piv = format!("piv:{}", card.serial());
    let agent = Agent::start_with_config(
        Some(&hsm),
        &format!(
            "{}[[piv]]\nserial = {}\nmanagement_key = \"default\"\n",
            hsm.agent_config(),
            card.serial()
        ),
    );
    agent.unlock_token("dct", &hsm.pin, &[]).ok();
    agent.unlock_token(&piv, CARD_PIN, &[]).ok();
    let pki = notary::pki();
    let registry = Registry::start_with_pki(pki.path());
    let repo = format!("{}/card", registry.host);
    let image = format!(
        "{repo}@sha256:{}",
        sha(&registry.push("card", "v1", "card"))
    );

    let ca_key = agent
        .dct(&[
            "--json", "notation", "ca", "init", "--name", "Card CA", "--token", "dct",
        ])
        .json()["key"]["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "targets",
            "--gun",
            &repo,
            "--token",
            &piv,
            "--touch-policy",
            "never",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    agent
        .dct(&[
            "notation", "cert", "issue", &key, "--ca", &ca_key, "--cn", "Card key",
        ])
        .ok();
    let (_home, n) = notation_for(&agent, pki.path());
    agent
        .dct_env(
            &["notation", "install"],
            &[("XDG_CONFIG_HOME", n.config.to_str().unwrap())],
        )
        .ok();
    agent
        .dct(&[
            "notation",
            "export-trust",
            n.dir().to_str().unwrap(),
            "--scope",
            &repo,
        ])
        .ok();
    n.ok(&[
        "sign", "--plugin", "dct", "--id", &key, "--expiry", "1h", &image,
    ]);
    let verified = n.ok(&["verify", &image]);
    assert!(verified.contains("Successfully verified"), "{verified}");
    let log = audit(&agent);
    assert!(
        log.lines().any(|l| l.contains("notation-jws")
            && l.contains(&key[..16])
            && l.contains("\"sign\"")),
        "{log}"
    );
    // The agent's state (its Notation chains) kept, as on the machine, past this agent.
    let kept = tempfile::tempdir().unwrap();
    let copied = Command::new("cp")
        .arg("-r")
        .arg(agent.dir.path().join("notation"))
        .arg(kept.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let state = kept.path().join("notation");
    drop(agent);

    // Through ykcs11: the agent finds the card's key by its slot certificate; the chain
    // kept in the state directory (carried over) goes with it.
    let label = {
        let out = Command::new("pkcs11-tool")
            .args(["--module", YKCS11_MODULE, "-L"])
            .output()
            .expect("pkcs11-tool");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("token label")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .expect("a ykcs11 token")
    };
    let agent = Agent::start_with_config(
        Some(&hsm),
        &format!(
            "{}[[pkcs11]]\nmodule = \"{YKCS11_MODULE}\"\ntoken = \"{label}\"\n",
            hsm.agent_config()
        ),
    );
    let copy = Command::new("cp")
        .arg("-r")
        .arg(&state)
        .arg(agent.dir.path())
        .status()
        .unwrap();
    assert!(copy.success());
    agent.unlock_token(&label, CARD_PIN, &[]).ok();
    let listed = agent.dct(&["key", "list"]).ok().stdout;
    assert!(listed.contains("CN=Card key"), "{listed}");
    let n = Notation {
        socket: agent.socket.clone(),
        ..n
    };
    n.ok(&[
        "sign",
        "--plugin",
        "dct",
        "--id",
        &key,
        "--signature-format",
        "cose",
        "--expiry",
        "1h",
        &image,
    ]);
    let inspect = n.ok(&["inspect", "--output", "json", &image]);
    assert!(inspect.contains("application/cose"), "{inspect}");
    n.ok(&["verify", &image]);
    let digest = image.rsplit('@').next().unwrap();
    assert!(audit(&agent).contains(&format!("notation-cose {digest}")));
}

/// A company CA (openssl here) issues the signing certificate from a PKCS#10 request made
/// on the token; the returned chain, imported, is what Notation gets and verifies.
#[test]
fn notation_csr_from_the_token_signed_by_an_openssl_ca() {
    let (_hsm, agent) = two_tokens();
    let pki = notary::pki();
    let registry = Registry::start_with_pki(pki.path());
    let repo = format!("{}/corp", registry.host);
    let image = format!(
        "{repo}@sha256:{}",
        sha(&registry.push("corp", "v1", "corp"))
    );
    let key = agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "targets",
            "--gun",
            &repo,
            "--token",
            "sign-token",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let other = agent
        .dct(&[
            "key",
            "generate",
            "--role",
            "targets",
            "--gun",
            &repo,
            "--token",
            "sign-token",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();

    let ca = tempfile::tempdir().unwrap();
    let d = ca.path();
    let csr = agent
        .dct(&[
            "notation",
            "cert",
            "request",
            &key,
            "--cn",
            "Corp release key",
        ])
        .ok()
        .stdout;
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{csr}"
    );
    std::fs::write(d.join("key.csr"), &csr).unwrap();
    std::fs::write(
        d.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\n[dn]\n\
         [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = codeSigning\n",
    )
    .unwrap();
    // The request's signature (made on the token) checks.
    notary::openssl(d, &["req", "-verify", "-in", "key.csr", "-noout"]);
    notary::openssl(
        d,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "ca.key",
        ],
    );
    notary::openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=Corp CA",
            "-days",
            "30",
            "-config",
            "ca.cnf",
            "-extensions",
            "ca",
            "-out",
            "ca.crt",
        ],
    );
    notary::openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "key.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "10",
            "-extfile",
            "ca.cnf",
            "-extensions",
            "leaf",
            "-out",
            "leaf.crt",
        ],
    );
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(d.join("leaf.crt")).unwrap(),
        std::fs::read_to_string(d.join("ca.crt")).unwrap()
    );
    std::fs::write(d.join("chain.pem"), &chain).unwrap();
    let chain_path = d.join("chain.pem");
    let chain_path = chain_path.to_str().unwrap();

    // The chain is for `key`, not for `other`.
    agent
        .dct(&["notation", "cert", "import", &other, chain_path])
        .fails(1, "is not for key");
    let imported = agent
        .dct(&["--json", "notation", "cert", "import", &key, chain_path])
        .json();
    assert_eq!(imported["subject"], "CN=Corp release key");
    assert!(audit(&agent).contains("import_cert"));

    let (_home, n) = notation_for(&agent, pki.path());
    agent
        .dct_env(
            &["notation", "install"],
            &[("XDG_CONFIG_HOME", n.config.to_str().unwrap())],
        )
        .ok();
    n.ok(&[
        "sign", "--plugin", "dct", "--id", &key, "--expiry", "1h", &image,
    ]);
    // The verifier trusts the company CA, as its administrators would set it up.
    n.ok(&[
        "cert",
        "add",
        "--type",
        "ca",
        "--store",
        "corp",
        d.join("ca.crt").to_str().unwrap(),
    ]);
    let policy = serde_json::json!({
        "version": "1.0",
        "trustPolicies": [{
            "name": "corp",
            "registryScopes": [repo],
            "signatureVerification": {"level": "strict"},
            "trustStores": ["ca:corp"],
            "trustedIdentities": ["*"],
        }],
    });
    std::fs::write(n.dir().join("trustpolicy.json"), policy.to_string()).unwrap();
    let verified = n.ok(&["verify", &image]);
    assert!(verified.contains("Successfully verified"), "{verified}");
    let inspect = n.ok(&["inspect", "--output", "json", &image]);
    assert!(inspect.contains("CN=Corp CA"), "{inspect}");
}

/// The signing CA made in a ceremony on its own (offline) agent, its transcript in the
/// ceremony directory; a request made on another agent's token travels to it and the
/// chain travels back.
#[test]
fn notation_offline_ca_ceremony_signs_requests_from_another_agent() {
    let ca_hsm = SoftHsm::new("offline-ca", "1234");
    let offline = Agent::start(Some(&ca_hsm));
    offline.unlock(&ca_hsm);
    let (hsm, online) = Agent::on_fresh_token("online", "5678");
    let _ = &hsm;
    let pki = notary::pki();
    let registry = Registry::start_with_pki(pki.path());
    let repo = format!("{}/rel", registry.host);
    let image = format!("{repo}@sha256:{}", sha(&registry.push("rel", "v1", "rel")));

    let ceremony = tempfile::tempdir().unwrap();
    let d = ceremony.path();
    let ca = offline
        .dct(&[
            "--json",
            "notation",
            "ca",
            "init",
            "--name",
            "CN=Offline CA,O=Example,ST=WA,C=US",
            "--dir",
            d.to_str().unwrap(),
            "--operator",
            "alice",
        ])
        .json();
    let ca_key = ca["key"]["key_id"].as_str().unwrap().to_string();
    let md = std::fs::read_to_string(d.join("transcript.md")).unwrap();
    assert!(
        md.starts_with("# Notation signing CA ceremony transcript"),
        "{md}"
    );
    assert!(md.contains("alice") && md.contains(&ca_key), "{md}");
    let steps: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("transcript.json")).unwrap()).unwrap();
    let pem = std::fs::read(d.join("notation-ca.pem")).unwrap();
    assert_eq!(steps[0]["files"]["notation-ca.pem"], sha(&pem));

    let key = online
        .dct(&["key", "generate", "--role", "targets", "--gun", &repo])
        .ok()
        .stdout
        .trim()
        .to_string();
    let csr = online
        .dct(&[
            "notation",
            "cert",
            "request",
            &key,
            "--subject",
            "CN=Online release,O=Example,ST=WA,C=US",
        ])
        .ok()
        .stdout;
    std::fs::write(d.join("key.csr"), &csr).unwrap();
    // A request changed on the way is refused: its signature, made on the token, fails.
    let der = {
        use base64::Engine;
        let b64: String = csr.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    let at = der
        .windows(14)
        .position(|w| w == b"Online release")
        .unwrap();
    let mut forged = der.clone();
    forged[at + 5] = b'f';
    std::fs::write(d.join("forged.der"), &forged).unwrap();
    offline
        .dct(&[
            "notation",
            "cert",
            "sign",
            d.join("forged.der").to_str().unwrap(),
            "--ca",
            &ca_key,
        ])
        .fails(1, "does not verify");

    let chain = offline
        .dct(&[
            "notation",
            "cert",
            "sign",
            d.join("key.csr").to_str().unwrap(),
            "--ca",
            &ca_key,
            "--days",
            "30",
        ])
        .ok()
        .stdout;
    assert!(
        audit(&offline).contains("Online release"),
        "the CA's signature is audited"
    );
    std::fs::write(d.join("chain.pem"), &chain).unwrap();
    online
        .dct(&[
            "notation",
            "cert",
            "import",
            &key,
            d.join("chain.pem").to_str().unwrap(),
        ])
        .ok();

    let (_home, n) = notation_for(&online, pki.path());
    online
        .dct_env(
            &["notation", "install"],
            &[("XDG_CONFIG_HOME", n.config.to_str().unwrap())],
        )
        .ok();
    n.ok(&[
        "sign", "--plugin", "dct", "--id", &key, "--expiry", "1h", &image,
    ]);
    n.ok(&[
        "cert",
        "add",
        "--type",
        "ca",
        "--store",
        "offline",
        d.join("notation-ca.pem").to_str().unwrap(),
    ]);
    let policy = serde_json::json!({
        "version": "1.0",
        "trustPolicies": [{
            "name": "offline",
            "registryScopes": [repo],
            "signatureVerification": {"level": "strict"},
            "trustStores": ["ca:offline"],
            "trustedIdentities": ["x509.subject: C=US, ST=WA, O=Example, CN=Online release"],
        }],
    });
    std::fs::write(n.dir().join("trustpolicy.json"), policy.to_string()).unwrap();
    let verified = n.ok(&["verify", &image]);
    assert!(verified.contains("Successfully verified"), "{verified}");
}

/// A key whose policy asks for confirmation: the agent's own confirmation program is shown
/// what the Notation payload says (artifact, media type, size, expiry), and the audit
/// record says who approved (a no is tests/tests/confirm.rs's).
#[test]
fn notation_confirmation_shows_the_artifact() {
    let hsm = SoftHsm::new("confirm", "2468");
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("pinentry.jsonl");
    let config = format!(
        "{}\n[[policy]]\nrole = \"targets\"\nconfirm = true\n\n\
         [confirm]\nprogram = {:?}\nargs = [\"--answer\", \"yes\", \"--record\", {:?}]\n",
        hsm.agent_config(),
        dct_tests::bin("test-pinentry").display().to_string(),
        record.display().to_string(),
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    let pki = notary::pki();
    let registry = Registry::start_with_pki(pki.path());
    let repo = format!("{}/ok", registry.host);
    let manifest = registry.push("ok", "v1", "ok");
    let digest = format!("sha256:{}", sha(&manifest));
    let image = format!("{repo}@{digest}");
    let ca_key = agent
        .dct(&["--json", "notation", "ca", "init", "--name", "CA"])
        .json()["key"]["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = agent
        .dct(&["key", "generate", "--role", "targets", "--gun", &repo])
        .ok()
        .stdout
        .trim()
        .to_string();
    agent
        .dct(&["notation", "cert", "issue", &key, "--ca", &ca_key])
        .ok();
    let (_home, n) = notation_for(&agent, pki.path());
    agent
        .dct_env(
            &["notation", "install"],
            &[("XDG_CONFIG_HOME", n.config.to_str().unwrap())],
        )
        .ok();
    n.ok(&[
        "sign", "--plugin", "dct", "--id", &key, "--expiry", "2h", &image,
    ]);
    let shown: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["cmd"] == "SETDESC")
        .map(|r| r["arg"].as_str().unwrap().to_string())
        .collect();
    let all = shown.join("\n");
    assert!(all.contains(&format!("Artifact: {digest}")), "{all}");
    assert!(
        all.contains("Media type: application/vnd.oci.image.manifest.v1+json"),
        "{all}"
    );
    assert!(
        all.contains(&format!("Size: {} bytes", manifest.len())),
        "{all}"
    );
    assert!(all.contains("Envelope: JWS"), "{all}");
    assert!(all.contains("Expires: "), "{all}");
    assert!(
        audit(&agent).contains("ok, confirmed by"),
        "{}",
        audit(&agent)
    );
}
