//! Signed envelopes and the typed views of the four Notary roles.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::cjson;
use super::keys::TufKey;

/// One entry of `signatures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub keyid: String,
    pub method: String,
    pub sig: Vec<u8>,
}

/// `{"signed": ..., "signatures": [...]}` with `signed` kept as a generic value: verifiers
/// re-canonicalise the parsed value, so that is what gets hashed, whatever the input spacing.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub signed: Value,
    pub signatures: Vec<Signature>,
}

/// An envelope read without a tree of `signed`: its raw text (borrowed from the file) and
/// the signatures. The guard takes a targets role's canonical bytes from this text
/// ([`cjson::from_str`]) rather than from a tree of 100,000 targets.
pub struct RawEnvelope<'a> {
    pub signed: &'a RawValue,
    pub signatures: Vec<Signature>,
}

impl<'a> RawEnvelope<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not JSON: {e}"))?;
        if !text.trim_start().starts_with('{') {
            return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Err(e) => Err(format!("not JSON: {e}")),
                Ok(_) => Err("not a JSON object".into()),
            };
        }
        let members = cjson::members(text).map_err(|e| format!("not JSON: {e}"))?;
        // A name given twice: the last one counts, as in a parsed map. Members not read
        // below (others, and earlier ones of a repeated name) are checked as a tree of the
        // file would check them: numbers in range, strings well formed.
        let read = |name: &str| members.iter().rposition(|(k, _)| k.0 == name);
        let (signed_at, signatures_at) = (read("signed"), read("signatures"));
        for (i, (_, v)) in members.iter().enumerate() {
            if Some(i) != signed_at && Some(i) != signatures_at {
                serde_json::from_str::<Value>(v.get()).map_err(|e| format!("not JSON: {e}"))?;
            }
        }
        let member = |at: Option<usize>| at.and_then(|i| members.get(i)).map(|(_, v)| *v);
        let signed = member(signed_at).ok_or("no \"signed\" member")?;
        if !signed.get().starts_with('{') {
            return Err("\"signed\" is not an object".into());
        }
        let sigs = match member(signatures_at).map(|raw| serde_json::from_str(raw.get())) {
            None | Some(Ok(Value::Null)) => Vec::new(),
            Some(Ok(Value::Array(a))) => a,
            Some(Ok(_)) => return Err("\"signatures\" is not a list".into()),
            Some(Err(e)) => return Err(format!("not JSON: {e}")),
        };
        Ok(RawEnvelope {
            signed,
            signatures: parse_signatures(sigs)?,
        })
    }
}

impl RawEnvelope<'_> {
    /// `signed.delegations` of a targets role, read without its targets.
    pub fn delegations(&self) -> Result<Delegations, String> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(default)]
            delegations: Delegations,
        }
        serde_json::from_str::<Head>(self.signed.get())
            .map(|h| h.delegations)
            .map_err(|e| e.to_string())
    }

    /// `signed._type`, read without the rest (None when absent or not a string).
    pub fn doc_type(&self) -> Result<Option<String>, String> {
        let top = cjson::members(self.signed.get()).map_err(|e| e.to_string())?;
        Ok(cjson::last(&top, "_type").and_then(|v| serde_json::from_str::<String>(v.get()).ok()))
    }

    /// The names in `signed.targets`, in the file's order, without their entries.
    pub fn target_names(&self) -> Result<Vec<String>, String> {
        let top = cjson::members(self.signed.get()).map_err(|e| e.to_string())?;
        let Some(targets) = cjson::last(&top, "targets") else {
            return Ok(Vec::new());
        };
        if !targets.get().starts_with('{') {
            return Err("targets is not an object".into());
        }
        let list = cjson::members(targets.get()).map_err(|e| e.to_string())?;
        Ok(list.into_iter().map(|(k, _)| k.0.into_owned()).collect())
    }
}

fn parse_signatures(sigs: Vec<Value>) -> Result<Vec<Signature>, String> {
    let mut signatures = Vec::with_capacity(sigs.len());
    for s in sigs {
        let keyid = s
            .get("keyid")
            .and_then(Value::as_str)
            .ok_or("a signature has no keyid")?;
        let method = s
            .get("method")
            .and_then(Value::as_str)
            .ok_or("a signature has no method")?;
        let sig = s
            .get("sig")
            .and_then(Value::as_str)
            .ok_or("a signature has no sig")?;
        let sig = B64
            .decode(sig)
            .map_err(|e| format!("signature of {keyid} is not base64: {e}"))?;
        signatures.push(Signature {
            keyid: keyid.into(),
            method: method.into(),
            sig,
        });
    }
    Ok(signatures)
}

/// A metadata file as Notary writes it, from the canonical bytes of `signed` (`message`)
/// and the signatures: `signed` first, then `signatures`, no whitespace.
pub fn file_bytes(message: &[u8], signatures: &[Signature]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(message.len() + 32 + 192 * signatures.len());
    out.extend_from_slice(FILE_HEAD);
    out.extend_from_slice(message);
    write_signatures(signatures, &mut out)?;
    Ok(out)
}

/// What a metadata file starts with, as [`file_bytes`] writes it: `signed` follows.
pub const FILE_HEAD: &[u8] = b"{\"signed\":";

/// [`file_bytes`] in place: `buf` holds [`FILE_HEAD`] and the message in its first `end`
/// bytes; what follows is replaced by the signatures (a big role is so signed without a
/// second copy of it).
pub fn finish_file(
    mut buf: Vec<u8>,
    end: usize,
    signatures: &[Signature],
) -> Result<Vec<u8>, String> {
    if !buf.starts_with(FILE_HEAD) || end > buf.len() {
        return Err("not a file head".into());
    }
    buf.truncate(end);
    write_signatures(signatures, &mut buf)?;
    Ok(buf)
}

/// Adds `sig` to `signatures`, replacing an earlier one by the same key.
pub fn set_signature(signatures: &mut Vec<Signature>, sig: Signature) {
    signatures.retain(|s| s.keyid != sig.keyid);
    signatures.push(sig);
}

fn write_signatures(signatures: &[Signature], out: &mut Vec<u8>) -> Result<(), String> {
    out.extend_from_slice(b",\"signatures\":[");
    for (i, s) in signatures.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let entry =
            serde_json::json!({"keyid": s.keyid, "method": s.method, "sig": B64.encode(&s.sig)});
        cjson::write(&entry, out).map_err(|e| e.to_string())?;
    }
    out.extend_from_slice(b"]}");
    Ok(())
}

impl Envelope {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw = RawEnvelope::parse(bytes)?;
        let signed =
            serde_json::from_str(raw.signed.get()).map_err(|e| format!("not JSON: {e}"))?;
        Ok(Envelope {
            signed,
            signatures: raw.signatures,
        })
    }

    /// The canonical bytes of `signed`: the message every signature covers.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, String> {
        cjson::to_vec(&self.signed).map_err(|e| e.to_string())
    }

    /// The file as Notary writes it: `signed` first, then `signatures`, no whitespace.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        file_bytes(&self.signed_bytes()?, &self.signatures)
    }

    /// `signed._type`.
    pub fn doc_type(&self) -> Option<&str> {
        self.signed.get("_type").and_then(Value::as_str)
    }

    /// Adds a signature, replacing an earlier one by the same key.
    pub fn set_signature(&mut self, sig: Signature) {
        set_signature(&mut self.signatures, sig);
    }
}

/// Fields every role has.
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    #[serde(rename = "_type")]
    pub doc_type: String,
    pub version: i64,
    pub expires: String,
}

impl Common {
    pub fn expires_at(&self) -> Result<OffsetDateTime, String> {
        OffsetDateTime::parse(&self.expires, &Rfc3339)
            .map_err(|e| format!("expires {:?} is not RFC 3339: {e}", self.expires))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootDoc {
    #[serde(flatten)]
    pub common: Common,
    pub keys: BTreeMap<String, Value>,
    pub roles: BTreeMap<String, RoleKeys>,
    #[serde(default)]
    pub consistent_snapshot: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FileMeta {
    /// Absent in a target entry makes that target unusable (Notary reads it as 0); the
    /// snapshot and timestamp meta must give the exact length.
    #[serde(default)]
    pub length: Option<i64>,
    /// Absent in a target entry makes that target unusable, as docker refuses a target
    /// without sha256.
    #[serde(default)]
    pub hashes: Hashes,
    // `custom` is not read: nothing here uses it, and a tree of it per target would cost
    // more than the rest of the entry. The signature check still covers it.
}

/// A file's `hashes`: algorithm name to base64 digest, sorted by name. A short list rather
/// than a `BTreeMap`: a map node costs several hundred bytes and a 100,000-target role has
/// one per target, where one or two entries are all a target carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hashes(Vec<(String, String)>);

impl Hashes {
    pub fn get(&self, alg: &str) -> Option<&String> {
        self.0.iter().find(|(a, _)| a == alg).map(|(_, v)| v)
    }

    pub fn contains_key(&self, alg: &str) -> bool {
        self.get(alg).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(a, v)| (a, v))
    }
}

impl<'de> Deserialize<'de> for Hashes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Hashes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of hash names to base64 strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Hashes, A::Error> {
                let mut out: Vec<(String, String)> = Vec::with_capacity(m.size_hint().unwrap_or(1));
                while let Some(entry) = m.next_entry::<String, String>()? {
                    out.push(entry);
                }
                // A name given twice: the last one counts, as it did in a map.
                crate::util::last_of_each(&mut out, |(alg, _)| alg.as_str());
                out.shrink_to_fit();
                Ok(Hashes(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl FileMeta {
    pub fn sha256_hex(&self) -> Option<String> {
        let raw = B64.decode(self.hashes.get("sha256")?).ok()?;
        Some(super::keys::hex(&raw))
    }

    /// What a target entry points at, as docker takes it: a sha256 of exactly 32 bytes and
    /// a non-negative length, else why the target cannot be used.
    pub fn usable_target(&self) -> Result<(String, u64), String> {
        let b64 = self.hashes.get("sha256").ok_or("no sha256 hash")?;
        let raw = B64
            .decode(b64)
            .map_err(|_| "sha256 hash is not base64".to_string())?;
        if raw.len() != 32 {
            return Err(format!("sha256 hash is {} bytes, not 32", raw.len()));
        }
        let length = self.length.ok_or("no length")?;
        let length = u64::try_from(length).map_err(|_| format!("length {length} is negative"))?;
        Ok((super::keys::hex(&raw), length))
    }

    /// Every hash must be base64, as Notary decodes each into bytes when it reads the file
    /// (it fails the role, and so the repository, otherwise).
    pub fn check_base64(&self) -> Result<(), String> {
        for (alg, v) in self.hashes.iter() {
            if B64.decode(v).is_err() {
                return Err(format!("{alg} hash is not base64"));
            }
        }
        Ok(())
    }

    /// Checks `bytes` against the length and every hash this code knows (sha256, sha512);
    /// at least one known hash must be present, as Notary requires.
    pub fn check(&self, bytes: &[u8]) -> Result<(), String> {
        self.check_with(bytes, false)
    }

    /// As [`FileMeta::check`], and with a sha256 hash required (Notary requires one in the
    /// snapshot's entries for root and targets and in the timestamp's for snapshot).
    pub fn check_sha256(&self, bytes: &[u8]) -> Result<(), String> {
        self.check_with(bytes, true)
    }

    fn check_with(&self, bytes: &[u8], need_sha256: bool) -> Result<(), String> {
        if need_sha256 && !self.hashes.contains_key("sha256") {
            return Err("no sha256 hash".into());
        }
        use sha2::{Digest, Sha256, Sha512};
        let Some(length) = self.length else {
            return Err("no length".into());
        };
        if length != bytes.len() as i64 {
            return Err(format!(
                "length is {length} but the file has {} bytes",
                bytes.len()
            ));
        }
        let mut known = 0;
        for (alg, expected) in self.hashes.iter() {
            let actual = match alg.as_str() {
                "sha256" => Sha256::digest(bytes).to_vec(),
                "sha512" => Sha512::digest(bytes).to_vec(),
                _ => continue,
            };
            known += 1;
            let expected = B64
                .decode(expected)
                .map_err(|_| format!("{alg} hash is not base64"))?;
            if expected != actual {
                return Err(format!("{alg} hash does not match the file"));
            }
        }
        if known == 0 {
            return Err("no sha256 or sha512 hash".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DelegationRole {
    pub name: String,
    /// Notary writes `null` for a delegation whose keys were all removed (a nil Go slice).
    #[serde(deserialize_with = "null_as_empty")]
    pub keyids: Vec<String>,
    pub threshold: i64,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub paths: Vec<String>,
}

/// A JSON `null` read as the empty value, as Go reads it into a nil slice.
fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Delegations {
    #[serde(default)]
    pub keys: BTreeMap<String, Value>,
    #[serde(default)]
    pub roles: Vec<DelegationRole>,
}

/// A targets document, read through [`TargetsParts`]: a `#[serde(flatten)]` of [`Common`]
/// would have serde buffer the whole document (100,000 targets) as generic content first.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "TargetsParts<BTreeMap<String, FileMeta>>")]
pub struct TargetsDoc {
    pub common: Common,
    pub targets: BTreeMap<String, FileMeta>,
    pub delegations: Delegations,
}

/// A targets document's members as serde reads them in one pass; `targets` is the map
/// ([`TargetsDoc`]) or skipped over ([`TargetsHead`]). A member given twice is refused.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetsParts<T> {
    #[serde(rename = "_type")]
    pub doc_type: String,
    pub version: i64,
    pub expires: String,
    #[serde(default)]
    pub targets: T,
    #[serde(default)]
    pub delegations: Delegations,
}

/// The parts of a targets document but its targets map, skipped over: the guard and the
/// verifier check the map from its text, entry by entry.
pub type TargetsHead = TargetsParts<serde::de::IgnoredAny>;

impl<T> TargetsParts<T> {
    /// `_type`, `version` and `expires`.
    pub fn common(&self) -> Common {
        Common {
            doc_type: self.doc_type.clone(),
            version: self.version,
            expires: self.expires.clone(),
        }
    }
}

impl From<TargetsParts<BTreeMap<String, FileMeta>>> for TargetsDoc {
    fn from(p: TargetsParts<BTreeMap<String, FileMeta>>) -> TargetsDoc {
        TargetsDoc {
            common: Common {
                doc_type: p.doc_type,
                version: p.version,
                expires: p.expires,
            },
            targets: p.targets,
            delegations: p.delegations,
        }
    }
}

/// Snapshot and timestamp both carry `meta`.
#[derive(Debug, Clone, Deserialize)]
pub struct MetaDoc {
    #[serde(flatten)]
    pub common: Common,
    pub meta: BTreeMap<String, FileMeta>,
}

/// Parses a key map, checking that each key's listed ID is the ID of the key itself.
pub fn parse_key_map(keys: &BTreeMap<String, Value>) -> Result<BTreeMap<String, TufKey>, String> {
    let mut out = BTreeMap::new();
    for (id, v) in keys {
        let key = TufKey::from_value(v).map_err(|e| format!("key {id}: {e}"))?;
        let actual = key.key_id();
        if &actual != id {
            return Err(format!("key listed as {id} has ID {actual}"));
        }
        out.insert(id.clone(), key);
    }
    Ok(out)
}

/// Notary's rule for role names: the four top-level roles, or a clean path under
/// `targets/` of `[-a-z0-9_/]`, shorter than 256 bytes.
pub fn valid_role_name(name: &str) -> bool {
    match name {
        "root" | "targets" | "snapshot" | "timestamp" => true,
        _ => valid_delegation_name(name),
    }
}

pub fn valid_delegation_name(name: &str) -> bool {
    name.len() < 256
        && name.starts_with("targets/")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_/".contains(&b))
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// The `_type` a role's document must have.
pub fn expected_type(role: &str) -> &'static str {
    match role {
        "root" => "Root",
        "snapshot" => "Snapshot",
        "timestamp" => "Timestamp",
        _ => "Targets",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A targets document reads in one pass, typed or without its map; a member given twice
    /// is refused either way (Go's decoder takes the last, a first-wins reading would not).
    #[test]
    fn targets_documents_read_in_one_pass_and_refuse_a_member_twice() {
        let doc = r#"{"_type":"Targets","delegations":{"keys":{},"roles":[]},"expires":"2030-01-01T00:00:00Z","targets":{"a":{"hashes":{"sha256":"AA=="},"length":1}},"version":3,"x":[1]}"#;
        let full: TargetsDoc = serde_json::from_str(doc).unwrap();
        assert_eq!((full.common.version, full.targets.len()), (3, 1));
        assert_eq!(full.common.doc_type, "Targets");
        let head: TargetsHead = serde_json::from_str(doc).unwrap();
        assert_eq!(
            (head.version, head.expires.as_str()),
            (3, "2030-01-01T00:00:00Z")
        );
        let no_map = r#"{"_type":"Targets","expires":"2030-01-01T00:00:00Z","version":1}"#;
        assert!(serde_json::from_str::<TargetsDoc>(no_map)
            .unwrap()
            .targets
            .is_empty());
        for twice in [
            doc.replace(r#""version":3"#, r#""version":3,"version":4"#),
            doc.replace(r#""targets":{"#, r#""targets":{},"targets":{"#),
        ] {
            assert!(
                serde_json::from_str::<TargetsDoc>(&twice).is_err(),
                "{twice}"
            );
            assert!(
                serde_json::from_str::<TargetsHead>(&twice).is_err(),
                "{twice}"
            );
        }
    }

    #[test]
    fn delegations_and_target_names_are_read_from_the_text() {
        let file = br#"{"signed":{"_type":"Targets","targets":{"b":{"length":1},"a":{}},"delegations":{"keys":{},"roles":[{"name":"targets/releases","keyids":["k"],"threshold":1,"paths":[""]}]}},"signatures":[]}"#;
        let raw = RawEnvelope::parse(file).unwrap();
        assert_eq!(raw.target_names().unwrap(), ["b", "a"]);
        let d = raw.delegations().unwrap();
        assert_eq!(d.roles.len(), 1);
        assert_eq!(d.roles[0].name, "targets/releases");
        let none = RawEnvelope::parse(br#"{"signed":{"_type":"Targets"}}"#).unwrap();
        assert!(none.target_names().unwrap().is_empty());
        assert!(none.delegations().unwrap().roles.is_empty());
        let bad = RawEnvelope::parse(br#"{"signed":{"targets":[]}}"#).unwrap();
        assert!(bad.target_names().is_err());
        // Members the parse does not use are checked as a tree of the file would check them.
        for bad in [
            &br#"{"signed":{"_type":"Targets"},"x":1e400}"#[..],
            br#"{"signed":{"a":"\ud800"},"signed":{"_type":"Targets"}}"#,
            br#"{"signatures":[1e999],"signed":{},"signatures":[]}"#,
        ] {
            assert!(serde_json::from_slice::<Value>(bad).is_err());
            assert!(
                RawEnvelope::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(RawEnvelope::parse(b"[]").is_err());
        assert!(RawEnvelope::parse(br#"{"signed":[]}"#).is_err());
    }

    #[test]
    fn hashes_read_as_a_map_sorted_with_the_last_of_a_repeated_name() {
        let m: FileMeta = serde_json::from_str(
            r#"{"length":3,"hashes":{"sha512":"AA==","sha256":"BB==","sha512":"CC=="}}"#,
        )
        .unwrap();
        let got: Vec<(&String, &String)> = m.hashes.iter().collect();
        let (s256, s512) = ("sha256".to_string(), "sha512".to_string());
        let (b, c) = ("BB==".to_string(), "CC==".to_string());
        assert_eq!(got, [(&s256, &b), (&s512, &c)]);
        assert_eq!(m.hashes.get("sha256"), Some(&b));
        assert!(!m.hashes.contains_key("md5"));
        let none: FileMeta = serde_json::from_str(r#"{"length":3}"#).unwrap();
        assert_eq!(none.hashes, Hashes::default());
        assert!(serde_json::from_str::<FileMeta>(r#"{"hashes":["sha256"]}"#).is_err());
    }
}
