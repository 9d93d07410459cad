//! The virtual PIV card (`virtual-piv` in a real pcscd) against independent clients:
//! yubico-piv-tool, Yubico's PKCS#11 module (libykcs11), OpenSC's PKCS#11 module, with
//! openssl checking every signature and certificate. If these pass, the card behaves like
//! a YubiKey as far as those clients can tell.
//!
//! Needs root (pcscd) and `softhsm/install-deps.sh`. Each test starts its own card and
//! pcscd; a machine-wide lock makes them take turns.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dct_tests::piv::{CardOptions, VirtualPiv, OPENSC_MODULE, YKCS11_MODULE};
use dct_tests::piv_card::der;

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"))
}

/// stdout + stderr.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs and asserts success; returns stdout + stderr.
#[track_caller]
fn ok(prog: &str, args: &[&str]) -> String {
    let out = run(prog, args);
    assert!(
        out.status.success(),
        "{prog} {args:?} failed ({}):\n{}",
        out.status,
        text(&out)
    );
    text(&out)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Generates a P-256 key in `slot` with yubico-piv-tool (default management key) and
/// imports a certificate for it that openssl made; returns the public key PEM's path.
fn generate_with_cert(piv: &VirtualPiv, slot: &str, extra: &[&str]) -> PathBuf {
    let dir = piv.dir();
    let public = dir.join(format!("{slot}.pub.pem"));
    let mut args = vec![
        "-a",
        "generate",
        "-s",
        slot,
        "-A",
        "ECCP256",
        "-o",
        p(&public),
    ];
    args.extend_from_slice(extra);
    ok("yubico-piv-tool", &args);
    let (key, ca) = (dir.join("signer.key"), dir.join("signer.crt"));
    if !ca.exists() {
        ok(
            "openssl",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                p(&key),
            ],
        );
        ok(
            "openssl",
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                p(&key),
                "-subj",
                "/CN=test signer",
            ]
            .into_iter()
            .chain(["-days", "2", "-out", p(&ca)])
            .collect::<Vec<_>>(),
        );
    }
    // yubico-piv-tool 2.2's selfsign-certificate fails on OpenSSL 3: openssl issues one.
    let cert = dir.join(format!("{slot}.crt"));
    ok(
        "openssl",
        &[
            "x509",
            "-new",
            "-subj",
            &format!("/CN=piv {slot}"),
            "-force_pubkey",
            p(&public),
            "-CA",
            p(&ca),
            "-CAkey",
            p(&key),
            "-days",
            "2",
            "-out",
            p(&cert),
        ],
    );
    ok(
        "yubico-piv-tool",
        &["-a", "import-certificate", "-s", slot, "-i", p(&cert)],
    );
    public
}

/// The uncompressed EC point of a public key PEM, lower-case hex.
fn point_hex(public: &Path) -> String {
    let out = run(
        "openssl",
        &["pkey", "-pubin", "-in", p(public), "-outform", "DER"],
    );
    assert!(out.status.success(), "{}", text(&out));
    dct_tests::hex(&out.stdout[out.stdout.len() - 65..])
}

/// Signs `data` (its SHA-256, hashed by openssl) through `module` with the PIN and checks
/// the signature with openssl against `public`.
#[track_caller]
fn sign_and_verify(piv: &VirtualPiv, module: &str, public: &Path, tag: &str) {
    let dir = piv.dir();
    let data = dir.join(format!("{tag}.data"));
    std::fs::write(&data, format!("signed through {module} ({tag})\n")).unwrap();
    let digest = dir.join(format!("{tag}.sha256"));
    ok(
        "openssl",
        &["dgst", "-sha256", "-binary", "-out", p(&digest), p(&data)],
    );
    let sig = dir.join(format!("{tag}.sig"));
    ok(
        "pkcs11-tool",
        &[
            "--module",
            module,
            "--login",
            "--pin",
            "123456",
            "--sign",
            "-m",
            "ECDSA",
            "--id",
            "01",
            "-i",
            p(&digest),
            "-o",
            p(&sig),
            "--signature-format",
            "openssl",
        ],
    );
    let verified = ok(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            p(public),
            "-signature",
            p(&sig),
            p(&data),
        ],
    );
    assert!(verified.contains("Verified OK"), "{verified}");
}

#[test]
fn yubico_piv_tool_reads_serial_and_version() {
    let piv = VirtualPiv::start(CardOptions {
        serial: 31415926,
        version: (5, 2, 7),
        ..CardOptions::default()
    });
    let status = ok("yubico-piv-tool", &["-a", "status"]);
    assert!(status.contains("Version:\t5.2.7"), "{status}");
    assert!(status.contains("Serial Number:\t31415926"), "{status}");
    assert!(status.contains("PIN tries left:\t3"), "{status}");
    assert_eq!(piv.serial(), 31415926);
}

#[test]
fn ykcs11_lists_the_token_and_signs() {
    let piv = VirtualPiv::start(CardOptions::default());
    let public = generate_with_cert(&piv, "9a", &[]);
    let slots = ok("pkcs11-tool", &["--module", YKCS11_MODULE, "-L"]);
    assert!(slots.contains("YubiKey PIV #12345678"), "{slots}");
    assert!(slots.contains("serial num         : 12345678"), "{slots}");
    let objects = ok("pkcs11-tool", &["--module", YKCS11_MODULE, "-O"]);
    assert!(objects.contains(&point_hex(&public)), "{objects}");
    assert!(objects.contains("CN=piv 9a"), "{objects}");
    sign_and_verify(&piv, YKCS11_MODULE, &public, "ykcs11");
    // A wrong PIN does not log in.
    let out = run(
        "pkcs11-tool",
        &[
            "--module",
            YKCS11_MODULE,
            "--login",
            "--pin",
            "654321",
            "-O",
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("CKR_PIN_INCORRECT"), "{}", text(&out));
}

#[test]
fn opensc_lists_the_key_and_signs() {
    let piv = VirtualPiv::start(CardOptions::default());
    let public = generate_with_cert(&piv, "9a", &[]);
    let objects = ok("pkcs11-tool", &["--module", OPENSC_MODULE, "-O"]);
    assert!(
        objects.contains("Certificate for PIV Authentication"),
        "{objects}"
    );
    assert!(objects.contains(&point_hex(&public)), "{objects}");
    sign_and_verify(&piv, OPENSC_MODULE, &public, "opensc");
}

#[test]
fn attestation_chains_to_the_card_ca() {
    let piv = VirtualPiv::start(CardOptions {
        serial: 20240601,
        ..CardOptions::default()
    });
    let dir = piv.dir();
    let public = dir.join("9a.pub.pem");
    ok(
        "yubico-piv-tool",
        &[
            "-a",
            "generate",
            "-s",
            "9a",
            "-A",
            "ECCP256",
            "-o",
            p(&public),
        ],
    );
    let attest = dir.join("attest.pem");
    let f9 = dir.join("f9.pem");
    ok(
        "yubico-piv-tool",
        &["-a", "attest", "-s", "9a", "-o", p(&attest)],
    );
    ok(
        "yubico-piv-tool",
        &["-a", "read-certificate", "-s", "f9", "-o", p(&f9)],
    );
    let ca = piv.attestation_ca_pem();
    let verified = ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            p(&ca),
            "-untrusted",
            p(&f9),
            p(&attest),
        ],
    );
    assert!(verified.contains(": OK"), "{verified}");
    // The attested key is the slot's.
    let attested = ok("openssl", &["x509", "-in", p(&attest), "-noout", "-pubkey"]);
    assert_eq!(attested, std::fs::read_to_string(&public).unwrap());
    let subject = ok(
        "openssl",
        &["x509", "-in", p(&attest), "-noout", "-subject"],
    );
    assert!(subject.contains("YubiKey PIV Attestation 9a"), "{subject}");
    // Yubico's extensions: firmware 5.4.3 and the serial.
    let out = run("openssl", &["x509", "-in", p(&attest), "-outform", "DER"]);
    let cert = out.stdout;
    let has = |ext: Vec<u8>| cert.windows(ext.len()).any(|w| w == ext.as_slice());
    assert!(has(der::extension(
        "1.3.6.1.4.1.41482.3.3",
        false,
        &[5, 4, 3]
    )));
    let serial = der::uint(&20240601u32.to_be_bytes());
    assert!(has(der::extension("1.3.6.1.4.1.41482.3.7", false, &serial)));
    // A key imported into the card has no attestation.
    let key = dir.join("imported.key");
    ok(
        "openssl",
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            p(&key),
        ],
    );
    ok(
        "yubico-piv-tool",
        &["-a", "import-key", "-s", "9d", "-i", p(&key)],
    );
    let out = run("yubico-piv-tool", &["-a", "attest", "-s", "9d"]);
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn pin_counter_counts_down_and_blocks() {
    let _piv = VirtualPiv::start(CardOptions::default());
    let wrong = |expect: &str| {
        let out = run("yubico-piv-tool", &["-a", "verify-pin", "-P", "000000"]);
        assert!(!out.status.success());
        assert!(text(&out).contains(expect), "{}", text(&out));
    };
    wrong("2 tries left");
    wrong("1 tries left");
    wrong("blocked");
    // Blocked: even the right PIN is refused now.
    let out = run("yubico-piv-tool", &["-a", "verify-pin", "-P", "123456"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("blocked"), "{}", text(&out));
    let status = ok("yubico-piv-tool", &["-a", "status"]);
    assert!(status.contains("PIN tries left:\t0"), "{status}");
    // The PUK unblocks it.
    ok(
        "yubico-piv-tool",
        &["-a", "unblock-pin", "-P", "12345678", "-N", "112233"],
    );
    ok("yubico-piv-tool", &["-a", "verify-pin", "-P", "112233"]);
}

#[test]
fn removed_card_is_gone_and_comes_back_with_its_key() {
    let mut piv = VirtualPiv::start(CardOptions::default());
    let public = generate_with_cert(&piv, "9a", &[]);
    piv.remove();
    let out = run("yubico-piv-tool", &["-a", "status"]);
    assert!(!out.status.success(), "status with no card: {}", text(&out));
    piv.reinsert();
    let status = ok("yubico-piv-tool", &["-a", "status"]);
    assert!(status.contains("Serial Number:\t12345678"), "{status}");
    assert!(status.contains("Subject DN:\tCN=piv 9a"), "{status}");
    // The same key signs after re-insertion.
    sign_and_verify(&piv, YKCS11_MODULE, &public, "after-reinsert");
}

#[test]
fn touch_policy_delays_signatures() {
    let piv = VirtualPiv::start(CardOptions {
        touch_delay: Duration::from_millis(600),
        ..CardOptions::default()
    });
    let public = generate_with_cert(&piv, "9a", &["--touch-policy=always"]);
    let t = Instant::now();
    sign_and_verify(&piv, YKCS11_MODULE, &public, "touch");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
}
