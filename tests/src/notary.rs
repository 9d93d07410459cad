//! The real notary stack for tests: notary-signer and notary-server (Debian `notary`,
//! memory storage) on random 127.0.0.1 ports with TLS from a test CA made here, and the
//! real notary client pointed at it. Stopped by PID on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct NotaryStack {
    pub dir: TempDir,
    pub url: String,
    pub ca: PathBuf,
    pub port: u16,
    /// The real notary-signer's port, when the stack runs it.
    pub signer_port: Option<u16>,
    signer: Option<Child>,
    server: Option<Child>,
}

/// Where notary-server's signer is.
pub enum SignerAt {
    /// The real notary-signer, started with the stack.
    Real,
    /// Something already serving notary-signer's API on this 127.0.0.1 port with the
    /// stack's certificates (the agent's `[notary_signer]`).
    External(u16),
}

/// A test CA and one leaf certificate (IP:127.0.0.1, server and client auth) in a fresh
/// directory: `ca.crt`, `leaf.crt`, `leaf.key`.
pub fn pki() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    dir
}

/// A 127.0.0.1 port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `openssl ARGS` in `dir`; panics with its error output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "{what} exited with {st}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl NotaryStack {
    /// notary-server with TLS (what docker requires).
    pub fn start() -> NotaryStack {
        Self::start_with(true)
    }

    /// notary-server over plain HTTP (the signer link keeps its TLS).
    pub fn start_plain_http() -> NotaryStack {
        Self::start_with(false)
    }

    fn start_with(tls: bool) -> NotaryStack {
        Self::start_on(pki(), tls, SignerAt::Real)
    }

    /// notary-server (TLS) on the certificates in `dir` (from [`pki`]), its signer `signer`.
    pub fn start_on(dir: TempDir, tls: bool, signer: SignerAt) -> NotaryStack {
        Self::start_logging(dir, tls, signer, "info")
    }

    /// As [`NotaryStack::start_on`], the servers logging at `level` (the benchmark: "error").
    pub fn start_logging(dir: TempDir, tls: bool, signer: SignerAt, level: &str) -> NotaryStack {
        let d = dir.path();
        let real_signer = matches!(signer, SignerAt::Real);
        let (sp, hp) = match signer {
            SignerAt::Real => (free_port(), free_port()),
            SignerAt::External(port) => (port, free_port()),
        };
        let p = |f: &str| d.join(f).display().to_string();
        let signer_cfg = serde_json::json!({
            "server": {"grpc_addr": format!("127.0.0.1:{sp}"), "tls_cert_file": p("leaf.crt"),
                       "tls_key_file": p("leaf.key"), "client_ca_file": p("ca.crt")},
            "logging": {"level": level}, "storage": {"backend": "memory"}});
        let server_cfg = serde_json::json!({
            "server": {"http_addr": format!("127.0.0.1:{hp}"), "tls_cert_file": p("leaf.crt"), "tls_key_file": p("leaf.key")},
            "trust_service": {"type": "remote", "hostname": "127.0.0.1", "port": sp.to_string(), "key_algorithm": "ecdsa",
                              "tls_ca_file": p("ca.crt"), "tls_client_cert": p("leaf.crt"), "tls_client_key": p("leaf.key")},
            "storage": {"backend": "memory"}, "logging": {"level": level}});
        let mut server_cfg = server_cfg;
        if !tls {
            let srv = server_cfg["server"].as_object_mut().unwrap();
            srv.remove("tls_cert_file");
            srv.remove("tls_key_file");
        }
        std::fs::write(d.join("signer.json"), signer_cfg.to_string()).unwrap();
        std::fs::write(d.join("server.json"), server_cfg.to_string()).unwrap();
        let spawn = |bin: &str, cfg: &str, log: &str| {
            let log = std::fs::File::create(d.join(log)).unwrap();
            Command::new(bin)
                .arg("-config")
                .arg(d.join(cfg))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("{bin}: {e} (install Debian's notary: softhsm/install-deps.sh)")
                })
        };
        let signer = match signer {
            SignerAt::Real => {
                let mut child = spawn("notary-signer", "signer.json", "signer.log");
                wait_port(sp, &mut child, "notary-signer", &d.join("signer.log"));
                Some(child)
            }
            SignerAt::External(_) => None,
        };
        let mut server = spawn("notary-server", "server.json", "server.log");
        wait_port(hp, &mut server, "notary-server", &d.join("server.log"));
        NotaryStack {
            url: format!("{}://127.0.0.1:{hp}", if tls { "https" } else { "http" }),
            ca: d.join("ca.crt"),
            port: hp,
            dir,
            signer_port: real_signer.then_some(sp),
            signer,
            server: Some(server),
        }
    }

    /// The real notary client with its own trust directory (TOFU per directory), kept
    /// off any smart card.
    pub fn notary(&self, trust_dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut child = Command::new("notary")
            .args([
                "-s",
                &self.url,
                "--tlscacert",
                self.ca.to_str().unwrap(),
                "-d",
                trust_dir.to_str().unwrap(),
            ])
            .args(args)
            .env("PCSCLITE_CSOCK_NAME", "/nonexistent/dct-test")
            // Passphrases for keys the notary client makes in its own trust directory.
            .env("NOTARY_ROOT_PASSPHRASE", "test-root-passphrase")
            .env("NOTARY_TARGETS_PASSPHRASE", "test-targets-passphrase")
            .env("NOTARY_SNAPSHOT_PASSPHRASE", "test-snapshot-passphrase")
            .env("NOTARY_DELEGATION_PASSPHRASE", "test-delegation-passphrase")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("notary client");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or_default()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// The real notary-signer's PID, when the stack runs it.
    pub fn signer_pid(&self) -> Option<u32> {
        self.signer.as_ref().map(Child::id)
    }

    /// Stops both servers by PID.
    pub fn stop(&mut self) {
        for child in [self.server.take(), self.signer.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A P-256 private key (PEM) at `dir/name`.
pub fn p256_key(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            name,
        ],
    );
}

/// `trust --server URL --tlscacert CA ARGS` against the stack.
pub fn trust(agent: &crate::Agent, stack: &NotaryStack, args: &[&str]) -> crate::Run {
    let mut all = vec![
        "trust",
        "--server",
        &stack.url,
        "--tlscacert",
        stack.ca.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    agent.dct(&all)
}

fn make_pki(d: &Path) {
    // A test CA and one leaf (IP:127.0.0.1, server and client auth) for both servers.
    p256_key(d, "ca.key");
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=dct test CA",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "ca.crt",
        ],
    );
    p256_key(d, "leaf.key");
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "leaf.key",
            "-subj",
            "/CN=127.0.0.1",
            "-out",
            "leaf.csr",
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "leaf.crt",
        ],
    );
}

impl Drop for NotaryStack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A SoftHSM2 token, an agent unlocking it from a PIN file and serving notary-signer's API
/// on a free port with the certificates in `pki`.
pub fn signer_agent(pki: &Path, label: &str) -> (crate::SoftHsm, crate::Agent, u16) {
    signer_agent_with(pki, label, "")
}

/// As [`signer_agent`], with `top` (top-level keys) at the head of agent.toml.
pub fn signer_agent_with(
    pki: &Path,
    label: &str,
    top: &str,
) -> (crate::SoftHsm, crate::Agent, u16) {
    let hsm = crate::SoftHsm::new(label, "signer-pin-2468");
    let pin_file = hsm.dir.path().join("pin");
    std::fs::write(&pin_file, format!("{}\n", hsm.pin)).unwrap();
    std::fs::set_permissions(
        &pin_file,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let port = free_port();
    let p = |f: &str| pki.join(f).display().to_string();
    let config = format!(
        "{top}{}pin_file = {:?}\n\n[notary_signer]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = {:?}\ntls_key = {:?}\nclient_ca = {:?}\ntoken = {:?}\n",
        hsm.agent_config(),
        pin_file.display().to_string(),
        p("leaf.crt"),
        p("leaf.key"),
        p("ca.crt"),
        label,
    );
    let agent = crate::Agent::start_with_config(Some(&hsm), &config);
    wait_listening(port, &agent);
    (hsm, agent, port)
}

pub fn wait_listening(port: u16, agent: &crate::Agent) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not listen on {port}: {}",
            agent.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `notary list` from a fresh trust directory: (tag, digest hex, size, role) rows.
pub fn notary_list(
    stack: &NotaryStack,
    gun: &str,
    extra: &[&str],
) -> Vec<(String, String, String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["list", gun];
    args.extend_from_slice(extra);
    let out = stack.notary(dir.path(), &args, None);
    assert!(
        out.status.success(),
        "notary list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[0].into(), f[1].into(), f[2].into(), f[3].into()))
        })
        .collect()
}

/// `docker trust inspect --pretty IMAGE` against the stack (no daemon needed); None
/// where the docker CLI is not installed.
pub fn docker_inspect(stack: &NotaryStack, image: &str) -> Option<String> {
    if !Command::new("docker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("docker CLI not installed: docker trust inspect not checked");
        return None;
    }
    let cfg = tempfile::tempdir().unwrap();
    let tls = cfg
        .path()
        .join("tls")
        .join(format!("127.0.0.1:{}", stack.port));
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::copy(&stack.ca, tls.join("ca.crt")).unwrap();
    let out = Command::new("docker")
        .args(["trust", "inspect", "--pretty", image])
        .env("DOCKER_CONFIG", cfg.path())
        .env("DOCKER_CONTENT_TRUST_SERVER", &stack.url)
        .output()
        .unwrap();
    Some(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}
