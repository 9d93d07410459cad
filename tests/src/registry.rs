//! A real registry for tests: Debian's docker-registry (distribution 2.8) on a random
//! 127.0.0.1 port with TLS from the notary stack's test CA, and skopeo to push an OCI
//! image built here. Stopped by PID on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::notary::NotaryStack;

pub struct Registry {
    pub dir: TempDir,
    /// host:port
    pub host: String,
    child: Option<Child>,
    /// user:pass for skopeo, when the registry wants them.
    creds: Option<String>,
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

impl Registry {
    /// An anonymous registry.
    pub fn start(stack: &NotaryStack) -> Registry {
        Self::start_with(stack, None)
    }

    /// An anonymous registry keeping its storage in memory (/dev/shm, where there is one):
    /// for the benchmark, so that what is measured is not this machine's disk.
    pub fn start_in_memory(stack: &NotaryStack) -> Registry {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        Self::start_in(dir, stack.dir.path(), &stack.ca, None)
    }

    /// A registry requiring basic auth (htpasswd, bcrypt) for `user`/`pass`.
    pub fn start_with_auth(stack: &NotaryStack, user: &str, pass: &str) -> Registry {
        Self::start_with(stack, Some((user, pass)))
    }

    /// An anonymous registry with TLS from `pki` (`ca.crt`, `leaf.crt`, `leaf.key`, as
    /// [`crate::notary::pki`] makes), without a notary stack.
    pub fn start_with_pki(pki: &std::path::Path) -> Registry {
        Self::start_on(pki, &pki.join("ca.crt"), None)
    }

    fn start_with(stack: &NotaryStack, auth: Option<(&str, &str)>) -> Registry {
        Self::start_on(stack.dir.path(), &stack.ca, auth)
    }

    fn start_on(
        sd: &std::path::Path,
        ca: &std::path::Path,
        auth: Option<(&str, &str)>,
    ) -> Registry {
        Self::start_in(tempfile::tempdir().unwrap(), sd, ca, auth)
    }

    fn start_in(
        dir: TempDir,
        sd: &std::path::Path,
        ca: &std::path::Path,
        auth: Option<(&str, &str)>,
    ) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {}\n    key: {}\n",
            dir.path().join("data").display(),
            sd.join("leaf.crt").display(),
            sd.join("leaf.key").display()
        );
        let mut cfg = cfg;
        if let Some((user, pass)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: dct-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        // skopeo reads CAs from a directory.
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::copy(ca, dir.path().join("certs").join("ca.crt")).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian docker-registry; softhsm/install-deps.sh)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "docker-registry exited with {st}: {}",
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry {
            dir,
            host: format!("127.0.0.1:{port}"),
            child: Some(child),
            creds: auth.map(|(u, p)| format!("{u}:{p}")),
        }
    }

    /// Pushes a one-layer OCI image as `name:tag`; returns the manifest bytes the registry
    /// serves for it.
    pub fn push(&self, name: &str, tag: &str, layer_text: &str) -> Vec<u8> {
        let mut layer = layer_text.as_bytes().to_vec();
        layer.resize(1024, 0);
        self.push_layer(name, tag, &layer, "")
    }

    /// Pushes an image dockerd can pull and create containers from: one real tar layer
    /// holding `/hello.txt` (`text`), and a config with a command. Returns the manifest.
    pub fn push_runnable(&self, name: &str, tag: &str, text: &str) -> Vec<u8> {
        let layer = tar_one_file("hello.txt", text.as_bytes());
        self.push_layer(name, tag, &layer, r#","config":{"Cmd":["/hello.txt"]}"#)
    }

    fn push_layer(&self, name: &str, tag: &str, layer: &[u8], config_extra: &str) -> Vec<u8> {
        let layout = self
            .dir
            .path()
            .join(format!("layout-{}-{tag}", name.replace('/', "_")));
        let blobs = layout.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let blob = |b: &[u8]| {
            let d = sha(b);
            std::fs::write(blobs.join(&d), b).unwrap();
            (format!("sha256:{d}"), b.len())
        };
        let (ld, ls) = blob(layer);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{ld}"]}}{config_extra}}}"#
        );
        let (cd, cs) = blob(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{ls}}}]}}"#
        );
        let (md, ms) = blob(manifest.as_bytes());
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::write(
            layout.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#
            ),
        )
        .unwrap();
        let certs = self.dir.path().join("certs");
        let dest = format!("docker://{}/{name}:{tag}", self.host);
        let certs = certs.to_str().unwrap();
        let src = format!("oci:{}:{tag}", layout.display());
        let mut copy = vec!["copy", "--insecure-policy", "--dest-cert-dir", certs];
        let mut inspect = vec!["inspect", "--raw", "--cert-dir", certs];
        if let Some(c) = &self.creds {
            copy.extend(["--dest-creds", c.as_str()]);
            inspect.extend(["--creds", c.as_str()]);
        }
        copy.extend([src.as_str(), dest.as_str()]);
        inspect.push(dest.as_str());
        self.skopeo(&copy);
        self.skopeo(&inspect)
    }

    /// PUTs `manifest` as `name:tag` (its blobs must be in the repository already), with
    /// curl; returns the manifest. Many tags in seconds, where skopeo takes a process each.
    pub fn put_manifest(&self, name: &str, tag: &str, manifest: &[u8]) -> Vec<u8> {
        let ca = self.dir.path().join("certs").join("ca.crt");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
            .arg("--cacert")
            .arg(&ca)
            .args([
                "-H",
                "Content-Type: application/vnd.oci.image.manifest.v1+json",
                "--data-binary",
                "@-",
            ]);
        if let Some(c) = &self.creds {
            cmd.args(["-u", c.as_str()]);
        }
        cmd.arg(format!("https://{}/v2/{name}/manifests/{tag}", self.host))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("curl");
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(manifest).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "201",
            "PUT {name}:{tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        manifest.to_vec()
    }

    fn skopeo(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("skopeo")
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// A ustar archive of one regular file.
fn tar_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    let mut put = |at: usize, field: &[u8]| h[at..at + field.len()].copy_from_slice(field);
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", content.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}
