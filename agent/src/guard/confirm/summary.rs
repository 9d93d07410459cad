//! What a signature changes, as the user is shown it: the header (role, GUN, version, expiry,
//! key, digest) and a diff of the new `signed` part against the version it replaces.
//!
//! Every string taken from a document (target, role and key names, paths) goes through
//! [`printable`]: control characters, invisible and bidirectional formatting characters are
//! shown escaped, so a name cannot rewrite the dialog or hide what it says. Lists are cut at
//! [`MAX_SHOWN`] entries of each kind; the counts are always exact.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Entries shown of each kind (targets added, removed, ...) before "... and N more".
pub const MAX_SHOWN: usize = 50;
/// Paths (or key IDs) listed for one delegation before "... and N more".
const MAX_LISTED: usize = 20;
/// Characters of one document string shown before it is cut.
const MAX_CHARS: usize = 160;

/// What is signed (the header of the summary).
pub struct Subject {
    pub role: String,
    pub gun: String,
    pub version: u64,
    pub expires: String,
    pub key_id: String,
    pub sha256_hex: String,
}

/// Unicode characters that reorder or hide text (bidi embeddings, overrides, isolates and
/// marks; zero-width and other invisible format characters), always escaped.
fn invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// `s` with control and non-printable characters escaped: `\n`, `\r`, `\t`, `\x1b` for
/// other C0 controls and DEL, `\u{202e}` for the rest (C1 controls, bidi and invisible
/// formatting, unassigned and private-use code points, combining marks); `\` is `\\`.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_ascii() => out.push(c),
            // Rust's own judgement of what prints (it escapes C1 controls, format,
            // separator, private-use and unassigned code points and combining marks),
            // plus the invisible characters above.
            c if invisible(c) || c.escape_debug().nth(1).is_some() => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// A document string for display: escaped, cut after [`MAX_CHARS`] characters, in quotes.
fn quoted(s: &str) -> String {
    let total = s.chars().count();
    let shown: String = s.chars().take(MAX_CHARS).collect();
    let body = printable(&shown).replace('"', "\\\"");
    if total > MAX_CHARS {
        format!("\"{body}\"... ({} more characters)", total - MAX_CHARS)
    } else {
        format!("\"{body}\"")
    }
}

/// A key ID (or other short token) from a document: escaped, cut, without quotes.
fn id(s: &str) -> String {
    let total = s.chars().count();
    let shown: String = s.chars().take(MAX_CHARS).collect();
    let body = printable(&shown);
    if total > MAX_CHARS {
        format!("{body}...")
    } else {
        body
    }
}

/// A list for display, cut after `max` entries.
fn list<'a>(items: impl IntoIterator<Item = &'a str>, show: fn(&str) -> String) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    let mut parts: Vec<String> = items.iter().take(MAX_LISTED).map(|s| show(s)).collect();
    if items.len() > MAX_LISTED {
        parts.push(format!("... and {} more", items.len() - MAX_LISTED));
    }
    format!("[{}]", parts.join(", "))
}

/// Lines of one kind of change, capped, with the exact count kept.
struct Kind {
    count: usize,
    lines: Vec<String>,
}

impl Kind {
    fn new() -> Kind {
        Kind {
            count: 0,
            lines: Vec::new(),
        }
    }
    fn push(&mut self, line: impl FnOnce() -> String) {
        self.count += 1;
        if self.lines.len() < MAX_SHOWN {
            self.lines.push(line());
        }
    }
    fn emit(self, out: &mut Vec<String>) {
        let more = self.count - self.lines.len();
        out.extend(self.lines);
        if more > 0 {
            out.push(format!("  ... and {more} more"));
        }
    }
}

fn object<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Map<String, Value>> {
    v?.get(key)?.as_object()
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

/// `(sha256 hex, length)` of a file entry (`{"hashes": {"sha256": B64}, "length": N}`).
fn file_meta(v: &Value) -> (String, String) {
    use base64::Engine as _;
    let sha = match v
        .get("hashes")
        .and_then(|h| h.get("sha256"))
        .and_then(Value::as_str)
    {
        Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(raw) => raw.iter().map(|b| format!("{b:02x}")).collect(),
            Err(_) => format!("(not base64: {})", quoted(b64)),
        },
        None => "(none)".into(),
    };
    let length = match v.get("length") {
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => "(not a number)".into(),
        None => "(none)".into(),
    };
    (sha, length)
}

/// Added, removed and changed entries of two file maps (targets, or a snapshot's meta).
fn diff_files(
    what: &str,
    old: Option<&Map<String, Value>>,
    new: &Map<String, Value>,
    out: &mut Vec<String>,
) {
    let old = old.unwrap_or(&EMPTY);
    let (mut added, mut removed, mut changed) = (Kind::new(), Kind::new(), Kind::new());
    let mut same = 0usize;
    for (name, meta) in new {
        match old.get(name) {
            None => added.push(|| {
                let (sha, len) = file_meta(meta);
                format!("  + {}  sha256 {sha}  length {len}", quoted(name))
            }),
            Some(prev) if prev == meta => same += 1,
            Some(prev) => changed.push(|| {
                let (osha, olen) = file_meta(prev);
                let (sha, len) = file_meta(meta);
                let mut parts = Vec::new();
                if osha != sha {
                    parts.push(format!("sha256 {osha} -> {sha}"));
                }
                if olen != len {
                    parts.push(format!("length {olen} -> {len}"));
                }
                if parts.is_empty() {
                    parts.push(format!(
                        "sha256 {sha}, length {len}; other fields (hashes, custom) changed"
                    ));
                }
                format!("  ~ {}  {}", quoted(name), parts.join("; "))
            }),
        }
    }
    for (name, meta) in old {
        if !new.contains_key(name) {
            removed.push(|| {
                let (sha, len) = file_meta(meta);
                format!("  - {}  sha256 {sha}  length {len}", quoted(name))
            });
        }
    }
    out.push(format!(
        "{what}: {} added, {} removed, {} changed, {} unchanged ({} in this version)",
        added.count,
        removed.count,
        changed.count,
        same,
        new.len()
    ));
    added.emit(out);
    removed.emit(out);
    changed.emit(out);
}

/// A key's type as the document names it.
fn keytype(v: &Value) -> String {
    v.get("keytype")
        .and_then(Value::as_str)
        .map(id)
        .unwrap_or_else(|| "unknown type".into())
}

/// Added, removed and changed keys of two key maps.
fn diff_keys(
    what: &str,
    old: Option<&Map<String, Value>>,
    new: &Map<String, Value>,
    out: &mut Vec<String>,
) {
    let old = old.unwrap_or(&EMPTY);
    let (mut added, mut removed, mut changed) = (Kind::new(), Kind::new(), Kind::new());
    for (k, v) in new {
        match old.get(k) {
            None => added.push(|| format!("  + key {} ({})", id(k), keytype(v))),
            Some(p) if p != v => {
                changed.push(|| format!("  ~ key {} ({}): key material changed", id(k), keytype(v)))
            }
            Some(_) => {}
        }
    }
    for (k, v) in old {
        if !new.contains_key(k) {
            removed.push(|| format!("  - key {} ({})", id(k), keytype(v)));
        }
    }
    out.push(format!(
        "{what}: {} added, {} removed, {} changed ({} in this version)",
        added.count,
        removed.count,
        changed.count,
        new.len()
    ));
    added.emit(out);
    removed.emit(out);
    changed.emit(out);
}

/// The strings of an array field (non-strings shown as JSON).
fn strings(v: &Value, key: &str) -> Vec<String> {
    match v.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn threshold(v: &Value) -> String {
    match v.get("threshold") {
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => id(&other.to_string()),
        None => "(none)".into(),
    }
}

/// "+[a, b] -[c]" between two string lists taken as sets; empty when equal as sets.
fn set_change(old: &[String], new: &[String], show: fn(&str) -> String) -> Option<String> {
    let o: BTreeSet<&str> = old.iter().map(String::as_str).collect();
    let n: BTreeSet<&str> = new.iter().map(String::as_str).collect();
    let plus: Vec<&str> = n.difference(&o).copied().collect();
    let minus: Vec<&str> = o.difference(&n).copied().collect();
    let mut parts = Vec::new();
    if !plus.is_empty() {
        parts.push(format!("+{}", list(plus, show)));
    }
    if !minus.is_empty() {
        parts.push(format!("-{}", list(minus, show)));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// A delegation's scope: its paths, or its path hash prefixes.
fn scope(role: &Value) -> String {
    let prefixes = strings(role, "path_hash_prefixes");
    let paths = strings(role, "paths");
    let mut s = format!("paths {}", list(paths.iter().map(String::as_str), quoted));
    if !prefixes.is_empty() || role.get("path_hash_prefixes").is_some() {
        s.push_str(&format!(
            ", path hash prefixes {}",
            list(prefixes.iter().map(String::as_str), quoted)
        ));
    }
    s
}

fn role_name(v: &Value) -> String {
    v.get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Delegations added, removed and changed (keys, threshold, paths), and their order.
fn diff_delegations(old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    let roles = |d: Option<&Value>| -> Vec<Value> {
        d.and_then(|d| d.get("roles"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (old_roles, new_roles) = (roles(old), roles(new));
    let old_by: BTreeMap<String, &Value> = old_roles.iter().map(|r| (role_name(r), r)).collect();
    let new_names: BTreeSet<String> = new_roles.iter().map(role_name).collect();
    let (mut added, mut removed, mut changed) = (Kind::new(), Kind::new(), Kind::new());
    for r in &new_roles {
        let name = role_name(r);
        match old_by.get(&name) {
            None => added.push(|| {
                format!(
                    "  + delegation {}: keys {}, threshold {}, {}",
                    quoted(&name),
                    list(strings(r, "keyids").iter().map(String::as_str), id),
                    threshold(r),
                    scope(r)
                )
            }),
            Some(p) if *p == r => {}
            Some(p) => changed.push(|| {
                let mut parts = Vec::new();
                let (ok, nk) = (strings(p, "keyids"), strings(r, "keyids"));
                if let Some(c) = set_change(&ok, &nk, id) {
                    parts.push(format!(
                        "keys {c}, now {}",
                        list(nk.iter().map(String::as_str), id)
                    ));
                }
                let (ot, nt) = (threshold(p), threshold(r));
                if ot != nt {
                    parts.push(format!("threshold {ot} -> {nt}"));
                }
                let (op, np) = (strings(p, "paths"), strings(r, "paths"));
                if let Some(c) = set_change(&op, &np, quoted) {
                    parts.push(format!("paths {c}"));
                }
                let (oh, nh) = (
                    strings(p, "path_hash_prefixes"),
                    strings(r, "path_hash_prefixes"),
                );
                if let Some(c) = set_change(&oh, &nh, quoted) {
                    parts.push(format!("path hash prefixes {c}"));
                }
                if parts.is_empty() {
                    parts.push("other fields changed".into());
                }
                format!(
                    "  ~ delegation {}: {}; now threshold {}, {}",
                    quoted(&name),
                    parts.join("; "),
                    nt,
                    scope(r)
                )
            }),
        }
    }
    for r in &old_roles {
        let name = role_name(r);
        if !new_names.contains(&name) {
            removed.push(|| format!("  - delegation {}", quoted(&name)));
        }
    }
    out.push(format!(
        "Delegations: {} added, {} removed, {} changed ({} in this version)",
        added.count,
        removed.count,
        changed.count,
        new_roles.len()
    ));
    added.emit(out);
    removed.emit(out);
    changed.emit(out);
    // Delegations are tried in order: a reordering changes which one a client trusts.
    let common = |rs: &[Value], other: &BTreeSet<String>| -> Vec<String> {
        rs.iter()
            .map(role_name)
            .filter(|n| other.contains(n))
            .collect()
    };
    let old_names: BTreeSet<String> = old_roles.iter().map(role_name).collect();
    let (o, n) = (
        common(&old_roles, &new_names),
        common(&new_roles, &old_names),
    );
    if o != n {
        out.push(format!(
            "  Delegation order changed: {} -> {}",
            list(o.iter().map(String::as_str), quoted),
            list(n.iter().map(String::as_str), quoted)
        ));
    }
    diff_keys(
        "Delegation keys",
        object(old, "keys"),
        object(new, "keys").unwrap_or(&EMPTY),
        out,
    );
}

/// Every role of a root with its keys and threshold, changes marked.
fn diff_root(old: Option<&Value>, new: &Value, out: &mut Vec<String>) {
    let old_roles = object(old, "roles");
    let new_roles = object(Some(new), "roles").unwrap_or(&EMPTY);
    out.push(format!("Roles ({} in this version):", new_roles.len()));
    let mut shown = Kind::new();
    for (name, r) in new_roles {
        let keys = strings(r, "keyids");
        let now = format!(
            "keys {}, threshold {}",
            list(keys.iter().map(String::as_str), id),
            threshold(r)
        );
        let prev = old_roles.and_then(|o| o.get(name));
        shown.push(|| match prev {
            None if old.is_some() => format!("  + {}: {now} (new role)", quoted(name)),
            None => format!("  + {}: {now}", quoted(name)),
            Some(p) if p == r => format!("  = {}: {now} (unchanged)", quoted(name)),
            Some(p) => {
                let mut parts = Vec::new();
                if let Some(c) = set_change(&strings(p, "keyids"), &keys, id) {
                    parts.push(format!("keys {c}"));
                }
                let (ot, nt) = (threshold(p), threshold(r));
                if ot != nt {
                    parts.push(format!("threshold {ot} -> {nt}"));
                }
                if parts.is_empty() {
                    parts.push("key order or other fields changed".into());
                }
                format!("  ~ {}: {}; now {now}", quoted(name), parts.join("; "))
            }
        });
    }
    if let Some(o) = old_roles {
        for name in o.keys() {
            if !new_roles.contains_key(name) {
                shown.push(|| format!("  - {}: removed", quoted(name)));
            }
        }
    }
    shown.emit(out);
    diff_keys(
        "Keys",
        object(old, "keys"),
        object(Some(new), "keys").unwrap_or(&EMPTY),
        out,
    );
    let cs = |v: Option<&Value>| {
        v.and_then(|v| v.get("consistent_snapshot"))
            .map(|c| id(&c.to_string()))
            .unwrap_or_else(|| "false".into())
    };
    let now = cs(Some(new));
    match old {
        Some(_) if cs(old) != now => out.push(format!("consistent_snapshot: {} -> {now}", cs(old))),
        _ => out.push(format!("consistent_snapshot: {now}")),
    }
}

/// The lines shown to the user before `s` is signed: the header, then what `new` changes
/// against `previous` (everything is "added" without one).
pub fn summary(s: &Subject, previous: Option<&Value>, new: &Value) -> Vec<String> {
    let doc_type = new.get("_type").and_then(Value::as_str).unwrap_or_default();
    // A previous version of another type is no base for a diff.
    let previous = previous.filter(|p| p.get("_type").and_then(Value::as_str) == Some(doc_type));
    let mut out = vec![
        format!("Role: {}", quoted(&s.role)),
        format!("GUN: {}", quoted(&s.gun)),
    ];
    let expires = new
        .get("expires")
        .and_then(Value::as_str)
        .map(id)
        .unwrap_or_else(|| id(&s.expires));
    match previous {
        Some(p) => {
            let old_version = p
                .get("version")
                .map(|v| id(&v.to_string()))
                .unwrap_or_else(|| "(none)".into());
            let old_expires = p
                .get("expires")
                .and_then(Value::as_str)
                .map(id)
                .unwrap_or_else(|| "(none)".into());
            out.push(format!("Version: {old_version} -> {}", s.version));
            if old_expires == expires {
                out.push(format!("Expires: {expires} (unchanged)"));
            } else {
                out.push(format!("Expires: {old_expires} -> {expires}"));
            }
        }
        None => {
            out.push(format!(
                "Version: {} (no previous version signed by this key to compare with: \
                 everything is shown as added)",
                s.version
            ));
            out.push(format!("Expires: {expires}"));
        }
    }
    out.push(format!("Key ID: {}", id(&s.key_id)));
    out.push(format!(
        "SHA-256 of the signed bytes: {}",
        id(&s.sha256_hex)
    ));
    match doc_type {
        "Targets" => {
            diff_files(
                "Targets",
                object(previous, "targets"),
                object(Some(new), "targets").unwrap_or(&EMPTY),
                &mut out,
            );
            diff_delegations(
                previous.and_then(|p| p.get("delegations")),
                new.get("delegations"),
                &mut out,
            );
        }
        "Root" => diff_root(previous, new, &mut out),
        "Snapshot" | "Timestamp" => diff_files(
            "Meta",
            object(previous, "meta"),
            object(Some(new), "meta").unwrap_or(&EMPTY),
            &mut out,
        ),
        // The notary-signer API sends only the canonical bytes: the header is all there is.
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subject(role: &str, version: u64) -> Subject {
        Subject {
            role: role.into(),
            gun: "example.com/app".into(),
            version,
            expires: "2030-01-01T00:00:00Z".into(),
            key_id: "ab".repeat(32),
            sha256_hex: "cd".repeat(32),
        }
    }

    // base64 of 32 bytes 0x00.., 0x11..
    const H0: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const H1: &str = "ERERERERERERERERERERERERERERERERERERERERERE=";

    fn file(h: &str, len: u64) -> Value {
        json!({"hashes": {"sha256": h}, "length": len})
    }

    fn has(lines: &[String], needle: &str) -> bool {
        lines.iter().any(|l| l.contains(needle))
    }

    #[test]
    fn printable_escapes_controls_bidi_and_invisibles() {
        assert_eq!(printable("v1.0"), "v1.0");
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\x1b[2Jb");
        assert_eq!(printable("a\nb\r\tc\u{7f}"), "a\\nb\\r\\tc\\x7f");
        assert_eq!(printable("back\\slash"), "back\\\\slash");
        assert_eq!(printable("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        for c in [
            '\u{202a}', '\u{202d}', '\u{2066}', '\u{2069}', '\u{200b}', '\u{feff}',
        ] {
            let s = printable(&c.to_string());
            assert!(s.starts_with("\\u{"), "{c:?} -> {s}");
        }
        // C1 control (CSI) and a line separator.
        assert_eq!(printable("\u{9b}"), "\\u{9b}");
        assert_eq!(printable("\u{2028}"), "\\u{2028}");
        // Ordinary non-ASCII text stays.
        assert_eq!(printable("café-日本"), "café-日本");
    }

    #[test]
    fn quoted_cuts_long_strings_and_escapes_quotes() {
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        let long = "x".repeat(500);
        let q = quoted(&long);
        assert!(q.ends_with("(340 more characters)"), "{q}");
    }

    #[test]
    fn targets_diff_shows_added_removed_changed() {
        let old = json!({"_type": "Targets", "version": 1, "expires": "2029-01-01T00:00:00Z",
            "targets": {"keep": file(H0, 1), "gone": file(H0, 2), "moved": file(H0, 3)},
            "delegations": {"keys": {}, "roles": []}});
        let new = json!({"_type": "Targets", "version": 2, "expires": "2030-01-01T00:00:00Z",
            "targets": {"keep": file(H0, 1), "moved": file(H1, 4), "fresh": file(H1, 5)},
            "delegations": {"keys": {}, "roles": []}});
        let lines = summary(&subject("targets", 2), Some(&old), &new);
        let text = lines.join("\n");
        assert!(has(&lines, "Version: 1 -> 2"), "{text}");
        assert!(
            has(
                &lines,
                "Expires: 2029-01-01T00:00:00Z -> 2030-01-01T00:00:00Z"
            ),
            "{text}"
        );
        assert!(
            has(
                &lines,
                "Targets: 1 added, 1 removed, 1 changed, 1 unchanged (3 in this version)"
            ),
            "{text}"
        );
        assert!(
            has(
                &lines,
                &format!("+ \"fresh\"  sha256 {}  length 5", "11".repeat(32))
            ),
            "{text}"
        );
        assert!(has(&lines, "- \"gone\""), "{text}");
        assert!(
            has(
                &lines,
                &format!(
                    "~ \"moved\"  sha256 {} -> {}; length 3 -> 4",
                    "00".repeat(32),
                    "11".repeat(32)
                )
            ),
            "{text}"
        );
        assert!(!has(&lines, "\"keep\""), "{text}");
        assert!(has(&lines, &format!("Key ID: {}", "ab".repeat(32))));
        assert!(has(
            &lines,
            &format!("SHA-256 of the signed bytes: {}", "cd".repeat(32))
        ));
    }

    #[test]
    fn without_previous_everything_is_added() {
        let new = json!({"_type": "Targets", "version": 3, "expires": "2030-01-01T00:00:00Z",
            "targets": {"a": file(H0, 1), "b": file(H1, 2)},
            "delegations": {"keys": {"k1": {"keytype": "ecdsa"}}, "roles": [
                {"name": "targets/ci", "keyids": ["k1"], "threshold": 1, "paths": ["ci/"]}]}});
        let lines = summary(&subject("targets", 3), None, &new);
        let text = lines.join("\n");
        assert!(has(&lines, "no previous version"), "{text}");
        assert!(has(&lines, "Targets: 2 added, 0 removed"), "{text}");
        assert!(
            has(
                &lines,
                "+ delegation \"targets/ci\": keys [k1], threshold 1, paths [\"ci/\"]"
            ),
            "{text}"
        );
        assert!(has(&lines, "Delegation keys: 1 added"), "{text}");
        assert!(has(&lines, "+ key k1 (ecdsa)"), "{text}");
    }

    #[test]
    fn delegation_changes_name_keys_threshold_paths_and_order() {
        let old = json!({"_type": "Targets", "version": 1, "targets": {},
            "delegations": {"keys": {"k1": {"keytype": "ecdsa"}, "k2": {"keytype": "ecdsa"}},
              "roles": [
                {"name": "targets/a", "keyids": ["k1"], "threshold": 1, "paths": ["a/"]},
                {"name": "targets/b", "keyids": ["k2"], "threshold": 1, "paths": [""]},
                {"name": "targets/old", "keyids": ["k2"], "threshold": 1, "paths": [""]}]}});
        let new = json!({"_type": "Targets", "version": 2, "targets": {},
            "delegations": {"keys": {"k1": {"keytype": "ecdsa"}, "k3": {"keytype": "ecdsa-x509"}},
              "roles": [
                {"name": "targets/b", "keyids": ["k3"], "threshold": 1, "paths": [""]},
                {"name": "targets/a", "keyids": ["k1", "k3"], "threshold": 2,
                 "path_hash_prefixes": ["ab"]}]}});
        let lines = summary(&subject("targets", 2), Some(&old), &new);
        let text = lines.join("\n");
        assert!(
            has(
                &lines,
                "Delegations: 0 added, 1 removed, 2 changed (2 in this version)"
            ),
            "{text}"
        );
        assert!(has(&lines, "- delegation \"targets/old\""), "{text}");
        assert!(
            has(
                &lines,
                "~ delegation \"targets/a\": keys +[k3], now [k1, k3]; threshold 1 -> 2; paths -[\"a/\"]; path hash prefixes +[\"ab\"]"
            ),
            "{text}"
        );
        assert!(
            has(&lines, "~ delegation \"targets/b\": keys +[k3] -[k2]"),
            "{text}"
        );
        assert!(
            has(
                &lines,
                "Delegation order changed: [\"targets/a\", \"targets/b\"] -> [\"targets/b\", \"targets/a\"]"
            ),
            "{text}"
        );
        assert!(
            has(&lines, "Delegation keys: 1 added, 1 removed, 0 changed"),
            "{text}"
        );
        assert!(has(&lines, "+ key k3 (ecdsa-x509)"), "{text}");
        assert!(has(&lines, "- key k2 (ecdsa)"), "{text}");
    }

    #[test]
    fn root_diff_shows_every_role_and_key_change() {
        let role = |ids: &[&str], t: u64| json!({"keyids": ids, "threshold": t});
        let old = json!({"_type": "Root", "version": 1, "consistent_snapshot": false,
            "keys": {"r1": {"keytype": "ecdsa-x509"}, "t1": {"keytype": "ecdsa"},
                     "s1": {"keytype": "ecdsa"}, "ts1": {"keytype": "ecdsa"}},
            "roles": {"root": role(&["r1"], 1), "targets": role(&["t1"], 1),
                      "snapshot": role(&["s1"], 1), "timestamp": role(&["ts1"], 1)}});
        let new = json!({"_type": "Root", "version": 2, "consistent_snapshot": true,
            "keys": {"r1": {"keytype": "ecdsa-x509"}, "r2": {"keytype": "ecdsa-x509"},
                     "t2": {"keytype": "ecdsa"}, "s1": {"keytype": "ecdsa"},
                     "ts1": {"keytype": "ecdsa"}},
            "roles": {"root": role(&["r1", "r2"], 2), "targets": role(&["t2"], 1),
                      "snapshot": role(&["s1"], 1), "timestamp": role(&["ts1"], 1)}});
        let lines = summary(&subject("root", 2), Some(&old), &new);
        let text = lines.join("\n");
        assert!(
            has(
                &lines,
                "~ \"root\": keys +[r2]; threshold 1 -> 2; now keys [r1, r2], threshold 2"
            ),
            "{text}"
        );
        assert!(
            has(
                &lines,
                "~ \"targets\": keys +[t2] -[t1]; now keys [t2], threshold 1"
            ),
            "{text}"
        );
        assert!(
            has(&lines, "= \"snapshot\": keys [s1], threshold 1 (unchanged)"),
            "{text}"
        );
        assert!(has(&lines, "Keys: 2 added, 1 removed, 0 changed"), "{text}");
        assert!(has(&lines, "+ key r2 (ecdsa-x509)"), "{text}");
        assert!(has(&lines, "- key t1 (ecdsa)"), "{text}");
        assert!(has(&lines, "consistent_snapshot: false -> true"), "{text}");
    }

    #[test]
    fn snapshot_diff_shows_meta_changes() {
        let old = json!({"_type": "Snapshot", "version": 4,
            "meta": {"root": file(H0, 10), "targets": file(H0, 20)}});
        let new = json!({"_type": "Snapshot", "version": 5,
            "meta": {"root": file(H0, 10), "targets": file(H1, 21), "targets/ci": file(H1, 5)}});
        let lines = summary(&subject("snapshot", 5), Some(&old), &new);
        let text = lines.join("\n");
        assert!(
            has(&lines, "Meta: 1 added, 0 removed, 1 changed, 1 unchanged"),
            "{text}"
        );
        assert!(has(&lines, "+ \"targets/ci\""), "{text}");
        assert!(has(&lines, "~ \"targets\"  sha256"), "{text}");
    }

    #[test]
    fn hostile_names_are_escaped() {
        let name = "evil\u{1b}[2J\nOK\u{202e}exe.txt\u{2066}";
        let new = json!({"_type": "Targets", "version": 1,
            "targets": {name: file(H0, 1)},
            "delegations": {"keys": {"k\u{7}": {"keytype": "ecdsa\n"}}, "roles": []}});
        let lines = summary(&subject("targets", 1), None, &new);
        for l in &lines {
            assert!(
                !l.chars().any(|c| c.is_control() || invisible(c)),
                "raw control in {l:?}"
            );
        }
        assert!(
            has(&lines, "\"evil\\x1b[2J\\nOK\\u{202e}exe.txt\\u{2066}\""),
            "{lines:#?}"
        );
        assert!(has(&lines, "+ key k\\x07 (ecdsa\\n)"), "{lines:#?}");
    }

    #[test]
    fn huge_documents_are_capped_but_counted_exactly() {
        let targets: Map<String, Value> = (0..1234)
            .map(|i| (format!("t{i:05}"), file(H0, i)))
            .collect();
        let new = json!({"_type": "Targets", "version": 1, "targets": targets});
        let lines = summary(&subject("targets", 1), None, &new);
        let text = lines.join("\n");
        assert!(has(&lines, "Targets: 1234 added"), "{text}");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("  + \"t")).count(),
            MAX_SHOWN
        );
        assert!(has(&lines, "... and 1184 more"), "{text}");
    }

    #[test]
    fn previous_of_another_type_is_ignored() {
        let old = json!({"_type": "Root", "version": 1});
        let new = json!({"_type": "Targets", "version": 2, "targets": {}});
        let lines = summary(&subject("targets", 2), Some(&old), &new);
        assert!(has(&lines, "no previous version"), "{lines:#?}");
    }
}
