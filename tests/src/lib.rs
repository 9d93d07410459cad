//! Shared harness for the end-to-end tests: a fresh SoftHSM2 token per test (its own
//! `SOFTHSM2_CONF` and token directory), the real `dct-agent` daemon and `dct` CLI.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod dockerd;
pub mod faulty;
pub mod gotools;
pub mod mutate;
pub mod netdelay;
pub mod notary;
pub mod piv;
pub mod piv_card;
pub mod registry;
pub mod replay;
pub mod signer_client;

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An RFC 3339 expiry `days` from now (documents must stay within the agent's default
/// lifetimes: timestamp 14 days, targets and snapshot 3 years, root 10).
/// The agent's key of `role` (for any role but root, of `gun`): its ID and its public key
/// as a PEM SubjectPublicKeyInfo (what `cosign verify --key` reads).
pub fn key_pem(agent: &Agent, gun: &str, role: &str) -> (String, String) {
    use base64::Engine as _;
    let keys = agent.dct(&["--json", "key", "list"]).json()["keys"].clone();
    let k = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == role && (role == "root" || k["gun"] == gun))
        .unwrap_or_else(|| panic!("no {role} key for {gun}: {keys}"))
        .clone();
    let b64 = base64::engine::general_purpose::STANDARD;
    let der = b64
        .decode(k["tuf_key"]["keyval"]["public"].as_str().unwrap())
        .unwrap();
    let body = b64.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    (
        k["key_id"].as_str().unwrap().to_string(),
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        ),
    )
}

/// Copies the program `from` to `to` (mode 0755) with install(1), never through a file
/// this process has open for writing: a test thread forking meanwhile would inherit that
/// descriptor, and executing `to` would fail with "Text file busy" (ETXTBSY).
pub fn install_program(from: &Path, to: &Path) {
    let out = Command::new("install")
        .args(["-m", "0755"])
        .arg(from)
        .arg(to)
        .output()
        .expect("install");
    assert!(out.status.success(), "install {}: {out:?}", to.display());
}

pub fn expires_in(days: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A path under `tests/fixtures/`.
pub fn fixture_dir(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// A workspace binary (`dct`, `dct-agent`), built by `cargo build --workspace` beside the
/// test executable (target/<profile>/deps/..).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from target/<profile>/deps, the demo from target/<profile>.
    let here = exe.parent().expect("exe dir");
    for dir in [here, here.parent().unwrap_or(here)] {
        let p = dir.join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} is missing beside {}: run `cargo build --workspace --bins` first",
        here.display()
    )
}

/// A SoftHSM2 token in its own directory.
pub struct SoftHsm {
    pub dir: TempDir,
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
}

impl SoftHsm {
    pub fn new(label: &str, pin: &str) -> SoftHsm {
        assert!(
            Path::new(SOFTHSM_MODULE).exists(),
            "SoftHSM2 is not installed ({SOFTHSM_MODULE}); see README"
        );
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                "so-secret-9876",
            ])
            .output()
            .expect("softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SoftHsm {
            dir,
            conf,
            label: label.into(),
            pin: pin.into(),
        }
    }

    /// Initialises another token `label` (same PIN) beside the first in this token
    /// directory; returns the directory SoftHSM2 made for it.
    pub fn add_token(&self, label: &str) -> PathBuf {
        let tokens = self.dir.path().join("tokens");
        let before: Vec<PathBuf> = std::fs::read_dir(&tokens)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                &self.pin,
            ])
            .args(["--so-pin", "so-secret-9876"])
            .output()
            .expect("softhsm2-util");
        assert!(out.status.success(), "softhsm2-util: {out:?}");
        std::fs::read_dir(&tokens)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| !before.contains(p))
            .expect("the new token's directory")
    }

    /// The directory of this SoftHSM2's first token.
    pub fn token_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("tokens"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort_by_key(|d| std::fs::metadata(d).and_then(|m| m.created()).ok());
        dirs.remove(0)
    }

    /// A SoftHSM2 of its own holding a copy of the token in `token_dir` (a token carried to
    /// another machine).
    pub fn carry(token_dir: &Path, label: &str, pin: &str) -> SoftHsm {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let dest = tokens.join(token_dir.file_name().unwrap());
        std::fs::create_dir(&dest).unwrap();
        for f in std::fs::read_dir(token_dir).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dest.join(f.file_name().unwrap())).unwrap();
        }
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        SoftHsm {
            dir,
            conf,
            label: label.into(),
            pin: pin.into(),
        }
    }

    /// ORs `flag` into the token flags SoftHSM2 keeps in its token file (its attribute
    /// CKA_OS_TOKENFLAGS). SoftHSM2 itself only ever sets "PIN count low"; this lets a test
    /// see how the agent meets a token that reports a final try. No agent may be running.
    pub fn add_token_flag(&self, flag: u64) {
        let tokens = self.dir.path().join("tokens");
        let dir = std::fs::read_dir(&tokens)
            .unwrap()
            .next()
            .expect("a token directory")
            .unwrap()
            .path();
        let path = dir.join("token.object");
        let mut bytes = std::fs::read(&path).unwrap();
        // [type u64 BE = 0x8000534B][kind u64 BE = 2 (unsigned long)][value u64 BE]
        let marker = [0u8, 0, 0, 0, 0x80, 0, 0x53, 0x4b, 0, 0, 0, 0, 0, 0, 0, 2];
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker)
            .expect("token flags attribute")
            + marker.len();
        let mut value = [0u8; 8];
        value.copy_from_slice(&bytes[at..at + 8]);
        let flags = u64::from_be_bytes(value) | flag;
        bytes[at..at + 8].copy_from_slice(&flags.to_be_bytes());
        std::fs::write(&path, bytes).unwrap();
    }

    pub fn agent_config(&self) -> String {
        format!(
            "[[pkcs11]]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken = \"{}\"\n",
            self.label
        )
    }
}

/// A running `dct-agent`, stopped by PID on drop.
pub struct Agent {
    child: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Print each `dct` command and its output (for the demo).
    pub echo: bool,
    softhsm_conf: Option<PathBuf>,
    /// Started by `systemd-socket-activate` on the first connection (the LISTEN_FDS
    /// protocol) instead of binding its own socket.
    socket_activated: bool,
}

impl Agent {
    /// A fresh SoftHSM2 token and an agent serving it, unlocked.
    pub fn on_fresh_token(label: &str, pin: &str) -> (SoftHsm, Agent) {
        let hsm = SoftHsm::new(label, pin);
        let agent = Agent::start(Some(&hsm));
        agent.unlock(&hsm);
        (hsm, agent)
    }

    /// Starts an agent serving `hsm`'s token (or no token at all).
    pub fn start(hsm: Option<&SoftHsm>) -> Agent {
        Self::start_with_config(hsm, &hsm.map(SoftHsm::agent_config).unwrap_or_default())
    }

    pub fn start_with_config(hsm: Option<&SoftHsm>, config: &str) -> Agent {
        Self::start_as(hsm, config, false)
    }

    /// As [`Agent::start_with_config`], but through `systemd-socket-activate` (Debian
    /// `systemd`): it listens on the socket, and the agent starts, with that socket passed,
    /// on the first connection. `run/` is made 0700 first, as systemd's DirectoryMode would.
    pub fn start_socket_activated(hsm: Option<&SoftHsm>, config: &str) -> Agent {
        Self::start_as(hsm, config, true)
    }

    fn start_as(hsm: Option<&SoftHsm>, config: &str, socket_activated: bool) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agent.toml");
        // Each agent keeps its own TOFU cache.
        let trust_dir = dir.path().join("trust");
        std::fs::write(
            &cfg,
            format!(
                "trust_dir = {:?}\n{}{config}",
                trust_dir.display().to_string(),
                // Each agent its own audit log, unless the test names one.
                if config.contains("audit_log") {
                    String::new()
                } else {
                    format!(
                        "audit_log = {:?}\n",
                        dir.path().join("audit.log").display().to_string()
                    )
                }
            ),
        )
        .unwrap();
        let socket = dir.path().join("run").join("agent.sock");
        let mut agent = Agent {
            child: None,
            log: dir.path().join("agent.log"),
            dir,
            socket,
            echo: false,
            softhsm_conf: hsm.map(|h| h.conf.clone()),
            socket_activated,
        };
        agent.spawn(&cfg);
        agent
    }

    fn spawn(&mut self, cfg: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = if self.socket_activated {
            let run = self.socket.parent().expect("socket dir");
            std::fs::create_dir_all(run).unwrap();
            std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o700)).unwrap();
            // It passes no environment but what -E names.
            let mut c = Command::new("systemd-socket-activate");
            c.arg("-l").arg(&self.socket);
            for var in ["HOME", "PATH", "NO_COLOR=1", "DCT_LOG=info"] {
                c.arg("-E").arg(var);
            }
            if let Some(conf) = &self.softhsm_conf {
                c.arg("-E").arg(format!("SOFTHSM2_CONF={}", conf.display()));
            }
            c.arg(bin("dct-agent")).arg("--config").arg(cfg);
            c
        } else {
            let mut c = Command::new(bin("dct-agent"));
            c.arg("--config").arg(cfg).arg("--socket").arg(&self.socket);
            c
        };
        cmd.env_remove("DCT_SOCKET")
            .env("NO_COLOR", "1")
            .env("DCT_LOG", "info");
        if let Some(c) = &self.softhsm_conf {
            cmd.env("SOFTHSM2_CONF", c);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dct-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("dct-agent exited with {st}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "dct-agent did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops and starts the agent again on the same config and socket.
    pub fn restart(&mut self) {
        self.stop();
        let cfg = self.dir.path().join("agent.toml");
        self.spawn(&cfg);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The agent's audit log (when the test did not name another).
    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM by PID and wait; returns whether it exited on its own with success.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `dct` against this agent.
    pub fn dct(&self, args: &[&str]) -> Run {
        self.dct_env(args, &[])
    }

    pub fn dct_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(bin("dct"));
        cmd.args(args)
            .env("DCT_SOCKET", &self.socket)
            .env_remove("DCT_PIN")
            .env_remove("DCT_AGENT_UID")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let run = Run(cmd.output().expect("run dct"));
        if self.echo && args.first() != Some(&"--json") {
            println!("$ dct {}", args.join(" "));
            print!("{}", run.stdout());
            eprint!("{}", run.stderr());
        }
        run
    }

    /// Runs `dct` against this agent as `user` (root only): a copy of the binary in this
    /// agent's directory, which becomes passable (0711; nothing in it is listed) so that the
    /// user can reach it and the socket's directory. `HOME` is `home`.
    pub fn dct_as(
        &self,
        user: &OtherUser,
        home: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        use std::os::unix::fs::PermissionsExt;
        let bin_dir = self.dir.path().join("bin");
        let dct = bin_dir.join("dct");
        if !dct.exists() {
            std::fs::create_dir_all(&bin_dir).unwrap();
            install_program(&bin("dct"), &dct);
            std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(&dct, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--init-groups")
            .arg(&dct)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home)
            .env("DCT_SOCKET", &self.socket)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run(cmd.output().expect("setpriv dct"))
    }

    /// `dct tuf sign PATH --key KEY EXTRA...`.
    pub fn tuf_sign(&self, path: &Path, key: &str, extra: &[&str]) -> Run {
        let path = path.to_string_lossy();
        let mut args = vec!["tuf", "sign", &path, "--key", key];
        args.extend_from_slice(extra);
        self.dct(&args)
    }

    /// `dct unlock` with the token's PIN from a file.
    pub fn unlock(&self, hsm: &SoftHsm) {
        let pin = self.dir.path().join("pin");
        std::fs::write(&pin, format!("{}\n", hsm.pin)).unwrap();
        self.dct(&["unlock", "--pin-file", pin.to_str().unwrap()])
            .ok();
    }

    /// `dct unlock --token TOKEN` with `pin` from a file, plus `extra` flags (e.g. --force).
    pub fn unlock_token(&self, token: &str, pin: &str, extra: &[&str]) -> Run {
        let file = self.dir.path().join("pin");
        std::fs::write(&file, format!("{pin}\n")).unwrap();
        let mut args = vec![
            "unlock",
            "--token",
            token,
            "--pin-file",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.dct(&args)
    }

    /// `dct key generate`; returns the key ID it prints.
    pub fn generate(&self, role: &str, gun: Option<&str>) -> String {
        let mut args = vec!["key", "generate", "--role", role];
        if let Some(g) = gun {
            args.extend(["--gun", g]);
        }
        self.dct(&args).ok().stdout.trim().to_string()
    }
}

/// A local user other than the test's (for tests that run as root).
pub struct OtherUser {
    pub name: String,
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
}

/// One `useradd` / `groupadd` / `usermod` at a time in this process (they lock /etc/passwd
/// and /etc/group; another process holding the lock is waited out by retrying).
static ACCOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn account_tool(tool: &str, args: &[&str], done: impl Fn() -> bool) {
    for _ in 0..50 {
        if done() {
            return;
        }
        let out = Command::new(tool).args(args).output().expect(tool);
        if out.status.success() && done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(done(), "{tool} {args:?} did not take effect");
}

/// The gid of system group `name`, made if missing (root only; idempotent).
pub fn system_group(name: &str) -> u32 {
    let _lock = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let gid = || {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    };
    account_tool("groupadd", &["--system", name], || gid().is_some());
    gid().expect("group made")
}

/// System user `name` (no home directory, no login shell) and a member of `groups`, made
/// if missing (root only; idempotent).
pub fn system_user(name: &str, groups: &[&str]) -> OtherUser {
    let _lock = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let user = || nix::unistd::User::from_name(name).ok().flatten();
    account_tool(
        "useradd",
        &[
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        || user().is_some(),
    );
    for g in groups {
        let member = || {
            nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .is_some_and(|gr| gr.mem.iter().any(|m| m == name))
        };
        account_tool("usermod", &["--append", "--groups", g, name], member);
    }
    let u = user().expect("user made");
    OtherUser {
        name: name.into(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The outcome of one `dct` run.
pub struct Run(pub Output);

pub struct Ok_ {
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts success and returns the output.
    #[track_caller]
    pub fn ok(&self) -> Ok_ {
        assert_eq!(
            self.code(),
            0,
            "dct failed:\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        Ok_ {
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
    /// Asserts exit code `code` and that stderr contains `needle`.
    #[track_caller]
    pub fn fails(&self, code: i32, needle: &str) -> String {
        let err = self.stderr();
        assert_eq!(
            self.code(),
            code,
            "expected exit {code}:\nstdout: {}\nstderr: {err}",
            self.stdout()
        );
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
        err
    }
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        assert_eq!(
            self.code(),
            0,
            "dct failed:\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
}

pub mod repo {
    //! A whole Notary repository made with keys on a token through `dct`: the shape
    //! `notary init` + `notary publish` produce, with a `targets/releases` delegation.

    use std::path::Path;

    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};

    use super::Agent;

    /// Key IDs of the repository's keys.
    pub struct RepoKeys {
        pub root: String,
        pub targets: String,
        pub snapshot: String,
        pub timestamp: String,
        pub releases: String,
    }

    /// `{"hashes": {"sha256": ...}, "length": N}` of `bytes`.
    pub fn meta(bytes: &[u8]) -> Value {
        json!({"hashes": {"sha256": B64.encode(Sha256::digest(bytes))}, "length": bytes.len()})
    }

    /// Key list as JSON objects.
    pub fn keys(agent: &Agent) -> Vec<Value> {
        agent.dct(&["--json", "key", "list"]).json()["keys"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The key listed under `id`.
    pub fn key<'a>(keys: &'a [Value], id: &str) -> &'a Value {
        keys.iter()
            .find(|k| k["key_id"] == id)
            .unwrap_or_else(|| panic!("no key {id} in {keys:?}"))
    }

    /// `dct tuf sign FILE --key KEY EXTRA...`, in place, which must succeed.
    pub fn sign(agent: &Agent, path: &Path, key: &str, extra: &[&str]) {
        agent.tuf_sign(path, key, extra).ok();
    }

    /// Generates the five keys on the agent's (unlocked) token and writes a signed
    /// repository for `gun` into `dir`: `v1` in targets, `v2` in targets/releases.
    pub fn build(agent: &Agent, dir: &Path, gun: &str, files: (&[u8], &[u8])) -> RepoKeys {
        let k = RepoKeys {
            root: agent.generate("root", Some(gun)),
            targets: agent.generate("targets", Some(gun)),
            snapshot: agent.generate("snapshot", Some(gun)),
            timestamp: agent.generate("timestamp", Some(gun)),
            releases: agent.generate("targets/releases", Some(gun)),
        };
        let all = keys(agent);
        let obj = |id: &str| key(&all, id)["tuf_key"].clone();
        std::fs::create_dir_all(dir.join("targets")).unwrap();
        let far = crate::expires_in(365);
        let soon = crate::expires_in(7);
        let write = |name: &str, signed: Value| {
            let p = dir.join(name);
            std::fs::write(
                &p,
                serde_json::to_vec(&json!({"signed": signed, "signatures": []})).unwrap(),
            )
            .unwrap();
            p
        };
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let p = write(
            "root.json",
            json!({
                "_type": "Root", "consistent_snapshot": false, "expires": far, "version": 1,
                "keys": {&k.root: obj(&k.root), &k.targets: obj(&k.targets),
                         &k.snapshot: obj(&k.snapshot), &k.timestamp: obj(&k.timestamp)},
                "roles": {
                    "root": {"keyids": [&k.root], "threshold": 1},
                    "targets": {"keyids": [&k.targets], "threshold": 1},
                    "snapshot": {"keyids": [&k.snapshot], "threshold": 1},
                    "timestamp": {"keyids": [&k.timestamp], "threshold": 1},
                },
            }),
        );
        sign(agent, &p, &k.root, &["--gun", gun]);
        let p = write(
            "targets.json",
            json!({
                "_type": "Targets", "expires": far, "version": 1, "targets": {"v1": meta(files.0)},
                "delegations": {"keys": {&k.releases: obj(&k.releases)}, "roles": [
                    {"name": "targets/releases", "keyids": [&k.releases], "threshold": 1, "paths": [""]}]},
            }),
        );
        sign(agent, &p, &k.targets, &["--gun", gun]);
        let p = write(
            "targets/releases.json",
            json!({"_type": "Targets", "expires": far, "version": 1, "targets": {"v2": meta(files.1)},
                   "delegations": {"keys": {}, "roles": []}}),
        );
        sign(
            agent,
            &p,
            &k.releases,
            &["--role", "targets/releases", "--gun", gun],
        );
        let p = write(
            "snapshot.json",
            json!({"_type": "Snapshot", "expires": far, "version": 1, "meta": {
                "root": meta(&read("root.json")), "targets": meta(&read("targets.json")),
                "targets/releases": meta(&read("targets/releases.json"))}}),
        );
        sign(agent, &p, &k.snapshot, &["--gun", gun]);
        let p = write(
            "timestamp.json",
            json!({"_type": "Timestamp", "expires": soon, "version": 1,
                   "meta": {"snapshot": meta(&read("snapshot.json"))}}),
        );
        sign(agent, &p, &k.timestamp, &["--gun", gun]);
        k
    }
}

/// Occurrences of `needle` in the readable memory of process `pid` (what a core dump holds).
pub fn memory_hits(pid: u32, needle: &[u8]) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut hits = 0;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with('r') {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        hits += buf.windows(needle.len()).filter(|w| *w == needle).count();
    }
    hits
}
