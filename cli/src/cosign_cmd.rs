//! `dct cosign ...`: installing the `sigstore-kms-dct` plugin, and a key's public PEM for
//! `cosign verify --key pub.pem`.

use std::path::PathBuf;

use clap::Subcommand;
use dct_cli::cosign;

use crate::client::{Client, Failure, Target};
use crate::output::print_json;

#[derive(Subcommand)]
pub enum CosignCmd {
    /// Put the `sigstore-kms-dct` plugin where cosign finds it (a symbolic link to the one
    /// beside dct, in a directory on PATH), so that `cosign sign --key dct://KEYID` signs
    /// with a key on the agent's tokens. Needs no agent.
    Install {
        /// Where to link it. Default: ~/.local/bin.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a key's public key as PEM (SubjectPublicKeyInfo), for `cosign verify --key
    /// FILE` where the agent is not at hand.
    PublicKey {
        /// Key ID, canonical ID or a unique prefix.
        key: String,
        /// Write it to FILE instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

pub async fn run(target: &Target, cmd: CosignCmd, json: bool) -> Result<(), Failure> {
    match cmd {
        CosignCmd::Install { dir } => {
            let dir = match dir {
                Some(d) => d,
                None => cosign::default_install_dir()?,
            };
            let (link, on_path) = cosign::install(&dir)?;
            if json {
                return print_json(&serde_json::json!({
                    "plugin": link.display().to_string(), "on_path": on_path,
                }));
            }
            println!("installed {}", link.display());
            if !on_path {
                eprintln!(
                    "warning: {} is not on PATH: cosign finds the plugin only there (add it to PATH)",
                    dir.display()
                );
            }
            eprintln!("sign with: cosign sign --key dct://KEYID IMAGE@DIGEST (see `dct key list`)");
            Ok(())
        }
        CosignCmd::PublicKey { key, output } => {
            let mut c = Client::connect(target).await?;
            let k = cosign::find_key(&mut c, &key).await?;
            if k.spki.is_empty() {
                return Err(Failure::failed(format!(
                    "the agent sent no public key for {}",
                    k.key_id
                )));
            }
            let pem = cosign::spki_pem(&k.spki);
            match output {
                Some(path) => std::fs::write(&path, pem.as_bytes())
                    .map_err(|e| Failure::failed(format!("cannot write {}: {e}", path.display()))),
                None if json => print_json(&serde_json::json!({"key_id": k.key_id, "pem": pem})),
                None => {
                    print!("{pem}");
                    Ok(())
                }
            }
        }
    }
}
