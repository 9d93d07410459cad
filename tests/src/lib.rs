//! Shared harness for the end-to-end tests: a fresh SoftHSM2 token per test (its own
//! `SOFTHSM2_CONF` and token directory), the real `dct-agent` daemon and `dct` CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A path under `tests/fixtures/`.
pub fn fixture_dir(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// A workspace binary (`dct`, `dct-agent`), built by `cargo build --workspace` beside the
/// test executable (target/<profile>/deps/..).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` before the tests", p.display());
    p
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
        assert!(Path::new(SOFTHSM_MODULE).exists(), "SoftHSM2 is not installed ({SOFTHSM_MODULE}); see README");
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "so-secret-9876"])
            .output()
            .expect("softhsm2-util");
        assert!(out.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
        SoftHsm { dir, conf, label: label.into(), pin: pin.into() }
    }

    pub fn agent_config(&self) -> String {
        format!("[[pkcs11]]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken = \"{}\"\n", self.label)
    }
}

/// A running `dct-agent`, stopped by PID on drop.
pub struct Agent {
    child: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    softhsm_conf: Option<PathBuf>,
}

impl Agent {
    /// Starts an agent serving `hsm`'s token (or no token at all).
    pub fn start(hsm: Option<&SoftHsm>) -> Agent {
        Self::start_with_config(hsm, &hsm.map(SoftHsm::agent_config).unwrap_or_default())
    }

    pub fn start_with_config(hsm: Option<&SoftHsm>, config: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agent.toml");
        std::fs::write(&cfg, config).unwrap();
        let socket = dir.path().join("run").join("agent.sock");
        let mut agent = Agent {
            child: None,
            log: dir.path().join("agent.log"),
            dir,
            socket,
            softhsm_conf: hsm.map(|h| h.conf.clone()),
        };
        agent.spawn(&cfg);
        agent
    }

    fn spawn(&mut self, cfg: &Path) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new(bin("dct-agent"));
        cmd.arg("--config").arg(cfg).arg("--socket").arg(&self.socket);
        cmd.env_remove("DCT_SOCKET").env("NO_COLOR", "1").env("DCT_LOG", "info");
        if let Some(c) = &self.softhsm_conf {
            cmd.env("SOFTHSM2_CONF", c);
        }
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("spawn dct-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("dct-agent exited with {st}: {}", self.log_text());
            }
            assert!(Instant::now() < deadline, "dct-agent did not start: {}", self.log_text());
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM by PID and wait; returns whether it exited on its own with success.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
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
        cmd.args(args).env("DCT_SOCKET", &self.socket).env_remove("DCT_PIN").stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run(cmd.output().expect("run dct"))
    }

    /// `dct unlock` with the token's PIN from a file.
    pub fn unlock(&self, hsm: &SoftHsm) {
        let pin = self.dir.path().join("pin");
        std::fs::write(&pin, format!("{}\n", hsm.pin)).unwrap();
        self.dct(&["unlock", "--pin-file", pin.to_str().unwrap()]).ok();
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
        assert_eq!(self.code(), 0, "dct failed:\nstdout: {}\nstderr: {}", self.stdout(), self.stderr());
        Ok_ { stdout: self.stdout(), stderr: self.stderr() }
    }
    /// Asserts exit code `code` and that stderr contains `needle`.
    #[track_caller]
    pub fn fails(&self, code: i32, needle: &str) -> String {
        let err = self.stderr();
        assert_eq!(self.code(), code, "expected exit {code}:\nstdout: {}\nstderr: {err}", self.stdout());
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
        err
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
}
