//! Human tables and JSON.

use dct_proto::dct::v1 as pb;
use serde_json::{json, Value};

use crate::client::Failure;

pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }
    pub fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }
    pub fn print(&self) {
        let cols = self.rows[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == cols {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

pub fn print_json(v: &Value) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Failure::failed(e.to_string()))?;
    println!("{s}");
    Ok(())
}

pub fn pin_phrase(p: Option<&pb::PinStatus>) -> String {
    let Some(p) = p else { return "-".into() };
    if p.locked {
        "PIN locked".into()
    } else if p.tries_left >= 0 {
        format!("{} tries left", p.tries_left)
    } else if p.final_try {
        "one try left".into()
    } else if p.count_low {
        "tries low".into()
    } else {
        "tries: not reported".into()
    }
}

pub fn pin_json(p: Option<&pb::PinStatus>) -> Value {
    match p {
        None => Value::Null,
        Some(p) => json!({
            "tries_left": (p.tries_left >= 0).then_some(p.tries_left),
            "count_low": p.count_low, "final_try": p.final_try, "locked": p.locked,
        }),
    }
}

pub fn status_json(s: &pb::StatusResponse) -> Value {
    let tokens: Vec<Value> = s
        .tokens
        .iter()
        .map(|t| {
            json!({
                "label": t.label, "backend": t.backend, "module": t.module, "present": t.present,
                "unlocked": t.unlocked, "pin": pin_json(t.pin.as_ref()), "manufacturer": t.manufacturer,
                "model": t.model, "serial": t.serial, "keys": t.key_count,
                "error": (!t.error.is_empty()).then_some(&t.error),
            })
        })
        .collect();
    let audit = s.audit.as_ref().map(|a| {
        json!({"path": a.path, "records": a.records, "last_hash": a.last_hash,
               "error": (!a.error.is_empty()).then_some(&a.error)})
    });
    json!({"version": s.version, "backends": s.backends, "tokens": tokens, "audit": audit})
}

/// A key the agent just made or imported: its JSON, or its ID alone on stdout.
pub fn print_new_key(key: Option<pb::Key>, json: bool) -> Result<pb::Key, Failure> {
    let key = key.ok_or_else(|| Failure::failed("agent returned no key"))?;
    if json {
        print_json(&key_json(&key))?;
    } else {
        println!("{}", key.key_id);
    }
    Ok(key)
}

pub fn key_json(k: &pb::Key) -> Value {
    use base64::Engine as _;
    let public = base64::engine::general_purpose::STANDARD.encode(&k.public);
    let mut v = json!({
        "key_id": k.key_id, "canonical_id": k.canonical_id, "role": k.role,
        "gun": (!k.gun.is_empty()).then_some(&k.gun), "backend": k.backend, "token": k.token, "uri": k.uri,
        "detail": (!k.detail.is_empty()).then_some(&k.detail),
        "tuf_key": {"keytype": k.keytype, "keyval": {"private": null, "public": public}},
    });
    if !k.cert_subject.is_empty() {
        v["notation_certificate"] = json!({"subject": k.cert_subject, "expires": k.cert_expires});
    }
    v
}

/// A key's public part as docker writes it: `PUBLIC KEY` with a role header, or the
/// certificate of a root key.
pub fn public_pem(k: &pb::Key) -> String {
    if k.keytype.ends_with("-x509") {
        return String::from_utf8_lossy(&k.public).into_owned();
    }
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&k.public);
    let mut out = format!("-----BEGIN PUBLIC KEY-----\nrole: {}\n\n", k.role);
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

pub fn verify_json(gun: &str, r: &pb::VerifyRepositoryResponse) -> Value {
    if !r.valid {
        return json!({"gun": gun, "valid": false, "failed_role": r.failed_role, "reason": r.reason});
    }
    let roles: Vec<Value> = r
        .roles
        .iter()
        .map(|role| {
            let targets: Vec<Value> = role
                .targets
                .iter()
                .map(|t| json!({"name": t.name, "digest": format!("sha256:{}", t.sha256), "length": t.length}))
                .collect();
            let unusable: Vec<Value> = role
                .unusable
                .iter()
                .map(|u| json!({"name": u.name, "reason": u.reason}))
                .collect();
            json!({"role": role.role, "version": role.version, "expires": role.expires, "signed_by": role.signed_by, "targets": targets, "unusable": unusable})
        })
        .collect();
    let skipped: Vec<Value> = r
        .skipped
        .iter()
        .map(|s| json!({"role": s.role, "reason": s.reason, "targets": s.targets}))
        .collect();
    json!({"gun": gun, "valid": true, "roles": roles, "skipped": skipped, "warnings": r.warnings})
}

/// PEM of one DER object, 64 columns.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
