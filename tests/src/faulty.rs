//! A faulty network in front of a real server: an HTTP/1.1 proxy on 127.0.0.1 that answers
//! the next N POST requests with `503 Service Unavailable` itself and passes everything
//! else through (one request per connection: it adds `Connection: close`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct FaultyProxy {
    pub port: u16,
    fail_posts: Arc<AtomicUsize>,
    /// POSTs answered with 503 so far.
    pub failed: Arc<AtomicUsize>,
}

impl FaultyProxy {
    /// A proxy to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fail_posts = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (f, n) = (fail_posts.clone(), failed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (f, n) = (f.clone(), n.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &f, &n);
                });
            }
        });
        FaultyProxy {
            port,
            fail_posts,
            failed,
        }
    }

    /// Answers the next `n` POSTs with 503.
    pub fn fail_next_posts(&self, n: usize) {
        self.fail_posts.store(n, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(
    mut client: TcpStream,
    upstream: u16,
    fail: &AtomicUsize,
    failed: &AtomicUsize,
) -> std::io::Result<()> {
    // The request head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let is_post = text.starts_with("POST ");
    if is_post
        && fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        failed.fetch_add(1, Ordering::SeqCst);
        // Take the body, so the client is not cut off while it sends it.
        let len = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        client.read_exact(&mut body)?;
        client.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let mut lines: Vec<&str> = text
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let head = format!("{}\r\n\r\n", lines.join("\r\n"));
    let mut server = TcpStream::connect(("127.0.0.1", upstream))?;
    server.write_all(head.as_bytes())?;
    let (mut c2, mut s2) = (client.try_clone()?, server.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
    Ok(())
}
