//! `dct ceremony`: an M-of-N root made across tokens and signed key by key, each step
//! recorded. The ceremony directory (it can travel on removable media between machines):
//!
//! - `ceremony.json`: the GUN, threshold, root keys and where they were made;
//! - `root.json`: the root being signed (signatures added one by one);
//! - `root.final.json`: written by `finish` once a threshold of root keys has signed;
//! - `transcript.json` / `transcript.md`: every step (time, operator, tokens, key IDs,
//!   certificate fingerprints, SHA-256 of every file produced).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use dct_proto::dct::v1 as pb;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::client::{Client, Failure};
use crate::output::print_json;

#[derive(Subcommand)]
pub enum CeremonyCmd {
    /// Root keys and the unsigned root.
    #[command(subcommand)]
    Root(RootCmd),
    /// Add one root key's signature to DIR/root.json (on the machine whose agent holds it).
    Sign {
        dir: PathBuf,
        #[arg(long = "key", value_name = "KEYID")]
        key: String,
        /// Who performs this step (recorded in the transcript).
        #[arg(long, default_value = "")]
        operator: String,
    },
    /// Check a threshold of root keys signed, and write DIR/root.final.json for
    /// `dct trust init IMAGE --root-from DIR`.
    Finish {
        dir: PathBuf,
        #[arg(long, default_value = "")]
        operator: String,
    },
    /// Re-check a ceremony: every file as the transcript last recorded it, every signature
    /// the transcript records present and valid, the threshold met when finished; and which
    /// root keys the agent's tokens hold now.
    Verify { dir: PathBuf },
}

#[derive(Subcommand)]
pub enum RootCmd {
    /// Make N root keys, each on its own token with its Notary root certificate (CN = GUN)
    /// made on that token, the targets key, and an unsigned root.json (threshold M) listing
    /// them with the trust server's timestamp and snapshot keys.
    Init {
        /// The repository, e.g. registry.example.com/app.
        image: String,
        /// The ceremony directory (made if absent; must not hold a ceremony yet).
        #[arg(long)]
        dir: PathBuf,
        /// How many root keys.
        #[arg(long)]
        keys: u32,
        /// How many of them must sign.
        #[arg(long)]
        threshold: u32,
        /// The tokens, one per root key.
        #[arg(long = "token", value_name = "LABEL", required = true)]
        tokens: Vec<String>,
        /// Where the targets key is made (default: the first token).
        #[arg(long, value_name = "LABEL")]
        targets_token: Option<String>,
        /// Back the root key made on TOKEN up into BACKUP: wrapped on the way (C_WrapKey with
        /// an AES key under an RSA-OAEP transport key of BACKUP), never in plaintext. Keys
        /// without this are non-extractable.
        #[arg(long = "backup", value_name = "TOKEN=BACKUP")]
        backups: Vec<String>,
        /// For a token that cannot wrap keys (a YubiKey): make its root key in the agent's
        /// memory, write it to FILE as a Notary key file encrypted with a passphrase (asked
        /// twice, or --backup-passphrase-file), and import it onto the token. The choice of
        /// a backup over on-card generation, which has no backup but can be attested.
        #[arg(long = "backup-file", value_name = "TOKEN=FILE")]
        backup_files: Vec<String>,
        /// The backup files' passphrase (first line of FILE) instead of a prompt.
        #[arg(long, value_name = "FILE")]
        backup_passphrase_file: Option<PathBuf>,
        /// On an offline machine: the server's timestamp key as it serves it (fetched
        /// beforehand from /v2/GUN/_trust/tuf/timestamp.key); needs --snapshot-key too.
        #[arg(long, value_name = "FILE", requires = "snapshot_key")]
        timestamp_key: Option<PathBuf>,
        /// The server's snapshot key (from /v2/GUN/_trust/tuf/snapshot.key).
        #[arg(long, value_name = "FILE", requires = "timestamp_key")]
        snapshot_key: Option<PathBuf>,
        #[arg(long, default_value = "")]
        operator: String,
    },
    /// Root version n+1 of a published repository with N new root keys (one per token) and
    /// threshold M; it must be signed by a threshold of the current root keys *and* of the
    /// new ones, so that clients trusting the current root follow it. Publish it with
    /// `dct trust publish-root IMAGE DIR` after `finish`.
    Rotate {
        image: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        keys: u32,
        #[arg(long)]
        threshold: u32,
        #[arg(long = "token", value_name = "LABEL", required = true)]
        tokens: Vec<String>,
        #[arg(long, default_value = "")]
        operator: String,
    },
}

/// The root a rotation follows, when DIR holds a rotation.
fn previous_root(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("previous.root.json")).unwrap_or_default()
}

fn key_json(k: &pb::CeremonyKey) -> Value {
    json!({
        "key_id": k.key_id, "canonical_id": k.canonical_id, "token": k.token,
        "token_manufacturer": k.token_manufacturer, "token_model": k.token_model,
        "token_serial": k.token_serial, "backend": k.backend,
        "certificate_sha256": k.cert_sha256, "extractable": k.extractable,
        "pin_policy": k.pin_policy, "touch_policy": k.touch_policy, "origin": k.origin,
        "slot": (!k.slot.is_empty()).then_some(&k.slot),
        "backup": if !k.backup_file.is_empty() {
            format!("encrypted Notary key file (PBES2, AES-256-CBC), SHA-256 {}", hex(&Sha256::digest(&k.backup_file)))
        } else if k.backup_token.is_empty() {
            "none (generated on the token, not extractable)".to_string()
        } else {
            format!("wrapped into token {} (C_WrapKey: AES-256 key wrap under an RSA-OAEP transport key; sensitive, never in plaintext)", k.backup_token)
        },
    })
}

/// Makes DIR for a new ceremony (refusing one that holds a ceremony already).
fn new_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| Failure::failed(format!("{}: {e}", dir.display())))?;
    if dir.join("ceremony.json").exists() {
        return Err(Failure::failed(format!(
            "{} already holds a ceremony",
            dir.display()
        )));
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, Failure> {
    let p = dir.join(name);
    std::fs::read(&p).map_err(|e| Failure::failed(format!("cannot read {}: {e}", p.display())))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let fail = |e: std::io::Error| Failure::failed(format!("{}: {e}", dir.join(name).display()));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(fail)?;
    tmp.persist(dir.join(name)).map_err(|e| fail(e.error))?;
    Ok(())
}

/// Writes a new file (never over an existing one), owner-only, synced.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| Failure::failed(format!("{}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(fail)
}

/// The backup files' passphrase: the first line of FILE, or asked twice without echo.
fn backup_passphrase(file: Option<&Path>) -> Result<secrecy::SecretString, Failure> {
    use secrecy::ExposeSecret;
    let pass = match file {
        Some(path) => {
            let text =
                zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Failure::failed(format!("cannot read {}: {e}", path.display()))
                })?);
            secrecy::SecretString::from(text.lines().next().unwrap_or_default().to_string())
        }
        None => {
            let ask = |prompt: &str| {
                rpassword::prompt_password(prompt)
                    .map(secrecy::SecretString::from)
                    .map_err(|e| Failure::failed(format!("cannot read the passphrase: {e}")))
            };
            let first = ask("Passphrase for the root key backup files: ")?;
            let again = ask("Again: ")?;
            if first.expose_secret() != again.expose_secret() {
                return Err(Failure::failed("the passphrases differ"));
            }
            first
        }
    };
    if pass.expose_secret().chars().count() < 8 {
        return Err(Failure::usage(
            "a backup passphrase needs at least 8 characters",
        ));
    }
    Ok(pass)
}

fn now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Appends a step to transcript.json and transcript.md, with the SHA-256 of `files`.
fn record(
    dir: &Path,
    step: &str,
    operator: &str,
    details: Value,
    files: &[&str],
) -> Result<(), Failure> {
    record_titled(
        dir,
        "Root-key ceremony transcript",
        step,
        operator,
        details,
        files,
    )
}

/// As [`record`], for a ceremony of another kind (the title of a new transcript.md).
pub(crate) fn record_titled(
    dir: &Path,
    title: &str,
    step: &str,
    operator: &str,
    details: Value,
    files: &[&str],
) -> Result<(), Failure> {
    let mut transcript: Vec<Value> = match std::fs::read(dir.join("transcript.json")) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Failure::failed(format!("transcript.json: {e}")))?,
        Err(_) => Vec::new(),
    };
    let mut hashes = serde_json::Map::new();
    for f in files {
        hashes.insert(f.to_string(), hex(&Sha256::digest(read(dir, f)?)).into());
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let entry = json!({
        "step": step, "time": now(), "operator": operator, "host": host,
        "details": details, "files": hashes,
    });
    let mut md = String::new();
    md.push_str(&format!(
        "## {} {step}\n\n- operator: {}\n- host: {host}\n",
        entry["time"].as_str().unwrap_or_default(),
        if operator.is_empty() {
            "(not given)"
        } else {
            operator
        }
    ));
    for line in details_lines(&details) {
        md.push_str(&format!("- {line}\n"));
    }
    for (f, h) in &hashes {
        md.push_str(&format!(
            "- sha256 {f}: {}\n",
            h.as_str().unwrap_or_default()
        ));
    }
    md.push('\n');
    transcript.push(entry);
    let json_bytes =
        serde_json::to_vec_pretty(&transcript).map_err(|e| Failure::failed(e.to_string()))?;
    write(dir, "transcript.json", &json_bytes)?;
    let mut all = std::fs::read_to_string(dir.join("transcript.md"))
        .unwrap_or_else(|_| format!("# {title}\n\n"));
    all.push_str(&md);
    write(dir, "transcript.md", all.as_bytes())
}

fn details_lines(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(o) = d.as_object() {
        for (k, v) in o {
            match v {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        out.push(format!("{k}[{i}]: {item}"));
                    }
                }
                other => out.push(format!("{k}: {other}")),
            }
        }
    }
    out
}

pub async fn run(
    c: &mut Client,
    server: pb::TrustServer,
    cmd: CeremonyCmd,
    json: bool,
) -> Result<(), Failure> {
    match cmd {
        CeremonyCmd::Root(RootCmd::Init {
            image,
            dir,
            keys,
            threshold,
            tokens,
            targets_token,
            backups,
            backup_files,
            backup_passphrase_file,
            timestamp_key,
            snapshot_key,
            operator,
        }) => {
            let read_key = |p: &Option<PathBuf>| -> Result<Vec<u8>, Failure> {
                match p {
                    Some(p) => std::fs::read(p)
                        .map_err(|e| Failure::failed(format!("cannot read {}: {e}", p.display()))),
                    None => Ok(Vec::new()),
                }
            };
            let (timestamp_key, snapshot_key) =
                (read_key(&timestamp_key)?, read_key(&snapshot_key)?);
            let mut backup_map = std::collections::HashMap::new();
            for b in &backups {
                let (from, to) = b.split_once('=').ok_or_else(|| {
                    Failure::usage(format!("--backup {b:?}: expected TOKEN=BACKUP"))
                })?;
                backup_map.insert(from.to_string(), to.to_string());
            }
            if tokens.len() != keys as usize {
                return Err(Failure::usage(format!(
                    "--keys {keys} needs {keys} --token (one root key per token), got {}",
                    tokens.len()
                )));
            }
            let mut file_tokens = Vec::new();
            let mut file_paths = std::collections::HashMap::new();
            for b in &backup_files {
                let (token, path) = b.split_once('=').ok_or_else(|| {
                    Failure::usage(format!("--backup-file {b:?}: expected TOKEN=FILE"))
                })?;
                if Path::new(path).exists() {
                    return Err(Failure::failed(format!(
                        "{path} exists already: a backup file is never overwritten"
                    )));
                }
                file_tokens.push(token.to_string());
                file_paths.insert(token.to_string(), PathBuf::from(path));
            }
            let sealed_backup_passphrase = if file_tokens.is_empty() {
                None
            } else {
                let pass = backup_passphrase(backup_passphrase_file.as_deref())?;
                Some(crate::seal(c, &pass).await?)
            };
            let gun = crate::image::gun_of(&crate::image::split_tag(&image).0);
            new_dir(&dir)?;
            let req = pb::CeremonyRootInitRequest {
                backup_files: file_tokens,
                sealed_backup_passphrase,
                server: Some(server),
                gun: gun.clone(),
                threshold,
                tokens,
                targets_token: targets_token.unwrap_or_default(),
                backups: backup_map,
                timestamp_key,
                snapshot_key,
            };
            let r = c
                .call(|mut a| async move { a.ceremony_root_init(req).await })
                .await?;
            for k in &r.root_keys {
                if let Some(path) = file_paths
                    .get(&k.token)
                    .filter(|_| !k.backup_file.is_empty())
                {
                    write_new(path, &k.backup_file)?;
                    eprintln!(
                        "backup of root key {} written to {} (keep it offline, apart from its passphrase)",
                        k.key_id,
                        path.display()
                    );
                }
            }
            let keys: Vec<Value> = r.root_keys.iter().map(key_json).collect();
            let ceremony = json!({
                "gun": gun, "threshold": threshold, "root_keys": keys,
                "targets_key_id": r.targets_key_id, "timestamp_key_id": r.timestamp_key_id,
                "snapshot_key_id": r.snapshot_key_id,
            });
            let bytes =
                serde_json::to_vec_pretty(&ceremony).map_err(|e| Failure::failed(e.to_string()))?;
            write(&dir, "ceremony.json", &bytes)?;
            write(&dir, "root.json", &r.root_json)?;
            record(
                &dir,
                "root init",
                &operator,
                json!({"gun": gun, "threshold": threshold, "root_keys": keys,
                       "targets_key_id": r.targets_key_id}),
                &["ceremony.json", "root.json"],
            )?;
            if json {
                return print_json(&ceremony);
            }
            println!(
                "root of {gun}: {threshold} of {} keys, unsigned in {}",
                r.root_keys.len(),
                dir.join("root.json").display()
            );
            for k in &r.root_keys {
                println!(
                    "  {} on {} (canonical {})",
                    k.key_id, k.token, k.canonical_id
                );
            }
            println!(
                "next: dct ceremony sign {} --key KEYID (x{threshold})",
                dir.display()
            );
            Ok(())
        }
        CeremonyCmd::Root(RootCmd::Rotate {
            image,
            dir,
            keys,
            threshold,
            tokens,
            operator,
        }) => {
            if tokens.len() != keys as usize {
                return Err(Failure::usage(format!(
                    "--keys {keys} needs {keys} --token (one root key per token), got {}",
                    tokens.len()
                )));
            }
            let gun = crate::image::gun_of(&crate::image::split_tag(&image).0);
            new_dir(&dir)?;
            let req = pb::CeremonyRootRotateRequest {
                server: Some(server),
                gun: gun.clone(),
                threshold,
                tokens,
            };
            let r = c
                .call(|mut a| async move { a.ceremony_root_rotate(req).await })
                .await?;
            let keys: Vec<Value> = r.root_keys.iter().map(key_json).collect();
            let ceremony = json!({"gun": gun, "threshold": threshold, "root_keys": keys,
                                  "rotation": true});
            let bytes =
                serde_json::to_vec_pretty(&ceremony).map_err(|e| Failure::failed(e.to_string()))?;
            write(&dir, "ceremony.json", &bytes)?;
            write(&dir, "previous.root.json", &r.previous_root_json)?;
            write(&dir, "root.json", &r.root_json)?;
            record(
                &dir,
                "root rotate",
                &operator,
                json!({"gun": gun, "threshold": threshold, "root_keys": keys}),
                &["ceremony.json", "previous.root.json", "root.json"],
            )?;
            println!(
                "next root of {gun}: {threshold} of {} new keys; sign with a threshold of the current root keys and of the new ones",
                r.root_keys.len()
            );
            Ok(())
        }
        CeremonyCmd::Sign { dir, key, operator } => {
            let ceremony: Value = serde_json::from_slice(&read(&dir, "ceremony.json")?)
                .map_err(|e| Failure::failed(format!("ceremony.json: {e}")))?;
            let gun = ceremony["gun"].as_str().unwrap_or_default().to_string();
            let req = pb::CeremonySignRequest {
                root_json: read(&dir, "root.json")?,
                key_id: key,
                gun,
                previous_root_json: previous_root(&dir),
            };
            let r = c
                .call(|mut a| async move { a.ceremony_sign(req).await })
                .await?;
            write(&dir, "root.json", &r.root_json)?;
            let check = check(c, &dir).await?;
            record(
                &dir,
                "sign",
                &operator,
                json!({"key_id": r.key_id, "signed_by": check.signed_by, "threshold": check.threshold}),
                &["root.json"],
            )?;
            if json {
                return print_json(&json!({"key_id": r.key_id, "signed_by": check.signed_by,
                                          "threshold": check.threshold}));
            }
            print!(
                "signed with {}: {} of {} signatures",
                r.key_id,
                check.signed_by.len(),
                check.threshold
            );
            if check.previous_threshold > 0 {
                print!(
                    " by the new root keys, {} of {} by the current ones",
                    check.previous_signed_by.len(),
                    check.previous_threshold
                );
            }
            println!();
            Ok(())
        }
        CeremonyCmd::Verify { dir } => verify(c, &dir, json).await,
        CeremonyCmd::Finish { dir, operator } => {
            let check = check(c, &dir).await?;
            if check.previous_threshold > 0
                && (check.previous_signed_by.len() as u32) < check.previous_threshold
            {
                return Err(Failure::failed(format!(
                    "{} of {} signatures by the current root keys: a rotation needs them too",
                    check.previous_signed_by.len(),
                    check.previous_threshold
                )));
            }
            if (check.signed_by.len() as u32) < check.threshold {
                let missing: Vec<&String> = check
                    .root_keys
                    .iter()
                    .filter(|k| !check.signed_by.contains(k))
                    .collect();
                return Err(Failure::failed(format!(
                    "{} of {} root signatures: not enough (unsigned: {})",
                    check.signed_by.len(),
                    check.threshold,
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let root = read(&dir, "root.json")?;
            write(&dir, "root.final.json", &root)?;
            record(
                &dir,
                "finish",
                &operator,
                json!({"signed_by": check.signed_by, "threshold": check.threshold}),
                &["root.final.json", "transcript.json"],
            )?;
            println!(
                "root complete ({} of {}): {}",
                check.signed_by.len(),
                check.threshold,
                dir.join("root.final.json").display()
            );
            Ok(())
        }
    }
}

/// `dct ceremony verify DIR`.
async fn verify(c: &mut Client, dir: &Path, json_out: bool) -> Result<(), Failure> {
    let transcript: Vec<Value> = serde_json::from_slice(&read(dir, "transcript.json")?)
        .map_err(|e| Failure::failed(format!("transcript.json: {e}")))?;
    let ceremony: Value = serde_json::from_slice(&read(dir, "ceremony.json")?)
        .map_err(|e| Failure::failed(format!("ceremony.json: {e}")))?;
    // Each file as its last recorded hash says (the transcript itself changes each step).
    let mut last: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for (i, step) in transcript.iter().enumerate() {
        if let Some(files) = step["files"].as_object() {
            for (f, h) in files {
                last.insert(
                    f.clone(),
                    (i + 1, h.as_str().unwrap_or_default().to_string()),
                );
            }
        }
    }
    let mut problems = Vec::new();
    for (f, (step, want)) in &last {
        if f == "transcript.json" {
            continue;
        }
        match std::fs::read(dir.join(f)) {
            Ok(b) if hex(&Sha256::digest(&b)) == *want => {}
            Ok(_) => problems.push(format!(
                "{f} changed after step {step} of the transcript recorded it"
            )),
            Err(_) => problems.push(format!("{f} is missing (recorded at step {step})")),
        }
    }
    // Signatures the transcript records must be in the root, and verify.
    let finished = dir.join("root.final.json").exists();
    let name = if finished {
        "root.final.json"
    } else {
        "root.json"
    };
    let req = pb::CeremonyCheckRequest {
        root_json: read(dir, name)?,
        previous_root_json: previous_root(dir),
    };
    let check = c
        .call(|mut a| async move { a.ceremony_check(req).await })
        .await?;
    for step in transcript.iter().filter(|s| s["step"] == "sign") {
        let id = step["details"]["key_id"].as_str().unwrap_or_default();
        let held = check.signed_by.iter().chain(&check.previous_signed_by);
        if !held.into_iter().any(|s| s == id) {
            problems.push(format!(
                "the transcript records a signature by {id} that {name} does not hold (or it does not verify)"
            ));
        }
    }
    if finished && (check.signed_by.len() as u32) < check.threshold {
        problems.push(format!(
            "{name}: {} of {} root signatures",
            check.signed_by.len(),
            check.threshold
        ));
    }
    // Which root keys are on the tokens here.
    let list = c
        .call(|mut a| async move { a.list_keys(pb::ListKeysRequest::default()).await })
        .await?;
    let present: Vec<String> = ceremony["root_keys"]
        .as_array()
        .map(|ks| {
            ks.iter()
                .filter_map(|k| k["key_id"].as_str())
                .filter(|id| list.keys.iter().any(|k| k.key_id == *id))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if json_out {
        print_json(&json!({"problems": problems, "signed_by": check.signed_by,
                           "threshold": check.threshold, "finished": finished,
                           "root_keys_present": present}))?;
    } else {
        println!(
            "{}: {} steps, {} of {} root signatures{}; root keys on this agent's tokens: {}",
            dir.display(),
            transcript.len(),
            check.signed_by.len(),
            check.threshold,
            if finished { ", finished" } else { "" },
            if present.is_empty() {
                "none".to_string()
            } else {
                present.join(", ")
            }
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::failed(problems.join("; ")))
    }
}

async fn check(c: &mut Client, dir: &Path) -> Result<pb::CeremonyCheckResponse, Failure> {
    let req = pb::CeremonyCheckRequest {
        root_json: read(dir, "root.json")?,
        previous_root_json: previous_root(dir),
    };
    c.call(|mut a| async move { a.ceremony_check(req).await })
        .await
}
