//! A virtual PIV card (YubiKey-like, [`crate::piv_card`]) in a real pcscd, for tests of
//! PC/SC clients: the `yubikey` crate, yubico-piv-tool, libykcs11, OpenSC.
//!
//! pcscd is machine-wide (`/run/pcscd/pcscd.comm`), so [`VirtualPiv`] holds an exclusive
//! lock on [`LOCK_PATH`] for its life: tests using it, in any test binary, run one at a time.
//!
//! How it is wired: pcscd runs in a network namespace of its own with the stock vpcd
//! reader (vpcd listens on 0.0.0.0:35963 and :35964 there, reachable from nowhere else),
//! and the card process joins that namespace and connects to vpcd. That way the card can
//! be taken out and put back without restarting pcscd; vpcd 3.3's reverse mode (vpcd
//! connects to the card) cannot survive a lost connection (see [`crate::piv_card::vpcd`]).
//! PC/SC clients reach pcscd through its Unix socket as usual.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Serialises every user of pcscd on the machine.
pub const LOCK_PATH: &str = "/tmp/dct-tests-pcscd.lock";
pub const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
pub const YKCS11_MODULE: &str = "/usr/lib/x86_64-linux-gnu/libykcs11.so";
pub const OPENSC_MODULE: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";
/// The reader (slot 0 of the vpcd reader) that holds the card.
pub const READER: &str = "Yubico YubiKey vpcd 00 00";
const PCSCD_PID_FILE: &str = "/run/pcscd/pcscd.pid";
const PCSCD_COMM: &str = "/run/pcscd/pcscd.comm";
/// vpcd's port, inside pcscd's own network namespace.
const VPCD_PORT: u16 = 35963;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The card's make.
#[derive(Clone, Debug)]
pub struct CardOptions {
    pub serial: u32,
    /// Firmware: below 5.7 the default management key is 3DES, from 5.7 AES-192.
    pub version: (u8, u8, u8),
    /// How long a signature with a touch-policy key waits for its simulated touch.
    pub touch_delay: Duration,
}

impl Default for CardOptions {
    fn default() -> Self {
        CardOptions {
            serial: 12345678,
            version: (5, 4, 3),
            touch_delay: Duration::ZERO,
        }
    }
}

/// A virtual PIV card in a running pcscd; both stopped by PID on drop.
pub struct VirtualPiv {
    dir: TempDir,
    opts: CardOptions,
    pcscd: Option<Child>,
    card: Option<Child>,
    _lock: Flock<File>,
}

/// Brings the loopback interface of the current (fresh) network namespace up.
///
/// # Safety
/// Only raw syscalls on stack memory; fit for `pre_exec`.
unsafe fn loopback_up() -> io::Result<()> {
    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req: libc::ifreq = std::mem::zeroed();
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
    if rc == 0 {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
    }
    let err = io::Error::last_os_error();
    libc::close(fd);
    if rc != 0 {
        return Err(err);
    }
    Ok(())
}

/// Asks the kernel to SIGTERM the child when the spawning thread dies, so that a test
/// process killed outright leaves no pcscd or card behind.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn is_pcscd(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "pcscd")
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A pcscd left by a crashed earlier run holds /run/pcscd/pcscd.comm and a new one
/// refuses to start: stop it (only if its pid file names a pcscd process) and remove
/// what it left.
fn clear_stale_pcscd() {
    let pid = std::fs::read_to_string(PCSCD_PID_FILE)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|&p| is_pcscd(p)) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if !wait_gone(pid, Duration::from_secs(5)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(5));
        }
    }
    let _ = std::fs::remove_file(PCSCD_COMM);
    let _ = std::fs::remove_file(PCSCD_PID_FILE);
}

/// Is a card in [`READER`], as PC/SC reports it (`opensc-tool -l`)? None when pcscd does
/// not answer (yet).
pub fn card_present() -> Option<bool> {
    let out = Command::new("opensc-tool")
        .arg("-l")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "0    Yes             Yubico YubiKey vpcd 00 00"
    let line = text.lines().find(|l| l.trim_end().ends_with(READER))?;
    Some(line.split_whitespace().nth(1) == Some("Yes"))
}

/// SIGTERM by PID, wait; SIGKILL if it lingers.
fn stop(child: &mut Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl VirtualPiv {
    /// A factory-fresh card in a fresh pcscd, visible to PC/SC when this returns.
    pub fn start(opts: CardOptions) -> VirtualPiv {
        assert!(
            std::path::Path::new(VPCD_DRIVER).exists(),
            "vsmartcard-vpcd is not installed ({VPCD_DRIVER}); see softhsm/install-deps.sh"
        );
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .expect("open the pcscd lock file");
        let lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock the pcscd lock file");
        clear_stale_pcscd();

        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("reader.conf");
        std::fs::write(
            &conf,
            format!(
                "FRIENDLYNAME \"Yubico YubiKey vpcd\"\nDEVICENAME /dev/null:0x{VPCD_PORT:04X}\n\
                 LIBPATH {VPCD_DRIVER}\nCHANNELID 0x{VPCD_PORT:04X}\n"
            ),
        )
        .unwrap();

        let mut piv = VirtualPiv {
            dir,
            opts,
            pcscd: None,
            card: None,
            _lock: lock,
        };
        // pcscd in a network namespace of its own: vpcd listens on all addresses.
        // `-c` replaces /etc/reader.conf.d, so only this reader is loaded.
        let mut cmd = Command::new("pcscd");
        cmd.args(["--foreground", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(File::create(piv.log("pcscd")).unwrap())
            .stderr(File::create(piv.log("pcscd.err")).unwrap());
        die_with_parent(&mut cmd);
        // SAFETY: unshare and the loopback ioctls are raw syscalls, fit for pre_exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                loopback_up()
            });
        }
        piv.pcscd = Some(
            cmd.spawn()
                .expect("spawn pcscd in its own network namespace"),
        );
        let pcscd_pid = piv.pcscd.as_ref().map(Child::id).unwrap_or(0);

        let mut cmd = Command::new(crate::bin("virtual-piv"));
        let (a, b, c) = piv.opts.version;
        cmd.arg("--connect")
            .arg(format!("127.0.0.1:{VPCD_PORT}"))
            .arg("--netns")
            .arg(format!("/proc/{pcscd_pid}/ns/net"))
            .args(["--serial", &piv.opts.serial.to_string()])
            .args(["--version", &format!("{a}.{b}.{c}")])
            .args([
                "--touch-delay-ms",
                &piv.opts.touch_delay.as_millis().to_string(),
            ])
            .arg("--ca-out")
            .arg(piv.attestation_ca_pem())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(piv.log("card")).unwrap());
        if std::env::var_os("DCT_PIV_VERBOSE").is_some() {
            cmd.arg("--verbose");
        }
        die_with_parent(&mut cmd);
        piv.card = Some(cmd.spawn().expect("spawn virtual-piv"));
        piv.wait_present(true, "start");
        piv
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// pcscd's and the card's output so far.
    pub fn logs(&self) -> String {
        ["pcscd", "pcscd.err", "card"]
            .iter()
            .map(|n| {
                format!(
                    "--- {n}:\n{}",
                    std::fs::read_to_string(self.log(n)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn wait_present(&mut self, want: bool, what: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if card_present() == Some(want) {
                return;
            }
            let exited = [("pcscd", &mut self.pcscd), ("virtual-piv", &mut self.card)]
                .into_iter()
                .find_map(|(name, child)| {
                    let st = child.as_mut()?.try_wait().ok()??;
                    Some(format!("{name} exited with {st}"))
                });
            if let Some(e) = exited {
                panic!("{what}: {e}\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the card did not become {} in {TIMEOUT:?}\n{}",
                if want { "present" } else { "absent" },
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn serial(&self) -> u32 {
        self.opts.serial
    }

    pub fn options(&self) -> &CardOptions {
        &self.opts
    }

    /// The PEM of the card's attestation root CA (which issued its slot F9 certificate).
    pub fn attestation_ca_pem(&self) -> PathBuf {
        self.dir.path().join("attestation-ca.pem")
    }

    /// A scratch directory that lives as long as the card.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Takes the card out of the reader (it keeps its keys); returns once PC/SC shows the
    /// reader empty.
    pub fn remove(&mut self) {
        self.signal(Signal::SIGUSR1);
        self.wait_present(false, "remove");
    }

    /// Puts the card back; returns once PC/SC shows it present.
    pub fn reinsert(&mut self) {
        self.signal(Signal::SIGUSR2);
        self.wait_present(true, "reinsert");
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("signal the card");
    }

    /// The card process's PID.
    pub fn pid(&self) -> u32 {
        self.card.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl Drop for VirtualPiv {
    fn drop(&mut self) {
        // pcscd first: it must never see the card go away on its own.
        if let Some(mut p) = self.pcscd.take() {
            let pid = p.id() as i32;
            stop(&mut p);
            // Files of a pcscd that did not clean up after itself (never another's).
            let pid_file = std::fs::read_to_string(PCSCD_PID_FILE).unwrap_or_default();
            if pid_file.trim() == pid.to_string() {
                let _ = std::fs::remove_file(PCSCD_COMM);
                let _ = std::fs::remove_file(PCSCD_PID_FILE);
            }
        }
        if let Some(mut c) = self.card.take() {
            stop(&mut c);
        }
        // The lock goes with `_lock`.
    }
}
