//! The card side of vsmartcard-vpcd's protocol. Messages are a 2-byte big-endian length
//! and a payload; a 1-byte payload is a control message (0 power off, 1 power on, 2 reset,
//! 4 send the ATR), anything longer a command APDU answered with a response APDU.
//!
//! Two ways to meet vpcd (the driver inside pcscd):
//! - [`Link::Listen`], vpcd's reverse mode (`DEVICENAME 127.0.0.1:P`): vpcd connects to the
//!   card on 127.0.0.1, slot 0 on `port` (the PIV card), slot 1 on `port + 1` (a blank
//!   card). vpcd 3.3 cannot live through a lost connection in this mode: its presence poll
//!   then calls `select()` on socket -1 and pcscd aborts ("bit out of range 0 - FD_SETSIZE"),
//!   the same as when nothing listens at start. So in this mode the card can never be
//!   taken out (SIGUSR1 here kills pcscd).
//! - [`Link::Connect`], vpcd's normal mode (`DEVICENAME /dev/null:P`, vpcd listens on
//!   0.0.0.0:P and P+1): the card connects to vpcd. Taking the card out is closing the
//!   connection: vpcd's next presence poll (pcscd polls every 400 ms) finds the card gone
//!   and waits for a new client; connecting again is re-insertion. Because vpcd listens
//!   on all addresses, run pcscd in a network namespace of its own and let the card join
//!   it (`--netns /proc/PID/ns/net`): that is what the test harness does.
//!
//! SIGUSR1 takes the card out (drops the connection; Listen: closes new ones unanswered,
//! Connect: stops connecting), SIGUSR2 puts it back. Key state stays (the same physical
//! card); the power cycle clears the security state.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use super::PivCard;

/// The ATR of the blank card in slot 1: T=0 and T=1, no historical bytes.
const BLANK_ATR: [u8; 5] = [0x3b, 0x80, 0x80, 0x01, 0x01];

/// How the card meets vpcd.
pub enum Link {
    /// Reverse mode: listen on 127.0.0.1 `port` (the card) and `port + 1` (a blank card).
    Listen { port: u16 },
    /// vpcd listens; connect to it (again after each re-insertion).
    Connect { addr: SocketAddr },
}

/// How the server runs.
pub struct ServerOptions {
    pub link: Link,
    pub verbose: bool,
    /// Written once the card is up (listening, or about to connect).
    pub ready_file: Option<PathBuf>,
}

/// Shared between the card's thread and the signal thread.
#[derive(Default)]
struct Presence {
    removed: AtomicBool,
    /// A handle on vpcd's current connection, to drop it on removal.
    current: Mutex<Option<TcpStream>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Re-arms TCP_QUICKACK: vpcd writes length and payload in two sends, so a delayed ACK
/// would cost ~40 ms per APDU.
fn quickack(s: &TcpStream) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Reads one message; None at the end of the connection.
fn read_message(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    quickack(s);
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
    quickack(s);
    s.read_exact(&mut payload)?;
    Ok(Some(payload))
}

fn write_message(s: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let n = u16::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "response too long"))?;
    let mut msg = n.to_be_bytes().to_vec();
    msg.extend_from_slice(payload);
    s.write_all(&msg)
}

/// Serves one vpcd connection until it ends.
fn serve(
    s: &mut TcpStream,
    verbose: bool,
    label: &str,
    mut handle: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) -> io::Result<()> {
    while let Some(msg) = read_message(s)? {
        if verbose {
            eprintln!("[{label}] > {}", hex(&msg));
        }
        if let Some(reply) = handle(&msg) {
            if verbose {
                eprintln!("[{label}] < {}", hex(&reply));
            }
            write_message(s, &reply)?;
        }
    }
    Ok(())
}

/// The blank card in slot 1: no PIV application, nothing else either.
fn blank_card(listener: TcpListener, verbose: bool) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_nodelay(true);
        let _ = serve(&mut s, verbose, "blank", |msg| match msg {
            [4] => Some(BLANK_ATR.to_vec()),
            [_] => None,
            [_, 0xa4, ..] => Some(vec![0x6a, 0x82]),
            _ => Some(vec![0x6d, 0x00]),
        });
    }
}

/// Waits for SIGUSR1 (remove) and SIGUSR2 (re-insert); they are blocked in every thread,
/// so only this one sees them.
fn signal_thread(set: SigSet, presence: Arc<Presence>, verbose: bool) {
    loop {
        match set.wait() {
            Ok(Signal::SIGUSR1) => {
                presence.removed.store(true, Ordering::SeqCst);
                if let Some(s) = presence
                    .current
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    let _ = s.shutdown(Shutdown::Both);
                }
                if verbose {
                    eprintln!("[card] removed");
                }
            }
            Ok(Signal::SIGUSR2) => {
                presence.removed.store(false, Ordering::SeqCst);
                if verbose {
                    eprintln!("[card] inserted");
                }
            }
            _ => {}
        }
    }
}

/// Runs the card until the process is killed.
pub fn run(mut card: PivCard, opts: ServerOptions) -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR1);
    set.add(Signal::SIGUSR2);
    // Before any thread starts, so that all inherit the mask.
    set.thread_block().map_err(io::Error::from)?;
    let verbose = opts.verbose;
    let presence = Arc::new(Presence::default());
    {
        let presence = presence.clone();
        std::thread::spawn(move || signal_thread(set, presence, verbose));
    }
    let write_ready = |what: String| match &opts.ready_file {
        Some(path) => std::fs::write(path, what + "\n"),
        None => Ok(()),
    };
    match opts.link {
        Link::Listen { port } => {
            let main = TcpListener::bind(("127.0.0.1", port))?;
            let second = port
                .checked_add(1)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "port + 1 overflows"))?;
            let blank = TcpListener::bind(("127.0.0.1", second))?;
            std::thread::spawn(move || blank_card(blank, verbose));
            write_ready(port.to_string())?;
            for conn in main.incoming() {
                let Ok(s) = conn else { continue };
                if presence.removed.load(Ordering::SeqCst) {
                    // No card: vpcd's ATR request finds the connection closed.
                    drop(s);
                    continue;
                }
                serve_card(&mut card, s, &presence, verbose);
            }
        }
        Link::Connect { addr } => {
            write_ready(addr.to_string())?;
            loop {
                if presence.removed.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(s) => serve_card(&mut card, s, &presence, verbose),
                    // vpcd not listening yet (pcscd starting): try again soon.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
    Ok(())
}

/// Serves vpcd on one connection of the PIV card, until it ends or the card is taken out.
fn serve_card(card: &mut PivCard, mut s: TcpStream, presence: &Presence, verbose: bool) {
    let _ = s.set_nodelay(true);
    if let Ok(handle) = s.try_clone() {
        *presence.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }
    // A removal between connecting and the line above must not be missed.
    if presence.removed.load(Ordering::SeqCst) {
        let _ = s.shutdown(Shutdown::Both);
    }
    if verbose {
        eprintln!("[card] connected");
    }
    let result = serve(&mut s, verbose, "card", |msg| match msg {
        [4] => Some(super::ATR.to_vec()),
        [0] | [1] | [2] => {
            card.power_cycle();
            None
        }
        [_] => None,
        apdu => Some(card.process(apdu)),
    });
    if verbose {
        match result {
            Err(e) => eprintln!("[card] connection ended: {e}"),
            Ok(()) => eprintln!("[card] connection ended"),
        }
    }
    presence
        .current
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    // Taken out of the reader (or vpcd went away): the power is gone.
    card.power_cycle();
}
