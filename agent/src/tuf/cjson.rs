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
    let mut out = Vec::new();
    for_each_member(json, |k, v| out.push((k, v)))?;
    Ok(out)
}

/// Each member of the JSON object `json` in turn, in the text's order, its value as raw
/// text, none kept: a map too big to list (100,000 targets) read one member at a time.
/// Returns how many members there were.
pub fn for_each_member<'a>(
    json: &'a str,
    f: impl FnMut(Key<'a>, &'a RawValue),
) -> Result<usize, serde_json::Error> {
    struct Each<F>(F);
    impl<'de, F: FnMut(Key<'de>, &'de RawValue)> Visitor<'de> for Each<F> {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut m: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while let Some((k, v)) = m.next_entry::<Key<'de>, &'de RawValue>()? {
                n += 1;
                (self.0)(k, v);
            }
            Ok(n)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let n = de.deserialize_map(Each(f))?;
    de.end()?;
    Ok(n)
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

/// Canonical bytes of the JSON text `json`, borrowed when the text is canonical already (a
/// file Notary wrote, a document the agent wrote): checked in one pass without a copy, else
/// written by [`from_str`].
pub fn canonical(json: &str) -> Result<Cow<'_, [u8]>, String> {
    if is_canonical(json) {
        return Ok(Cow::Borrowed(json.as_bytes()));
    }
    from_str(json).map(Cow::Owned)
}

/// Whether [`from_str`] of `json` would give `json` back: one value, no whitespace, object
/// members strictly in byte order of their names (so no name twice), strings with no escape
/// but `\"` and `\\` and no control character, integers written as serde_json reads and
/// this writer writes them (no `-0`, within i64/u64), nesting within [`MAX_DEPTH`].
pub fn is_canonical(json: &str) -> bool {
    let mut s = Scan {
        b: json.as_bytes(),
        i: 0,
    };
    s.value(0) && s.i == s.b.len()
}

/// A cursor over a text being checked by [`is_canonical`].
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let ok = self.peek() == Some(c);
        if ok {
            self.i += 1;
        }
        ok
    }

    fn value(&mut self, depth: usize) -> bool {
        match self.peek() {
            Some(b'{' | b'[') if depth >= MAX_DEPTH => false,
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.integer(),
            _ => false,
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let ok = self
            .b
            .get(self.i..)
            .is_some_and(|rest| rest.starts_with(word));
        self.i += word.len();
        ok
    }

    /// The string's text between its quotes (escapes as written).
    fn string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.i;
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return self.b.get(start..self.i - 1);
                }
                b'\\' => match self.b.get(self.i + 1)? {
                    b'"' | b'\\' => self.i += 2,
                    _ => return None,
                },
                c if c < 0x20 => return None,
                _ => self.i += 1,
            }
        }
    }

    fn integer(&mut self) -> bool {
        let start = self.i;
        let negative = self.eat(b'-');
        let digits = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let n = self.i - digits;
        let leading_zero = self.b.get(digits) == Some(&b'0') && (n > 1 || negative);
        if n == 0 || leading_zero || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return false;
        }
        let Some(Ok(text)) = self.b.get(start..self.i).map(std::str::from_utf8) else {
            return false;
        };
        if negative {
            text.parse::<i64>().is_ok()
        } else {
            text.parse::<u64>().is_ok()
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.i += 1;
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value(depth + 1) {
                return false;
            }
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.i += 1;
        if self.eat(b'}') {
            return true;
        }
        let mut previous: Option<&[u8]> = None;
        loop {
            let Some(name) = self.string() else {
                return false;
            };
            if previous.is_some_and(|p| unescaped(p).cmp(unescaped(name)).is_ge()) {
                return false;
            }
            previous = Some(name);
            if !self.eat(b':') || !self.value(depth + 1) {
                return false;
            }
            if self.eat(b'}') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }
}

/// The bytes a string's text (with only `\"` and `\\` escaped) stands for.
fn unescaped(raw: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut it = raw.iter().copied();
    std::iter::from_fn(move || match it.next()? {
        b'\\' => it.next(),
        b => Some(b),
    })
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

    /// A canonical text is taken as it is, and only a text the writer would give back.
    #[test]
    fn canonical_text_is_borrowed_and_others_rewritten() {
        for v in [
            json!({"B": "x", "a": [true, null, false], "b": -9223372036854775808i64, "z": {}, "é": 0}),
            json!({"a\"b": 1, "a\\": 2, "a#": 3, "a": {"": [[], {}]}, "n": u64::MAX}),
            json!([1, "two", {"3": null}]),
            json!("a string \" with \\ escapes"),
            json!({"signed": {"_type": "Targets", "targets": {"t1": {"hashes": {"sha256": "AA=="}, "length": 1}}}}),
        ] {
            let text = String::from_utf8(to_vec(&v).unwrap()).unwrap();
            assert!(is_canonical(&text), "{text}");
            assert!(matches!(canonical(&text), Ok(Cow::Borrowed(b)) if b == text.as_bytes()));
        }
        for (text, why) in [
            (r#"{"b":1,"a":2}"#, "unsorted"),
            (r#"{"a":1,"a":2}"#, "a name twice"),
            (
                r#"{"a#":1,"a\"":2}"#,
                "sorted by the escaped, not the meant, bytes",
            ),
            (r#"{"a": 1}"#, "whitespace"),
            (" 1", "leading whitespace"),
            (r#""a\nb""#, "an escape the writer does not use"),
            (r#""\u0041""#, "a \\u escape"),
            (r#""a\/b""#, "an escaped slash"),
            ("-0", "negative zero"),
            ("1.0", "a fraction"),
            ("1e2", "an exponent"),
            ("18446744073709551616", "above u64"),
            ("-9223372036854775809", "below i64"),
        ] {
            assert!(!is_canonical(text), "{why}: {text}");
            if let Ok(out) = canonical(text) {
                assert!(matches!(out, Cow::Owned(_)), "{why}");
                assert_ne!(&out[..], text.as_bytes(), "{why}");
            }
        }
        for text in [
            "01",
            "[1,]",
            "{\"a\":1,}",
            "tru",
            "nul",
            "\"a",
            "[1",
            "{\"a\"}",
            "1 2",
            "\"\u{1}\"",
        ] {
            assert!(!is_canonical(text), "{text}");
            assert!(canonical(text).is_err(), "{text}");
        }
        // Nesting: where the writer stops.
        for n in [126, 127, 128] {
            let doc = format!("{}1{}", "[".repeat(n), "]".repeat(n));
            assert_eq!(is_canonical(&doc), from_str(&doc).is_ok(), "{n} levels");
        }
    }

    /// Texts near canonical ones (bytes inserted, dropped, changed): wherever the check says
    /// canonical, the writer gives the very same bytes back.
    #[test]
    fn canonical_check_agrees_with_the_writer() {
        let seeds = [
            r#"{"a":[1,-2,{"b":"c\"d\\e"}],"b":true,"c":null,"d":{"x":18446744073709551615,"y":-9223372036854775808}}"#,
            r#"{"signed":{"_type":"Targets","expires":"2030-01-01T00:00:00Z","targets":{"t1":{"hashes":{"sha256":"AA=="},"length":1},"t2":{"length":2}},"version":3}}"#,
        ];
        let alphabet = b"{}[]\":,\\ -019aeb.nultrf\n";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut same, mut tried) = (0, 0);
        for seed in seeds {
            for _ in 0..20_000 {
                let mut b = seed.as_bytes().to_vec();
                for _ in 0..1 + next(3) {
                    let at = next(b.len());
                    let c = alphabet[next(alphabet.len())];
                    match next(3) {
                        0 => b.insert(at, c),
                        1 => {
                            b.remove(at);
                        }
                        _ => b[at] = c,
                    }
                }
                let Ok(text) = std::str::from_utf8(&b) else {
                    continue;
                };
                tried += 1;
                if is_canonical(text) {
                    same += 1;
                    assert_eq!(from_str(text).as_deref(), Ok(text.as_bytes()), "{text}");
                } else if let Ok(out) = from_str(text) {
                    assert_ne!(
                        out,
                        text.as_bytes(),
                        "canonical but not seen as such: {text}"
                    );
                }
            }
        }
        assert!(
            same > 100 && same < tried,
            "{same} of {tried} mutants canonical"
        );
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
