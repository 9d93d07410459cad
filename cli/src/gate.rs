//! `dct verify IMAGE --policy FILE`: the deploy gate across formats. The CLI reads the
//! policy (TOML or JSON) and the files it names, and hands them to the agent, which does
//! every check. With no agent running (a production host), it starts a keyless one for
//! this one check and stops it after.

use std::path::{Path, PathBuf};

use dct_proto::dct::v1 as pb;
use serde_json::Value;

use crate::client::{Client, Connect, Failure, Target};
use crate::image::{gun_of, split_tag};
use crate::output::print_json;
use crate::trust::ServerArgs;

pub struct Verify {
    pub image: String,
    pub policy: PathBuf,
    pub digest: Option<String>,
    pub offline: bool,
    pub print_digest: bool,
}

/// The policy as JSON, every `public_key` (cosign) and `trust_store` (Notation) file read
/// in as `public_key_pem` / `trust_store_pem` (paths relative to the policy file).
fn read_policy(path: &Path) -> Result<Vec<u8>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    let bad = |e: String| Failure::usage(format!("{}: {e}", path.display()));
    let mut v: Value = if path.extension().is_some_and(|x| x == "json") {
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
    } else {
        let t: toml::Value = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        serde_json::to_value(t).map_err(|e| bad(e.to_string()))?
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let scopes = v
        .get_mut("scope")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("no [[scope]]".into()))?;
    for scope in scopes {
        let Some(signers) = scope.get_mut("signer").and_then(Value::as_array_mut) else {
            continue;
        };
        for s in signers {
            for (kind, field) in [("cosign", "public_key"), ("notation", "trust_store")] {
                let Some(c) = s.get_mut(kind).and_then(Value::as_object_mut) else {
                    continue;
                };
                if let Some(file) = c.remove(field) {
                    let file = file
                        .as_str()
                        .ok_or_else(|| bad(format!("{kind} {field} must be a file name")))?;
                    let p = base.join(file);
                    let pem = std::fs::read_to_string(&p)
                        .map_err(|e| bad(format!("cannot read {}: {e}", p.display())))?;
                    c.insert(format!("{field}_pem"), pem.into());
                }
            }
        }
    }
    serde_json::to_vec(&v).map_err(|e| bad(e.to_string()))
}

/// A keyless agent started for one check: a private socket and log, the user's trust cache.
struct Standalone {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dct-agent` beside this `dct`, else on PATH.
fn agent_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.join("dct-agent")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("dct-agent"))
}

async fn standalone() -> Result<(Client, Standalone), Failure> {
    let dir = tempfile::Builder::new()
        .prefix("dct-verify-")
        .tempdir()
        .map_err(|e| Failure::failed(format!("temporary directory: {e}")))?;
    let run = dir.path().join("run");
    std::fs::create_dir(&run).map_err(|e| Failure::failed(e.to_string()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Failure::failed(e.to_string()))?;
    }
    let socket = run.join("agent.sock");
    // No token: this agent holds no key. Its audit log and ledger are its own; the trust
    // cache is the user's (for --offline).
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "audit_log = {:?}\nledger = {:?}\n",
            dir.path().join("audit.log").display().to_string(),
            dir.path().join("versions.ledger").display().to_string()
        ),
    )
    .map_err(|e| Failure::failed(e.to_string()))?;
    let child = std::process::Command::new(agent_program())
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .env_remove("DCT_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            Failure::failed(format!(
                "no agent is running and dct-agent could not be started: {e}"
            ))
        })?;
    let mut agent = Standalone { child, _dir: dir };
    let target = Target {
        socket: socket.clone(),
        agent_uid: None,
    };
    for _ in 0..100 {
        if socket.exists() {
            if let Ok(c) = Client::try_connect(&target).await {
                return Ok((c, agent));
            }
        }
        if let Ok(Some(status)) = agent.child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = agent.child.stderr.take() {
                use std::io::Read as _;
                let _ = e.read_to_string(&mut err);
            }
            return Err(Failure::failed(format!(
                "the standalone dct-agent exited ({status}): {}",
                err.trim()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(Failure::failed(
        "the standalone dct-agent did not start within 5 s",
    ))
}

pub async fn run(
    target: &Target,
    server: &ServerArgs,
    v: Verify,
    json: bool,
) -> Result<(), Failure> {
    let policy_json = read_policy(&v.policy)?;
    // IMAGE@sha256:HEX names the digest; IMAGE:TAG the tag.
    let (image, at_digest) = match v.image.split_once('@') {
        Some((n, d)) => (n.to_string(), Some(d.to_string())),
        None => (v.image.clone(), None),
    };
    let (name, tag) = split_tag(&image);
    let digest = v.digest.or(at_digest);
    let sha256 = match &digest {
        Some(d) => d
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| Failure::usage(format!("digest {d:?} must be sha256:<64 hex>")))?
            .to_string(),
        None => String::new(),
    };
    if tag.is_none() && sha256.is_empty() {
        return Err(Failure::usage(format!(
            "{}: name a tag (IMAGE:TAG) or a digest (IMAGE@sha256:...)",
            v.image
        )));
    }
    let gun = gun_of(&name);
    let (mut c, _standalone) = match Client::try_connect(target).await {
        Ok(c) => (c, None),
        Err(Connect::Refused(f)) => return Err(f),
        Err(Connect::Unreachable(_)) => {
            let (c, s) = standalone().await?;
            (c, Some(s))
        }
    };
    let sealed_registry_password = crate::trust::sealed_registry_password(&mut c).await?;
    let req = pb::VerifyImageRequest {
        server: Some(server.resolve()?),
        gun: gun.clone(),
        tag: tag.clone().unwrap_or_default(),
        sha256,
        policy_json,
        offline: v.offline,
        registry_username: std::env::var("DCT_REGISTRY_USERNAME").unwrap_or_default(),
        sealed_registry_password,
    };
    let r = c
        .call(|mut a| async move { a.verify_image(req).await })
        .await?;
    if r.sha256.len() != 64 || !r.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::failed(format!("{gun}: no usable digest verified")));
    }
    if json {
        return print_json(&serde_json::json!({
            "gun": gun, "tag": tag, "digest": format!("sha256:{}", r.sha256),
            "required": r.required, "verified": true,
            "signers": r.signers.iter().map(|s| serde_json::json!({
                "name": s.name, "passed": s.passed,
                "reason": (!s.reason.is_empty()).then_some(&s.reason),
            })).collect::<Vec<_>>(),
        }));
    }
    if v.print_digest {
        println!("sha256:{}", r.sha256);
        return Ok(());
    }
    let passed: Vec<&str> = r
        .signers
        .iter()
        .filter(|s| s.passed)
        .map(|s| s.name.as_str())
        .collect();
    println!(
        "{gun}{} is verified: sha256:{} by {} ({} required)",
        tag.map(|t| format!(":{t}")).unwrap_or_default(),
        r.sha256,
        passed.join(", "),
        r.required
    );
    Ok(())
}
