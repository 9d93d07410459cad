//! `dct`: the command line of dct-agent. Parses, prompts, calls the agent, prints.
//! Every key operation and every metadata decision happens in the agent.
#![forbid(unsafe_code)]

mod audit;
mod ceremony;
mod cosign_cmd;
mod gate;
mod image;
mod notation;
mod trust;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use dct_proto::dct::v1 as pb;
use secrecy::{ExposeSecret, SecretString};

use client::{Client, Failure};
use dct_cli::{client, output};
use output::{print_json, Table};

const EXIT_HELP: &str = "\
Exit codes:
  0  success
  1  failed (the agent refused or an operation failed; verification failed)
  2  usage error
  3  agent unreachable (start it with `dct-agent`, or point --socket / DCT_SOCKET at it)";

/// Sign Docker Content Trust (Notary v1) metadata with keys on hardware tokens, through
/// a running dct-agent.
#[derive(Parser)]
#[command(name = "dct", version, after_help = EXIT_HELP)]
struct Cli {
    /// The agent's socket. Default: $XDG_RUNTIME_DIR/dct-agent/agent.sock.
    #[arg(long, global = true, env = "DCT_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also accept an agent run by this uid (a shared agent whose `allowed_uids` names you).
    /// Without it, dct talks only to an agent of your own uid.
    #[arg(long, global = true, env = "DCT_AGENT_UID", value_name = "UID")]
    agent_uid: Option<u32>,
    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Agent version, backends, tokens, lock state and PIN tries left.
    Status,
    /// Log in to a token. The PIN comes from --pin-file, DCT_PIN, or a prompt without echo.
    Unlock {
        /// Token label (needed when the agent has several tokens).
        #[arg(long)]
        token: Option<String>,
        /// Read the PIN from this file (first line). `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        pin_file: Option<PathBuf>,
        /// Try even when the token reports one PIN try left.
        #[arg(long)]
        force: bool,
    },
    /// Log out of a token, or of all tokens.
    Lock {
        #[arg(long, conflicts_with = "all")]
        token: Option<String>,
        /// Lock every token (the default when --token is not given).
        #[arg(long)]
        all: bool,
    },
    /// Keys on the agent's tokens.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Notary metadata files.
    #[command(subcommand)]
    Tuf(TufCmd),
    /// The agent's audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Root-key ceremonies: an M-of-N root made across tokens, signed key by key (on other
    /// machines if need be), finished, then published with `dct trust init --root-from`.
    Ceremony {
        #[command(flatten)]
        server: trust::ServerArgs,
        #[command(subcommand)]
        command: ceremony::CeremonyCmd,
    },
    /// The deploy gate across formats: exit 0 only if IMAGE (IMAGE:TAG or IMAGE@sha256:...)
    /// is vouched for by `require` of the signers the policy names for its repository: DCT
    /// under pinned roots (named signers optional), cosign public keys. Prints the verified
    /// digest; a refusal is one line naming the check. With no agent running, a keyless one
    /// is started for the check and stopped after.
    Verify {
        #[command(flatten)]
        server: trust::ServerArgs,
        image: String,
        /// The policy (TOML, or JSON for a .json file): [[scope]] repositories, require,
        /// [[scope.signer]] name with dct = { root_keys, signers } or cosign = { public_key }.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The digest the image must have, sha256:<64 hex>.
        #[arg(long)]
        digest: Option<String>,
        /// DCT from the trust data cached by an earlier check; no trust server.
        #[arg(long)]
        offline: bool,
        /// Print only the verified digest (sha256:HEX), for `docker pull IMAGE@$(...)`.
        #[arg(long)]
        print_digest: bool,
    },
    /// Re-sign what DCT vouched for as OCI signatures: every signed tag of IMAGE (verified
    /// under a pinned or cached root; a tag the registry moved since is reported, never
    /// signed; one already signed is skipped) gets a cosign and/or Notation signature made
    /// with --key,
    /// written to the registry by the agent (HTTPS with --tlscacert; DCT_REGISTRY_USERNAME /
    /// DCT_REGISTRY_PASSWORD when it asks). Progress on standard error, a summary at the end.
    Migrate {
        #[command(flatten)]
        server: trust::ServerArgs,
        /// The repository, e.g. registry.example.com/app.
        image: String,
        /// Formats to write, comma-separated: cosign, notation (the key needs a certificate
        /// chain: `dct notation cert issue`).
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// The key that signs (its policy must allow the format for this repository).
        #[arg(long = "key", value_name = "KEYID")]
        key: String,
        /// Only tags this signer signed (a delegation name, or "Repo Admin"); repeat for any.
        #[arg(long = "signer", value_name = "NAME")]
        signers: Vec<String>,
        /// Report what would be signed; sign and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Docker Content Trust against a notary-server: init, sign, inspect.
    Trust {
        #[command(flatten)]
        server: trust::ServerArgs,
        #[command(subcommand)]
        command: trust::TrustCmd,
    },
    /// Notation signatures from the agent's keys: a signing CA on a token, certificates for
    /// signing keys, a trust store and policy for verifiers, the notation-dct plugin.
    #[command(subcommand)]
    Notation(notation::NotationCmd),
    /// cosign with keys on the agent's tokens: the `sigstore-kms-dct` plugin (`cosign sign
    /// --key dct://KEYID`) and the keys' public PEM.
    #[command(subcommand)]
    Cosign(cosign_cmd::CosignCmd),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell) on
    /// standard output; the Debian package installs them. Needs no agent.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the log's hash chain: a changed, removed, inserted or reordered record is
    /// found and its line named. Without FILE: the running agent's log, also checked
    /// against the agent's own count of records (which finds records cut from the end);
    /// with no agent running, $XDG_STATE_HOME/dct/audit.log.
    Verify { file: Option<PathBuf> },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Generate a P-256 key on a token (non-extractable). A root key with --gun gets its
    /// Notary root certificate (CN = GUN), signed on the token.
    Generate {
        /// root, targets, snapshot, timestamp or targets/NAME.
        #[arg(long)]
        role: String,
        /// The repository (GUN), e.g. registry.example.com/app. Required except for root.
        #[arg(long)]
        gun: Option<String>,
        #[arg(long)]
        token: Option<String>,
        /// YubiKey (PIV) only: the slot, e.g. 9c or 82. Default: 9c for root, else the
        /// card's first free slot.
        #[arg(long)]
        slot: Option<String>,
        /// YubiKey (PIV) only: never, once or always (default: always for root, else once).
        #[arg(long, value_name = "POLICY")]
        pin_policy: Option<String>,
        /// YubiKey (PIV) only: never, always or cached (default: always for root, else never).
        #[arg(long, value_name = "POLICY")]
        touch_policy: Option<String>,
    },
    /// The YubiKey's attestation that a key was generated on the card: the attestation
    /// certificate for the key's slot, then the card's attestation certificate (slot f9),
    /// as PEM. Check it with `openssl verify -CAfile yubico-piv-ca.pem -untrusted f9.pem`.
    Attest {
        #[arg(value_name = "KEYID")]
        key: String,
        /// Write the PEM here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List keys: role, GUN, key ID (and canonical ID for root keys), backend, token.
    List {
        #[arg(long)]
        token: Option<String>,
    },
    /// Put an existing Docker / notary key file (~/.docker/trust/private/*.key) on a token.
    /// The passphrase comes from --passphrase-file, NOTARY_<ROLE>_PASSPHRASE /
    /// DOCKER_CONTENT_TRUST_{ROOT,REPOSITORY}_PASSPHRASE, or a prompt without echo.
    Import {
        file: PathBuf,
        /// Default: the file's `role` header.
        #[arg(long)]
        role: Option<String>,
        /// Default: the file's `gun` header.
        #[arg(long)]
        gun: Option<String>,
        #[arg(long)]
        token: Option<String>,
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Print a key's public part as PEM (a certificate for root keys), as docker writes it.
    ExportPublic {
        #[arg(value_name = "KEYID")]
        key: String,
    },
}

#[derive(Subcommand)]
enum TufCmd {
    /// Sign a metadata file with a key on a token; adds or replaces that key's signature.
    Sign {
        /// The metadata file (`-` for standard input).
        file: PathBuf,
        /// Key ID, canonical ID, or a unique prefix.
        #[arg(long = "key", value_name = "KEYID")]
        key: String,
        /// The role the document is for (names a delegation, e.g. targets/releases).
        #[arg(long)]
        role: Option<String>,
        /// The GUN the document belongs to; the agent checks the key's GUN against it.
        #[arg(long)]
        gun: Option<String>,
        /// Where to write the signed file (`-` for standard output). Default: FILE, in place.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The version this one replaces (signed by the same key): a key whose policy asks
        /// for confirmation shows what changed since it.
        #[arg(long, value_name = "FILE")]
        previous: Option<PathBuf>,
    },
    /// Verify a directory of metadata as a notary-server serves it (root.json, targets.json,
    /// targets/<name>.json, snapshot.json, timestamp.json), or a trust archive file (`dct
    /// trust export`), and print the signed targets.
    Verify {
        /// The directory, or the archive file.
        dir: PathBuf,
        #[arg(long)]
        gun: String,
        /// Check expiry as of this RFC 3339 time instead of now.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Require the root to be signed (to its threshold) by these root keys: certificate
        /// or canonical key IDs, as Notary's trust pinning. Without it the root is trusted
        /// as given.
        #[arg(long = "root-key", value_name = "KEYID")]
        root_keys: Vec<String>,
    },
}

/// Seals a PIN or passphrase to a one-use key of the agent, so that it never travels (nor
/// lingers in the agent's transport buffers) in plaintext.
async fn seal(c: &mut Client, secret: &SecretString) -> Result<pb::SealedSecret, Failure> {
    let ch = c
        .call(|mut a| async move { a.secret_channel(pb::SecretChannelRequest {}).await })
        .await?;
    let sealed = dct_wire::seal::seal(
        &ch.agent_public,
        ch.channel,
        secret.expose_secret().as_bytes(),
    )
    .map_err(|e| match e {
        dct_wire::seal::SealError::BadPublicKey => {
            Failure::failed("the agent's channel key is not 32 bytes")
        }
        other => Failure::failed(other.to_string()),
    })?;
    Ok(pb::SealedSecret {
        channel: ch.channel,
        client_public: sealed.client_public.to_vec(),
        nonce: sealed.nonce.to_vec(),
        ciphertext: sealed.ciphertext,
    })
}

/// `dct audit verify [FILE]`.
async fn audit_verify(
    target: &client::Target,
    file: Option<PathBuf>,
    json: bool,
) -> Result<(), Failure> {
    // The agent's own view of its log, when it is the agent's log being checked.
    let (path, agent) = match file {
        Some(f) => (f, None),
        None => match Client::try_connect(target).await {
            Ok(mut c) => {
                let s = c
                    .call(|mut a| async move { a.status(pb::StatusRequest {}).await })
                    .await?;
                let a = s.audit.unwrap_or_default();
                (PathBuf::from(&a.path), Some(a))
            }
            // An agent we do not trust is not checked against, nor is its log taken for ours.
            Err(client::Connect::Refused(f)) => return Err(f),
            Err(client::Connect::Unreachable(_)) => (dct_wire::audit::default_path(), None),
        },
    };
    let text = std::fs::read(&path)
        .map_err(|e| Failure::failed(format!("cannot read {}: {e}", path.display())))?;
    let v =
        audit::verify(&text).map_err(|e| Failure::failed(format!("{}: {e}", path.display())))?;
    if let Some(a) = &agent {
        if a.records > v.records || (a.records == v.records && a.last_hash != v.last_hash) {
            return Err(Failure::failed(format!(
                "{}: the agent has written {} records but the file's chain ends at {}: records were cut from the end",
                path.display(),
                a.records,
                v.records
            )));
        }
        if !a.error.is_empty() {
            eprintln!("note: the agent cannot write its audit log: {}", a.error);
        }
    }
    if json {
        return print_json(&serde_json::json!({
            "path": path.display().to_string(), "records": v.records, "last_hash": v.last_hash,
            "checked_against_agent": agent.is_some(),
        }));
    }
    println!(
        "{}: {} records, hash chain intact{}",
        path.display(),
        v.records,
        if agent.is_some() {
            ", and as the agent last wrote it"
        } else {
            ""
        }
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dct: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("dct: {}", f.message);
            if let Some(hint) = &f.hint {
                eprintln!("  {hint}");
            }
            if json && f.reason.as_deref() != Some(client::PARTIAL) {
                // Scripts decide on `reason`, not on the message.
                let error = serde_json::json!({"error": {
                    "reason": f.reason.as_deref().unwrap_or("failed"),
                    "message": f.message,
                    "hint": f.hint,
                }});
                println!("{error}");
            }
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let target = client::Target {
        socket: cli
            .socket
            .clone()
            .unwrap_or_else(client::default_socket_path),
        agent_uid: cli.agent_uid,
    };
    let json = cli.json;
    match cli.command {
        Command::Completions { shell } => {
            // Generated into memory first: clap_complete panics on a failed write (a closed
            // pipe); a Vec never fails one, and stdout's error is then reported as usual.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "dct", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)
                .map_err(|e| Failure::failed(format!("cannot write the completions: {e}")))
        }
        Command::Audit(AuditCmd::Verify { file }) => audit_verify(&target, file, json).await,
        Command::Notation(cmd) => notation::run(&target, cmd, json).await,
        Command::Status => {
            let mut c = Client::connect(&target).await?;
            let s = c
                .call(|mut a| async move { a.status(pb::StatusRequest {}).await })
                .await?;
            if json {
                return print_json(&output::status_json(&s));
            }
            println!("dct-agent {} at {}", s.version, target.socket.display());
            println!("backends: {}", s.backends.join(", "));
            if s.tokens.is_empty() {
                println!("no tokens configured");
                return Ok(());
            }
            let mut t = Table::new(&[
                "TOKEN", "BACKEND", "STATE", "PIN", "KEYS", "MODEL", "SERIAL",
            ]);
            for tok in &s.tokens {
                let state = if !tok.present {
                    "absent"
                } else if tok.unlocked {
                    "unlocked"
                } else {
                    "locked"
                };
                t.row(vec![
                    tok.label.clone(),
                    tok.backend.clone(),
                    state.into(),
                    output::pin_phrase(tok.pin.as_ref()),
                    tok.key_count.to_string(),
                    tok.model.clone(),
                    tok.serial.clone(),
                ]);
            }
            t.print();
            for tok in s.tokens.iter().filter(|t| !t.error.is_empty()) {
                println!("{}: {}", tok.label, tok.error);
            }
            if let Some(a) = &s.audit {
                match a.error.as_str() {
                    "" => println!("audit log: {} ({} records)", a.path, a.records),
                    e => println!("audit log: {} UNUSABLE, nothing is signed: {e}", a.path),
                }
            }
            Ok(())
        }
        Command::Unlock {
            token,
            pin_file,
            force,
        } => {
            let mut c = Client::connect(&target).await?;
            let token = token.unwrap_or_default();
            // A key-file directory with no PIN source given: the passphrases notary and
            // docker read from the environment, one unlock per variable set.
            if token.starts_with("file:")
                && pin_file.is_none()
                && std::env::var_os("DCT_PIN").is_none()
            {
                let found: Vec<(&str, SecretString)> = PASSPHRASE_VARS
                    .iter()
                    .filter_map(|v| Some((*v, SecretString::from(std::env::var(v).ok()?))))
                    .collect();
                if !found.is_empty() {
                    let mut opened = Vec::new();
                    for (var, pass) in found {
                        let req = pb::UnlockRequest {
                            token: token.clone(),
                            pin: String::new(),
                            force,
                            sealed_pin: Some(seal(&mut c, &pass).await?),
                        };
                        if c.call(|mut a| async move { a.unlock(req).await })
                            .await
                            .is_ok()
                        {
                            opened.push(var);
                        }
                    }
                    if opened.is_empty() {
                        return Err(Failure::failed(format!(
                            "no passphrase in the environment opens a key in {token}"
                        )));
                    }
                    if json {
                        return print_json(
                            &serde_json::json!({"token": token, "unlocked": true, "from": opened}),
                        );
                    }
                    println!("unlocked {token} with {}", opened.join(", "));
                    return Ok(());
                }
            }
            let pin = read_pin(&mut c, &token, pin_file.as_deref()).await?;
            let req = pb::UnlockRequest {
                token,
                pin: String::new(),
                force,
                sealed_pin: Some(seal(&mut c, &pin).await?),
            };
            let r = c.call(|mut a| async move { a.unlock(req).await }).await?;
            if json {
                return print_json(
                    &serde_json::json!({"token": r.token, "unlocked": true, "pin": output::pin_json(r.pin.as_ref())}),
                );
            }
            println!(
                "unlocked token {} ({})",
                r.token,
                output::pin_phrase(r.pin.as_ref())
            );
            Ok(())
        }
        Command::Lock { token, all: _ } => {
            let mut c = Client::connect(&target).await?;
            let req = pb::LockRequest {
                token: token.unwrap_or_default(),
            };
            let r = c.call(|mut a| async move { a.lock(req).await }).await?;
            if json {
                return print_json(&serde_json::json!({"locked": r.tokens}));
            }
            for t in &r.tokens {
                println!("locked token {t}");
            }
            Ok(())
        }
        Command::Key(KeyCmd::Generate {
            role,
            gun,
            token,
            slot,
            pin_policy,
            touch_policy,
        }) => {
            let mut c = Client::connect(&target).await?;
            let req = pb::GenerateKeyRequest {
                role,
                gun: gun.unwrap_or_default(),
                token: token.unwrap_or_default(),
                slot: slot.unwrap_or_default(),
                pin_policy: pin_policy.unwrap_or_default(),
                touch_policy: touch_policy.unwrap_or_default(),
            };
            let r = c
                .call(|mut a| async move { a.generate_key(req).await })
                .await?;
            let key = output::print_new_key(r.key, json)?;
            if !json && key.canonical_id != key.key_id {
                eprintln!(
                    "canonical ID {} (root certificate for {})",
                    key.canonical_id, key.gun
                );
            }
            Ok(())
        }
        Command::Key(KeyCmd::Attest { key, out }) => {
            let mut c = Client::connect(&target).await?;
            let req = pb::AttestKeyRequest { key_id: key };
            let r = c
                .call(|mut a| async move { a.attest_key(req).await })
                .await?;
            let pem = format!(
                "{}{}",
                output::pem("CERTIFICATE", &r.attestation),
                output::pem("CERTIFICATE", &r.intermediate)
            );
            match out {
                Some(path) => {
                    std::fs::write(&path, pem).map_err(|e| {
                        Failure::failed(format!("cannot write {}: {e}", path.display()))
                    })?;
                    eprintln!(
                        "attestation of key {} (token {}, slot {}) written to {}",
                        r.key_id,
                        r.token,
                        r.slot,
                        path.display()
                    );
                }
                None => print!("{pem}"),
            }
            Ok(())
        }
        Command::Key(KeyCmd::List { token }) => {
            let mut c = Client::connect(&target).await?;
            let req = pb::ListKeysRequest {
                token: token.unwrap_or_default(),
            };
            let r = c
                .call(|mut a| async move { a.list_keys(req).await })
                .await?;
            if json {
                let keys: Vec<_> = r.keys.iter().map(output::key_json).collect();
                return print_json(&serde_json::json!({"keys": keys, "errors": r.errors}));
            }
            let mut t = Table::new(&[
                "ROLE",
                "GUN",
                "KEY ID",
                "CANONICAL ID",
                "BACKEND",
                "TOKEN",
                "DETAIL",
            ]);
            for k in &r.keys {
                let canonical = if k.canonical_id == k.key_id {
                    "-".to_string()
                } else {
                    k.canonical_id.clone()
                };
                let gun = if k.gun.is_empty() {
                    "-".to_string()
                } else {
                    k.gun.clone()
                };
                t.row(vec![
                    k.role.clone(),
                    gun,
                    k.key_id.clone(),
                    canonical,
                    k.backend.clone(),
                    k.token.clone(),
                    if k.detail.is_empty() {
                        "-".into()
                    } else {
                        k.detail.clone()
                    },
                ]);
            }
            if r.keys.is_empty() {
                println!("no keys");
            } else {
                t.print();
            }
            let certs: Vec<_> = r
                .keys
                .iter()
                .filter(|k| !k.cert_subject.is_empty())
                .collect();
            if !certs.is_empty() {
                println!();
                let mut t = Table::new(&["KEY ID", "NOTATION CERTIFICATE", "EXPIRES"]);
                for k in certs {
                    t.row(vec![
                        k.key_id.clone(),
                        k.cert_subject.clone(),
                        k.cert_expires.clone(),
                    ]);
                }
                t.print();
            }
            for e in &r.errors {
                eprintln!("warning: {e}");
            }
            Ok(())
        }
        Command::Cosign(cmd) => cosign_cmd::run(&target, cmd, json).await,
        Command::Trust { server, command } => {
            let mut c = Client::connect(&target).await?;
            trust::run(&mut c, &server, command, json).await
        }
        Command::Verify {
            server,
            image,
            policy,
            digest,
            offline,
            print_digest,
        } => {
            let v = gate::Verify {
                image,
                policy,
                digest,
                offline,
                print_digest,
            };
            gate::run(&target, &server, v, json).await
        }
        Command::Migrate {
            server,
            image,
            to,
            key,
            signers,
            dry_run,
        } => {
            let mut c = Client::connect(&target).await?;
            let m = trust::Migrate {
                image,
                to,
                key,
                signers,
                dry_run,
            };
            trust::migrate(&mut c, &server, m, json).await
        }
        Command::Ceremony { server, command } => {
            let mut c = Client::connect(&target).await?;
            ceremony::run(&mut c, server.resolve()?, command, json).await
        }
        Command::Key(KeyCmd::Import {
            file,
            role,
            gun,
            token,
            passphrase_file,
        }) => {
            let bytes = read_input(&file)?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let role = role.or_else(|| header(&text, "role"));
            let passphrase = if text.contains("ENCRYPTED PRIVATE KEY") {
                read_passphrase(
                    role.as_deref().unwrap_or_default(),
                    passphrase_file.as_deref(),
                )?
            } else {
                SecretString::from(String::new())
            };
            let mut c = Client::connect(&target).await?;
            let sealed_passphrase = if passphrase.expose_secret().is_empty() {
                None
            } else {
                Some(seal(&mut c, &passphrase).await?)
            };
            let req = pb::ImportKeyRequest {
                file: bytes,
                passphrase: String::new(),
                sealed_passphrase,
                role: role.unwrap_or_default(),
                gun: gun.unwrap_or_default(),
                token: token.unwrap_or_default(),
            };
            let r = c
                .call(|mut a| async move { a.import_key(req).await })
                .await?;
            let key = output::print_new_key(r.key, json)?;
            if json {
                return Ok(());
            }
            eprintln!(
                "imported {} key for {} into token {}",
                key.role,
                if key.gun.is_empty() { "-" } else { &key.gun },
                key.token
            );
            Ok(())
        }
        Command::Key(KeyCmd::ExportPublic { key }) => {
            let mut c = Client::connect(&target).await?;
            let r = c
                .call(|mut a| async move {
                    a.list_keys(pb::ListKeysRequest {
                        token: String::new(),
                    })
                    .await
                })
                .await?;
            let wanted = key.to_ascii_lowercase();
            let found: Vec<&pb::Key> = r
                .keys
                .iter()
                .filter(|k| k.key_id.starts_with(&wanted) || k.canonical_id.starts_with(&wanted))
                .collect();
            let k = match found.as_slice() {
                [k] => *k,
                [] => {
                    return Err(Failure::failed(format!(
                        "no key {key} on the agent's tokens (see dct key list)"
                    )))
                }
                _ => return Err(Failure::failed(format!("key ID prefix {key} is ambiguous"))),
            };
            print!("{}", output::public_pem(k));
            Ok(())
        }
        Command::Tuf(TufCmd::Sign {
            file,
            key,
            role,
            gun,
            out,
            previous,
        }) => {
            let document = read_input(&file)?;
            let previous = match &previous {
                Some(p) => read_input(p)?,
                None => Vec::new(),
            };
            let mut c = Client::connect(&target).await?;
            // A key whose policy asks for confirmation waits here while the agent's own
            // confirmation program asks the user; no answer comes from this process.
            let req = pb::SignMetadataRequest {
                document,
                key_id: key,
                role: role.unwrap_or_default(),
                gun: gun.unwrap_or_default(),
                confirm_ticket: String::new(),
                previous,
            };
            let r = c
                .call(|mut a| async move { a.sign_metadata(req).await })
                .await?;
            let out = out.unwrap_or_else(|| file.clone());
            write_output(&out, &r.document)?;
            if json {
                return print_json(
                    &serde_json::json!({"key_id": r.key_id, "role": r.role, "version": r.version, "out": out}),
                );
            }
            eprintln!(
                "signed {} v{} with key {} -> {}",
                r.role,
                r.version,
                r.key_id,
                out.display()
            );
            Ok(())
        }
        Command::Tuf(TufCmd::Verify {
            dir,
            gun,
            at,
            root_keys,
        }) => {
            let files = read_repo_dir(&dir)?;
            let mut c = Client::connect(&target).await?;
            let req = pb::VerifyRepositoryRequest {
                gun: gun.clone(),
                files,
                at: at.unwrap_or_default(),
                pinned_root_keys: root_keys,
            };
            let r = c
                .call(|mut a| async move { a.verify_repository(req).await })
                .await?;
            if json {
                print_json(&output::verify_json(&gun, &r))?;
            } else if r.valid {
                if r.pinned {
                    println!("{gun}: verified (root pinned)");
                } else {
                    println!("{gun}: verified; root trusted as given (not pinned: use --root-key)");
                }
                for role in &r.roles {
                    println!(
                        "  {} v{} expires {} signed by {}",
                        role.role,
                        role.version,
                        role.expires,
                        role.signed_by.join(", ")
                    );
                }
                let mut t = Table::new(&["ROLE", "TARGET", "DIGEST", "SIZE"]);
                let mut any = false;
                for role in &r.roles {
                    for tg in &role.targets {
                        any = true;
                        t.row(vec![
                            role.role.clone(),
                            tg.name.clone(),
                            format!("sha256:{}", tg.sha256),
                            tg.length.to_string(),
                        ]);
                    }
                }
                if any {
                    t.print();
                }
                for role in &r.roles {
                    for u in &role.unusable {
                        eprintln!(
                            "warning: {} lists {} without a usable digest: {}",
                            role.role, u.name, u.reason
                        );
                    }
                }
                for s in &r.skipped {
                    eprintln!(
                        "warning: {} skipped, its targets untrusted: {}",
                        s.role, s.reason
                    );
                }
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
            }
            if r.valid {
                Ok(())
            } else {
                Err(Failure::failed(format!(
                    "verification failed: {}: {}",
                    r.failed_role, r.reason
                )))
            }
        }
    }
}

/// The PIN from --pin-file, DCT_PIN, or a no-echo prompt (after showing tries left).
async fn read_pin(
    c: &mut Client,
    token: &str,
    pin_file: Option<&Path>,
) -> Result<SecretString, Failure> {
    if let Some(path) = pin_file {
        let mut raw = zeroize::Zeroizing::new(Vec::new());
        let r = if path == Path::new("-") {
            std::io::stdin().read_to_end(&mut raw)
        } else {
            std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut raw))
        };
        r.map_err(|e| Failure::failed(format!("cannot read PIN file {}: {e}", path.display())))?;
        let text =
            std::str::from_utf8(&raw).map_err(|_| Failure::failed("PIN file is not UTF-8"))?;
        let line = text.lines().next().unwrap_or_default();
        return Ok(SecretString::from(line.to_string()));
    }
    if let Ok(pin) = std::env::var("DCT_PIN") {
        return Ok(SecretString::from(pin));
    }
    // Show what the token says about tries before asking.
    let s = c
        .call(|mut a| async move { a.status(pb::StatusRequest {}).await })
        .await?;
    let tok = s
        .tokens
        .iter()
        .find(|t| token.is_empty() || t.label == token);
    let (label, phrase) = match tok {
        Some(t) => (t.label.clone(), output::pin_phrase(t.pin.as_ref())),
        None => (token.to_string(), String::new()),
    };
    eprintln!("token {label}: {phrase}");
    let pin = rpassword::prompt_password(format!("PIN for token {label}: ")).map_err(|e| {
        Failure::usage(format!(
            "cannot prompt for a PIN ({e}); use --pin-file FILE or DCT_PIN"
        ))
    })?;
    Ok(SecretString::from(pin))
}

/// Passphrase variables notary and docker read, for key files.
const PASSPHRASE_VARS: [&str; 6] = [
    "NOTARY_ROOT_PASSPHRASE",
    "NOTARY_TARGETS_PASSPHRASE",
    "NOTARY_SNAPSHOT_PASSPHRASE",
    "NOTARY_DELEGATION_PASSPHRASE",
    "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE",
    "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE",
];

/// A Go-style PEM header's value (`role: targets`).
fn header(text: &str, name: &str) -> Option<String> {
    text.lines()
        .take_while(|l| !l.trim().is_empty() || l.starts_with("-----"))
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        })
}

/// A key file's passphrase: --passphrase-file, the environment variables notary and docker
/// read for the role, or a prompt without echo.
fn read_passphrase(role: &str, file: Option<&Path>) -> Result<SecretString, Failure> {
    if let Some(path) = file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| Failure::failed(format!("cannot read {}: {e}", path.display())))?,
        );
        return Ok(SecretString::from(
            text.lines().next().unwrap_or_default().to_string(),
        ));
    }
    let vars: &[&str] = match role {
        "root" => &[
            "NOTARY_ROOT_PASSPHRASE",
            "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE",
        ],
        "targets" => &[
            "NOTARY_TARGETS_PASSPHRASE",
            "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE",
        ],
        "snapshot" => &[
            "NOTARY_SNAPSHOT_PASSPHRASE",
            "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE",
        ],
        _ => &[
            "NOTARY_DELEGATION_PASSPHRASE",
            "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE",
        ],
    };
    if let Some(v) = vars.iter().find_map(|v| std::env::var(v).ok()) {
        return Ok(SecretString::from(v));
    }
    let what = if role.is_empty() {
        "the key file".to_string()
    } else {
        format!("the {role} key")
    };
    rpassword::prompt_password(format!("Passphrase for {what}: "))
        .map(SecretString::from)
        .map_err(|e| {
            Failure::usage(format!(
                "cannot prompt for a passphrase ({e}); use --passphrase-file or {}",
                vars[0]
            ))
        })
}

fn read_input(path: &Path) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    let r = if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut buf).map(|_| ())
    } else {
        std::fs::read(path).map(|b| buf = b)
    };
    r.map_err(|e| Failure::failed(format!("cannot read {}: {e}", path.display())))?;
    Ok(buf)
}

/// Writes atomically (temporary file + rename) so a failure never leaves half a file.
fn write_output(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    if path == Path::new("-") {
        return std::io::stdout()
            .write_all(bytes)
            .map_err(|e| Failure::failed(format!("cannot write standard output: {e}")));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fail = |e: String| Failure::failed(format!("cannot write {}: {e}", path.display()));
    // A new file with a random name (O_EXCL), renamed over the target when complete.
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| fail(e.to_string()))?;
    tmp.write_all(bytes).map_err(|e| fail(e.to_string()))?;
    tmp.persist(path).map_err(|e| fail(e.error.to_string()))?;
    Ok(())
}

/// root/targets/snapshot/timestamp.json and targets/**/*.json of a repository directory.
fn read_repo_dir(dir: &Path) -> Result<Vec<pb::MetadataFile>, Failure> {
    if dir.is_file() {
        return read_archive(dir);
    }
    if !dir.is_dir() {
        return Err(Failure::failed(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    for role in ["root", "targets", "snapshot", "timestamp"] {
        let p = dir.join(format!("{role}.json"));
        if p.exists() {
            files.push(pb::MetadataFile {
                role: role.into(),
                content: read_input(&p)?,
            });
        }
    }
    let mut stack = vec![dir.join("targets")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let (Some("json"), Ok(rel)) =
                (p.extension().and_then(|x| x.to_str()), p.strip_prefix(dir))
            {
                let role = rel.with_extension("").to_string_lossy().into_owned();
                files.push(pb::MetadataFile {
                    role,
                    content: read_input(&p)?,
                });
            }
        }
    }
    Ok(files)
}

/// The role files of a trust archive (`dct trust export`; the agent checks them as any
/// others, and its root chain with `dct trust verify --from`).
fn read_archive(path: &Path) -> Result<Vec<pb::MetadataFile>, Failure> {
    use base64::Engine as _;
    let bad = |why: String| Failure::failed(format!("{}: {why}", path.display()));
    let archive: serde_json::Value = serde_json::from_slice(&read_input(path)?)
        .map_err(|e| bad(format!("neither a directory nor a trust archive: {e}")))?;
    let files = archive
        .get("files")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| bad("not a trust archive (no files)".into()))?;
    files
        .iter()
        .map(|(role, b64)| {
            let content = b64
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .ok_or_else(|| bad(format!("{role} is not base64")))?;
            Ok(pb::MetadataFile {
                role: role.clone(),
                content,
            })
        })
        .collect()
}
