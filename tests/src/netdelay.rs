//! Distance in front of a real server: a TCP proxy on 127.0.0.1 that hands on every byte a
//! fixed time after it arrived, in each direction (TLS passes through untouched). A registry
//! on this machine then answers as one across a network does: each round trip costs twice
//! the one-way delay, and requests in flight at once overlap as they would on a real link.
//! For the benchmark (a registry in another data centre is what migrations talk to).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub struct DelayProxy {
    /// `127.0.0.1:PORT`
    pub host: String,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    /// A proxy to `upstream` (`127.0.0.1:PORT`) adding `one_way` each way.
    pub fn start(upstream: &str, one_way: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let host = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let stop = Arc::new(AtomicBool::new(false));
        let (up, halt) = (upstream.to_string(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                for s in [&client, &server] {
                    let _ = s.set_nodelay(true);
                }
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pipe(client, server, one_way);
                pipe(s2, c2, one_way);
            }
        });
        DelayProxy { host, stop }
    }
}

/// Bytes read from `from` written to `to` `delay` later, in order; EOF passed on.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_take_twice_the_delay_and_bytes_pass_unchanged() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = echo.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        let p = DelayProxy::start(&up, Duration::from_millis(20));
        let mut c = TcpStream::connect(&p.host).unwrap();
        let t = Instant::now();
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
        assert!(
            t.elapsed() >= Duration::from_millis(40),
            "{:?}",
            t.elapsed()
        );
    }
}
