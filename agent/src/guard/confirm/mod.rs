//! Confirmation a client cannot forge: the agent asks the user itself, as gpg-agent does,
//! through a program named only in its own configuration (`[confirm] program`, `args`,
//! `timeout`), speaking pinentry's Assuan protocol to it ([`assuan`]). The user is shown
//! everything the signature changes ([`summary`]), paged if long, and must say yes to every
//! page. No client can approve on the user's behalf: the program, its arguments and its
//! environment are the agent's alone.
//!
//! The program runs with the agent's environment: a terminal pinentry (pinentry-curses,
//! pinentry-tty) is told the terminal to use by `OPTION ttyname` from the agent's own
//! `GPG_TTY` (and `ttytype` from `TERM`), or by its own `--ttyname` in `args`; a graphical
//! one uses the agent's `DISPLAY` / `WAYLAND_DISPLAY`.
//!
//! Without a program, a key on a YubiKey whose touch policy is "always" is approved by the
//! touch the card itself demands for that signature; any other key whose policy asks for
//! confirmation signs nothing.

pub mod assuan;
pub mod summary;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::keys::{KeyDetail, KeyEntry};
pub use summary::{printable, summary, Subject};

/// How long the user has to answer a page, unless `[confirm] timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Characters of the dialog's title (role and GUN) before it is cut.
const MAX_TITLE: usize = 200;
/// The longest `[confirm] timeout` accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Deserialize, Clone, Debug, Default)]
// Unknown keys are reported, all at once, by the config parser (serde_ignored).
pub struct ConfirmConfig {
    pub program: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    pub timeout: Option<String>,
}

/// The confirmation program, checked at start.
struct Program {
    /// As configured (for messages and the audit log).
    name: String,
    /// Resolved at start (a bare name through the agent's PATH).
    path: PathBuf,
    args: Vec<String>,
    timeout: Duration,
}

pub struct Confirmer {
    program: Option<Program>,
    /// One dialog at a time, agent-wide.
    dialog: tokio::sync::Mutex<()>,
}

/// How the user approved a signature (the audit record says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// The confirmation program said yes to every page of the summary.
    Program { program: String },
    /// No program: the key's YubiKey demands a touch for every signature, and the
    /// signature exists only if that touch came.
    Touch { serial: String },
}

impl Approval {
    pub fn describe(&self) -> String {
        match self {
            Approval::Program { program } => format!("confirmed by {program}"),
            Approval::Touch { serial } => {
                format!("confirmed by a touch of YubiKey serial {serial} (touch policy always)")
            }
        }
    }
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `program` as a path: itself when it names a directory part, else found on the agent's
/// own PATH.
fn resolve(program: &Path) -> std::result::Result<PathBuf, String> {
    let shown = program.display();
    if program.as_os_str().is_empty() {
        return Err("[confirm] program is empty".into());
    }
    if program.components().count() > 1 || program.is_absolute() {
        if !program.exists() {
            return Err(format!("[confirm] program {shown}: no such file"));
        }
        if !executable(program) {
            return Err(format!("[confirm] program {shown}: not an executable file"));
        }
        return Ok(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("[confirm] program {shown}: not found on PATH or not executable"))
}

/// The YubiKey serial of a PIV key that needs a touch for every signature.
fn touch_serial(key: &KeyEntry) -> Option<String> {
    match &key.detail {
        KeyDetail::Piv {
            serial,
            touch_policy: Some(touch),
            ..
        } if touch == "always" => Some(serial.to_string()),
        _ => None,
    }
}

impl Confirmer {
    /// Checks the configuration: a program that exists and is executable, a timeout that
    /// parses (default [`DEFAULT_TIMEOUT`], at most an hour).
    pub fn new(cfg: &ConfirmConfig) -> std::result::Result<Confirmer, String> {
        let timeout = match &cfg.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => {
                let d = crate::util::duration::parse_duration(t)
                    .map_err(|e| format!("[confirm] timeout: {e}"))?;
                if d > MAX_TIMEOUT {
                    return Err(format!(
                        "[confirm] timeout {t:?}: at most {}s",
                        MAX_TIMEOUT.as_secs()
                    ));
                }
                d
            }
        };
        let program = match &cfg.program {
            None => {
                if !cfg.args.is_empty() {
                    return Err("[confirm] args given without a program".into());
                }
                None
            }
            Some(p) => Some(Program {
                name: p.display().to_string(),
                path: resolve(p)?,
                args: cfg.args.clone(),
                timeout,
            }),
        };
        Ok(Confirmer {
            program,
            dialog: tokio::sync::Mutex::new(()),
        })
    }

    /// Asks the user to approve a signature by `key` of what `lines` describe: through the
    /// program, else by the touch the key's card demands; else refused.
    pub async fn ask(&self, key: &KeyEntry, title: &str, lines: &[String]) -> Result<Approval> {
        let Some(p) = &self.program else {
            if let Some(serial) = touch_serial(key) {
                tracing::info!(key_id = %key.key_id, serial, "confirmation by the YubiKey's touch");
                return Ok(Approval::Touch { serial });
            }
            return Err(Error::Policy {
                rule: "confirm",
                why: "this key signs only after the user confirmed through the agent's \
                      confirmation program, and none is configured ([confirm] program in \
                      agent.toml); nothing is signed"
                    .into(),
            });
        };
        let pages = assuan::pages(lines);
        // Escaped, and cut (role and GUN come from the request).
        let title = printable(&title.chars().take(MAX_TITLE).collect::<String>());
        let dialog = assuan::Dialog {
            title: &title,
            pages: &pages,
            timeout: p.timeout,
        };
        let _one = self.dialog.lock().await;
        tracing::info!(key_id = %key.key_id, program = %p.name, pages = pages.len(), "asking the user to confirm");
        let answer = assuan::confirm(&p.path, &p.args, &dialog).await;
        tracing::info!(key_id = %key.key_id, program = %p.name, ?answer, "confirmation answered");
        match answer {
            assuan::Answer::Yes => Ok(Approval::Program {
                program: p.name.clone(),
            }),
            assuan::Answer::Declined(why) => Err(Error::Policy {
                rule: "confirm",
                why: format!("the user declined ({why}); nothing is signed"),
            }),
            assuan::Answer::NoAnswer(why) => Err(Error::Policy {
                rule: "confirm",
                why: format!("no confirmation from the user ({why}); nothing is signed"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(backend: &'static str, detail: KeyDetail, uri: &str) -> KeyEntry {
        KeyEntry {
            key_id: "k".into(),
            canonical_id: "k".into(),
            role: "root".into(),
            gun: None,
            keytype: "ecdsa".into(),
            public: Vec::new(),
            spki: Vec::new(),
            uri: uri.into(),
            backend,
            token: "t".into(),
            handle: Vec::new(),
            detail,
        }
    }

    fn cfg(program: Option<&str>, timeout: Option<&str>) -> ConfirmConfig {
        ConfirmConfig {
            program: program.map(PathBuf::from),
            args: Vec::new(),
            timeout: timeout.map(str::to_string),
        }
    }

    #[test]
    fn new_refuses_missing_programs_and_bad_timeouts() {
        let err = |c: ConfirmConfig| Confirmer::new(&c).err().unwrap_or_default();
        assert!(err(cfg(Some("/nonexistent/pinentry"), None)).contains("no such file"));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("pinentry");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        assert!(err(cfg(plain.to_str(), None)).contains("not an executable"));
        assert!(err(cfg(dir.path().to_str(), None)).contains("not an executable"));
        assert!(err(cfg(Some("no-such-pinentry-xyz"), None)).contains("not found on PATH"));
        assert!(err(cfg(Some("/bin/true"), Some("soon"))).contains("[confirm] timeout"));
        assert!(err(cfg(Some("/bin/true"), Some("0s"))).contains("[confirm] timeout"));
        assert!(err(cfg(Some("/bin/true"), Some("2h"))).contains("at most"));
        let ok = Confirmer::new(&cfg(Some("true"), Some("30s")));
        let ok = ok.as_ref().ok().and_then(|c| c.program.as_ref());
        assert!(ok.is_some_and(|p| p.path.is_absolute() && p.timeout.as_secs() == 30));
        assert!(Confirmer::new(&cfg(None, None)).is_ok());
    }

    #[tokio::test]
    async fn without_a_program_only_an_always_touch_key_is_approved() {
        let c = Confirmer::new(&cfg(None, None)).unwrap();
        let piv = |touch: &str| {
            key(
                crate::keys::piv::BACKEND,
                KeyDetail::Piv {
                    serial: 12345678,
                    slot: "9c".into(),
                    pin_policy: Some("always".into()),
                    touch_policy: Some(touch.into()),
                    generated: Some(true),
                },
                "yubikey:serial=12345678;slot=9c",
            )
        };
        let a = c.ask(&piv("always"), "t", &[]).await.unwrap();
        assert_eq!(
            a,
            Approval::Touch {
                serial: "12345678".into()
            }
        );
        assert!(a.describe().contains("touch of YubiKey serial 12345678"));
        for touch in ["cached", "never"] {
            let e = c.ask(&piv(touch), "t", &[]).await.unwrap_err().to_string();
            assert!(e.contains("none is configured"), "{e}");
        }
        let soft = key("pkcs11", KeyDetail::CertificateNamed, "pkcs11:x");
        assert!(c.ask(&soft, "t", &[]).await.is_err());
    }

    #[tokio::test]
    async fn a_program_answering_ok_or_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, confirm_reply: &str| {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho 'OK hi'\nwhile read -r cmd rest; do\n  case \"$cmd\" in\n    CONFIRM) echo '{confirm_reply}' ;;\n    BYE) echo OK; exit 0 ;;\n    *) echo OK ;;\n  esac\ndone\n"
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let yes = script("yes.sh", "OK");
        let no = script("no.sh", "ERR 83886179 Operation cancelled");
        let k = key("pkcs11", KeyDetail::None, "pkcs11:x");
        let lines = vec!["Role: \"targets\"".to_string()];
        let c = Confirmer::new(&cfg(yes.to_str(), Some("5s"))).unwrap();
        let a = c.ask(&k, "title", &lines).await.unwrap();
        assert_eq!(a.describe(), format!("confirmed by {}", yes.display()));
        let c = Confirmer::new(&cfg(no.to_str(), Some("5s"))).unwrap();
        let e = c.ask(&k, "title", &lines).await.unwrap_err().to_string();
        assert!(e.contains("policy (confirm): the user declined"), "{e}");
    }
}
