//! A pinentry for the tests: speaks Assuan on stdin/stdout as pinentry does for CONFIRM, and
//! answers as told on its command line, never asking anyone.
//!
//! `test-pinentry --answer yes|no|hang|exit|err[,...] [--record FILE]`
//!
//! `--answer` gives one answer per CONFIRM in order (the last repeats): `yes` is `OK`,
//! `slow` is `OK` after a second, `no`
//! is `ERR 83886179 Operation cancelled`, `err` another ERR, `hang` never answers, `exit`
//! exits without answering. `--record` appends one JSON line per event to FILE, each with
//! the program's pid: its start, every command with its argument unescaped, and any protocol violation seen (a line
//! over Assuan's 1000 bytes, a raw control character, a bad percent escape).

use std::io::{BufRead, Write};

fn unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))
}

struct Recorder(Option<std::fs::File>);

impl Recorder {
    fn write(&mut self, mut v: serde_json::Value) {
        v["pid"] = std::process::id().into();
        if let Some(f) = &mut self.0 {
            let _ = writeln!(f, "{v}");
            let _ = f.flush();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut answers = vec!["yes".to_string()];
    let mut record = None;
    let mut i = 0;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--answer", Some(a)) => answers = a.split(',').map(str::to_string).collect(),
            ("--record", Some(f)) => record = Some(f.clone()),
            (other, _) => {
                eprintln!("test-pinentry: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let mut rec = Recorder(record.map(|f| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
            // A test helper: a record file it cannot open is a broken test set-up.
            .expect("record file")
    }));
    rec.write(serde_json::json!({"start": std::process::id()}));
    eprintln!("test-pinentry: started \u{1b}[31m(a raw escape on stderr)");

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let reply = |out: &mut std::io::StdoutLock<'_>, line: &str| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    reply(&mut out, "# test-pinentry");
    reply(&mut out, "OK Pleased to meet you");
    let mut confirms = 0usize;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    loop {
        let mut raw = Vec::new();
        match input.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if raw.len() > 1000 {
            rec.write(serde_json::json!({"violation": format!("line of {} bytes", raw.len())}));
            reply(&mut out, "ERR 536871187 Line too long");
            continue;
        }
        if raw.last() == Some(&b'\n') {
            raw.pop();
        }
        if raw.iter().any(|b| b.is_ascii_control()) {
            rec.write(serde_json::json!({"violation": "raw control character in a line"}));
        }
        let line = String::from_utf8_lossy(&raw).into_owned();
        let (cmd, arg) = line.split_once(' ').unwrap_or((&line, ""));
        let text = match unescape(arg) {
            Ok(t) => t,
            Err(e) => {
                rec.write(serde_json::json!({"violation": e}));
                arg.to_string()
            }
        };
        rec.write(serde_json::json!({"cmd": cmd, "arg": text}));
        match cmd {
            "CONFIRM" => {
                let answer = answers
                    .get(confirms)
                    .or(answers.last())
                    .cloned()
                    .unwrap_or_default();
                confirms += 1;
                match answer.as_str() {
                    "yes" => reply(&mut out, "OK"),
                    "slow" => {
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        reply(&mut out, "OK")
                    }
                    "no" => reply(&mut out, "ERR 83886179 Operation cancelled <Pinentry>"),
                    "hang" => loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    },
                    "exit" => std::process::exit(0),
                    _ => reply(&mut out, "ERR 83886081 General error <Pinentry>"),
                }
            }
            "BYE" => {
                reply(&mut out, "OK closing connection");
                return;
            }
            "SETTITLE" | "SETDESC" | "SETOK" | "SETCANCEL" | "SETTIMEOUT" | "OPTION" => {
                reply(&mut out, "S PROGRESS ignored");
                reply(&mut out, "OK");
            }
            _ => reply(
                &mut out,
                "ERR 536871187 Unknown IPC command <User defined source 1>",
            ),
        }
    }
}
