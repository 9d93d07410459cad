//! Canonical JSON round trip.
//!
//! Any bytes serde_json accepts as JSON are encoded with the agent's canonical JSON
//! encoder (`dct_agent::tuf::cjson`). When the value has a canonical form (integers only),
//! the output must
//! - be produced identically by `to_vec` and `write` (also appended after a prefix),
//! - parse back to the input value (numbers compared after the encoder's documented
//!   normalisation: an integral float is written as an integer),
//! - encode again to exactly the same bytes (the encoding is a fixed point),
//! - have no whitespace outside strings and equal the output of a straightforward
//!   reference encoder written here (object keys sorted as byte strings),
//! - be seen as canonical by `is_canonical` (unless it holds raw control bytes);
//!
//! and any text `is_canonical` accepts must come back unchanged from `from_str`.
//!
//! The dialect writes control characters inside strings raw (only `"` and `\` are
//! escaped), which strict JSON parsers refuse. Outside strings canonical output has no
//! byte below 0x20, so before re-parsing every such byte is replaced by its `\u00XX` escape.
#![no_main]

use dct_agent::tuf::cjson;
use libfuzzer_sys::fuzz_target;
use serde_json::{Number, Value};

fuzz_target!(|data: &[u8]| {
    // The one-pass check: a text it calls canonical is what the writer gives back.
    if let Ok(text) = std::str::from_utf8(data) {
        if cjson::is_canonical(text) {
            assert_eq!(
                cjson::from_str(text).as_deref(),
                Ok(data),
                "called canonical, but the writer differs"
            );
        }
    }
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let encoded = match cjson::to_vec(&value) {
        Ok(b) => b,
        Err(cjson::CjsonError::NotInteger(_)) => {
            assert!(
                has_non_integer(&value),
                "NotInteger for a value whose numbers are all integers"
            );
            return;
        }
    };
    assert!(!has_non_integer(&value), "a non-integer number was encoded");

    // `write` agrees with `to_vec`, also when appending to a non-empty buffer.
    let mut appended = b"prefix".to_vec();
    cjson::write(&value, &mut appended).expect("write failed where to_vec succeeded");
    assert_eq!(&appended[6..], &encoded[..], "write and to_vec differ");

    // Output is UTF-8 (strings are copied as is).
    assert!(std::str::from_utf8(&encoded).is_ok(), "output is not UTF-8");

    let reparsed: Value = serde_json::from_slice(&escape_controls(&encoded)).unwrap_or_else(|e| {
        panic!(
            "canonical output does not parse: {e}\noutput: {:?}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(
        reparsed,
        normalise(&value),
        "round trip changed the value\noutput: {:?}",
        String::from_utf8_lossy(&encoded)
    );

    let again = cjson::to_vec(&reparsed).expect("re-encoding failed");
    assert_eq!(again, encoded, "encoding is not a fixed point");

    check_shape(&reparsed, &encoded);
    // And every output without raw control bytes (which no JSON text holds) is seen as
    // canonical by the one-pass check.
    if !encoded.iter().any(|&c| c < 0x20) {
        let text = std::str::from_utf8(&encoded).expect("UTF-8");
        assert!(cjson::is_canonical(text), "canonical output not seen as such");
    }
});

/// Whether `v` holds a number the encoder must refuse (no integral value in i64 range).
fn has_non_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                return false;
            }
            let f = n.as_f64().unwrap();
            !(f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18)
        }
        Value::Array(a) => a.iter().any(has_non_integer),
        Value::Object(m) => m.values().any(has_non_integer),
        _ => false,
    }
}

/// `v` as the encoder writes it: integral floats become integers.
fn normalise(v: &Value) -> Value {
    match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            Value::Number(Number::from(n.as_f64().unwrap() as i64))
        }
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), normalise(v))).collect()),
        other => other.clone(),
    }
}

/// Replaces raw control bytes (only ever inside strings in canonical output) by escapes.
fn escape_controls(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for &c in b {
        if c < 0x20 {
            out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
        } else {
            out.push(c);
        }
    }
    out
}

/// No whitespace outside strings, only `\"` and `\\` escapes, and the same bytes as a
/// straightforward reference encoder (keys sorted as byte strings).
fn check_shape(v: &Value, encoded: &[u8]) {
    let mut in_str = false;
    let mut esc = false;
    for &c in encoded {
        if in_str {
            if esc {
                assert!(c == b'"' || c == b'\\', "unexpected escape \\{}", c as char);
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' {
            in_str = true;
        } else {
            assert!(
                !matches!(c, b' ' | b'\t' | b'\n' | b'\r'),
                "whitespace outside a string"
            );
        }
    }
    assert!(!in_str && !esc, "unterminated string in output");
    let mut want = Vec::new();
    reference(v, &mut want);
    assert_eq!(
        String::from_utf8_lossy(encoded),
        String::from_utf8_lossy(&want),
        "differs from the reference encoding"
    );
}

fn reference(v: &Value, out: &mut Vec<u8>) {
    fn string(s: &str, out: &mut Vec<u8>) {
        out.push(b'"');
        for c in s.bytes() {
            if c == b'"' || c == b'\\' {
                out.push(b'\\');
            }
            out.push(c);
        }
        out.push(b'"');
    }
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => string(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                reference(x, out);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            let sorted: std::collections::BTreeMap<&[u8], (&str, &Value)> =
                m.iter().map(|(k, x)| (k.as_bytes(), (k.as_str(), x))).collect();
            out.push(b'{');
            for (i, (_, (k, x))) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(k, out);
                out.push(b':');
                reference(x, out);
            }
            out.push(b'}');
        }
    }
}
