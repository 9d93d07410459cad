//! A malicious trust server for tests: replays metadata files captured earlier (by the real
//! notary client) over plain HTTP on 127.0.0.1. The real notary-server never serves an
//! older version, so this stands in for an attacker, not for the server.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;

pub struct Replay {
    pub url: String,
}

impl Replay {
    /// Serves `GET /v2/<gun>/_trust/tuf/<role>.json` from `dir/<role>.json`, 404 otherwise.
    /// The thread ends with the test process.
    pub fn start(gun: &str, dir: PathBuf) -> Replay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let prefix = format!("/v2/{gun}/_trust/tuf/");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Drain the headers.
                let mut h = String::new();
                while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                    h.clear();
                }
                let path = line.split_whitespace().nth(1).unwrap_or_default();
                let body = path
                    .strip_prefix(&prefix)
                    .filter(|name| !name.contains('/') || name.starts_with("targets/"))
                    .filter(|name| !name.contains(".."))
                    .and_then(|name| std::fs::read(dir.join(name)).ok());
                let mut s = stream;
                let _ = match body {
                    Some(b) => write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    )
                    .and_then(|_| s.write_all(&b)),
                    None => write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                };
            }
        });
        Replay { url }
    }
}
