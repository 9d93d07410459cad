//! Notary's canonical JSON: the bytes that get hashed and signed.
//!
//! The dialect is docker/go's `canonical/json` (OLPC canonical JSON without Unicode
//! normalisation): no whitespace, object keys sorted by their UTF-8 bytes, strings with only
//! `"` and `\` escaped and every other byte written as is, integers only, `null` kept.
//! It is not RFC 8785; the `olpc-cjson` crate differs too (it normalises and sorts by
//! escaped bytes), hence this small encoder, tested byte for byte against notary's output.

use std::borrow::Cow;

use serde::de::{MapAccess, Visitor};
use serde::Deserialize;
use serde::Deserializer as _;
use serde_json::value::RawValue;
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

/// An object member's name: borrowed from the text unless it had escapes.
pub struct Key<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of the JSON object `json`, in the text's order, each value as its raw text.
pub fn members(json: &str) -> Result<Vec<(Key<'_>, &RawValue)>, serde_json::Error> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(Key<'de>, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
            while let Some(entry) = m.next_entry::<Key<'de>, &'de RawValue>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let list = de.deserialize_map(Members)?;
    de.end()?;
    Ok(list)
}

/// The value of member `name` in `members`: the last one of that name, as a parsed map keeps.
pub fn last<'a>(members: &[(Key<'_>, &'a RawValue)], name: &str) -> Option<&'a RawValue> {
    members
        .iter()
        .rev()
        .find(|(k, _)| k.0 == name)
        .map(|(_, v)| *v)
}

/// Canonical bytes of the JSON text `json`, the same as [`to_vec`] of its parsed value, but
/// without a tree of it: each object's members are listed as raw text, sorted, and written in
/// turn (a later member of the same name replaces an earlier one, as in a parsed map). A
/// 100,000-target role so costs a list of its target names while it is written.
pub fn from_str(json: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(json.len());
    write_raw(json, &mut out, 0)?;
    Ok(out)
}

/// Nesting a tree of the same text allows: serde_json stops at 128 open objects or lists.
const MAX_DEPTH: usize = 127;

fn write_raw(json: &str, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    let first = json.trim_start().as_bytes().first();
    if matches!(first, Some(b'{' | b'[')) && depth >= MAX_DEPTH {
        return Err("recursion limit exceeded".into());
    }
    match first {
        Some(b'{') => {
            let mut list = members(json).map_err(|e| e.to_string())?;
            // Stable: members of one name keep their order, and the last of them is written.
            list.sort_by(|a, b| a.0 .0.as_bytes().cmp(b.0 .0.as_bytes()));
            out.push(b'{');
            let mut first = true;
            for (i, (k, v)) in list.iter().enumerate() {
                if list.get(i + 1).is_some_and(|(next, _)| next.0 == k.0) {
                    // Replaced by a later one, but checked as a tree would check it.
                    serde_json::from_str::<Value>(v.get()).map_err(|e| e.to_string())?;
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_str(&k.0, out);
                out.push(b':');
                write_raw(v.get(), out, depth + 1)?;
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(json).map_err(|e| e.to_string())?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_raw(item.get(), out, depth + 1)?;
            }
            out.push(b']');
        }
        _ => {
            let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
            write(&v, out).map_err(|e| e.to_string())?;
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

    /// The raw-text writer gives what the tree writer gives, byte for byte.
    #[test]
    fn from_str_matches_the_tree() {
        let docs = [
            r#"{"b": 1, "a": [true, null, {"y": -2, "x": [[], {}]}], "B": "x", "é": 0, "z": {}}"#,
            r#"{"k\u00e9y": "v\"al\\ue\n\u0001", "k": {"n": 18446744073709551615, "m": 4096.0}}"#,
            r#"{"dup": 1, "a": 0, "dup": {"inner": 2}, "dup": [3]}"#,
            r#"  [ 1 , "two" , { "3" : null } ]  "#,
            r#""just a string""#,
            r#"{"signed":{"_type":"Targets","targets":{"t2":{"hashes":{"sha256":"AA=="},"length":1},"t1":{"length":2,"hashes":{"sha512":"BB==","sha256":"CC=="}}},"version":3}}"#,
        ];
        for doc in docs {
            let tree: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(
                String::from_utf8(from_str(doc).unwrap()).unwrap(),
                String::from_utf8(to_vec(&tree).unwrap()).unwrap(),
                "{doc}"
            );
        }
        // Where the tree has no canonical form or no parse, neither has the text, replaced
        // members included.
        for bad in [
            r#"{"a": 1.5}"#,
            r#"{"x": 1e400, "x": 1}"#,
            r#"{"x": "\ud800", "x": 1}"#,
            r#"{"x": {"y": 1.5e999}, "x": 1}"#,
        ] {
            assert!(
                serde_json::from_str::<Value>(bad).is_err()
                    || to_vec(&serde_json::from_str(bad).unwrap()).is_err(),
                "{bad}"
            );
            assert!(from_str(bad).is_err(), "{bad}");
        }
        // Nesting: exactly where the tree stops.
        for n in [126, 127, 128, 129] {
            for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
                let doc = format!("{}1{}", open.repeat(n), close.repeat(n));
                assert_eq!(
                    from_str(&doc).is_ok(),
                    serde_json::from_str::<Value>(&doc).is_ok(),
                    "{n} levels of {open}"
                );
            }
        }
        assert!(from_str(r#"{"a": 1"#).is_err());
        assert!(from_str(r#"{"a": 1} x"#).is_err());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        assert!(from_str(&deep).is_err());
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
