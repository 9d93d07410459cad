//! `dct notation`: a signing CA on a token, certificates for signing keys, what Notation
//! verifiers need, and the `notation-dct` plugin's installation.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use dct_proto::dct::v1 as pb;
use serde_json::json;

use crate::{output, print_json, Client, Failure, Table};
use dct_cli::client::Target;

#[derive(Subcommand)]
pub enum NotationCmd {
    /// The signing CA: a key made on a token and its self-signed CA certificate, signed
    /// there (through the agent's guard, audited). A transcript is written beside it.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Signing certificates for keys.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Write a Notation trust store (`truststore/x509/ca/NAME/`) holding the signing CA
    /// certificates, and a trust policy trusting them for the scopes
    /// (`trustpolicy.oci.json`, and the same as `trustpolicy.json`, the name notation 1.3
    /// reads), into DIR (e.g. $XDG_CONFIG_HOME/notation).
    ExportTrust {
        dir: PathBuf,
        /// A registry scope the policy covers (`registry/repository`, or `*`). Repeatable.
        #[arg(long = "scope", value_name = "REPO", required = true)]
        scopes: Vec<String>,
        /// Only this signing CA (its key ID). Default: every signing CA of this agent.
        #[arg(long, value_name = "KEYID")]
        ca: Option<String>,
        /// The trust store's name (`ca:NAME` in the policy).
        #[arg(long, default_value = "dct")]
        name: String,
        /// A trusted identity, e.g. "x509.subject: C=US, ST=WA, O=Example, CN=Release"
        /// (Notation wants C, ST and O in it). Repeatable. Default: "*", any leaf the CA
        /// issued.
        #[arg(long = "identity", value_name = "IDENTITY")]
        identities: Vec<String>,
    },
    /// Copy the `notation-dct` plugin (installed beside `dct`) into Notation's plugin
    /// directory, $XDG_CONFIG_HOME/notation/plugins/dct/. Needs no agent.
    Install {
        /// The plugin binary to install. Default: `notation-dct` beside this `dct`.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Make a signing CA: a P-256 key on the token (role notation-ca), which signs its own
    /// CA certificate (basicConstraints cA, keyUsage keyCertSign).
    Init {
        /// The CA certificate's subject: a common name or an RFC 4514 name.
        #[arg(long)]
        name: String,
        #[arg(long)]
        token: Option<String>,
        /// Lifetime of the CA certificate.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// A ceremony directory (e.g. on removable media, the CA's machine offline): the CA
        /// certificate is written there as notation-ca.pem and the step appended to its
        /// transcript.json / transcript.md, as root-key ceremonies do.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Who performs the ceremony (recorded in the transcript).
        #[arg(long, default_value = "")]
        operator: String,
    },
}

#[derive(Subcommand)]
pub enum CertCmd {
    /// Issue a signing certificate for KEYID (on any token), signed by the CA's key on its
    /// token; kept by the agent with the key, returned to Notation with each signature.
    Issue {
        #[arg(value_name = "KEYID")]
        key: String,
        /// The signing CA's key ID.
        #[arg(long, value_name = "KEYID")]
        ca: String,
        /// Lifetime (never beyond the CA's).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The certificate's subject: a common name, or an RFC 4514 name such as
        /// "CN=Release,O=Example,ST=WA,C=US" (what Notation's trustedIdentities can name).
        /// Default: "dct-agent <key ID prefix>".
        #[arg(long, alias = "subject")]
        cn: Option<String>,
    },
    /// A PKCS#10 certificate request for KEYID, signed on its token (proof of possession),
    /// for a company CA; PEM on standard output.
    Request {
        #[arg(value_name = "KEYID")]
        key: String,
        /// The request's subject: a common name or an RFC 4514 name. Default: "dct-agent
        /// <key ID prefix>".
        #[arg(long, alias = "subject")]
        cn: Option<String>,
    },
    /// Issue a signing certificate for a PKCS#10 request made elsewhere (`cert request` on
    /// the signing key's agent), signed by the CA's key here: the request's signature is
    /// checked first. The chain (PEM, leaf first) goes to standard output, for
    /// `cert import` there.
    Sign {
        /// The request (PEM or DER; `-` reads standard input).
        csr: PathBuf,
        /// The signing CA's key ID.
        #[arg(long, value_name = "KEYID")]
        ca: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Import the chain a CA returned for KEYID: PEM certificates, leaf first (`-` reads
    /// standard input). The leaf must be the key's and each certificate issued by the next.
    Import {
        #[arg(value_name = "KEYID")]
        key: String,
        file: PathBuf,
    },
}

/// The DER of each `CERTIFICATE` in PEM text, in order.
fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, Failure> {
    pem_blocks(text, "CERTIFICATE")
}

/// The DER of each PEM block labelled `label`, in order.
fn pem_blocks(text: &str, label: &str) -> Result<Vec<Vec<u8>>, Failure> {
    use base64::Engine;
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (line, body.as_mut()) {
            (l, None) if l == begin => body = Some(String::new()),
            (l, Some(b)) if l == end => {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|e| Failure::failed(format!("bad PEM {label}: {e}")))?;
                out.push(der);
                body = None;
            }
            (l, Some(b)) => b.push_str(l),
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(Failure::failed(format!("no PEM {label} found")));
    }
    Ok(out)
}

pub async fn run(target: &Target, cmd: NotationCmd, json: bool) -> Result<(), Failure> {
    match cmd {
        NotationCmd::Install { from } => install(from, json),
        NotationCmd::Ca(CaCmd::Init {
            name,
            token,
            days,
            dir,
            operator,
        }) => {
            let mut c = Client::connect(target).await?;
            let req = pb::NotationCaInitRequest {
                token: token.unwrap_or_default(),
                name,
                days,
            };
            let r = c
                .call(|mut a| async move { a.notation_ca_init(req).await })
                .await?;
            let key = r.key.unwrap_or_default();
            if let Some(dir) = &dir {
                write(
                    &dir.join("notation-ca.pem"),
                    &output::pem("CERTIFICATE", &r.certificate),
                )?;
                let agent_transcript = std::fs::read_to_string(&r.transcript).unwrap_or_default();
                crate::ceremony::record_titled(
                    dir,
                    "Notation signing CA ceremony transcript",
                    "notation-ca init",
                    &operator,
                    json!({
                        "ca_key_id": key.key_id,
                        "token": key.token,
                        "backend": key.backend,
                        "made": agent_transcript.lines().collect::<Vec<_>>(),
                    }),
                    &["notation-ca.pem"],
                )?;
            }
            if json {
                return print_json(&json!({
                    "key": output::key_json(&key),
                    "certificate": output::pem("CERTIFICATE", &r.certificate),
                    "transcript": r.transcript,
                }));
            }
            println!("signing CA key {} on token {}", key.key_id, key.token);
            println!("transcript: {}", r.transcript);
            print!("{}", output::pem("CERTIFICATE", &r.certificate));
            Ok(())
        }
        NotationCmd::Cert(CertCmd::Issue { key, ca, days, cn }) => {
            let mut c = Client::connect(target).await?;
            let req = pb::NotationCertIssueRequest {
                key_id: key,
                ca_key_id: ca,
                days,
                common_name: cn.unwrap_or_default(),
            };
            let r = c
                .call(|mut a| async move { a.notation_cert_issue(req).await })
                .await?;
            let pems: Vec<String> = r
                .certificate_chain
                .iter()
                .map(|d| output::pem("CERTIFICATE", d))
                .collect();
            if json {
                return print_json(&json!({"key_id": r.key_id, "certificate_chain": pems}));
            }
            eprintln!(
                "certificate issued for key {} ({} certificates, leaf first)",
                r.key_id,
                pems.len()
            );
            print!("{}", pems.concat());
            Ok(())
        }
        NotationCmd::Cert(CertCmd::Request { key, cn }) => {
            let mut c = Client::connect(target).await?;
            let req = pb::NotationCertRequestRequest {
                key_id: key,
                common_name: cn.unwrap_or_default(),
            };
            let r = c
                .call(|mut a| async move { a.notation_cert_request(req).await })
                .await?;
            let pem = output::pem("CERTIFICATE REQUEST", &r.csr);
            if json {
                return print_json(&json!({"key_id": r.key_id, "csr": pem}));
            }
            print!("{pem}");
            Ok(())
        }
        NotationCmd::Cert(CertCmd::Sign { csr, ca, days }) => {
            let bytes = if csr.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .map_err(|e| Failure::failed(format!("cannot read standard input: {e}")))?;
                b
            } else {
                std::fs::read(&csr)
                    .map_err(|e| Failure::failed(format!("cannot read {}: {e}", csr.display())))?
            };
            let der = match std::str::from_utf8(&bytes) {
                Ok(text) if text.contains("-----BEGIN CERTIFICATE REQUEST-----") => {
                    pem_blocks(text, "CERTIFICATE REQUEST")?
                        .into_iter()
                        .next()
                        .ok_or_else(|| Failure::failed("no PEM CERTIFICATE REQUEST found"))?
                }
                _ => bytes,
            };
            let mut c = Client::connect(target).await?;
            let req = pb::NotationCertSignRequest {
                csr: der,
                ca_key_id: ca,
                days,
            };
            let r = c
                .call(|mut a| async move { a.notation_cert_sign(req).await })
                .await?;
            let pems: Vec<String> = r
                .certificate_chain
                .iter()
                .map(|d| output::pem("CERTIFICATE", d))
                .collect();
            if json {
                return print_json(&json!({"certificate_chain": pems}));
            }
            print!("{}", pems.concat());
            Ok(())
        }
        NotationCmd::Cert(CertCmd::Import { key, file }) => {
            let text = if file.as_os_str() == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                    .map_err(|e| Failure::failed(format!("cannot read standard input: {e}")))?;
                t
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| Failure::failed(format!("cannot read {}: {e}", file.display())))?
            };
            let chain = pem_certificates(&text)?;
            let mut c = Client::connect(target).await?;
            let req = pb::NotationCertImportRequest {
                key_id: key,
                certificate_chain: chain,
            };
            let r = c
                .call(|mut a| async move { a.notation_cert_import(req).await })
                .await?;
            if json {
                return print_json(&json!({
                    "key_id": r.key_id, "subject": r.subject, "expires": r.expires,
                }));
            }
            println!(
                "certificate chain imported for key {}: {} until {}",
                r.key_id, r.subject, r.expires
            );
            Ok(())
        }
        NotationCmd::ExportTrust {
            dir,
            scopes,
            ca,
            name,
            identities,
        } => {
            let mut c = Client::connect(target).await?;
            let req = pb::NotationTrustRequest {
                ca_key_id: ca.unwrap_or_default(),
            };
            let r = c
                .call(|mut a| async move { a.notation_trust(req).await })
                .await?;
            let written = export_trust(&dir, &name, &scopes, &identities, &r.ca_certificates)?;
            if json {
                return print_json(&json!({
                    "trust_store": format!("ca:{name}"),
                    "files": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                }));
            }
            let mut t = Table::new(&["FILE"]);
            for p in &written {
                t.row(vec![p.display().to_string()]);
            }
            t.print();
            Ok(())
        }
    }
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::failed(format!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::write(path, text)
        .map_err(|e| Failure::failed(format!("cannot write {}: {e}", path.display())))
}

/// Trust store and policy, as Notation reads them from its configuration directory.
fn export_trust(
    dir: &Path,
    name: &str,
    scopes: &[String],
    identities: &[String],
    cas: &[Vec<u8>],
) -> Result<Vec<PathBuf>, Failure> {
    let identities = if identities.is_empty() {
        vec!["*".to_string()]
    } else {
        identities.to_vec()
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Failure::usage(format!(
            "--name {name:?}: letters, digits, '-', '_' and '.' only"
        )));
    }
    let mut written = Vec::new();
    let store = dir.join("truststore").join("x509").join("ca").join(name);
    for (i, der) in cas.iter().enumerate() {
        let p = store.join(format!("dct-ca-{}.pem", i + 1));
        write(&p, &output::pem("CERTIFICATE", der))?;
        written.push(p);
    }
    let policy = json!({
        "version": "1.0",
        "trustPolicies": [{
            "name": format!("{name}-signing-ca"),
            "registryScopes": scopes,
            "signatureVerification": {"level": "strict"},
            "trustStores": [format!("ca:{name}")],
            "trustedIdentities": identities,
        }],
    });
    let text = serde_json::to_string_pretty(&policy)
        .map_err(|e| Failure::failed(format!("trust policy: {e}")))?;
    // The OCI policy's name in the Notary Project's specification, and the name notation
    // v1.3 (notation-go v1.3.2, `dir.PathTrustPolicy`) reads it under: the same document.
    for file in ["trustpolicy.oci.json", "trustpolicy.json"] {
        let p = dir.join(file);
        write(&p, &format!("{text}\n"))?;
        written.push(p);
    }
    Ok(written)
}

/// Notation's plugin directory for `dct`: `$XDG_CONFIG_HOME/notation/plugins/dct`.
fn plugin_dir() -> Result<PathBuf, Failure> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| Failure::failed("neither XDG_CONFIG_HOME nor HOME is set"))?;
    Ok(config.join("notation").join("plugins").join("dct"))
}

fn install(from: Option<PathBuf>, json: bool) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let from = match from {
        Some(f) => f,
        None => std::env::current_exe()
            .map_err(|e| Failure::failed(format!("cannot find this dct: {e}")))?
            .with_file_name("notation-dct"),
    };
    if !from.is_file() {
        return Err(Failure::failed(format!(
            "{} is missing; install dct-agent's notation-dct beside dct, or name it with --from",
            from.display()
        )));
    }
    let dir = plugin_dir()?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::failed(format!("cannot create {}: {e}", dir.display())))?;
    let dest = dir.join("notation-dct");
    // Notation wants a regular file, not a symlink: copy, then rename into place.
    let tmp = dir.join(".notation-dct.tmp");
    std::fs::copy(&from, &tmp)
        .map_err(|e| Failure::failed(format!("cannot copy {}: {e}", from.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .and_then(|_| std::fs::rename(&tmp, &dest))
        .map_err(|e| Failure::failed(format!("cannot install {}: {e}", dest.display())))?;
    if json {
        return print_json(&json!({"installed": dest.display().to_string()}));
    }
    println!("installed {}", dest.display());
    println!("next: notation key add NAME --plugin dct --id KEYID");
    Ok(())
}
