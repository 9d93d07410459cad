//! `virtual-piv`: a virtual YubiKey-like PIV card for a pcscd with vsmartcard-vpcd (see
//! `dct_tests::piv_card`). Either listens on 127.0.0.1 `--port P` (the card) and P+1 (a
//! blank card) for vpcd's reverse mode, or connects to a listening vpcd (`--connect
//! HOST:PORT`), optionally inside another network namespace (`--netns /proc/PID/ns/net`).
//! SIGUSR1 takes the card out of the reader, SIGUSR2 puts it back (`--connect` only: in
//! reverse mode vpcd 3.3 cannot survive a lost card).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dct_tests::piv_card::vpcd::{self, Link, ServerOptions};
use dct_tests::piv_card::{CardConfig, PivCard};

const USAGE: &str = "usage: virtual-piv (--port P | --connect HOST:PORT [--netns FILE]) \
[--serial N] [--version X.Y.Z] [--touch-delay-ms N] [--ca-out FILE] [--ready-file FILE] \
[--verbose]";

struct Args {
    cfg: CardConfig,
    link: Link,
    netns: Option<PathBuf>,
    ca_out: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    verbose: bool,
}

fn parse_version(v: &str) -> Option<(u8, u8, u8)> {
    let mut parts = v.split('.').map(|p| p.parse::<u8>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut cfg = CardConfig::default();
    let (mut port, mut connect, mut netns) = (None, None, None);
    let (mut ca_out, mut ready_file, mut verbose) = (None, None, false);
    while let Some(flag) = args.next() {
        if flag == "--verbose" {
            verbose = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = || format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--port" => port = Some(value.parse::<u16>().map_err(|_| bad())?),
            "--connect" => connect = Some(value.parse().map_err(|_| bad())?),
            "--netns" => netns = Some(PathBuf::from(value)),
            "--serial" => cfg.serial = value.parse().map_err(|_| bad())?,
            "--version" => cfg.version = parse_version(&value).ok_or_else(bad)?,
            "--touch-delay-ms" => {
                cfg.touch_delay = Duration::from_millis(value.parse().map_err(|_| bad())?)
            }
            "--ca-out" => ca_out = Some(PathBuf::from(value)),
            "--ready-file" => ready_file = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    let link = match (port, connect) {
        (Some(port), None) => Link::Listen { port },
        (None, Some(addr)) => Link::Connect { addr },
        _ => return Err(format!("give one of --port and --connect\n{USAGE}")),
    };
    Ok(Args {
        cfg,
        link,
        netns,
        ca_out,
        ready_file,
        verbose,
    })
}

/// Moves this (still single-threaded) process into the network namespace at `path`.
fn enter_netns(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(path)?;
    // SAFETY: setns(2) on an open namespace file descriptor; no memory is shared.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.netns {
        if let Err(e) = enter_netns(path) {
            eprintln!("virtual-piv: entering {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let card = PivCard::new(args.cfg);
    if let Some(path) = &args.ca_out {
        if let Err(e) = std::fs::write(path, card.ca_cert_pem()) {
            eprintln!("virtual-piv: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let opts = ServerOptions {
        link: args.link,
        verbose: args.verbose,
        ready_file: args.ready_file,
    };
    match vpcd::run(card, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtual-piv: {e}");
            ExitCode::FAILURE
        }
    }
}
