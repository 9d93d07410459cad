//! Edits of parsed metadata (`serde_json::Value`) that never panic.
//!
//! `value["a"]["b"] = x` panics when `value` or `value["a"]` is neither an object nor
//! null, which metadata from a server or a client can arrange. These helpers walk a path
//! of object members instead, create the members that are missing (as indexing would),
//! and report the first one that is not an object.

use serde_json::{Map, Value};

/// The object at `path` under `v`, creating missing (or null) members on the way as
/// empty objects; an error names the first member on the path that is not an object.
pub fn object_mut<'a>(
    v: &'a mut Value,
    path: &[&str],
) -> Result<&'a mut Map<String, Value>, String> {
    let mut cur = v;
    for (depth, key) in path.iter().enumerate() {
        let map = as_object(cur, path, depth)?;
        cur = map.entry(*key).or_insert(Value::Null);
    }
    as_object(cur, path, path.len())
}

/// The array at `path` under `v` (a non-empty path), creating it empty when missing or
/// null, and missing objects on the way; an error names the first member that is not an
/// object, or the last if it is not an array.
pub fn array_mut<'a>(v: &'a mut Value, path: &[&str]) -> Result<&'a mut Vec<Value>, String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty path".into());
    };
    let member = object_mut(v, parents)?.entry(*last).or_insert(Value::Null);
    if member.is_null() {
        *member = Value::Array(Vec::new());
    }
    match member {
        Value::Array(a) => Ok(a),
        other => Err(format!(
            "{} is {}, not an array",
            name(path, path.len()),
            kind(other)
        )),
    }
}

/// Sets the member at `path` under `v` to `new`, creating missing objects on the way (as
/// `v[a][b] = new` would); an error names the first member on the path that is not an
/// object. An empty path is refused: it would replace `v` itself.
pub fn set(v: &mut Value, path: &[&str], new: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty path".into());
    };
    object_mut(v, parents)?.insert((*last).to_string(), new);
    Ok(())
}

/// The member at `path` under `v`, if every step is an object holding the next key.
pub fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, key| cur.get(*key))
}

/// `v` as an object, turning null into an empty one; the first `depth` keys of `path`
/// name `v` in the error.
fn as_object<'a>(
    v: &'a mut Value,
    path: &[&str],
    depth: usize,
) -> Result<&'a mut Map<String, Value>, String> {
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => Ok(m),
        other => Err(format!(
            "{} is {}, not an object",
            name(path, depth),
            kind(other)
        )),
    }
}

/// The first `depth` keys of `path`, `"roles"."root"` style, or "the document" for none.
fn name(path: &[&str], depth: usize) -> String {
    if depth == 0 {
        return "the document".into();
    }
    path.iter()
        .take(depth)
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(".")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_creates_missing_objects() {
        let mut v = json!({"a": 1});
        set(&mut v, &["roles", "root", "threshold"], json!(2)).unwrap();
        assert_eq!(v, json!({"a": 1, "roles": {"root": {"threshold": 2}}}));
        set(&mut v, &["a"], json!("x")).unwrap();
        assert_eq!(v["a"], json!("x"));
    }

    #[test]
    fn set_replaces_null_as_indexing_does() {
        let mut v = json!({"keys": null});
        set(&mut v, &["keys", "id"], json!({})).unwrap();
        assert_eq!(v, json!({"keys": {"id": {}}}));
        let mut n = Value::Null;
        set(&mut n, &["version"], json!(1)).unwrap();
        assert_eq!(n, json!({"version": 1}));
    }

    #[test]
    fn set_refuses_non_objects_on_the_path() {
        let mut v = json!({"roles": ["root"], "keys": "x"});
        let before = v.clone();
        let e = set(&mut v, &["roles", "root", "keyids"], json!([])).unwrap_err();
        assert_eq!(e, "\"roles\" is an array, not an object");
        let e = set(&mut v, &["keys", "id"], json!({})).unwrap_err();
        assert_eq!(e, "\"keys\" is a string, not an object");
        assert_eq!(v, before, "a refused edit changes nothing");
        let mut top = json!([1]);
        assert_eq!(
            set(&mut top, &["version"], json!(2)).unwrap_err(),
            "the document is an array, not an object"
        );
        assert!(set(&mut top, &[], json!(2)).is_err());
    }

    #[test]
    fn object_mut_walks_and_creates() {
        let mut v = json!({"delegations": {"keys": {"a": 1}}});
        object_mut(&mut v, &["delegations", "keys"])
            .unwrap()
            .insert("b".into(), json!(2));
        assert_eq!(v["delegations"]["keys"], json!({"a": 1, "b": 2}));
        assert!(object_mut(&mut v, &["delegations", "keys", "a"]).is_err());
        object_mut(&mut v, &["targets"]).unwrap();
        assert_eq!(v["targets"], json!({}));
        assert!(object_mut(&mut v, &[]).is_ok());
    }

    #[test]
    fn array_mut_creates_or_refuses() {
        let mut v = json!({"delegations": {"roles": [1]}});
        array_mut(&mut v, &["delegations", "roles"])
            .unwrap()
            .push(json!(2));
        assert_eq!(v["delegations"]["roles"], json!([1, 2]));
        array_mut(&mut v, &["list"]).unwrap();
        assert_eq!(v["list"], json!([]));
        let mut bad = json!({"delegations": {"roles": {}}});
        assert_eq!(
            array_mut(&mut bad, &["delegations", "roles"]).unwrap_err(),
            "\"delegations\".\"roles\" is an object, not an array"
        );
        assert!(array_mut(&mut bad, &[]).is_err());
    }

    #[test]
    fn get_follows_objects_only() {
        let v = json!({"roles": {"root": {"keyids": ["a"]}}, "list": [1]});
        assert_eq!(get(&v, &["roles", "root", "keyids"]), Some(&json!(["a"])));
        assert_eq!(get(&v, &["roles", "targets"]), None);
        assert_eq!(get(&v, &["list", "0"]), None);
        assert_eq!(get(&v, &[]), Some(&v));
    }
}
