//! `dct-authz`: the agent's Docker authorization plugin. Keyless: it verifies, never signs.
//!
//! dockerd finds it by `/etc/docker/plugins/NAME.spec` (`unix:///path/to.sock`) and
//! `dockerd --authorization-plugin=NAME`; it lets dockerd pull and create containers from
//! images signed under pinned roots only (see the README, "Engine enforcement").
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use dct_agent::authz::{check::Judge, config, server};

/// Docker authorization plugin: dockerd pulls and runs only signed images.
#[derive(Parser)]
#[command(name = "dct-authz", version)]
struct Args {
    /// The plugin's config (TOML).
    #[arg(long, value_name = "FILE", default_value = "/etc/dct/authz.toml")]
    config: PathBuf,
    /// A daemon.json whose `content-trust` block (Mirantis Container Runtime's) gives the
    /// pins and the mode; overrides the config's `daemon_json`.
    #[arg(long, value_name = "FILE")]
    daemon_json: Option<PathBuf>,
    /// Print the effective mode and pins as JSON, and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DCT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cfg = match config::load(&args.config, args.daemon_json.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dct-authz: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        let out = serde_json::json!({
            "mode": format!("{:?}", cfg.mode).to_ascii_lowercase(),
            "unpinned": format!("{:?}", cfg.config.unpinned).to_ascii_lowercase(),
            "pins": cfg.pinning.certs,
        });
        println!("{out}");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dct-authz: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        let judge = Judge::new(&cfg)?;
        let plugin = Arc::new(server::Plugin::new(judge, cfg.config.audit_log.as_deref())?);
        tracing::info!(mode = ?cfg.mode, unpinned = ?cfg.config.unpinned, pins = cfg.pinning.certs.len(), "dct-authz starting");
        let stop = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("SIGTERM handler: {e}");
                        std::future::pending::<()>().await;
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        server::serve(&cfg.config.socket, plugin, stop).await
    };
    match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dct-authz: {e}");
            ExitCode::FAILURE
        }
    }
}
