//! The real dockerd (Debian docker.io) in a temp dir, and dct-authz as its authorization
//! plugin: for the engine-enforcement tests and the benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::bin;

pub const DOCKERD: &str = "/usr/sbin/dockerd";

fn wait_for(path: &Path, what: &str, mut alive: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(why) = alive() {
            panic!("{what} exited: {why}");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// dct-authz on a socket in `dir`, with `config` (TOML) after the socket, cache, dockerd
/// and audit lines.
pub struct Plugin {
    child: Child,
    log: PathBuf,
}

impl Plugin {
    pub fn start(dir: &Path, docker_sock: &Path, extra: &str, args: &[&str]) -> Plugin {
        let socket = dir.join("plugin").join("authz.sock");
        let _ = std::fs::remove_file(&socket);
        let cfg = dir.join("authz.toml");
        std::fs::write(
            &cfg,
            format!(
                "socket = {:?}\ndocker_socket = {:?}\ncache_dir = {:?}\naudit_log = {:?}\n{extra}",
                socket.display().to_string(),
                docker_sock.display().to_string(),
                dir.join("cache").display().to_string(),
                dir.join("audit.jsonl").display().to_string(),
            ),
        )
        .unwrap();
        let log = dir.join(format!("authz-{}.log", std::process::id()));
        let mut child = Command::new(bin("dct-authz"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for(&socket, "dct-authz", || {
            child.try_wait().unwrap().map(|st| {
                format!(
                    "{st}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
        });
        let meta = std::fs::metadata(&socket).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(socket.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        Plugin { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// dockerd as root in a temp dir, with `name` as its authorization plugin (the spec file in
/// /etc/docker/plugins, removed on drop). Stopped by PID.
pub struct Dockerd {
    dir: TempDir,
    pub sock: PathBuf,
    child: Option<Child>,
    spec: Option<PathBuf>,
}

impl Dockerd {
    /// `dir`: its own directory (the API socket is `dir/docker.sock`).
    pub fn start(dir: TempDir, plugin_name: &str, plugin_sock: &Path, registry: &str) -> Dockerd {
        Self::start_with(dir, Some((plugin_name, plugin_sock)), registry)
    }

    /// As [`Dockerd::start`], with no authorization plugin when `plugin` is None.
    pub fn start_with(dir: TempDir, plugin: Option<(&str, &Path)>, registry: &str) -> Dockerd {
        let d = dir.path();
        let spec = match plugin {
            Some((name, sock)) => {
                std::fs::create_dir_all("/etc/docker/plugins").unwrap();
                let spec = PathBuf::from(format!("/etc/docker/plugins/{name}.spec"));
                std::fs::write(&spec, format!("unix://{}\n", sock.display())).unwrap();
                Some(spec)
            }
            None => None,
        };
        // Not the machine's /etc/docker/daemon.json.
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        std::fs::create_dir(d.join("cli")).unwrap();
        let sock = d.join("docker.sock");
        let log = d.join("dockerd.log");
        let mut child = Command::new(DOCKERD)
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--iptables=false", "--bridge=none", "--storage-driver=vfs"])
            .args(plugin.map(|(name, _)| format!("--authorization-plugin={name}")))
            .arg(format!("--insecure-registry={registry}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("dockerd (Debian docker.io; softhsm/install-deps.sh)");
        let mut me = Dockerd {
            sock: sock.clone(),
            child: None,
            spec,
            dir,
        };
        wait_for(&sock, "dockerd", || {
            child.try_wait().unwrap().map(|st| {
                format!(
                    "{st}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
        });
        me.child = Some(child);
        // Up when it answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !me.docker(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "dockerd does not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .env_remove("DOCKER_CONTENT_TRUST")
            .stdin(Stdio::null())
            .output()
            .expect("docker CLI")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Refused by the plugin: one line on stderr, naming the plugin and `needle`.
    pub fn refused(&self, args: &[&str], plugin: &str, needle: &str) -> String {
        let out = self.docker(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "docker {args:?} passed");
        assert!(
            err.contains(&format!("authorization denied by plugin {plugin}: "))
                && err.contains(needle),
            "docker {args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        eprintln!("refused: docker {}: {}", args.join(" "), err.trim());
        err
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
        if let Some(spec) = &self.spec {
            let _ = std::fs::remove_file(spec);
        }
    }
}
