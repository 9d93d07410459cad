//! `dct-agent check-config`: every problem of a config at once, without touching a token.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use dct_tests::bin;

fn check(path: &Path) -> (i32, String, String) {
    let out = Command::new(bin("dct-agent"))
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_config_has_no_problems() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/agent.toml.example");
    let (code, stdout, stderr) = check(&example);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("no problems"), "{stdout}");
    // Every key it shows commented out is a real key: uncommented, only the files it
    // names (which do not exist here) are problems, not the keys.
    let text = std::fs::read_to_string(&example).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.toml");
    let uncommented: String = text
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|r| r.contains(" = ") || r.starts_with('['))
                .unwrap_or(l)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&all, uncommented).unwrap();
    let (_, _, stderr) = check(&all);
    assert!(!stderr.contains("unknown key"), "{stderr}");
}

#[test]
fn a_broken_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A module others can change, a PIN file others can read, a TLS key likewise.
    let module = d.join("module.so");
    std::fs::write(&module, b"not really a module").unwrap();
    std::fs::set_permissions(&module, std::fs::Permissions::from_mode(0o666)).unwrap();
    let pin = d.join("token.pin");
    std::fs::write(&pin, "1234\n").unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
request_timeout = "soon"
colour = "blue"
socket_mode = "0666"

[[pkcs11]]
module = {module:?}
token = "a"
pin_file = {pin:?}
idle_ttl = "5 minutes"
modul = "/typo.so"

[[pkcs11]]
module = "relative.so"
token = "b"
sessions = 0

[[pkcs11]]
module = "/nonexistent/libmissing.so"
token = "c"

[notary_signer]
listen = "127.0.0.1:7899"
tls_cert = "/nonexistent/signer.crt"
tls_key = "/nonexistent/signer.key"
client_ca = "/nonexistent/ca.crt"
token = "nope"

[confirm]
program = "/nonexistent/pinentry"
"#,
            module = module.display().to_string(),
            pin = pin.display().to_string(),
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = check(&cfg);
    assert_eq!(code, 1, "{stdout}{stderr}");
    for needle in [
        "unknown key colour",
        "unknown key pkcs11.0.modul",
        "request_timeout: \"soon\"",
        "token \"a\": \"5 minutes\"",
        "socket_mode \"0666\" gives others access",
        "need allowed_uids",
        "PKCS#11 module path \"relative.so\" must be absolute",
        "sessions must be between 1 and 64",
        "[notary_signer] token \"nope\" is not a configured token",
        "can be changed by other users",
        "PIN file",
        "not be readable by others",
        "/nonexistent/libmissing.so",
        "[notary_signer] tls_cert",
        "[notary_signer] tls_key",
        "[notary_signer] client_ca",
        "[confirm] program",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    let problems = stderr
        .lines()
        .filter(|l| l.starts_with(&*cfg.to_string_lossy()))
        .count();
    assert!(
        stderr.contains(&format!("{problems} problems in")),
        "{stderr}"
    );
    // The PIN itself is never printed.
    assert!(!stderr.contains("1234") && !stdout.contains("1234"));
    // The agent refuses to start on it, listing the config's own problems.
    let out = Command::new(bin("dct-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(d.join("run/agent.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown key colour") && err.contains("unknown key pkcs11.0.modul"),
        "{err}"
    );
}

#[test]
fn text_that_is_not_toml_is_one_clear_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[[pkcs11]\nmodule = 1\n").unwrap();
    let (code, _, stderr) = check(&cfg);
    assert_eq!(code, 1);
    assert!(stderr.contains("1 problem in"), "{stderr}");
    let (code, _, stderr) = check(&dir.path().join("missing.toml"));
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read config"), "{stderr}");
}
