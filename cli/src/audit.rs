//! `dct audit verify`: checks the agent's audit log without the agent. Each line is a JSON
//! record numbered from 1 that names the SHA-256 of the line before it (zeros for the
//! first); a changed, removed, inserted or moved record breaks the chain at that line. The
//! chain's hashing is dct-wire's, the agent's too.

use dct_wire::audit::{line_hash, ZERO_HASH};

/// What a sound log holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub last_hash: String,
}

/// Checks a whole log; the error names the first line that breaks it.
pub fn verify(text: &[u8]) -> Result<Verified, String> {
    let mut prev = ZERO_HASH.to_string();
    let mut seq = 0u64;
    if text.is_empty() {
        return Ok(Verified {
            records: 0,
            last_hash: prev,
        });
    }
    let Some(body) = text.strip_suffix(b"\n") else {
        return Err("the last line is incomplete (no newline)".into());
    };
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let at = n + 1;
        let v: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("line {at}: not a record ({e})"))?;
        if v["prev"].as_str() != Some(prev.as_str()) {
            return Err(format!(
                "line {at}: the chain breaks here: this record does not follow line {} as it \
                 stands (a record was changed, removed, inserted or moved at or before line {at})",
                at - 1
            ));
        }
        let got = v["seq"].as_u64().unwrap_or(0);
        if got != seq + 1 {
            return Err(format!(
                "line {at}: record number {got} where {} was expected",
                seq + 1
            ));
        }
        seq = got;
        prev = line_hash(line);
    }
    Ok(Verified {
        records: seq,
        last_hash: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = ZERO_HASH.to_string();
        for seq in 1..=n {
            let line = format!(r#"{{"seq":{seq},"action":"sign","prev":"{prev}"}}"#);
            prev = line_hash(line.as_bytes());
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn a_sound_log_verifies_and_any_change_is_found() {
        let good = log(4);
        assert_eq!(verify(&good).unwrap().records, 4);
        assert_eq!(verify(b"").unwrap().records, 0);
        let text = String::from_utf8(good.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Changed: line 2's action.
        let changed = text.replacen(
            r#""seq":2,"action":"sign""#,
            r#""seq":2,"action":"lock""#,
            1,
        );
        assert!(verify(changed.as_bytes())
            .unwrap_err()
            .starts_with("line 3:"));
        // Removed: line 2.
        let removed = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        assert!(verify(removed.as_bytes())
            .unwrap_err()
            .starts_with("line 2:"));
        // Reordered: 3 before 2.
        let moved = format!("{}\n{}\n{}\n{}\n", lines[0], lines[2], lines[1], lines[3]);
        assert!(verify(moved.as_bytes()).unwrap_err().starts_with("line 2:"));
        // Cut short mid-record.
        assert!(verify(&good[..good.len() - 3])
            .unwrap_err()
            .contains("incomplete"));
        // The first record removed.
        let headless = lines[1..].join("\n") + "\n";
        assert!(verify(headless.as_bytes())
            .unwrap_err()
            .starts_with("line 1:"));
    }
}
