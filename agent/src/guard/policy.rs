//! Sign what you see: what each key may sign, checked on the parsed document before the
//! token is asked, every refusal naming its rule.
//!
//! ```toml
//! [[policy]]                  # by key (ID, canonical ID or prefix) ...
//! key = "3f01"
//! roles = ["targets/releases", "targets/ci"]
//! guns = ["registry.example.com/team/*"]
//! max_expiry = "90d"
//!
//! [[policy]]                  # ... or for every key of a role
//! role = "targets"
//! max_expiry = "1y"
//! ```
//! Without a rule a key signs only its own role (a delegation key any delegation) and GUN,
//! up to Notary's own default lifetimes (root 10 years, targets and snapshot 3, timestamp
//! 14 days, each with a day of slack). Whatever the rules, a key never signs a lower version
//! than it signed before for the same role and GUN, nor the same version with other content
//! (the version ledger, [`super::ledger`]). There is no raw-digest signing API at all: the
//! agent signs only documents it parsed.

use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::keys::KeyEntry;

#[derive(Debug, Clone, Deserialize, Default)]
// Unknown keys are reported, all at once, by the config parser (serde_ignored).
pub struct Rule {
    /// A key ID, canonical ID or unique prefix (hex).
    pub key: Option<String>,
    /// Or: every key of this role.
    pub role: Option<String>,
    /// Roles the key may sign for: names, or `targets/*` for any delegation.
    pub roles: Option<Vec<String>>,
    /// GUNs the key may sign for: names, or prefixes ending in `*`.
    pub guns: Option<Vec<String>>,
    /// The furthest expiry it may put on a document ("90d", "1y", "36h").
    pub max_expiry: Option<String>,
    /// Refuse a version lower than one signed before, or the same version with other
    /// content (default true; turn off only for load tests that sign out of order).
    pub check_versions: Option<bool>,
    /// Sign only after the user confirmed what will be signed, through the agent's own
    /// confirmation program (`[confirm] program`), never through the requesting client.
    #[serde(default)]
    pub confirm: bool,
    /// OCI signatures the key may make: `notation`, `cosign` (image signatures; cosign's
    /// for the repositories in `guns`, else the key's own GUN; Notation's payload names no
    /// repository, so `guns` do not bind it) and `blob` (any bytes, through
    /// `cosign sign-blob`: a key that signs anything signs images too, so never by
    /// default). Default: `["notation", "cosign"]` for targets and delegation keys, none
    /// for the others.
    pub oci: Option<Vec<String>>,
    /// The longest a Notation signature of this key may stay valid ("90d", "1y"); with it,
    /// a signature must carry an expiry. Default: no limit.
    pub max_signature_lifetime: Option<String>,
}

/// What is about to be signed.
pub struct Signing<'a> {
    pub key: &'a KeyEntry,
    /// The key ID the signature names (a root key's certificate ID).
    pub keyid: &'a str,
    pub role: &'a str,
    pub gun: &'a str,
    pub version: u64,
    pub expires: OffsetDateTime,
    pub digest: &'a [u8; 32],
}

/// The rules.
#[derive(Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// "90d", "1y", "36h", "15m", "90s".
pub fn parse_span(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    if let Some(years) = t.strip_suffix('y') {
        let n: u64 = years
            .parse()
            .map_err(|_| format!("{text:?} is not a duration (e.g. 90d, 1y)"))?;
        return Ok(Duration::from_secs(n * 365 * 86400));
    }
    crate::util::duration::parse_duration(t)
}

fn refuse(rule: &'static str, why: String) -> Error {
    Error::Policy { rule, why }
}

fn matches_pattern(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl Policy {
    pub fn new(rules: Vec<Rule>) -> std::result::Result<Policy, String> {
        for (i, r) in rules.iter().enumerate() {
            if r.key.is_some() == r.role.is_some() {
                return Err(format!(
                    "[[policy]] #{}: name exactly one of key or role",
                    i + 1
                ));
            }
            if let Some(k) = &r.key {
                if k.len() < 4 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "[[policy]] #{}: key {k:?} is not a key ID (hex, at least 4 digits)",
                        i + 1
                    ));
                }
            }
            if let Some(m) = &r.max_expiry {
                parse_span(m).map_err(|e| format!("[[policy]] #{}: {e}", i + 1))?;
            }
            if let Some(m) = &r.max_signature_lifetime {
                parse_span(m).map_err(|e| format!("[[policy]] #{}: {e}", i + 1))?;
            }
            for word in r.oci.iter().flatten() {
                if !OCI_WORDS.contains(&word.as_str()) {
                    return Err(format!(
                        "[[policy]] #{}: oci: {word:?} is not one of {}",
                        i + 1,
                        OCI_WORDS.join(", ")
                    ));
                }
            }
        }
        Ok(Policy { rules })
    }

    /// The rule for `key`: its own, else its role's.
    fn rule(&self, key: &KeyEntry) -> Option<&Rule> {
        // A prefix in any case (key IDs are lower-case hex), compared without allocating.
        let starts =
            |id: &str, k: &str| id.get(..k.len()).is_some_and(|p| p.eq_ignore_ascii_case(k));
        let by_key = self.rules.iter().find(|r| {
            r.key
                .as_deref()
                .is_some_and(|k| starts(&key.key_id, k) || starts(&key.canonical_id, k))
        });
        by_key.or_else(|| {
            self.rules
                .iter()
                .find(|r| r.role.as_deref() == Some(key.role.as_str()))
        })
    }

    /// Whether the key signs only after the user confirmed.
    pub fn needs_confirm(&self, key: &KeyEntry) -> bool {
        self.rule(key).is_some_and(|r| r.confirm)
    }

    /// Whether the version ledger applies to this key (see `check_versions`).
    pub fn checks_versions(&self, key: &KeyEntry) -> bool {
        self.rule(key)
            .and_then(|r| r.check_versions)
            .unwrap_or(true)
    }

    /// Checks `s` against the key's rule: roles, GUNs, expiry. (Versions are the ledger's,
    /// confirmation the guard's.)
    pub fn check(&self, s: &Signing<'_>) -> Result<()> {
        let rule = self.rule(s.key);
        // Worded only for a refusal: a signature that passes formats nothing.
        let whose = || match rule {
            Some(Rule { key: Some(k), .. }) => format!("rule for key {k}"),
            Some(Rule { role: Some(r), .. }) => format!("rule for {r} keys"),
            _ => "default".to_string(),
        };
        if let Some(roles) = rule.and_then(|r| r.roles.as_ref()) {
            if !roles.iter().any(|p| matches_pattern(p, s.role)) {
                return Err(refuse(
                    "roles",
                    format!(
                        "key {} may sign {} ({}), not {}",
                        s.key.key_id,
                        roles.join(", "),
                        whose(),
                        s.role
                    ),
                ));
            }
        }
        if let Some(guns) = rule.and_then(|r| r.guns.as_ref()) {
            if !guns.iter().any(|p| matches_pattern(p, s.gun)) {
                let gun = if s.gun.is_empty() {
                    "a document with no GUN given".to_string()
                } else {
                    s.gun.to_string()
                };
                return Err(refuse(
                    "guns",
                    format!(
                        "key {} may sign for {} ({}), not {gun}",
                        s.key.key_id,
                        guns.join(", "),
                        whose()
                    ),
                ));
            }
        }
        let (max, max_text) = match rule.and_then(|r| r.max_expiry.as_deref()) {
            Some(m) => (parse_span(m).unwrap_or_default(), m),
            None => default_max(s.role),
        };
        let limit = OffsetDateTime::now_utc() + max;
        if s.expires > limit {
            return Err(refuse(
                "max_expiry",
                format!(
                    "the document expires {}, beyond the {max_text} a {} document of key {} may last ({})",
                    s.expires.date(),
                    s.role,
                    s.key.key_id,
                    whose()
                ),
            ));
        }
        Ok(())
    }
}

/// What a rule's `oci` list may name.
const OCI_WORDS: [&str; 3] = ["notation", "cosign", "blob"];

/// The same repository, however its registry is spelled (Docker Hub has three names).
fn normal_repository(name: &str) -> &str {
    for hub in ["index.docker.io/", "registry-1.docker.io/"] {
        if let Some(rest) = name.strip_prefix(hub) {
            return rest;
        }
    }
    name.strip_prefix("docker.io/").unwrap_or(name)
}

impl Policy {
    /// Checks an OCI signature (Notation, cosign) against the key's rule: the kind, the
    /// repository, the signature's lifetime.
    pub fn check_oci(&self, key: &KeyEntry, o: &crate::guard::oci::Parsed) -> Result<()> {
        let rule = self.rule(key);
        let whose = match rule {
            Some(Rule { key: Some(k), .. }) => format!("rule for key {k}"),
            Some(Rule { role: Some(r), .. }) => format!("rule for {r} keys"),
            _ => "default".to_string(),
        };
        let word = o.kind.policy_word();
        let allowed: Vec<&str> = match rule.and_then(|r| r.oci.as_ref()) {
            Some(list) => list.iter().map(String::as_str).collect(),
            None if key.role == "targets" || key.role.starts_with("targets/") => {
                vec!["notation", "cosign"]
            }
            None => Vec::new(),
        };
        if !allowed.contains(&word) {
            let how = if word == "blob" {
                "a key that signs any bytes signs images too; allow it explicitly with \
                 oci = [\"blob\"] in the key's [[policy]] rule"
            } else {
                "allow it with oci = [...] in the key's [[policy]] rule"
            };
            return Err(refuse(
                "oci",
                format!(
                    "key {} may not make {word} signatures ({whose}); {how}",
                    key.key_id
                ),
            ));
        }
        // A Notation payload names no repository (see `oci::notation`): its key's rule and
        // the digest it shows bind it, not `guns`.
        let named = !matches!(
            o.kind,
            crate::guard::oci::Kind::Blob
                | crate::guard::oci::Kind::NotationJws
                | crate::guard::oci::Kind::NotationCose
        );
        if named {
            let repo = normal_repository(&o.repository);
            let fits = match rule.and_then(|r| r.guns.as_ref()) {
                Some(guns) => guns
                    .iter()
                    .any(|p| matches_pattern(normal_repository(p), repo)),
                None => key
                    .gun
                    .as_deref()
                    .is_some_and(|g| normal_repository(g) == repo),
            };
            if !fits {
                let may = match (rule.and_then(|r| r.guns.as_ref()), key.gun.as_deref()) {
                    (Some(guns), _) => guns.join(", "),
                    (None, Some(g)) => g.to_string(),
                    (None, None) => {
                        "no repository (the key has no GUN and its rule no guns)".into()
                    }
                };
                // A payload naming no repository (a cosign bundle without its
                // repository annotation) holds for its digest in every repository.
                let what = if o.repository.is_empty() {
                    "a signature naming no repository (it would hold for that digest in \
                     every repository)"
                } else {
                    o.repository.as_str()
                };
                return Err(refuse(
                    "guns",
                    format!(
                        "key {} may sign for {may} ({whose}), not {what}",
                        key.key_id
                    ),
                ));
            }
        }
        let notation = word == "notation";
        if let Some(max) = rule
            .and_then(|r| r.max_signature_lifetime.as_deref())
            .filter(|_| notation)
        {
            let limit = OffsetDateTime::now_utc() + parse_span(max).unwrap_or_default();
            match o.expires {
                None => {
                    return Err(refuse(
                        "max_signature_lifetime",
                        format!(
                            "signatures of key {} must expire within {max} ({whose}); this one \
                             never expires (notation sign --expiry)",
                            key.key_id
                        ),
                    ))
                }
                Some(e) if e > limit => {
                    return Err(refuse(
                        "max_signature_lifetime",
                        format!(
                            "the signature expires {}, beyond the {max} a signature of key {} \
                             may last ({whose})",
                            e.date(),
                            key.key_id
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl Policy {
    /// Checks a certificate a Notation signing CA's key is about to sign: where the key's
    /// rule has `max_expiry`, the certificate may not be valid beyond it.
    pub fn check_certificate(&self, key: &KeyEntry, not_after: OffsetDateTime) -> Result<()> {
        let Some(max) = self.rule(key).and_then(|r| r.max_expiry.as_deref()) else {
            return Ok(());
        };
        let limit = OffsetDateTime::now_utc() + parse_span(max).unwrap_or_default();
        if not_after > limit {
            return Err(refuse(
                "max_expiry",
                format!(
                    "the certificate would be valid until {}, beyond the {max} key {} may \
                     certify",
                    not_after.date(),
                    key.key_id
                ),
            ));
        }
        Ok(())
    }
}

/// Notary's default lifetimes, with a day of slack.
fn default_max(role: &str) -> (Duration, &'static str) {
    const DAY: u64 = 86400;
    let (days, text) = match role {
        "root" => (3651, "10 years (default)"),
        "timestamp" => (15, "14 days (default)"),
        _ => (3 * 365 + 2, "3 years (default)"),
    };
    (Duration::from_secs((days + 1) * DAY), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: &str) -> KeyEntry {
        KeyEntry {
            key_id: "abcd".repeat(16),
            canonical_id: "abcd".repeat(16),
            role: role.into(),
            gun: Some("a.com/x".into()),
            keytype: "ecdsa".into(),
            public: vec![],
            spki: vec![],
            uri: String::new(),
            backend: "pkcs11",
            token: "t".into(),
            handle: vec![],
            detail: crate::keys::KeyDetail::None,
        }
    }

    fn signing<'a>(
        k: &'a KeyEntry,
        role: &'a str,
        gun: &'a str,
        v: u64,
        d: &'a [u8; 32],
    ) -> Signing<'a> {
        Signing {
            key: k,
            keyid: &k.key_id,
            role,
            gun,
            version: v,
            expires: OffsetDateTime::now_utc() + Duration::from_secs(86400),
            digest: d,
        }
    }

    #[test]
    fn rules_name_what_refused() {
        let p = Policy::new(vec![Rule {
            key: Some("ABCD".into()),
            roles: Some(vec!["targets/*".into()]),
            guns: Some(vec!["a.com/*".into()]),
            max_expiry: Some("2d".into()),
            ..Default::default()
        }])
        .unwrap();
        let k = key("targets/ci");
        let d = [1u8; 32];
        assert!(p
            .check(&signing(&k, "targets/releases", "a.com/x", 1, &d))
            .is_ok());
        let e = p
            .check(&signing(&k, "targets", "a.com/x", 1, &d))
            .unwrap_err();
        assert!(e.to_string().contains("policy (roles)"), "{e}");
        let e = p
            .check(&signing(&k, "targets/ci", "b.com/x", 1, &d))
            .unwrap_err();
        assert!(e.to_string().contains("policy (guns)"), "{e}");
        let mut far = signing(&k, "targets/ci", "a.com/x", 1, &d);
        far.expires = OffsetDateTime::now_utc() + Duration::from_secs(3 * 86400);
        assert!(p
            .check(&far)
            .unwrap_err()
            .to_string()
            .contains("policy (max_expiry)"));
    }

    #[test]
    fn default_expiry_limits() {
        let p = Policy::new(vec![]).unwrap();
        let k = key("timestamp");
        let d = [0u8; 32];
        let mut s = signing(&k, "timestamp", "a.com/x", 1, &d);
        s.expires = OffsetDateTime::now_utc() + Duration::from_secs(30 * 86400);
        assert!(p.check(&s).unwrap_err().to_string().contains("14 days"));
    }

    fn oci(kind: crate::guard::oci::Kind, repo: &str) -> crate::guard::oci::Parsed {
        crate::guard::oci::Parsed {
            kind,
            repository: repo.into(),
            artifact: format!("sha256:{}", "ab".repeat(32)),
            expires: None,
            lines: vec![],
        }
    }

    #[test]
    fn oci_defaults_and_rules() {
        use crate::guard::oci::Kind;
        let p = Policy::new(vec![]).unwrap();
        let t = key("targets");
        // Targets keys sign image signatures for their own repository, however Docker
        // Hub's name is spelled; no blobs; no other repository; no other role.
        assert!(p
            .check_oci(&t, &oci(Kind::CosignSimpleSigning, "a.com/x"))
            .is_ok());
        assert!(p.check_oci(&t, &oci(Kind::NotationJws, "a.com/x")).is_ok());
        let e = p.check_oci(&t, &oci(Kind::Blob, "")).unwrap_err();
        assert!(e.to_string().contains("policy (oci)"), "{e}");
        assert!(e.to_string().contains("oci = [\"blob\"]"), "{e}");
        let e = p
            .check_oci(&t, &oci(Kind::CosignDsse, "a.com/other"))
            .unwrap_err();
        assert!(e.to_string().contains("policy (guns)"), "{e}");
        let e = p
            .check_oci(&key("timestamp"), &oci(Kind::CosignDsse, "a.com/x"))
            .unwrap_err();
        assert!(e.to_string().contains("policy (oci)"), "{e}");
        let mut hub = key("targets/releases");
        hub.gun = Some("docker.io/library/alpine".into());
        assert!(p
            .check_oci(
                &hub,
                &oci(Kind::CosignDsse, "index.docker.io/library/alpine")
            )
            .is_ok());

        let p = Policy::new(vec![Rule {
            key: Some("abcd".into()),
            guns: Some(vec!["example.com/app*".into()]),
            oci: Some(vec!["cosign".into(), "blob".into()]),
            max_signature_lifetime: Some("30d".into()),
            ..Default::default()
        }])
        .unwrap();
        assert!(p.check_oci(&t, &oci(Kind::Blob, "")).is_ok());
        assert!(p
            .check_oci(&t, &oci(Kind::CosignSimpleSigning, "example.com/app2"))
            .is_ok());
        let e = p
            .check_oci(&t, &oci(Kind::CosignSimpleSigning, "example.com/other"))
            .unwrap_err();
        assert!(e.to_string().contains("example.com/app*"), "{e}");
        let mut n = oci(Kind::NotationCose, "example.com/app");
        let e = p.check_oci(&t, &n).unwrap_err();
        assert!(e.to_string().contains("policy (oci)"), "{e}");
        let p = Policy::new(vec![Rule {
            role: Some("targets".into()),
            max_signature_lifetime: Some("30d".into()),
            ..Default::default()
        }])
        .unwrap();
        n.repository = "a.com/x".into();
        assert!(p
            .check_oci(&t, &n)
            .unwrap_err()
            .to_string()
            .contains("never expires"));
        n.expires = Some(OffsetDateTime::now_utc() + Duration::from_secs(60 * 86400));
        assert!(p
            .check_oci(&t, &n)
            .unwrap_err()
            .to_string()
            .contains("max_signature_lifetime"));
        n.expires = Some(OffsetDateTime::now_utc() + Duration::from_secs(20 * 86400));
        assert!(p.check_oci(&t, &n).is_ok());
        // Notation payloads name no repository: the key's rule binds them, not its guns.
        n.repository = String::new();
        let p = Policy::new(vec![Rule {
            role: Some("targets".into()),
            guns: Some(vec!["example.com/app*".into()]),
            ..Default::default()
        }])
        .unwrap();
        assert!(p.check_oci(&t, &n).is_ok());
        // A CA key's max_expiry bounds the certificates it signs.
        let ca = key("notation-ca");
        let p = Policy::new(vec![Rule {
            role: Some("notation-ca".into()),
            max_expiry: Some("90d".into()),
            ..Default::default()
        }])
        .unwrap();
        let soon = OffsetDateTime::now_utc() + Duration::from_secs(30 * 86400);
        assert!(p.check_certificate(&ca, soon).is_ok());
        let e = p
            .check_certificate(&ca, soon + Duration::from_secs(365 * 86400))
            .unwrap_err();
        assert!(e.to_string().contains("policy (max_expiry)"), "{e}");
        assert!(Policy::new(vec![Rule {
            role: Some("targets".into()),
            oci: Some(vec!["anything".into()]),
            ..Default::default()
        }])
        .is_err());
    }

    #[test]
    fn oci_without_repository_needs_every_repository() {
        use crate::guard::oci::Kind;
        // A cosign bundle naming no repository holds for its digest everywhere: only a
        // key allowed every repository signs it.
        let t = key("targets");
        let e = Policy::new(vec![])
            .unwrap()
            .check_oci(&t, &oci(Kind::CosignDsse, ""))
            .unwrap_err();
        assert!(e.to_string().contains("naming no repository"), "{e}");
        let any = Policy::new(vec![Rule {
            role: Some("targets".into()),
            guns: Some(vec!["*".into()]),
            ..Default::default()
        }])
        .unwrap();
        assert!(any.check_oci(&t, &oci(Kind::CosignDsse, "")).is_ok());
    }
}
