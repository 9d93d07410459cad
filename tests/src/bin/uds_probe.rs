//! Test helper: connects to a Unix socket, waits up to two seconds for bytes, prints
//! "served" if the peer sent any (an HTTP/2 server greets first) or "closed" if it hung up.
//! Run under `setpriv` to act as another user.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn main() {
    let path = std::env::args().nth(1).expect("usage: uds_probe SOCKET");
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            println!("connect failed: {e}");
            return;
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => println!("closed"),
        Ok(_) => println!("served"),
        Err(e) => println!("error: {e}"),
    }
}
