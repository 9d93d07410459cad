//! The client side of pinentry's Assuan protocol, as gpg-agent speaks it: the agent starts
//! the confirmation program, reads its `OK` greeting, sets the dialog's texts and asks
//! `CONFIRM`, once per page of the summary. Only `OK` to every page is a yes; `ERR`, an
//! exit, a malformed reply or the agent's own timeout is a no.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Bytes of one Assuan line, the newline included (the protocol's limit).
pub const LINE_MAX: usize = 1000;
/// Bytes of a reply line the agent reads before it gives up on the program.
const READ_MAX: usize = 4096;
/// `ERR` code of a cancelled operation (GPG_ERR_CANCELED from pinentry).
pub const ERR_CANCELED: u64 = 83886179;
/// `ERR` code of pinentry's own timeout (GPG_ERR_TIMEOUT from pinentry).
pub const ERR_TIMEOUT: u64 = 83886142;
/// Lines of the program's stderr that reach the agent's (debug) log.
const STDERR_LINES: usize = 20;

/// Assuan percent-escaping of a data line: `%`, CR, LF and every other control character
/// become `%XX`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '%' || c.is_ascii_control() {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape`] of the longest prefix of `text` that escapes to at most `max` bytes.
fn escape_within(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let e = escape(c.encode_utf8(&mut [0; 4]));
        if out.len() + e.len() > max {
            break;
        }
        out.push_str(&e);
    }
    out
}

/// The inverse of [`escape`] (for tests and the test program).
pub fn unescape(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |x: u8| (x as char).to_digit(16);
    while let Some(&c) = b.get(i) {
        match (
            c,
            b.get(i + 1).and_then(|&h| hex(h)),
            b.get(i + 2).and_then(|&l| hex(l)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The summary split into pages whose `SETDESC` lines stay within [`LINE_MAX`]; with more
/// than one page each starts with "(page i/n)". A line too long for a page on its own is
/// split.
pub fn pages(lines: &[String]) -> Vec<String> {
    // "SETDESC " + text + "\n", with room for the page header.
    let header_room = escape("(page 9999/9999)\n").len();
    let budget = LINE_MAX - "SETDESC ".len() - 1 - header_room;
    // Pieces of at most `budget` escaped bytes.
    let mut pieces: Vec<String> = Vec::new();
    for line in lines {
        let mut cur = String::new();
        let mut size = 0;
        for c in line.chars() {
            let n = escape(c.encode_utf8(&mut [0; 4])).len();
            if size + n > budget {
                pieces.push(std::mem::take(&mut cur));
                size = 0;
            }
            cur.push(c);
            size += n;
        }
        pieces.push(cur);
    }
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for p in pieces {
        let sep = usize::from(!cur.is_empty()) * escape("\n").len();
        if !cur.is_empty() && escape(&cur).len() + sep + escape(&p).len() > budget {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(&p);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    let n = out.len();
    if n > 1 {
        for (i, page) in out.iter_mut().enumerate() {
            *page = format!("(page {}/{n})\n{page}", i + 1);
        }
    }
    out
}

/// How a dialog ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Yes,
    /// The user said no (Cancel, or the program's own timeout).
    Declined(String),
    /// No answer: the program failed, exited or did not answer in time.
    NoAnswer(String),
}

/// What to ask.
pub struct Dialog<'a> {
    pub title: &'a str,
    pub pages: &'a [String],
    pub timeout: Duration,
}

/// A reply to one command.
#[derive(Debug)]
enum Reply {
    Ok,
    Err { code: u64, text: String },
}

struct Conn<R, W> {
    r: R,
    w: W,
}

impl<R: AsyncBufReadExt + AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    async fn send(&mut self, line: &str) -> Result<(), String> {
        if line.len() + 1 > LINE_MAX {
            return Err(format!("line too long for Assuan ({} bytes)", line.len()));
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.w
            .write_all(&buf)
            .await
            .map_err(|e| format!("writing to it failed: {e}"))?;
        self.w
            .flush()
            .await
            .map_err(|e| format!("writing to it failed: {e}"))
    }

    /// Reads replies until `OK` or `ERR`: status (`S`) and comment (`#`) lines are
    /// skipped, data (`D`) ignored, an `INQUIRE` cancelled.
    async fn reply(&mut self) -> Result<Reply, String> {
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.r)
                .take(READ_MAX as u64)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(|e| format!("reading from it failed: {e}"))?;
            if n == 0 {
                return Err("it exited without an answer".into());
            }
            if buf.last() != Some(&b'\n') {
                return Err(if n >= READ_MAX {
                    "it sent an over-long line".into()
                } else {
                    "it exited without an answer".into()
                });
            }
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            let line = String::from_utf8_lossy(&buf);
            let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
            match word {
                "OK" => return Ok(Reply::Ok),
                "ERR" => {
                    let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
                    return Ok(Reply::Err {
                        code: code.parse().unwrap_or(0),
                        text: super::summary::printable(&unescape(text)),
                    });
                }
                "S" | "D" => {}
                w if w.starts_with('#') => {}
                "INQUIRE" => self.send("CAN").await?,
                _ => {
                    return Err(format!(
                        "it sent {:?}, not an Assuan reply",
                        super::summary::printable(word)
                    ))
                }
            }
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.send(line).await?;
        self.reply().await
    }

    /// A command that must succeed for the dialog to mean anything.
    async fn must(&mut self, line: &str) -> Result<(), String> {
        match self.command(line).await? {
            Reply::Ok => Ok(()),
            Reply::Err { code, text } => {
                let cmd = line.split(' ').next().unwrap_or(line);
                Err(format!("it refused {cmd} (ERR {code} {text})"))
            }
        }
    }
}

/// `OPTION name=value` lines from the agent's own environment (never the client's): the
/// terminal a pinentry-curses or -tty is to use, its type, the locale.
fn options() -> Vec<String> {
    let mut out = Vec::new();
    let clean = |v: &str| {
        !v.is_empty() && v.len() < 200 && v.chars().all(|c| c.is_ascii_graphic() && c != '%')
    };
    if let Ok(tty) = std::env::var("GPG_TTY") {
        if clean(&tty) {
            out.push(format!("OPTION ttyname={tty}"));
        }
    }
    if let Ok(term) = std::env::var("TERM") {
        if clean(&term) {
            out.push(format!("OPTION ttytype={term}"));
        }
    }
    let lc = ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    if let Some(lc) = lc.filter(|v| clean(v)) {
        out.push(format!("OPTION lc-ctype={lc}"));
    }
    out
}

/// The dialog after the greeting: every page must be answered `OK`.
async fn converse<R, W>(conn: &mut Conn<R, W>, d: &Dialog<'_>, program: &str) -> Answer
where
    R: AsyncBufReadExt + AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let secs = d.timeout.as_secs().max(1);
    // The program's own timeout first; the agent's a little later, should it not keep it.
    let hard = d.timeout + Duration::from_secs(2);
    let setup = async {
        match conn.reply().await? {
            Reply::Ok => {}
            Reply::Err { code, text } => return Err(format!("its greeting was ERR {code} {text}")),
        }
        for o in options() {
            // An option the program does not know is no reason to stop.
            conn.command(&o).await?;
        }
        conn.must(&format!(
            "SETTITLE {}",
            escape_within(d.title, LINE_MAX - 10)
        ))
        .await?;
        conn.must(&format!("SETOK {}", escape("_Sign"))).await?;
        conn.must(&format!("SETCANCEL {}", escape("Do _not sign")))
            .await?;
        // Older pinentries lack SETTIMEOUT: the agent's own timer still holds.
        conn.command(&format!("SETTIMEOUT {secs}")).await?;
        Ok(())
    };
    match tokio::time::timeout(hard, setup).await {
        Err(_) => return Answer::NoAnswer(format!("{program} did not start its dialog in time")),
        Ok(Err(e)) => return Answer::NoAnswer(format!("{program}: {e}")),
        Ok(Ok(())) => {}
    }
    let n = d.pages.len();
    for (i, page) in d.pages.iter().enumerate() {
        let page_no = if n > 1 {
            format!(" on page {}/{n}", i + 1)
        } else {
            String::new()
        };
        let ask = async {
            conn.must(&format!("SETDESC {}", escape(page))).await?;
            conn.command("CONFIRM").await
        };
        match tokio::time::timeout(hard, ask).await {
            Err(_) => {
                return Answer::NoAnswer(format!(
                    "no answer within {secs}s{page_no}; {program} was stopped"
                ))
            }
            Ok(Err(e)) => return Answer::NoAnswer(format!("{program}{page_no}: {e}")),
            Ok(Ok(Reply::Ok)) => {}
            Ok(Ok(Reply::Err { code, .. })) if code == ERR_CANCELED => {
                return Answer::Declined(format!("answered no{page_no} in {program}"))
            }
            Ok(Ok(Reply::Err { code, .. })) if code == ERR_TIMEOUT => {
                return Answer::NoAnswer(format!("no answer within {secs}s{page_no} in {program}"))
            }
            Ok(Ok(Reply::Err { code, text })) => {
                return Answer::Declined(format!("{program} answered ERR {code} {text}{page_no}"))
            }
        }
    }
    Answer::Yes
}

/// Runs `program` with `args` and asks the dialog. The child gets the agent's environment,
/// its stderr goes (escaped, a few lines) to the debug log, and it is killed if the agent
/// stops waiting for any reason.
pub async fn confirm(program: &Path, args: &[String], d: &Dialog<'_>) -> Answer {
    // The dialog runs in a task of its own, so that a requester that goes away (its client
    // gave up) does not drop the program mid-dialog: the task sees the cancellation, stops
    // the program and reaps it.
    let (program, args) = (program.to_path_buf(), args.to_vec());
    let (title, pages, timeout) = (d.title.to_string(), d.pages.to_vec(), d.timeout);
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let d = Dialog {
            title: &title,
            pages: &pages,
            timeout,
        };
        run(&program, &args, &d, cancelled).await
    });
    let answer = task.await;
    drop(cancel);
    answer.unwrap_or_else(|e| Answer::NoAnswer(format!("the dialog failed: {e}")))
}

async fn run(
    program: &Path,
    args: &[String],
    d: &Dialog<'_>,
    cancelled: tokio::sync::oneshot::Receiver<()>,
) -> Answer {
    let name = program.display().to_string();
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Answer::NoAnswer(format!("{name} could not be started: {e}")),
    };
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Answer::NoAnswer(format!("{name}: no pipes to it"));
    };
    if let Some(stderr) = child.stderr.take() {
        let name = name.clone();
        let limit = d.timeout.saturating_mul(2) + Duration::from_secs(10);
        tokio::spawn(async move {
            // Drained to the end (the program never blocks on a full pipe), a few lines
            // shown, each bounded and escaped.
            let drain = async {
                let mut r = BufReader::new(stderr);
                let mut shown = 0;
                loop {
                    let mut buf = Vec::new();
                    match (&mut r).take(1024).read_until(b'\n', &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if shown < STDERR_LINES {
                        shown += 1;
                        let line = String::from_utf8_lossy(&buf);
                        let line: String = line.trim_end().chars().take(200).collect();
                        tracing::debug!(program = %name, "stderr: {}", super::summary::printable(&line));
                    }
                }
            };
            let _ = tokio::time::timeout(limit, drain).await;
        });
    }
    let mut conn = Conn {
        r: BufReader::new(stdout),
        w: stdin,
    };
    let answer = tokio::select! {
        a = converse(&mut conn, d, &name) => a,
        // The requester went away (the sender was dropped with it).
        _ = cancelled => Answer::NoAnswer("the request was given up".into()),
    };
    // A polite goodbye, then the program is stopped and reaped whatever it does.
    let _ = tokio::time::timeout(Duration::from_millis(500), conn.command("BYE")).await;
    drop(conn);
    if tokio::time::timeout(Duration::from_millis(500), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_percent_cr_lf_and_controls() {
        assert_eq!(escape("50% off\r\nnext"), "50%25 off%0D%0Anext");
        assert_eq!(escape("a\u{1b}b\u{7f}\t"), "a%1Bb%7F%09");
        assert_eq!(escape("café"), "café");
        for s in ["50% off\r\nnext", "a\u{1b}b\u{7f}\t", "%%41", "日本\n"] {
            assert_eq!(unescape(&escape(s)), s);
        }
        assert_eq!(unescape("%4"), "%4");
        let long = "%a".repeat(1000);
        let cut = escape_within(&long, 990);
        assert!(cut.len() <= 990 && cut.len() > 980, "{}", cut.len());
        assert!(long.starts_with(&unescape(&cut)));
    }

    #[test]
    fn short_summaries_are_one_page() {
        let lines = vec!["Role: \"targets\"".to_string(), "x".into()];
        let p = pages(&lines);
        assert_eq!(p, vec!["Role: \"targets\"\nx".to_string()]);
    }

    #[test]
    fn long_summaries_are_paged_within_the_line_limit() {
        let lines: Vec<String> = (0..120)
            .map(|i| format!("  + \"target-{i}\" 100% {}", "ab".repeat(40)))
            .collect();
        // And one line longer than a page on its own.
        let mut lines = lines;
        lines.push("%".repeat(2000));
        let p = pages(&lines);
        assert!(p.len() > 3, "{}", p.len());
        let n = p.len();
        for (i, page) in p.iter().enumerate() {
            assert!(
                page.starts_with(&format!("(page {}/{n})\n", i + 1)),
                "{page}"
            );
            assert!(format!("SETDESC {}\n", escape(page)).len() <= LINE_MAX);
        }
        // Nothing lost, in order.
        let joined: Vec<String> = p
            .iter()
            .map(|pg| {
                pg.split_once('\n')
                    .map(|x| x.1)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let all = joined.join("\n");
        for l in lines.iter().take(120) {
            assert!(all.contains(l.as_str()), "{l}");
        }
        assert_eq!(all.matches('%').count(), 120 + 2000);
    }

    /// A scripted program: the agent's lines go to `sent`, the replies come from `script`.
    async fn run(script: &str, pages: &[String]) -> (Answer, String) {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let (r, w) = tokio::io::split(client);
        let mut conn = Conn {
            r: BufReader::new(r),
            w,
        };
        let script = script.to_string();
        let peer = tokio::spawn(async move {
            server.write_all(script.as_bytes()).await.ok();
            let mut sent = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(300), server.read_to_end(&mut sent))
                .await;
            String::from_utf8_lossy(&sent).into_owned()
        });
        let d = Dialog {
            title: "t",
            pages,
            timeout: Duration::from_secs(1),
        };
        let a = converse(&mut conn, &d, "prog").await;
        drop(conn);
        (a, peer.await.unwrap_or_default())
    }

    #[tokio::test]
    async fn every_page_needs_ok_and_status_lines_are_skipped() {
        // Greeting, title, ok, cancel, timeout (unknown: ERR), page 1, confirm, page 2,
        // confirm; status, comment and data lines between.
        let n_options = options().len();
        let mut script = String::from("# hello\nOK Pleased to meet you\n");
        script.push_str(&"OK\n".repeat(n_options));
        script.push_str("OK\nOK\nOK\nERR 536871187 Unknown command\n");
        script.push_str("OK\nS PROGRESS 1\nD %25\nOK\nOK\nOK\n");
        let pages = vec!["one".to_string(), "two\n100%".to_string()];
        let (a, sent) = run(&script, &pages).await;
        assert_eq!(a, Answer::Yes);
        assert!(
            sent.contains("SETDESC one\nCONFIRM\nSETDESC two%0A100%25\nCONFIRM\n"),
            "{sent}"
        );
        assert!(
            sent.contains("SETTITLE t\n") && sent.contains("SETTIMEOUT 1\n"),
            "{sent}"
        );

        // Cancel on page 2 is a no.
        let tail = format!(
            "{}OK\nOK\nOK\nERR 1 x\nOK\nOK\nOK\nERR {ERR_CANCELED} Operation cancelled <Pinentry>\n",
            "OK\n".repeat(n_options)
        );
        let (a, _) = run(&format!("OK hi\n{tail}"), &pages).await;
        assert!(
            matches!(a, Answer::Declined(ref m) if m.contains("page 2/2")),
            "{a:?}"
        );
    }

    #[tokio::test]
    async fn inquire_is_cancelled_and_eof_is_no_answer() {
        let n_options = options().len();
        let script = format!(
            "OK\n{}OK\nOK\nOK\nOK\nOK\nINQUIRE SOMETHING\n",
            "OK\n".repeat(n_options)
        );
        let (a, sent) = run(&script, &["p".to_string()]).await;
        assert!(
            matches!(a, Answer::NoAnswer(ref m) if m.contains("exited")),
            "{a:?}"
        );
        assert!(sent.ends_with("CONFIRM\nCAN\n"), "{sent}");
        let (a, _) = run("garbage\n", &["p".to_string()]).await;
        assert!(matches!(a, Answer::NoAnswer(_)), "{a:?}");
    }
}
