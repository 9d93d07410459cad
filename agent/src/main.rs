//! `dct-agent`: the daemon. Holds the tokens, serves the dct API on a Unix socket.
#![forbid(unsafe_code)]
// As the library: no unchecked indexing or slicing (issue 13).
#![deny(clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dct_agent::daemon::{self as server, config};

/// Hardware-backed signing agent for Docker Content Trust (Notary v1).
///
/// Runs in the foreground, serves `dct` on a Unix socket, stops on SIGINT or SIGTERM.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML). Default: $XDG_CONFIG_HOME/dct/agent.toml, if present.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Unix socket to serve on. Default: the config's `socket`, else
    /// $XDG_RUNTIME_DIR/dct-agent/agent.sock.
    #[arg(long, env = "DCT_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Start although the audit log does not continue the version ledger's last
    /// checkpoint after a crash (signatures made in between may be forgotten).
    #[arg(long)]
    accept_ledger_gap: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Checks a config file and lists every problem in it (unknown keys, bad durations,
    /// unreadable or writable-by-others PKCS#11 modules, PIN and key files others can
    /// read, ...), without loading a module or touching a token. Exits 1 on any problem.
    CheckConfig {
        /// The file; default: --config, else $XDG_CONFIG_HOME/dct/agent.toml.
        file: Option<PathBuf>,
    },
}

/// `dct-agent check-config`: one problem a line on stderr; exit 1 if any.
fn check_config(file: Option<PathBuf>) -> ExitCode {
    let Some(path) = file.or_else(config::default_config_path) else {
        eprintln!("dct-agent: no config file named and no default path (HOME unset)");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dct-agent: cannot read config {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let problems = config::check(&text);
    for p in &problems {
        for line in p.lines() {
            eprintln!("{}: {line}", path.display());
        }
    }
    if problems.is_empty() {
        println!("{}: no problems", path.display());
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{} problem{} in {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            path.display()
        );
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    // Before any thread starts: big buffers (a role of 100,000 tags) are returned when freed.
    let tuned = dct_malloc::return_big_buffers_when_freed();
    let mut args = Args::parse();
    if let Some(Command::CheckConfig { file }) = args.command.take() {
        return check_config(file.or(args.config));
    }
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    // The yubikey and pcsc crates trace whole APDUs at debug/trace level: PINs, management
    // keys, imported private keys. Whatever DCT_LOG asks, nothing below INFO from them.
    // A static target filter (not a closure), joined to DCT_LOG's in one filter: a callsite
    // either turns off is known off once (Interest::never), so the many trace spans and
    // events of h2, hyper and tonic cost nothing per request. (Two nested per-layer filters
    // would not do: their interests add up to "sometimes", and the registry then makes
    // every h2 span and asks both filters each time.)
    let card_io = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::level_filters::LevelFilter::TRACE)
        .with_target("yubikey", tracing::Level::INFO)
        .with_target("pcsc", tracing::Level::INFO);
    let wanted =
        tracing_subscriber::EnvFilter::try_from_env("DCT_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(wanted.and(card_io)),
        )
        .init();
    tracing::debug!(tuned, "glibc mmap threshold fixed");
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dct-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let (mut cfg, cfg_path) = config::Config::load(args.config.as_deref())?;
    cfg.accept_ledger_gap = args.accept_ledger_gap;
    match &cfg_path {
        Some(p) => tracing::info!("config {}", p.display()),
        None => tracing::info!("no config file: no tokens (verification only)"),
    }
    let socket = args
        .socket
        .or_else(|| cfg.socket.clone())
        .unwrap_or_else(config::default_socket_path);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    runtime.block_on(async move {
        // Handlers first: a SIGTERM during start-up (say, right after the socket appeared)
        // is a clean shutdown, not the default death.
        let shutdown = shutdown_signal()?;
        let tokens = server::start_tokens(&cfg.pkcs11, &cfg.file, &cfg.piv)?;
        for t in &tokens {
            tracing::info!(token = %t.label, backend = t.backend, "token configured");
        }
        let access = cfg.socket_access()?;
        let listener = match server::activation::passed_listener(access.as_ref()) {
            Some(passed) => passed?,
            None => {
                let l = server::bind(&socket, access.as_ref())?;
                tracing::info!("listening on {}", socket.display());
                l
            }
        };
        listener.serve(&cfg, tokens, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are installed now.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    })
}
