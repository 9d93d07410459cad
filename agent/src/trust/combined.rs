//! One deploy gate for DCT, cosign and Notation signatures: `dct verify IMAGE:TAG
//! --policy FILE`. A policy names, per repository scope, the signers a deployment may
//! trust, each a DCT repository under pinned roots (named delegations optional), a cosign
//! public key, or a Notation trust store with trusted identities, and how many of them must vouch for the image (`require`, m of n across
//! formats). The image's digest is the one the registry serves for the tag; a DCT signer
//! counts only if DCT signed that same digest.
//!
//! The policy arrives as JSON with every file it names already read (the CLI reads them);
//! unknown fields are refused, so a misspelt rule never silently passes.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::cache::TrustContext;
use super::gate::{check_failed, verify_tag, VerifyOpts};
use crate::error::{Error, Result};
use crate::oci::registry::{Credentials, Session};
use crate::trust::notary::NotaryClient;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatePolicy {
    pub scope: Vec<Scope>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Repositories (`registry/name`), or prefixes ending in `*`.
    pub repositories: Vec<String>,
    /// How many of the signers must vouch for the image (default 1).
    #[serde(default = "one")]
    pub require: usize,
    pub signer: Vec<SignerSpec>,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerSpec {
    pub name: String,
    pub dct: Option<DctSpec>,
    pub cosign: Option<CosignSpec>,
    pub notation: Option<NotationSpec>,
}

/// Notation: a signature whose chain a CA of the trust store issued, by one of the
/// identities (leaf subjects; `*` for any).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotationSpec {
    pub trust_store_pem: String,
    pub identities: Vec<String>,
}

/// DCT: the repository's trust data under these root keys (certificate or canonical IDs),
/// the tag signed as docker resolves it, by one of `signers` when given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DctSpec {
    pub root_keys: Vec<String>,
    #[serde(default)]
    pub signers: Vec<String>,
}

/// cosign: a signature by this P-256 public key (PEM), over a payload naming the image.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosignSpec {
    pub public_key_pem: String,
}

impl GatePolicy {
    pub fn parse(json: &[u8]) -> Result<GatePolicy> {
        let p: GatePolicy = serde_json::from_slice(json)
            .map_err(|e| Error::InvalidArgument(format!("policy: {e}")))?;
        for (i, s) in p.scope.iter().enumerate() {
            let at = || format!("policy: scope #{}", i + 1);
            if s.repositories.is_empty() || s.signer.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{}: name repositories and at least one signer",
                    at()
                )));
            }
            if s.require == 0 || s.require > s.signer.len() {
                return Err(Error::InvalidArgument(format!(
                    "{}: require = {} of {} signers",
                    at(),
                    s.require,
                    s.signer.len()
                )));
            }
            for sg in &s.signer {
                let kinds = usize::from(sg.dct.is_some())
                    + usize::from(sg.cosign.is_some())
                    + usize::from(sg.notation.is_some());
                if kinds != 1 {
                    return Err(Error::InvalidArgument(format!(
                        "{}: signer {:?} must be exactly one of dct, cosign or notation",
                        at(),
                        sg.name
                    )));
                }
                if let Some(d) = &sg.dct {
                    if d.root_keys.is_empty() {
                        return Err(Error::InvalidArgument(format!(
                            "{}: signer {:?}: dct needs root_keys (no trust on first use)",
                            at(),
                            sg.name
                        )));
                    }
                }
            }
        }
        Ok(p)
    }

    /// The scope for `gun`: an exact repository, else the longest matching prefix.
    fn scope(&self, gun: &str) -> Option<&Scope> {
        let mut by: BTreeMap<String, &Scope> = BTreeMap::new();
        for s in &self.scope {
            for r in &s.repositories {
                by.entry(r.clone()).or_insert(s);
            }
        }
        super::pinning::by_gun(&by, gun).copied()
    }
}

/// What passed.
pub struct GateVerdict {
    pub sha256_hex: String,
    pub required: usize,
    /// (signer, passed, why not)
    pub signers: Vec<(String, bool, String)>,
}

/// Where to look.
pub struct GateInput<'a> {
    pub gun: &'a str,
    pub tag: Option<&'a str>,
    /// The digest asked for (`IMAGE@sha256:...`, or --digest), hex.
    pub digest: Option<&'a str>,
    pub offline: bool,
    pub registry_ca: Option<&'a [u8]>,
    pub registry_creds: Option<Credentials>,
}

/// Checks the image against the policy's scope for its repository.
pub async fn verify_image(
    client: Option<&NotaryClient>,
    ctx: &TrustContext,
    policy: &GatePolicy,
    input: GateInput<'_>,
) -> Result<GateVerdict> {
    let gun = input.gun;
    let scope = policy
        .scope(gun)
        .ok_or_else(|| check_failed("policy", format!("no scope of the policy covers {gun}")))?;
    let session = Session::open(gun, input.registry_ca, input.registry_creds, false)?;
    let cache = Evidence::new(ctx, gun);
    // The digest: asked for, else what the registry serves for the tag (offline: what it
    // served at the last online check).
    let served = match (input.digest, input.tag) {
        (Some(d), _) => Ok(d.to_ascii_lowercase()),
        (None, Some(tag)) if input.offline => cache.tag(tag).await.ok_or_else(|| {
            format!("offline: no digest of {gun}:{tag} cached (check it once online, or name the digest)")
        }),
        (None, Some(tag)) => match session.manifest(tag).await {
            Ok(Some(m)) => {
                let d = crate::tuf::keys::hex(&<sha2::Sha256 as sha2::Digest>::digest(&m.bytes));
                cache.save_tag(tag, &d).await;
                Ok(d)
            }
            Ok(None) => Err(format!("the registry has no {gun}:{tag}")),
            Err(e) => Err(e.to_string()),
        },
        (None, None) => {
            return Err(Error::InvalidArgument(
                "name a tag (IMAGE:TAG) or a digest (IMAGE@sha256:...)".into(),
            ))
        }
    };
    let mut results = Vec::new();
    let mut dct_digest: Option<String> = None;
    for s in &scope.signer {
        let outcome: std::result::Result<(), String> = if let Some(d) = &s.dct {
            match input.tag {
                None => Err("DCT signs tags: name IMAGE:TAG".into()),
                Some(tag) => {
                    let mut pinned = ctx.clone();
                    pinned.pinning = crate::trust::Pinning {
                        certs: [(gun.to_string(), d.root_keys.clone())].into(),
                        disable_tofu: true,
                        ca: Default::default(),
                    };
                    let opts = VerifyOpts {
                        tag: tag.to_string(),
                        digest: served.as_ref().ok().cloned(),
                        signers: d.signers.clone(),
                        offline: input.offline,
                        at: None,
                        archive: None,
                    };
                    match verify_tag(client, &pinned, gun, &opts).await {
                        Ok(v) => {
                            dct_digest = Some(v.sha256_hex);
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
            }
        } else if let Some(c) = &s.cosign {
            match &served {
                Err(e) => Err(e.clone()),
                Ok(digest) => match spki_of(&c.public_key_pem) {
                    Err(e) => Err(e),
                    Ok(spki) => {
                        let found = if input.offline {
                            Ok(cache.load(digest, "cosign").await)
                        } else {
                            crate::oci::cosign::evidence(&session, digest).await
                        };
                        match found.and_then(|f| crate::oci::cosign::check(&f, gun, digest, &spki))
                        {
                            Ok(e) => {
                                if !input.offline {
                                    cache.save(digest, "cosign", &e).await;
                                }
                                Ok(())
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                },
            }
        } else if let Some(n) = &s.notation {
            match (&served, notation_trust(n)) {
                (Err(e), _) => Err(e.clone()),
                (_, Err(e)) => Err(e),
                (Ok(digest), Ok(trust)) => {
                    let found = if input.offline {
                        Ok(cache.load(digest, "notation").await)
                    } else {
                        crate::oci::notation::evidence(&session, digest).await
                    };
                    match found.and_then(|f| crate::oci::notation::check(&f, digest, &trust)) {
                        Ok(e) => {
                            if !input.offline {
                                cache.save(digest, "notation", &e).await;
                            }
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
            }
        } else {
            Err("no kind".into())
        };
        let (ok, why) = match outcome {
            Ok(()) => (true, String::new()),
            Err(why) => (false, why),
        };
        results.push((s.name.clone(), ok, why));
    }
    let passed = results.iter().filter(|r| r.1).count();
    let digest = served.ok().or(dct_digest);
    if passed < scope.require {
        let detail: Vec<String> = results
            .iter()
            .map(|(n, ok, why)| {
                if *ok {
                    format!("{n} passed")
                } else {
                    format!("{n}: {why}")
                }
            })
            .collect();
        return Err(check_failed(
            "signers",
            format!(
                "{passed} of the {} required signers vouch for {gun}{} ({})",
                scope.require,
                digest
                    .as_deref()
                    .map(|d| format!("@sha256:{d}"))
                    .unwrap_or_default(),
                detail.join("; ")
            ),
        ));
    }
    let sha256_hex = digest.ok_or_else(|| Error::Internal("passed with no digest".into()))?;
    Ok(GateVerdict {
        sha256_hex,
        required: scope.require,
        signers: results,
    })
}

/// The DER SubjectPublicKeyInfo of a PEM public key.
fn spki_of(pem: &str) -> std::result::Result<Vec<u8>, String> {
    use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
    let key = p256::PublicKey::from_public_key_pem(pem.trim())
        .map_err(|e| format!("the cosign public key is not a P-256 PEM key: {e}"))?;
    key.to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| e.to_string())
}

/// A Notation signer's trust store and identities.
fn notation_trust(n: &NotationSpec) -> std::result::Result<crate::oci::notation::Trust, String> {
    let cas = x509_cert::Certificate::load_pem_chain(n.trust_store_pem.as_bytes())
        .map_err(|e| format!("the notation trust store is not PEM certificates: {e}"))?;
    if cas.is_empty() || n.identities.is_empty() {
        return Err("a notation signer needs a trust store and identities".into());
    }
    Ok(crate::oci::notation::Trust {
        cas,
        identities: n.identities.clone(),
    })
}

/// What an online check saw, kept for `--offline`: each tag's digest, and the OCI signatures
/// that passed (re-checked in full offline: keys, chains, expiry as of then), in the trust
/// cache beside the repository's DCT data. A cache that cannot be written costs only the
/// offline check. Its files are read and written on the blocking pool, off the runtime.
struct Evidence {
    dir: std::path::PathBuf,
}

/// `f` on the blocking pool; `fallback` if it could not run to the end.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static, fallback: T) -> T {
    tokio::task::spawn_blocking(f).await.unwrap_or(fallback)
}

impl Evidence {
    fn new(ctx: &TrustContext, gun: &str) -> Evidence {
        Evidence {
            dir: ctx.gun_dir(gun).join("oci"),
        }
    }

    async fn tag(&self, tag: &str) -> Option<String> {
        let path = self.dir.join("tags").join(tag);
        let d = off_runtime(move || std::fs::read_to_string(path).ok(), None).await?;
        let d = d.trim();
        (d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())).then(|| d.to_string())
    }

    async fn save_tag(&self, tag: &str, digest: &str) {
        let path = self.dir.join("tags").join(tag);
        write_or_warn(path, digest.as_bytes().to_vec()).await;
    }

    async fn load<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        digest: &str,
        kind: &str,
    ) -> Vec<T> {
        let dir = self.dir.join(digest);
        let prefix = format!("{kind}-");
        off_runtime(
            move || {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    return Vec::new();
                };
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            },
            Vec::new(),
        )
        .await
    }

    async fn save<T: serde::Serialize>(&self, digest: &str, kind: &str, what: &T) {
        let Ok(bytes) = serde_json::to_vec(what) else {
            return;
        };
        let name = format!(
            "{kind}-{}.json",
            crate::tuf::keys::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes))
        );
        write_or_warn(self.dir.join(digest).join(name), bytes).await;
    }
}

/// Writes a cache file off the runtime; a failure only costs the cache, so it is logged.
async fn write_or_warn(path: std::path::PathBuf, bytes: Vec<u8>) {
    let wrote = off_runtime(
        move || super::cache::write_atomic(&path, &bytes),
        Err(Error::Internal(
            "the evidence cache write did not finish".into(),
        )),
    )
    .await;
    if let Err(e) = wrote {
        tracing::warn!("{e}");
    }
}
