//! `dct migrate`: what DCT vouched for, re-signed as OCI signatures by a key the agent
//! holds. The repository's trust data is verified under a pinned or cached root (never on
//! first use); every tag is resolved as docker resolves it; the registry must still serve
//! the digest DCT signed for it (a moved tag is reported and skipped, never signed); a tag
//! already carrying the key's signature is skipped, so a second run signs nothing. The
//! signatures go through the guard like every other (the cosign payload or Notation
//! signing input parsed, the key's policy checked, audited), all in one pass, and the agent
//! writes them to the registry itself: cosign's classic `.sig`, or Notation's JWS envelope
//! with the key's certificate chain, listed in the image's referrers.

use futures_util::StreamExt as _;

use super::cache::TrustContext;
use super::fetch::fetch;
use super::tags::signed_tags;
use crate::error::{Error, Result};
use crate::guard::oci::Profile;
use crate::guard::{Guard, Request, Subject, Versioning};
use crate::keys::KeyEntry;
use crate::oci::notation::{signing_input, SigningInput, Subject as NotationSubject};
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

/// An OCI signature format the agent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Cosign,
    Notation,
}

impl Format {
    pub fn parse(name: &str) -> Result<Format> {
        match name {
            "cosign" => Ok(Format::Cosign),
            "notation" => Ok(Format::Notation),
            other => Err(Error::InvalidArgument(format!(
                "{other:?} is not a format this agent writes (cosign, notation)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Cosign => "cosign",
            Format::Notation => "notation",
        }
    }
}

/// An image to sign with a key, for a tag.
pub struct OciItem {
    pub tag: String,
    pub subject: NotationSubject,
    /// Every listing of the key that signs.
    pub keys: Vec<KeyEntry>,
}

/// What the guard is asked to sign for `item`, and what the write needs besides the
/// signature.
enum Prepared {
    Cosign {
        payload: Vec<u8>,
    },
    Notation {
        input: SigningInput,
        chain: Vec<Vec<u8>>,
    },
}

impl Prepared {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Prepared::Cosign { payload } => payload.clone(),
            Prepared::Notation { input, .. } => input.bytes(),
        }
    }
}

fn prepare(
    format: Format,
    gun: &str,
    item: &OciItem,
    chains: &crate::keys::chains::Chains,
) -> Result<Prepared> {
    match format {
        Format::Cosign => Ok(Prepared::Cosign {
            payload: crate::oci::cosign::payload(gun, &item.subject.digest_hex),
        }),
        Format::Notation => {
            let key = item
                .keys
                .first()
                .ok_or_else(|| Error::NotFound("no such key".into()))?;
            // Notation checks the signature against the chain's leaf: no chain, no signature.
            let chain = chains.for_signing(key)?.der;
            let input = signing_input(&item.subject, time::OffsetDateTime::now_utc(), None)?;
            Ok(Prepared::Notation { input, chain })
        }
    }
}

/// Signs each item in `format` (one pass through the guard for all of them) and writes
/// each signature to the registry; one result per item, in order.
pub async fn sign_and_write(
    guard: &Guard,
    ctx: &TrustContext,
    session: &Session,
    gun: &str,
    format: Format,
    items: &[OciItem],
) -> Vec<Result<()>> {
    let chains = crate::keys::chains::Chains::new(&ctx.state_dir());
    let prepared: Vec<Result<Prepared>> = items
        .iter()
        .map(|i| prepare(format, gun, i, &chains))
        .collect();
    let profile = match format {
        Format::Cosign => Profile::Cosign,
        Format::Notation => Profile::Notation,
    };
    let mut places = Vec::new();
    let mut requests = Vec::new();
    for (i, (item, p)) in items.iter().zip(&prepared).enumerate() {
        if let Ok(p) = p {
            places.push(i);
            requests.push(Request {
                keys: item.keys.clone(),
                subject: Subject::Oci {
                    profile,
                    payload: p.bytes(),
                },
                versioning: Versioning::Final,
            });
        }
    }
    let mut signed: Vec<Option<Result<crate::guard::Signed>>> = prepared
        .iter()
        .map(|p| match p {
            Ok(_) => None,
            Err(e) => Some(Err(Error::InvalidArgument(e.to_string()))),
        })
        .collect();
    let started = std::time::Instant::now();
    let all = guard.sign_all(requests).await;
    tracing::info!(
        gun,
        n = all.len(),
        ms = started.elapsed().as_millis() as u64,
        "migrate: signed"
    );
    for (i, s) in places.into_iter().zip(all) {
        if let Some(slot) = signed.get_mut(i) {
            *slot = Some(s);
        }
    }
    // One image's signatures are written one after the other (each write reads what the
    // image has and adds to it: two at once would lose one); different images at once.
    let mut by_digest: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match by_digest
            .iter_mut()
            .find(|(d, _)| *d == item.subject.digest_hex)
        {
            Some((_, v)) => v.push(i),
            None => by_digest.push((&item.subject.digest_hex, vec![i])),
        }
    }
    // Notation's signature manifests share one blob, the empty config: uploaded once here,
    // as two uploads of one blob at once can leave a manifest naming it refused (400).
    if format == Format::Notation && prepared.iter().any(|p| p.is_ok()) {
        if let Err(e) = session.put_blob(b"{}").await {
            let msg = e.to_string();
            return items
                .iter()
                .map(|_| Err(Error::Unavailable(msg.clone())))
                .collect();
        }
    }
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
        writes.push(write_group(session, items, &prepared, group));
    }
    let started = std::time::Instant::now();
    let done: Vec<Vec<(usize, Result<()>)>> = futures_util::stream::iter(writes)
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    tracing::info!(
        gun,
        ms = started.elapsed().as_millis() as u64,
        "migrate: written"
    );
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
    items: &[OciItem],
    prepared: &[Result<Prepared>],
    group: Vec<(usize, Result<crate::guard::Signed>)>,
) -> Vec<(usize, Result<()>)> {
    let mut out = Vec::with_capacity(group.len());
    for (i, signed) in group {
        let r = match (items.get(i), prepared.get(i)) {
            (Some(item), Some(Ok(p))) => write_one(session, item, p, signed).await,
            _ => signed.map(|_| ()),
        };
        out.push((i, r));
    }
    out
}

/// Writes one signature the guard made.
async fn write_one(
    session: &Session,
    item: &OciItem,
    prepared: &Prepared,
    signed: Result<crate::guard::Signed>,
) -> Result<()> {
    let raw = signed?.document;
    match prepared {
        Prepared::Cosign { payload } => {
            let sig = crate::oci::cosign::der_base64(&raw)?;
            crate::oci::cosign::attach(session, &item.subject.digest_hex, payload, &sig).await
        }
        Prepared::Notation { input, chain } => {
            let env = crate::oci::notation::envelope(input, &raw, chain);
            crate::oci::notation::attach(session, &item.subject, &env, chain).await
        }
    }
}

/// The image `digest_hex` names in the registry, as a signature's subject.
pub async fn subject_of(session: &Session, digest_hex: &str) -> Result<NotationSubject> {
    let m = session
        .manifest(&format!("sha256:{digest_hex}"))
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "the registry has no manifest sha256:{digest_hex} in {}",
                session.name
            ))
        })?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&m.bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|t| t.as_str())
                .map(str::to_string)
        })
        .unwrap_or(m.media_type);
    Ok(NotationSubject {
        media_type,
        digest_hex: digest_hex.to_string(),
        size: m.bytes.len() as u64,
    })
}

/// Registry requests a migration keeps in flight (different images; results in order):
/// enough to cover a round trip to a registry far away while the registry works.
const IN_FLIGHT: usize = 64;

/// Migrates `gun`'s signed tags to `format` signatures made with `keys` (every listing of
/// one key); `progress` hears of each tag as it is settled, with the number of tags.
#[allow(clippy::too_many_arguments)]
pub async fn migrate(
    format: Format,
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
    let started = std::time::Instant::now();
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
    let mut repo = repo;
    let tags: Vec<_> = signed_tags(&mut repo)
        .into_iter()
        .filter(|t| wanted(&t.signers))
        .collect();
    let total = tags.len();
    tracing::info!(
        gun,
        tags = total,
        ms = started.elapsed().as_millis() as u64,
        "migrate: trust data verified"
    );
    let (ca, creds) = registry;
    let session = Session::open(gun, ca, creds, !opts.dry_run)?;
    let mut results = Vec::with_capacity(total);
    let mut pending = Vec::new();
    let mut settle = |results: &mut Vec<TagResult>, r: TagResult| {
        progress(total, &r);
        results.push(r);
    };
    // The tags listed once: an image with no signature yet (most, on a first run) is then
    // known unsigned without a request of its own. A registry that does not list: asked
    // per image.
    if let Err(e) = session.list_tags().await {
        tracing::warn!(
            gun,
            "migrate: the registry did not list the tags ({e}); asking per tag"
        );
    }
    // Where each tag stands, several tags at a time.
    let mut checks = Vec::with_capacity(tags.len());
    for t in &tags {
        checks.push(check_tag(&session, gun, t, &key.spki, format));
    }
    let states: Vec<std::result::Result<NotationSubject, (Outcome, String)>> =
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
            Ok(_) if opts.dry_run => {
                settle(&mut results, result(Outcome::WouldSign, String::new()))
            }
            Ok(subject) => pending.push(OciItem {
                tag: t.tag.clone(),
                subject,
                keys: keys.clone(),
            }),
        }
    }
    tracing::info!(
        gun,
        to_sign = pending.len(),
        ms = started.elapsed().as_millis() as u64,
        "migrate: tags checked"
    );
    // Each write reads what the image has afresh (another signer may have added to it since
    // the listing; a registry may list less than it has): nothing of theirs is dropped.
    session.forget_tags();
    // One pass through the guard for every signature, then the writes.
    let written = sign_and_write(guard, ctx, &session, gun, format, &pending).await;
    for (p, w) in pending.into_iter().zip(written) {
        let (outcome, detail) = match w {
            Ok(()) => (Outcome::Signed, String::new()),
            Err(e) => (Outcome::Failed, e.to_string()),
        };
        settle(
            &mut results,
            TagResult {
                tag: p.tag,
                sha256_hex: p.subject.digest_hex,
                outcome,
                detail,
            },
        );
    }
    Ok(results)
}

/// The image to sign when `t` is to be signed; else its outcome: moved (the registry
/// serves another digest, or none), already signed by the key, or failed.
async fn check_tag(
    session: &Session,
    gun: &str,
    t: &super::tags::SignedTag,
    spki: &[u8],
    format: Format,
) -> std::result::Result<NotationSubject, (Outcome, String)> {
    let m = match session.manifest(&t.tag).await {
        Ok(Some(m)) => m,
        Ok(None) => return Err((Outcome::Moved, "the registry no longer has the tag".into())),
        Err(e) => return Err((Outcome::Failed, e.to_string())),
    };
    let served = crate::tuf::keys::hex(&<sha2::Sha256 as sha2::Digest>::digest(&m.bytes));
    if served != t.sha256_hex {
        return Err((
            Outcome::Moved,
            format!("the registry now serves sha256:{served}, not the signed digest"),
        ));
    }
    let media_type = serde_json::from_slice::<serde_json::Value>(&m.bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|t| t.as_str())
                .map(str::to_string)
        })
        .unwrap_or(m.media_type);
    let subject = NotationSubject {
        media_type,
        digest_hex: served,
        size: m.bytes.len() as u64,
    };
    let already = match format {
        Format::Cosign => {
            let payload = crate::oci::cosign::payload(gun, &t.sha256_hex);
            crate::oci::cosign::already_signed(session, &t.sha256_hex, &payload, spki).await
        }
        Format::Notation => {
            crate::oci::notation::already_signed(session, &t.sha256_hex, spki).await
        }
    };
    match already {
        Ok(true) => Err((Outcome::Already, String::new())),
        Ok(false) => Ok(subject),
        Err(e) => Err((Outcome::Failed, e.to_string())),
    }
}
