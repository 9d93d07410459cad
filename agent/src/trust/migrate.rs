//! `dct migrate`: what DCT vouched for, re-signed as OCI signatures by a key the agent
//! holds. The repository's trust data is verified under a pinned or cached root (never on
//! first use); every tag is resolved as docker resolves it; the registry must still serve
//! the digest DCT signed for it (a moved tag is reported and skipped, never signed); a tag
//! already carrying the key's signature is skipped, so a second run signs nothing. The
//! signatures go through the guard like every other (the cosign payload parsed, the key's
//! policy checked, audited), all in one pass, and the agent writes them to the registry
//! itself.

use futures_util::StreamExt as _;

use super::cache::TrustContext;
use super::fetch::fetch;
use super::tags::signed_tags;
use crate::error::{Error, Result};
use crate::guard::oci::Profile;
use crate::guard::{Guard, Request, Subject, Versioning};
use crate::keys::KeyEntry;
use crate::oci::registry::{Credentials, Session};
use crate::trust::notary::NotaryClient;

/// What a migration does.
pub struct MigrateOpts {
    /// Only tags these signers signed (delegation names, or "Repo Admin"); empty: all.
    pub signers: Vec<String>,
    /// Report what would be signed; sign and write nothing.
    pub dry_run: bool,
}

/// What became of one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Signed,
    /// The image already carries this key's signature.
    Already,
    /// The registry serves another digest for the tag than DCT signed: not signed.
    Moved,
    /// Dry run: it would be signed.
    WouldSign,
    Failed,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Signed => "signed",
            Outcome::Already => "already signed",
            Outcome::Moved => "moved",
            Outcome::WouldSign => "would sign",
            Outcome::Failed => "failed",
        }
    }
}

/// One tag's result.
#[derive(Debug, Clone)]
pub struct TagResult {
    pub tag: String,
    /// The digest DCT signed (hex).
    pub sha256_hex: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// An image digest to sign with a key, for a tag.
pub struct CosignItem {
    pub tag: String,
    /// The manifest digest (hex).
    pub digest: String,
    /// Every listing of the key that signs.
    pub keys: Vec<KeyEntry>,
}

/// Signs each item's cosign payload (one pass through the guard for all of them) and adds
/// each signature to the image's `.sig` manifest; one result per item, in order.
pub async fn sign_and_write_cosign(
    guard: &Guard,
    session: &Session,
    gun: &str,
    items: &[CosignItem],
) -> Vec<Result<()>> {
    let payloads: Vec<Vec<u8>> = items
        .iter()
        .map(|i| crate::oci::cosign::payload(gun, &i.digest))
        .collect();
    let requests = items
        .iter()
        .zip(&payloads)
        .map(|(i, p)| Request {
            keys: i.keys.clone(),
            subject: Subject::Oci {
                profile: Profile::Cosign,
                payload: p.clone(),
            },
            versioning: Versioning::Final,
        })
        .collect();
    let signed = guard.sign_all(requests).await;
    // One image's signatures are written one after the other (each write reads the
    // `.sig` and adds a layer: two at once would lose one); different images at once.
    let mut by_digest: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match by_digest.iter_mut().find(|(d, _)| *d == item.digest) {
            Some((_, v)) => v.push(i),
            None => by_digest.push((&item.digest, vec![i])),
        }
    }
    let mut signed: Vec<Option<Result<crate::guard::Signed>>> =
        signed.into_iter().map(Some).collect();
    // Collected first: a stream over a closure's futures is not Send here (rustc #102211).
    let mut writes = Vec::with_capacity(by_digest.len());
    for (_, idx) in &by_digest {
        let group: Vec<(usize, Result<crate::guard::Signed>)> = idx
            .iter()
            .map(|&i| {
                let s = signed
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_else(|| Err(Error::Internal("not signed".into())));
                (i, s)
            })
            .collect();
        writes.push(write_group(session, items, &payloads, group));
    }
    let done: Vec<Vec<(usize, Result<()>)>> = futures_util::stream::iter(writes)
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let mut out: Vec<Result<()>> = (0..items.len())
        .map(|_| Err(Error::Internal("not written".into())))
        .collect();
    for (i, r) in done.into_iter().flatten() {
        if let Some(slot) = out.get_mut(i) {
            *slot = r;
        }
    }
    out
}

/// Writes the signatures of one image, in turn.
async fn write_group(
    session: &Session,
    items: &[CosignItem],
    payloads: &[Vec<u8>],
    group: Vec<(usize, Result<crate::guard::Signed>)>,
) -> Vec<(usize, Result<()>)> {
    let mut out = Vec::with_capacity(group.len());
    for (i, signed) in group {
        let r = match (items.get(i), payloads.get(i)) {
            (Some(item), Some(payload)) => write_one(session, item, payload, signed).await,
            _ => Err(Error::Internal("no such item".into())),
        };
        out.push((i, r));
    }
    out
}

/// Adds one signature made by the guard to its image's `.sig`.
async fn write_one(
    session: &Session,
    item: &CosignItem,
    payload: &[u8],
    signed: Result<crate::guard::Signed>,
) -> Result<()> {
    let sig = crate::oci::cosign::der_base64(&signed?.document)?;
    crate::oci::cosign::attach(session, &item.digest, payload, &sig).await
}

/// Registry requests a migration keeps in flight (different images; results in order).
const IN_FLIGHT: usize = 8;

/// Migrates `gun`'s signed tags to cosign signatures made with `keys` (every listing of one
/// key); `progress` hears of each tag as it is settled, with the number of tags.
#[allow(clippy::too_many_arguments)]
pub async fn migrate_cosign(
    guard: &Guard,
    client: &NotaryClient,
    ctx: &TrustContext,
    gun: &str,
    keys: Vec<KeyEntry>,
    opts: &MigrateOpts,
    registry: (Option<&[u8]>, Option<Credentials>),
    mut progress: impl FnMut(usize, &TagResult),
) -> Result<Vec<TagResult>> {
    let key = keys
        .first()
        .cloned()
        .ok_or_else(|| Error::NotFound("no such key".into()))?;
    let repo = fetch(client, ctx, gun)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{gun} has no trust data on the trust server")))?;
    if !repo.trusted {
        return Err(Error::Refused(format!(
            "{gun}'s root is neither pinned nor cached: migrating it would re-sign whatever the \
             server sent. Pin the root ([trust.pinning.certs]) or verify it once first"
        )));
    }
    let wanted = |signers: &[String]| {
        opts.signers.is_empty()
            || opts.signers.iter().any(|w| {
                signers
                    .iter()
                    .any(|s| s == w || (s == "Repo Admin" && w == "targets"))
            })
    };
    let tags: Vec<_> = signed_tags(&repo)
        .into_iter()
        .filter(|t| wanted(&t.signers))
        .collect();
    let total = tags.len();
    let (ca, creds) = registry;
    let session = Session::open(gun, ca, creds, !opts.dry_run)?;
    let mut results = Vec::with_capacity(total);
    let mut pending = Vec::new();
    let mut settle = |results: &mut Vec<TagResult>, r: TagResult| {
        progress(total, &r);
        results.push(r);
    };
    // Where each tag stands, several tags at a time.
    let mut checks = Vec::with_capacity(tags.len());
    for t in &tags {
        checks.push(check_tag(&session, gun, t, &key.spki));
    }
    let states: Vec<std::result::Result<(), (Outcome, String)>> =
        futures_util::stream::iter(checks)
            .buffered(IN_FLIGHT)
            .collect()
            .await;
    for (t, state) in tags.iter().zip(states) {
        let result = |outcome, detail: String| TagResult {
            tag: t.tag.clone(),
            sha256_hex: t.sha256_hex.clone(),
            outcome,
            detail,
        };
        match state {
            Err((outcome, detail)) => settle(&mut results, result(outcome, detail)),
            Ok(()) if opts.dry_run => {
                settle(&mut results, result(Outcome::WouldSign, String::new()))
            }
            Ok(()) => pending.push(CosignItem {
                tag: t.tag.clone(),
                digest: t.sha256_hex.clone(),
                keys: keys.clone(),
            }),
        }
    }
    // One pass through the guard for every signature, then the writes.
    let written = sign_and_write_cosign(guard, &session, gun, &pending).await;
    for (p, w) in pending.into_iter().zip(written) {
        let (outcome, detail) = match w {
            Ok(()) => (Outcome::Signed, String::new()),
            Err(e) => (Outcome::Failed, e.to_string()),
        };
        settle(
            &mut results,
            TagResult {
                tag: p.tag,
                sha256_hex: p.digest,
                outcome,
                detail,
            },
        );
    }
    Ok(results)
}

/// Ok when `t` is to be signed; else its outcome: moved (the registry serves another
/// digest, or none), already signed by the key, or failed.
async fn check_tag(
    session: &Session,
    gun: &str,
    t: &super::tags::SignedTag,
    spki: &[u8],
) -> std::result::Result<(), (Outcome, String)> {
    let served = match session.manifest(&t.tag).await {
        Ok(Some(m)) => crate::tuf::keys::hex(&<sha2::Sha256 as sha2::Digest>::digest(&m.bytes)),
        Ok(None) => return Err((Outcome::Moved, "the registry no longer has the tag".into())),
        Err(e) => return Err((Outcome::Failed, e.to_string())),
    };
    if served != t.sha256_hex {
        return Err((
            Outcome::Moved,
            format!("the registry now serves sha256:{served}, not the signed digest"),
        ));
    }
    let payload = crate::oci::cosign::payload(gun, &t.sha256_hex);
    match crate::oci::cosign::already_signed(session, &t.sha256_hex, &payload, spki).await {
        Ok(true) => Err((Outcome::Already, String::new())),
        Ok(false) => Ok(()),
        Err(e) => Err((Outcome::Failed, e.to_string())),
    }
}
