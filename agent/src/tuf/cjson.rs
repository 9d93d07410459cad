//! Notary's canonical JSON: the bytes that get hashed and signed.
//!
//! The dialect is docker/go's `canonical/json` (OLPC canonical JSON without Unicode
//! normalisation): no whitespace, object keys sorted by their UTF-8 bytes, strings with only
//! `"` and `\` escaped and every other byte written as is, integers only, `null` kept.
//! It is not RFC 8785; the `olpc-cjson` crate differs too (it normalises and sorts by
//! escaped bytes), hence this small encoder, tested byte for byte against notary's output.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CjsonError {
    #[error("canonical JSON allows only integers, found {0}")]
    NotInteger(String),
}

/// Canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CjsonError> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out)?;
    Ok(out)
}

/// Appends the canonical bytes of `value` to `out`.
pub fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), CjsonError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                // Go decodes every number to float64 and prints an integral one as an
                // integer; anything else has no canonical form.
                match n.as_f64() {
                    Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18 => {
                        out.extend_from_slice((f as i64).to_string().as_bytes())
                    }
                    _ => return Err(CjsonError::NotInteger(n.to_string())),
                }
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sort explicitly: serde_json's map may preserve insertion order when a
            // dependency enables `preserve_order`. `str` ordering is byte ordering.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let special = |b: &u8| *b == b'"' || *b == b'\\';
    // Runs that end in `"` or `\` (escaped), and a last run without either.
    for run in s.as_bytes().split_inclusive(special) {
        match run.split_last() {
            Some((last, head)) if special(last) => {
                out.extend_from_slice(head);
                out.push(b'\\');
                out.push(*last);
            }
            _ => out.extend_from_slice(run),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: Value) -> String {
        String::from_utf8(to_vec(&v).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_by_bytes_and_drops_whitespace() {
        assert_eq!(
            enc(json!({"b": 1, "a": [true, null], "B": "x", "é": 0, "z": {}})),
            r#"{"B":"x","a":[true,null],"b":1,"z":{},"é":0}"#
        );
    }

    #[test]
    fn escapes_only_quote_and_backslash() {
        assert_eq!(
            enc(json!("a\"b\\c\n<&>\u{1}é")),
            "\"a\\\"b\\\\c\n<&>\u{1}é\""
        );
        // Specials first, last, in a row, alone; the empty string.
        assert_eq!(enc(json!("\"x\\")), r#""\"x\\""#);
        assert_eq!(enc(json!("\\\"\\")), r#""\\\"\\""#);
        assert_eq!(enc(json!("\"")), r#""\"""#);
        assert_eq!(enc(json!("")), r#""""#);
        assert_eq!(enc(json!("é\"")), r#""é\"""#);
    }

    #[test]
    fn integers_only() {
        assert_eq!(enc(json!(-5)), "-5");
        assert_eq!(enc(json!(u64::MAX)), u64::MAX.to_string());
        assert_eq!(enc(json!(4096.0)), "4096");
        assert!(matches!(
            to_vec(&json!(1.5)),
            Err(CjsonError::NotInteger(_))
        ));
    }
}
