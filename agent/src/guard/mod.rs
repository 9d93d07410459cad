//! The guard: the only path to a signature.
//!
//! Every signature the agent makes (the dct API, single and batch; trust operations and
//! ceremonies; the notary-signer API) is a [`Request`] to [`Guard::sign`] or
//! [`Guard::sign_all`], and goes through the same steps, in this order:
//!
//! 1. **parse** what is to be signed ([`document`]): the agent signs only what it understands;
//! 2. **policy** ([`policy`]) and **version reservation** ([`ledger`]), atomically, so two
//!    racing requests cannot both pass;
//! 3. **confirmation** where the policy asks for it, obtained by the agent itself through its
//!    confirmation program, never by the requesting client;
//! 4. the **token** signs (only the guard holds the keyring's [`SigningRights`]);
//! 5. the **audit** record is durable ([`audit`]), and the ledger takes the version with it;
//! 6. **commit**: the signature leaves.
//!
//! A failure at any step releases the reservation and is audited as a refusal.

pub mod audit;
pub mod confirm;
pub mod document;
pub mod keyadmin;
pub mod ledger;
pub mod oci;
pub mod policy;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::guard::confirm::Confirmer;
use crate::keys::{KeyEntry, Keyring, SigningRights};
use audit::{Audit, Event};
use document::Prepared;
pub use ledger::Versioning;
use ledger::{Ledger, Mark, MarkState, Reservation};
use policy::Policy;

/// What is to be signed.
pub enum Subject {
    /// A Notary metadata file (`{"signed": ..., "signatures": [...]}`).
    Metadata {
        document: Vec<u8>,
        /// The role it is for (empty: the key's).
        role: String,
        /// The GUN (empty: the document's or the key's).
        gun: String,
        /// For a new root signed by an old root key: the root it follows.
        previous_root: Option<Vec<u8>>,
        /// The version this one replaces, for the confirmation's diff (a file signed by this
        /// key; anything else is not trusted for the diff).
        previous: Option<Vec<u8>>,
    },
    /// The canonical `signed` part of a role notary-server manages, as it sends it to its
    /// signer; the signature is returned raw.
    ServerRole { content: Vec<u8> },
    /// A Notation or cosign signing input ([`oci`]); the signature is returned raw.
    Oci {
        profile: oci::Profile,
        payload: Vec<u8>,
    },
    /// The DER `TBSCertificate` of a certificate the agent built itself, for a Notation
    /// signing CA's key ([`crate::keys::chains::NOTATION_CA_ROLE`]) to sign: its own
    /// self-signed CA certificate or a signing leaf for another key. The signature is
    /// returned raw.
    Certificate { tbs: Vec<u8> },
    /// The DER `CertificationRequestInfo` of a PKCS#10 request the agent built for the
    /// signing key's own public key (proof of possession, for a company CA). The signature
    /// is returned raw.
    CertRequest { info: Vec<u8> },
}

/// One signature to make.
pub struct Request {
    /// Every listing of the key (a root key lists once per certificate).
    pub keys: Vec<KeyEntry>,
    pub subject: Subject,
    pub versioning: Versioning,
}

/// A signature made.
pub struct Signed {
    /// The signed file; for [`Subject::ServerRole`], the raw r||s signature.
    pub document: Vec<u8>,
    pub keyid: String,
    pub role: String,
    pub version: u64,
    /// What to acknowledge with [`Guard::published`] once the server took it.
    pub receipt: Receipt,
    /// For [`Subject::Oci`]: what the payload was found to be.
    pub oci: Option<oci::Parsed>,
}

/// A signature as the ledger knows it.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub key_id: String,
    pub gun: String,
    pub role: String,
    pub version: u64,
    pub digest: [u8; 32],
}

#[derive(Clone)]
pub struct Guard(Arc<Inner>);

struct Inner {
    keys: Keyring,
    rights: SigningRights,
    policy: Policy,
    ledger: Arc<Ledger>,
    audit: Audit,
    confirmer: Confirmer,
}

/// A request parsed and checked.
struct Item {
    key: KeyEntry,
    p: Prepared,
    versioning: Versioning,
    /// Return the raw signature rather than the signed file.
    raw: bool,
    previous: Option<Vec<u8>>,
    /// How the user confirmed, when the policy asked.
    approval: Option<String>,
    /// For an OCI payload: what it vouches for (no version, no ledger).
    oci: Option<oci::Parsed>,
    /// For a certificate: what it says (no version, no ledger).
    cert: Option<Vec<String>>,
    /// A metadata file as sent: read again only for the confirmation's summary.
    source: Option<bytes::Bytes>,
}

use crate::util::cpu;

fn subject_size(r: &Request) -> usize {
    match &r.subject {
        Subject::Metadata { document, .. } => document.len(),
        Subject::ServerRole { content } => content.len(),
        Subject::Oci { payload, .. } => payload.len(),
        Subject::Certificate { tbs } => tbs.len(),
        Subject::CertRequest { info } => info.len(),
    }
}

/// The audit record of a request refused before it could be parsed.
/// The metrics' name of the API a request came through.
fn api_label(v: Versioning) -> &'static str {
    match v {
        Versioning::Final => "dct",
        Versioning::Publish => "trust",
        Versioning::ServerManaged => "notary_signer",
    }
}

/// The role a request asks for (the document's, else its key's), as a metric label.
fn role_of(r: &Request) -> &'static str {
    let role = match &r.subject {
        Subject::Metadata { role, .. } if !role.is_empty() => role.as_str(),
        _ => r.keys.first().map(|k| k.role.as_str()).unwrap_or_default(),
    };
    crate::util::metrics::role_label(role)
}

/// Counts the outcome of each request, and the time the batch took.
fn count(
    labels: &[(&'static str, &'static str)],
    results: &[Result<Signed>],
    took: std::time::Duration,
) {
    use crate::util::metrics::{metrics, role_label, ApiLabels, RefusalLabels, SignLabels};
    let m = metrics();
    for (&(api, asked_role), r) in labels.iter().zip(results) {
        let (role, outcome) = match r {
            Ok(s) => (role_label(&s.role), "ok"),
            Err(e) => {
                let rule = e.policy_rule().unwrap_or_else(|| e.reason());
                m.refusals.get_or_create(&RefusalLabels { rule }).inc();
                let outcome = if e.reason() == "refused" {
                    "refused"
                } else {
                    "error"
                };
                (asked_role, outcome)
            }
        };
        m.signatures
            .get_or_create(&SignLabels { api, role, outcome })
            .inc();
        m.sign_seconds
            .get_or_create(&ApiLabels { api })
            .observe(took.as_secs_f64());
    }
}

fn attempt_event(r: &Request) -> Event {
    let key = r.keys.first();
    let (role, gun) = match &r.subject {
        Subject::Metadata { role, gun, .. } => (role.clone(), gun.clone()),
        Subject::ServerRole { .. }
        | Subject::Oci { .. }
        | Subject::Certificate { .. }
        | Subject::CertRequest { .. } => (String::new(), String::new()),
    };
    Event {
        key_id: key.map(|k| k.key_id.clone()).unwrap_or_default(),
        role: if role.is_empty() {
            key.map(|k| k.role.clone()).unwrap_or_default()
        } else {
            role
        },
        gun: if gun.is_empty() {
            key.and_then(|k| k.gun.clone()).unwrap_or_default()
        } else {
            gun
        },
        ..Event::new("sign")
    }
}

/// Step 1: parse and check that the key fits.
fn parse(r: Request) -> Result<Item> {
    let key = r
        .keys
        .first()
        .cloned()
        .ok_or_else(|| Error::NotFound("no such key".into()))?;
    let ca_key = key.role == crate::keys::chains::NOTATION_CA_ROLE;
    // A request for its own certificate is the one thing any key but a CA's may sign
    // besides its documents; a CA key signs certificates only, and only a CA key does.
    let own_request = matches!(r.subject, Subject::CertRequest { .. }) && !ca_key;
    if !own_request && ca_key != matches!(r.subject, Subject::Certificate { .. }) {
        return Err(Error::Policy {
            rule: "role",
            why: if ca_key {
                format!(
                    "key {} is a Notation signing CA: it signs certificates only",
                    key.key_id
                )
            } else {
                format!(
                    "key {} is not a Notation signing CA ({} key): only a CA key made with \
                     `dct notation ca init` signs certificates",
                    key.key_id, key.role
                )
            },
        });
    }
    match r.subject {
        Subject::Metadata {
            document,
            role,
            gun,
            previous_root,
            previous,
        } => {
            // One buffer for the document as sent and its canonical part (most often the same
            // bytes): a big targets role is held once.
            let document = bytes::Bytes::from(document);
            let p = document::prepare_shared(
                &document,
                &r.keys,
                &role,
                &gun,
                previous_root.as_deref(),
            )?;
            Ok(Item {
                key,
                p,
                versioning: r.versioning,
                raw: false,
                previous,
                approval: None,
                oci: None,
                cert: None,
                source: Some(document),
            })
        }
        Subject::ServerRole { content } => {
            let (version, expires) = document::check_server_content(&content, &key.role)?;
            let p = raw_prepared(
                &key,
                key.role.clone(),
                version,
                &content,
                key.gun.clone().unwrap_or_default(),
                expires,
            );
            Ok(Item {
                key,
                p,
                versioning: r.versioning,
                raw: true,
                previous: None,
                approval: None,
                oci: None,
                cert: None,
                source: None,
            })
        }
        Subject::Oci { profile, payload } => {
            let parsed = oci::parse(profile, &payload)?;
            let p = raw_prepared(
                &key,
                parsed.kind.policy_word().to_string(),
                0,
                &payload,
                parsed.repository.clone(),
                parsed.expires.unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            );
            Ok(Item {
                key,
                p,
                versioning: r.versioning,
                raw: true,
                previous: None,
                approval: None,
                oci: Some(parsed),
                cert: None,
                source: None,
            })
        }
        Subject::CertRequest { info } => {
            use der::Decode;
            let parsed = x509_cert::request::CertReqInfo::from_der(&info).map_err(|e| {
                Error::InvalidArgument(format!("not a CertificationRequestInfo: {e}"))
            })?;
            let lines = crate::tuf::cert::describe_csr_info(&parsed, &key.spki).map_err(|why| {
                Error::Policy {
                    rule: "certificate",
                    why: format!("key {} does not sign this request: {why}", key.key_id),
                }
            })?;
            let p = raw_prepared(
                &key,
                key.role.clone(),
                0,
                &info,
                String::new(),
                time::OffsetDateTime::UNIX_EPOCH,
            );
            Ok(Item {
                key,
                p,
                versioning: r.versioning,
                raw: true,
                previous: None,
                approval: None,
                oci: None,
                cert: Some(lines),
                source: None,
            })
        }
        Subject::Certificate { tbs } => {
            use der::Decode;
            let parsed = x509_cert::TbsCertificate::from_der(&tbs)
                .map_err(|e| Error::InvalidArgument(format!("not a TBSCertificate: {e}")))?;
            let lines =
                crate::tuf::cert::describe_notation_tbs(&parsed, &key.spki).map_err(|why| {
                    Error::Policy {
                        rule: "certificate",
                        why: format!("key {} does not sign this certificate: {why}", key.key_id),
                    }
                })?;
            let p = raw_prepared(
                &key,
                key.role.clone(),
                0,
                &tbs,
                String::new(),
                time::OffsetDateTime::from(parsed.validity.not_after.to_system_time()),
            );
            Ok(Item {
                key,
                p,
                versioning: r.versioning,
                raw: true,
                previous: None,
                approval: None,
                oci: None,
                cert: Some(lines),
                source: None,
            })
        }
    }
}

/// A subject signed as sent, not kept as a tree (server roles, OCI payloads, certificates
/// and requests): what the policy, the confirmation and the audit see of it.
fn raw_prepared(
    key: &KeyEntry,
    role: String,
    version: u64,
    bytes: &[u8],
    gun: String,
    expires: time::OffsetDateTime,
) -> Prepared {
    use sha2::Digest;
    Prepared {
        message: bytes::Bytes::new(),
        document: None,
        signatures: Vec::new(),
        role,
        version,
        digest: sha2::Sha256::digest(bytes).into(),
        keyid: key.canonical_id.clone(),
        gun,
        expires,
    }
}

/// What the policy sees of a prepared document.
fn policy_view<'a>(key: &'a KeyEntry, p: &'a Prepared) -> policy::Signing<'a> {
    policy::Signing {
        key,
        keyid: &p.keyid,
        role: &p.role,
        gun: &p.gun,
        version: p.version,
        expires: p.expires,
        digest: &p.digest,
    }
}

fn slot(p: &Prepared) -> ledger::Slot {
    (p.keyid.clone(), p.gun.clone(), p.role.clone())
}

/// The audit record of signing `it`.
fn sign_event(it: &Item) -> Event {
    let p = &it.p;
    Event {
        key_id: p.keyid.clone(),
        role: p.role.clone(),
        gun: p.gun.clone(),
        sha256: crate::tuf::keys::hex(&p.digest),
        version: it.oci.is_none().then_some(p.version),
        artifact: match (&it.oci, &it.cert) {
            (Some(o), _) => format!("{} {}", o.kind.name(), o.artifact),
            (None, Some(lines)) => lines.join("; "),
            (None, None) => String::new(),
        },
        ..Event::new("sign")
    }
}

/// An OCI payload refused after it was parsed: its record names the repository and the
/// artifact (the request alone names neither).
fn oci_attempt(item: &Result<Item>, attempt: &mut Event) {
    if let Ok(it) = item {
        if it.oci.is_some() {
            *attempt = sign_event(it);
        }
    }
}

fn refusal(mut e: Event, why: &Error) -> Event {
    e.action = "refuse";
    e.outcome = why.to_string();
    e.ledger = None;
    e
}

impl Guard {
    pub fn new(
        keys: Keyring,
        rights: SigningRights,
        policy: Policy,
        ledger: Arc<Ledger>,
        audit: Audit,
        confirmer: Confirmer,
    ) -> Guard {
        Guard(Arc::new(Inner {
            keys,
            rights,
            policy,
            ledger,
            audit,
            confirmer,
        }))
    }

    /// The tokens and their keys (listing, lookup, key management: no signing).
    pub fn keys(&self) -> &Keyring {
        &self.0.keys
    }

    /// The audit log every key use goes to.
    pub fn audit(&self) -> &Audit {
        &self.0.audit
    }

    pub fn ledger(&self) -> &Ledger {
        &self.0.ledger
    }

    /// Signs one request (see the module documentation for the steps).
    pub async fn sign(&self, request: Request) -> Result<Signed> {
        self.sign_all(vec![request])
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("no result".into())))
    }

    /// A metadata file for a publish the agent makes itself (see [`Versioning::Publish`]).
    pub async fn sign_for_publish(
        &self,
        keys: Vec<KeyEntry>,
        document: Vec<u8>,
        role: &str,
        gun: &str,
        previous_root: Option<Vec<u8>>,
        previous: Option<Vec<u8>>,
    ) -> Result<Signed> {
        self.sign(Request {
            keys,
            subject: Subject::Metadata {
                document,
                role: role.to_string(),
                gun: gun.to_string(),
                previous_root,
                previous,
            },
            versioning: Versioning::Publish,
        })
        .await
    }

    /// Signs many requests: all parsed in one pass, policy and reservations in order (a
    /// version taken earlier in the list counts for the later ones), one trip to each token
    /// (spread over its signing sessions), one audit write, all finished in one pass. One
    /// result per request, in order.
    pub async fn sign_all(&self, requests: Vec<Request>) -> Vec<Result<Signed>> {
        let started = std::time::Instant::now();
        let labels: Vec<(&'static str, &'static str)> = requests
            .iter()
            .map(|r| (api_label(r.versioning), role_of(r)))
            .collect();
        let results = self.sign_all_inner(requests).await;
        count(&labels, &results, started.elapsed());
        results
    }

    async fn sign_all_inner(&self, requests: Vec<Request>) -> Vec<Result<Signed>> {
        let n = requests.len();
        let size: usize = requests.iter().map(subject_size).sum();
        let mut attempts: Vec<Event> = requests.iter().map(attempt_event).collect();

        // 1. Parse.
        let parsed = cpu(size, move || {
            requests.into_iter().map(parse).collect::<Vec<_>>()
        })
        .await;
        let mut items: Vec<Result<Item>> = match parsed {
            Ok(p) => p,
            Err(e) => {
                let msg = e.to_string();
                (0..n).map(|_| Err(Error::Internal(msg.clone()))).collect()
            }
        };

        // 2. Policy and version reservation, in order.
        let mut held: Vec<Option<Reservation<'_>>> = (0..n).map(|_| None).collect();
        for ((item, hold), attempt) in items.iter_mut().zip(held.iter_mut()).zip(&mut attempts) {
            let admitted = match item {
                Ok(it) => self.admit(it),
                Err(_) => Ok(None),
            };
            match admitted {
                Ok(r) => *hold = r,
                Err(e) => {
                    oci_attempt(item, attempt);
                    *item = Err(e);
                }
            }
        }

        // 3. Confirmation where the policy asks, one dialog at a time.
        for ((item, hold), attempt) in items.iter_mut().zip(held.iter_mut()).zip(&mut attempts) {
            let Ok(it) = item else { continue };
            if !self.0.policy.needs_confirm(&it.key) {
                continue;
            }
            match self.confirm(it).await {
                Ok(how) => it.approval = Some(how),
                Err(e) => {
                    oci_attempt(item, attempt);
                    *item = Err(e);
                    *hold = None;
                }
            }
        }

        // The documents as sent were kept for the confirmation's summary only.
        for it in items.iter_mut().flatten() {
            it.source = None;
        }

        // 4. The tokens sign, grouped by token, each item keeping its place.
        let mut by_token: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (i, item) in items.iter().enumerate() {
            if let Ok(it) = item {
                by_token.entry(it.key.token.clone()).or_default().push(i);
            }
        }
        let mut sigs: Vec<Option<Result<Vec<u8>>>> = (0..n).map(|_| None).collect();
        for (label, idx) in by_token {
            let work = idx
                .iter()
                .filter_map(|&i| items.get(i)?.as_ref().ok())
                .map(|it| (it.key.clone(), it.p.digest))
                .collect();
            let result = match self.0.keys.token(&label) {
                Ok(t) => t.sign_many(&self.0.rights, work).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(list) => {
                    for (i, sig) in idx.into_iter().zip(list) {
                        if let Some(s) = sigs.get_mut(i) {
                            *s = Some(sig);
                        }
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    let kind = |m: String| match &e {
                        Error::Locked { token } => Error::Locked {
                            token: token.clone(),
                        },
                        _ => Error::Unavailable(m),
                    };
                    for i in idx {
                        if let Some(s) = sigs.get_mut(i) {
                            *s = Some(Err(kind(msg.clone())));
                        }
                    }
                }
            }
        }

        // 5. One record per request, all durable (and in the ledger) before any signature
        // leaves the agent.
        let events: Vec<Event> = attempts
            .into_iter()
            .zip(items.iter().zip(&sigs))
            .map(|(attempt, (item, sig))| match (item, sig) {
                (Ok(it), Some(Ok(_))) => self.signed_event(it),
                (Ok(it), Some(Err(e))) => refusal(sign_event(it), e),
                (Ok(it), None) => refusal(sign_event(it), &Error::Internal("not signed".into())),
                (Err(e), _) => refusal(attempt, e),
            })
            .collect();
        if let Err(e) = self.0.audit.record_many(events).await {
            let msg = e.to_string();
            for sig in sigs.iter_mut() {
                *sig = Some(Err(Error::Unavailable(msg.clone())));
            }
        }
        // 6. Commit: the ledger holds the versions now; the reservations go.
        drop(held);
        let done = cpu(size, move || {
            items
                .into_iter()
                .zip(sigs)
                .map(|(item, sig)| {
                    let it = item?;
                    let sig = sig.unwrap_or_else(|| Err(Error::Internal("not signed".into())))?;
                    finish(it, sig)
                })
                .collect::<Vec<_>>()
        })
        .await;
        done.unwrap_or_else(|e| {
            let msg = e.to_string();
            (0..n).map(|_| Err(Error::Internal(msg.clone()))).collect()
        })
    }

    /// Step 2 for one item: the policy's rules, then the version held in the ledger (None
    /// when the key's rule turns version checks off).
    fn admit(&self, it: &Item) -> Result<Option<Reservation<'_>>> {
        if it.cert.is_some() {
            // A certificate has no version; the parse checked the key and what it signs.
            if matches!(it.key.role.as_str(), crate::keys::chains::NOTATION_CA_ROLE) {
                self.0.policy.check_certificate(&it.key, it.p.expires)?;
            }
            return Ok(None);
        }
        if let Some(o) = &it.oci {
            // An OCI signature has no version: the policy alone decides.
            self.0.policy.check_oci(&it.key, o)?;
            return Ok(None);
        }
        self.0.policy.check(&policy_view(&it.key, &it.p))?;
        if !self.0.policy.checks_versions(&it.key) {
            return Ok(None);
        }
        let mark = Mark {
            version: it.p.version,
            digest: it.p.digest,
        };
        self.0
            .ledger
            .reserve(slot(&it.p), mark, it.versioning)
            .map(Some)
    }

    /// Step 3 for one item: what the signature changes, shown by the agent's confirmation
    /// program; the answer is the user's, not the client's.
    async fn confirm(&self, it: &Item) -> Result<String> {
        if let Some(lines) = &it.cert {
            let mut lines = lines.clone();
            lines.push(format!("CA key: {}", it.p.keyid));
            let title = if lines
                .first()
                .is_some_and(|l| l.starts_with("Certificate request"))
            {
                "dct-agent: sign a certificate request?"
            } else {
                "dct-agent: sign a certificate with the Notation signing CA?"
            };
            let approval = self.0.confirmer.ask(&it.key, title, &lines).await?;
            return Ok(approval.describe());
        }
        if let Some(o) = &it.oci {
            let mut lines = o.lines.clone();
            lines.push(format!("Key: {}", it.p.keyid));
            lines.push(format!(
                "SHA-256 of the payload: {}",
                crate::tuf::keys::hex(&it.p.digest)
            ));
            let title = match o.kind {
                oci::Kind::Blob => "dct-agent: sign a blob?".to_string(),
                k => format!(
                    "dct-agent: sign a {} signature for {}?",
                    k.policy_word(),
                    if o.repository.is_empty() {
                        &o.artifact
                    } else {
                        &o.repository
                    }
                ),
            };
            let approval = self.0.confirmer.ask(&it.key, &title, &lines).await?;
            return Ok(approval.describe());
        }
        let subject = crate::guard::confirm::Subject {
            role: it.p.role.clone(),
            gun: it.p.gun.clone(),
            version: it.p.version,
            expires: it.p.expires.to_string(),
            key_id: it.p.keyid.clone(),
            sha256_hex: crate::tuf::keys::hex(&it.p.digest),
        };
        let previous = it
            .previous
            .as_deref()
            .and_then(|b| previous_signed_by(b, &it.key));
        // The document is read again for its summary (the guard keeps no tree of it); it
        // parsed in step 1, so this cannot fail but for a lost thread.
        let source = it.source.clone().unwrap_or_default();
        let signed = cpu(source.len(), move || {
            crate::tuf::metadata::Envelope::parse(&source).map(|e| e.signed)
        })
        .await?
        .map_err(|e| Error::Internal(format!("document read again: {e}")))?;
        let lines = crate::guard::confirm::summary(&subject, previous.as_ref(), &signed);
        let title = format!("dct-agent: sign {} of {}?", it.p.role, it.p.gun);
        let approval = self.0.confirmer.ask(&it.key, &title, &lines).await?;
        Ok(approval.describe())
    }

    fn signed_event(&self, it: &Item) -> Event {
        let mut e = sign_event(it);
        // An OCI signature has no version for the ledger to hold.
        e.ledger = Some(
            if it.oci.is_some() || it.cert.is_some() || !self.0.policy.checks_versions(&it.key) {
                MarkState::Untracked
            } else {
                match it.versioning {
                    Versioning::Publish => MarkState::Pending,
                    Versioning::Final | Versioning::ServerManaged => MarkState::Published,
                }
            },
        );
        if let Some(how) = &it.approval {
            e.outcome = format!("ok, {how}");
        }
        e
    }

    /// The server took these signatures: their versions are settled (audited, durable).
    pub async fn published(&self, receipts: &[Receipt]) -> Result<()> {
        let events = receipts
            .iter()
            .map(|r| Event {
                key_id: r.key_id.clone(),
                role: r.role.clone(),
                gun: r.gun.clone(),
                sha256: crate::tuf::keys::hex(&r.digest),
                version: Some(r.version),
                ledger: Some(MarkState::Published),
                ..Event::new("publish")
            })
            .collect();
        self.0.audit.record_many(events).await
    }

    /// A client offered its own approval of a signature (an old `dct` sending a
    /// confirmation ticket): refused and audited as such.
    pub async fn refuse_self_approval(&self, keys: &[KeyEntry]) -> Error {
        let e = Error::Policy {
            rule: "confirm",
            why: "a client cannot approve its own signature; confirmation comes only from the \
                  agent's confirmation program"
                .into(),
        };
        let event = Event {
            key_id: keys.first().map(|k| k.key_id.clone()).unwrap_or_default(),
            outcome: "client tried to approve its own signature".into(),
            ..Event::new("sign")
        };
        self.0.audit.refused(event, &e).await;
        e
    }

    /// Writes the ledger's checkpoint at a clean shutdown.
    pub fn shutdown(&self) {
        if let Err(e) = self.0.ledger.checkpoint(true) {
            tracing::error!("{e}");
        }
    }
}

/// The `signed` part of `previous` if this key signed it (so a client cannot make a diff
/// against a version that never was).
fn previous_signed_by(previous: &[u8], key: &KeyEntry) -> Option<serde_json::Value> {
    let env = crate::tuf::metadata::Envelope::parse(previous).ok()?;
    let msg = env.signed_bytes().ok()?;
    let tuf = key.tuf_key();
    env.signatures
        .iter()
        .filter(|s| s.keyid == key.key_id || s.keyid == key.canonical_id)
        .any(|s| tuf.verify(&s.method, &msg, &s.sig).is_ok())
        .then_some(env.signed)
}

/// Step 6 for one item: the signed file (or the raw signature).
fn finish(it: Item, sig: Vec<u8>) -> Result<Signed> {
    let receipt = Receipt {
        key_id: it.p.keyid.clone(),
        gun: it.p.gun.clone(),
        role: it.p.role.clone(),
        version: it.p.version,
        digest: it.p.digest,
    };
    let (keyid, role, version) = (it.p.keyid.clone(), it.p.role.clone(), it.p.version);
    let oci = it.oci;
    tracing::debug!(key_id = %keyid, role = %role, version, "signed");
    let document = if it.raw {
        sig
    } else {
        document::finish(it.p, sig)?
    };
    Ok(Signed {
        document,
        keyid,
        role,
        version,
        receipt,
        oci,
    })
}
