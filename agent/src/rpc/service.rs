//! The dct gRPC API: thin handlers over the tokens, the TUF core and the signing checks.

use dct_proto::dct::v1 as pb;
use dct_proto::dct::v1::agent_server::Agent;
use secrecy::SecretString;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::error::{Error, PinState, Result};
use crate::guard::audit::Event;
use crate::guard::oci::Profile as OciProfile;
use crate::guard::{Guard, Request as SignRequest, Signed, Subject, Versioning};
use crate::keys::chains::{Chains, NOTATION_CA_ROLE};
use crate::keys::{check_gun, check_role, KeyEntry, Keyring, Token, TokenInfo};
use crate::trust;
use crate::tuf::verify;

/// Tags in one TrustSign call (a longer list goes by TrustSignStream), and tags without a
/// digest, looked up in the registry one by one, in one TrustSignStream.
const MAX_TAGS: usize = dct_proto::MAX_TAGS_PER_SIGN;

/// Documents in one SignMetadataBatch call.
const MAX_BATCH: usize = 100_000;

pub struct AgentService {
    guard: Guard,
    keys: Keyring,
    trust: crate::trust::TrustContext,
    channels: crate::rpc::sealed::Channels,
}

impl AgentService {
    /// Audits a successful `action` on `key` of token `token`.
    /// Records the root keys a ceremony made.
    async fn audit_root_keys(
        &self,
        keys: &[trust::CeremonyKey],
        gun: &str,
        what: &str,
    ) -> Result<()> {
        let events = keys
            .iter()
            .map(|k| Event {
                key_id: k.key.key_id.clone(),
                role: "root".into(),
                gun: gun.to_string(),
                outcome: format!("ok, {what}, token {}", k.token.label),
                ..Event::new("create_key")
            })
            .collect();
        self.guard.audit().record_many(events).await
    }

    /// The Notation certificates the agent keeps.
    fn chains(&self) -> Chains {
        Chains::new(&self.trust.state_dir())
    }

    /// Has a Notation signing CA's key sign `tbs` through the guard (parsed, policy,
    /// confirmation, audit like any signature); returns the certificate.
    async fn sign_certificate(
        &self,
        ca_keys: Vec<KeyEntry>,
        tbs: x509_cert::TbsCertificate,
    ) -> Result<x509_cert::Certificate> {
        use der::{Decode, Encode};
        let tbs_der = tbs.to_der().map_err(Error::internal)?;
        let s = self
            .guard
            .sign(SignRequest {
                keys: ca_keys,
                subject: Subject::Certificate { tbs: tbs_der },
                versioning: Versioning::Final,
            })
            .await?;
        let der = crate::tuf::cert::assemble(tbs, &s.document).map_err(Error::internal)?;
        x509_cert::Certificate::from_der(&der).map_err(Error::internal)
    }

    pub fn new(guard: Guard, trust: crate::trust::TrustContext) -> Self {
        AgentService {
            keys: guard.keys().clone(),
            guard,
            trust,
            channels: Default::default(),
        }
    }
}

fn pin_pb(p: &PinState) -> pb::PinStatus {
    pb::PinStatus {
        tries_left: p.tries_left.map(|n| n as i32).unwrap_or(-1),
        count_low: p.count_low,
        final_try: p.final_try,
        locked: p.locked,
    }
}

fn token_pb(t: TokenInfo) -> pb::TokenStatus {
    pb::TokenStatus {
        backend: t.backend.into(),
        label: t.label,
        module: t.module,
        present: t.present,
        unlocked: t.unlocked,
        pin: Some(pin_pb(&t.pin)),
        manufacturer: t.manufacturer,
        model: t.model,
        serial: t.serial,
        key_count: t.key_count,
        error: t.error.unwrap_or_default(),
    }
}

fn ceremony_key_pb(k: trust::CeremonyKey) -> pb::CeremonyKey {
    let (pin_policy, touch_policy) = k
        .key
        .detail
        .piv_policies()
        .unwrap_or_else(|| ("token login (PKCS#11 user PIN)".into(), "none".into()));
    let origin = if k.backup_file.is_some() {
        "imported (made in the agent's memory for its backup file)"
    } else {
        "generated on the token"
    };
    let slot = match k.key.backend {
        crate::keys::piv::BACKEND => crate::tuf::keys::hex(&k.key.handle),
        _ => String::new(),
    };
    pb::CeremonyKey {
        pin_policy,
        touch_policy,
        origin: origin.into(),
        slot,
        backup_file: k.backup_file.unwrap_or_default(),
        key_id: k.key.key_id,
        canonical_id: k.key.canonical_id,
        token: k.token.label,
        token_model: k.token.model,
        token_serial: k.token.serial,
        token_manufacturer: k.token.manufacturer,
        cert_sha256: k.cert_sha256,
        // Keys are generated sensitive; non-extractable unless a wrapped backup was asked for.
        extractable: k.backup.is_some(),
        backend: k.key.backend.into(),
        backup_token: k.backup.unwrap_or_default(),
    }
}

/// A tag of a sign request as the agent takes it (its digest checked when it is resolved).
fn wanted_tag(t: pb::TagTarget) -> trust::WantedTag {
    trust::WantedTag {
        tag: t.tag,
        sha256: t.sha256,
        length: t.length,
        manifest: Vec::new(),
    }
}

impl AgentService {
    /// `dct trust sign` of `given` (digests checked) and `wanted` (looked up in the
    /// registry) tags, with the request's options: signed, published as one update, and the
    /// OCI signatures asked for. The answer lists every tag, or with `list_all` false only
    /// those looked up here.
    async fn sign_tag_list(
        &self,
        mut req: pb::TrustSignRequest,
        given: Vec<trust::TagTarget>,
        wanted: Vec<trust::WantedTag>,
        list_all: bool,
    ) -> Result<Response<pb::TrustSignResponse>, Status> {
        // The registry password comes sealed, like a PIN; a plaintext one is refused (it
        // would already have crossed the transport in the clear) and dropped at once.
        let plain = SecretString::from(std::mem::take(&mut req.registry_password));
        if !secrecy::ExposeSecret::expose_secret(&plain).is_empty() {
            return Err(Error::InvalidArgument(
                "a plaintext registry password is refused: use a current dct, which seals it"
                    .into(),
            )
            .into());
        }
        drop(plain);
        let creds = self.registry_creds(
            &req.registry_username,
            req.sealed_registry_password.as_ref(),
        )?;
        let ca = self.registry_ca(req.server.as_ref());
        let formats = req
            .also
            .iter()
            .map(|f| trust::migrate::Format::parse(f))
            .collect::<Result<Vec<_>>>()?;
        let resolved_from = given.len();
        let tags =
            trust::resolve_tags(&req.gun, given, wanted, ca.as_deref(), creds.as_ref()).await?;
        // Shared with the roles that take them (100,000 tags are held once).
        let tags = std::sync::Arc::new(tags);
        // Resolved: the registry password is kept only for the OCI signatures' writes.
        let registry = if req.also.is_empty() {
            drop(creds);
            None
        } else {
            Some(crate::oci::registry::Session::open(
                &req.gun,
                ca.as_deref(),
                creds,
                true,
            )?)
        };
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let _repo_lock = self.trust.lock(&req.gun).await;
        let r = trust::sign_tags(
            &self.guard,
            &client,
            &self.trust,
            &req.gun,
            &tags,
            &req.token,
        )
        .await?;
        // Dual signing: DCT is published; each OCI signature now, a failure reported per
        // tag (`dct migrate` retries what is missing, skipping what is there).
        let mut also = Vec::new();
        if let Some(session) = &registry {
            let mut subjects: std::collections::HashMap<&str, Result<_>> = Default::default();
            for t in tags.iter() {
                let digest = crate::tuf::keys::hex(&t.sha256);
                subjects.insert(
                    t.tag.as_str(),
                    trust::migrate::subject_of(session, &digest).await,
                );
            }
            for format in &formats {
                let mut items = Vec::new();
                for (i, t) in tags.iter().enumerate() {
                    let tag = &t.tag;
                    let subject = match subjects.get(tag.as_str()) {
                        Some(Ok(s)) => s.clone(),
                        Some(Err(e)) => {
                            also.push(pb::OciSignature {
                                tag: tag.clone(),
                                format: format.name().into(),
                                key_id: String::new(),
                                ok: false,
                                detail: e.to_string(),
                            });
                            continue;
                        }
                        None => continue,
                    };
                    for k in r.signers_of(i) {
                        items.push(trust::migrate::OciItem {
                            tag: tag.clone(),
                            subject: subject.clone(),
                            keys: vec![k.clone()],
                        });
                    }
                }
                let written = trust::migrate::sign_and_write(
                    &self.guard,
                    &self.trust,
                    session,
                    &req.gun,
                    *format,
                    &items,
                )
                .await;
                for (item, w) in items.iter().zip(written) {
                    also.push(pb::OciSignature {
                        tag: item.tag.clone(),
                        format: format.name().into(),
                        key_id: item
                            .keys
                            .first()
                            .map(|k| k.key_id.clone())
                            .unwrap_or_default(),
                        ok: w.is_ok(),
                        detail: w.err().map(|e| e.to_string()).unwrap_or_default(),
                    });
                }
            }
        }
        let first = tags.first();
        let sha256 = first
            .map(|t| crate::tuf::keys::hex(&t.sha256))
            .unwrap_or_default();
        let length = first.map(|t| t.length).unwrap_or_default();
        // The answer lists every tag (or, for a streamed list, those looked up here): the
        // names move into it once the roles that shared them are done (they are by now).
        let count = tags.len() as u64;
        let skip = if list_all { 0 } else { resolved_from };
        let answer = |t: &trust::TagTarget, tag: String| pb::TagTarget {
            tag,
            sha256: crate::tuf::keys::hex(&t.sha256),
            length: t.length,
        };
        let tags = match std::sync::Arc::try_unwrap(tags) {
            Ok(list) => list
                .into_iter()
                .skip(skip)
                .map(|mut t| {
                    let tag = std::mem::take(&mut t.tag);
                    answer(&t, tag)
                })
                .collect(),
            Err(shared) => shared
                .iter()
                .skip(skip)
                .map(|t| answer(t, t.tag.clone()))
                .collect(),
        };
        Ok(Response::new(pb::TrustSignResponse {
            also,
            roles: r.roles,
            initialized: r.initialized,
            sha256,
            length,
            tags,
            count,
        }))
    }

    /// Registry credentials from a request: a username, and the password sealed like a PIN.
    fn registry_creds(
        &self,
        username: &str,
        sealed: Option<&pb::SealedSecret>,
    ) -> Result<Option<crate::oci::registry::Credentials>> {
        let password = match sealed {
            Some(sealed) => Some(self.channels.unseal(sealed)?),
            None => None,
        };
        match (username.is_empty(), password) {
            (true, None) => Ok(None),
            (true, Some(_)) => Err(Error::InvalidArgument(
                "a registry password needs a registry username".into(),
            )),
            (false, password) => Ok(Some(crate::oci::registry::Credentials {
                username: username.to_string(),
                password: password.unwrap_or_else(|| SecretString::from(String::new())),
            })),
        }
    }

    /// The key `id` names (its first listing).
    async fn first_key(&self, id: &str) -> Result<KeyEntry> {
        self.keys
            .find_key(id)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound(format!("no key {id}")))
    }

    /// The CA a registry is checked with: the request's trust server CA, else the config's.
    fn registry_ca(&self, server: Option<&pb::TrustServer>) -> Option<Vec<u8>> {
        server
            .filter(|s| !s.ca_pem.is_empty())
            .map(|s| s.ca_pem.clone())
            .or_else(|| self.trust.server.as_ref().and_then(|s| s.ca_pem.clone()))
    }
}

fn signed_pb(s: Signed) -> pb::SignMetadataResponse {
    pb::SignMetadataResponse {
        document: s.document,
        key_id: s.keyid,
        role: s.role,
        version: s.version,
        confirmation: None,
    }
}

fn key_pb(k: KeyEntry) -> pb::Key {
    pb::Key {
        key_id: k.key_id,
        canonical_id: k.canonical_id,
        role: k.role,
        gun: k.gun.unwrap_or_default(),
        backend: k.backend.into(),
        token: k.token,
        keytype: k.keytype,
        public: k.public,
        uri: k.uri,
        detail: k.detail.describe(),
        cert_subject: String::new(),
        cert_expires: String::new(),
        spki: k.spki,
    }
}

/// Notation's name for a key's type and size.
fn notation_key_spec(key: &KeyEntry) -> Result<&'static str> {
    use der::Decode;
    let spki = spki::SubjectPublicKeyInfoRef::from_der(&key.spki).map_err(Error::internal)?;
    let curve = spki
        .algorithm
        .parameters
        .and_then(|p| p.decode_as::<der::oid::ObjectIdentifier>().ok())
        .map(|o| o.to_string());
    match curve.as_deref() {
        Some("1.2.840.10045.3.1.7") => Ok("EC-256"),
        _ => Err(Error::InvalidArgument(format!(
            "key {} is {}: Notation signatures through the agent need an ECDSA P-256 key",
            key.key_id, key.keytype
        ))),
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let mut tokens = Vec::new();
        for t in self.keys.tokens().iter() {
            let info = match t.run(|b| Ok(b.info())).await {
                Ok(i) => i,
                Err(e) => TokenInfo {
                    backend: t.backend,
                    label: t.label.clone(),
                    error: Some(e.to_string()),
                    ..Default::default()
                },
            };
            tokens.push(token_pb(info));
        }
        let audit = self.guard.audit().state();
        Ok(Response::new(pb::StatusResponse {
            audit: Some(pb::AuditStatus {
                path: self.guard.audit().path().display().to_string(),
                records: audit.records,
                last_hash: audit.last_hash,
                error: audit.error.unwrap_or_default(),
            }),
            version: env!("CARGO_PKG_VERSION").into(),
            backends: vec![
                crate::keys::pkcs11::BACKEND.into(),
                crate::keys::file::BACKEND.into(),
            ],
            tokens,
        }))
    }

    async fn unlock(
        &self,
        req: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let mut req = req.into_inner();
        // Move the PIN out of the request into a zeroizing secret at once.
        let plain = SecretString::from(std::mem::take(&mut req.pin));
        let pin = match &req.sealed_pin {
            Some(sealed) => self.channels.unseal(sealed)?,
            None => plain,
        };
        let token = self.keys.token(&req.token)?;
        if secrecy::ExposeSecret::expose_secret(&pin).is_empty() {
            return Err(Error::InvalidArgument("empty PIN".into()).into());
        }
        let force = req.force;
        let label = token.label.clone();
        let state = token.run(move |b| b.login(&pin, force)).await;
        let mut event = Event {
            outcome: format!("token {label}"),
            ..Event::new("unlock")
        };
        match &state {
            Ok(_) => {
                token.note_unlocked();
                tracing::info!(token = %label, "unlocked")
            }
            Err(e) => {
                tracing::warn!(token = %label, "unlock failed: {e}");
                event.outcome = format!("token {label}: {e}");
            }
        }
        if let Err(e) = self.guard.audit().record(event).await {
            tracing::error!("audit log: {e}");
        }
        Ok(Response::new(pb::UnlockResponse {
            token: label,
            pin: Some(pin_pb(&state?)),
        }))
    }

    async fn secret_channel(
        &self,
        _: Request<pb::SecretChannelRequest>,
    ) -> Result<Response<pb::SecretChannelResponse>, Status> {
        let (channel, public) = self.channels.open()?;
        Ok(Response::new(pb::SecretChannelResponse {
            channel,
            agent_public: public.to_vec(),
        }))
    }

    async fn lock(
        &self,
        req: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let req = req.into_inner();
        let targets: Vec<&Token> = if req.token.is_empty() {
            self.keys.tokens().iter().collect()
        } else {
            vec![self.keys.token(&req.token)?]
        };
        // Try every token before reporting, so one failure leaves no other token unlocked.
        let mut locked = Vec::new();
        let mut errors = Vec::new();
        for t in targets {
            match t.run(|b| b.logout()).await {
                Ok(()) => {
                    t.note_locked();
                    tracing::info!(token = %t.label, "locked");
                    let event = Event {
                        outcome: format!("token {}", t.label),
                        ..Event::new("lock")
                    };
                    if let Err(e) = self.guard.audit().record(event).await {
                        tracing::error!("audit log: {e}");
                    }
                    locked.push(t.label.clone());
                }
                Err(e) => errors.push(format!("{}: {e}", t.label)),
            }
        }
        if !errors.is_empty() {
            return Err(Error::Unavailable(format!(
                "could not lock {} (locked: {})",
                errors.join("; "),
                if locked.is_empty() {
                    "none".into()
                } else {
                    locked.join(", ")
                }
            ))
            .into());
        }
        Ok(Response::new(pb::LockResponse { tokens: locked }))
    }

    async fn generate_key(
        &self,
        req: Request<pb::GenerateKeyRequest>,
    ) -> Result<Response<pb::GenerateKeyResponse>, Status> {
        let req = req.into_inner();
        check_role(&req.role)?;
        let gun = if req.gun.is_empty() {
            if req.role != "root" {
                return Err(
                    Error::InvalidArgument(format!("a {} key needs --gun", req.role)).into(),
                );
            }
            None
        } else {
            check_gun(&req.gun)?;
            Some(req.gun)
        };
        let token = self.keys.token(&req.token)?;
        let opts = crate::keys::KeyOptions {
            slot: Some(req.slot).filter(|s| !s.is_empty()),
            pin_policy: Some(req.pin_policy).filter(|s| !s.is_empty()),
            touch_policy: Some(req.touch_policy).filter(|s| !s.is_empty()),
        };
        let key = token.generate_with(req.role, gun, opts).await?;
        self.keys.invalidate();
        tracing::info!(token = %token.label, key_id = %key.key_id, role = %key.role, "generated key");
        self.guard
            .record_key("create_key", &key, &token.label)
            .await?;
        Ok(Response::new(pb::GenerateKeyResponse {
            key: Some(key_pb(key)),
        }))
    }

    type WatchStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::Notice, Status>> + Send + 'static>,
    >;

    async fn watch(
        &self,
        _req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        use tokio_stream::StreamExt;
        // Subscribed before the response goes out: a request sent after it is watched.
        let notices = crate::keys::notices::subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(notices).filter_map(|n| {
            n.ok().map(|n| {
                Ok(pb::Notice {
                    kind: n.kind.into(),
                    token: n.token,
                    key_id: n.key_id,
                    message: n.message,
                })
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn attest_key(
        &self,
        req: Request<pb::AttestKeyRequest>,
    ) -> Result<Response<pb::AttestKeyResponse>, Status> {
        let req = req.into_inner();
        let key = self.first_key(&req.key_id).await?;
        let token = self.keys.token(&key.token)?;
        let k = key.clone();
        let (attestation, intermediate) = token.run(move |b| b.attest(&k)).await?;
        self.guard.record_key("attest", &key, &token.label).await?;
        Ok(Response::new(pb::AttestKeyResponse {
            attestation,
            intermediate,
            slot: crate::tuf::keys::hex(&key.handle),
            key_id: key.key_id,
            token: key.token,
        }))
    }

    async fn sign_payload(
        &self,
        req: Request<pb::SignPayloadRequest>,
    ) -> Result<Response<pb::SignPayloadResponse>, Status> {
        let req = req.into_inner();
        let profile = match pb::PayloadProfile::try_from(req.profile) {
            Ok(pb::PayloadProfile::Notation) => OciProfile::Notation,
            Ok(pb::PayloadProfile::Cosign) => OciProfile::Cosign,
            _ => {
                return Err(Error::InvalidArgument(
                    "profile: name the payload's format (notation or cosign)".into(),
                )
                .into())
            }
        };
        let keys = self.keys.find_key(&req.key_id).await?;
        let key = keys
            .first()
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no key {}", req.key_id)))?;
        if !key.keytype.starts_with("ecdsa") {
            return Err(Error::InvalidArgument(format!(
                "key {} is {}: OCI signatures need an ECDSA P-256 key",
                key.key_id, key.keytype
            ))
            .into());
        }
        // Notation checks the signature against the chain's leaf: without a valid chain
        // for this key, nothing is signed.
        let chain = match profile {
            OciProfile::Notation => self.chains().for_signing(&key)?.der,
            OciProfile::Cosign => Vec::new(),
        };
        let s = self
            .guard
            .sign(SignRequest {
                keys,
                subject: Subject::Oci {
                    profile,
                    payload: req.payload,
                },
                versioning: Versioning::Final,
            })
            .await?;
        let oci = s
            .oci
            .ok_or_else(|| Error::Internal("an OCI signature without its parse".into()))?;
        Ok(Response::new(pb::SignPayloadResponse {
            signature: s.document,
            key_id: s.keyid,
            kind: oci.kind.name().into(),
            algorithm: "ECDSA-SHA-256".into(),
            public_key: key.spki,
            certificate_chain: chain,
            repository: oci.repository,
            artifact: oci.artifact,
        }))
    }

    async fn notation_ca_init(
        &self,
        req: Request<pb::NotationCaInitRequest>,
    ) -> Result<Response<pb::NotationCaInitResponse>, Status> {
        use der::Encode;
        let req = req.into_inner();
        let name = req.name.trim().to_string();
        if name.is_empty() || name.len() > 256 {
            return Err(Error::InvalidArgument(
                "--name: the CA's common name or RFC 4514 subject (1 to 256 characters)".into(),
            )
            .into());
        }
        let days = u64::from(if req.days == 0 { 3650 } else { req.days });
        let token = self.keys.token(&req.token)?;
        let key = token.generate(NOTATION_CA_ROLE.into(), None).await?;
        self.keys.invalidate();
        self.guard
            .record_key("create_key", &key, &token.label)
            .await?;
        let tbs = crate::tuf::cert::notation_ca_tbs(
            &name,
            &key.spki,
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(days * 86400),
        )
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let ca = self.sign_certificate(vec![key.clone()], tbs).await?;
        crate::tuf::cert::verify_issued(&ca, &ca).map_err(Error::Internal)?;
        let chains = self.chains();
        chains.save_ca(&key, &ca)?;
        let der = ca.to_der().map_err(Error::internal)?;
        let info = token.run(|b| Ok(b.info())).await?;
        let transcript = chains.write_ca_transcript(&key, &ca, &info)?;
        tracing::info!(key_id = %key.key_id, token = %token.label, "made a Notation signing CA");
        Ok(Response::new(pb::NotationCaInitResponse {
            key: Some(key_pb(key)),
            certificate: der,
            transcript: transcript.display().to_string(),
        }))
    }

    async fn notation_cert_issue(
        &self,
        req: Request<pb::NotationCertIssueRequest>,
    ) -> Result<Response<pb::NotationCertIssueResponse>, Status> {
        use der::Encode;
        let req = req.into_inner();
        let key = self.first_key(&req.key_id).await?;
        let ca_keys = self.keys.find_key(&req.ca_key_id).await?;
        let ca_key = ca_keys
            .first()
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no key {}", req.ca_key_id)))?;
        if ca_key.role != NOTATION_CA_ROLE {
            return Err(Error::InvalidArgument(format!(
                "key {} is a {} key, not a Notation signing CA (`dct notation ca init`)",
                ca_key.key_id, ca_key.role
            ))
            .into());
        }
        if key.role == NOTATION_CA_ROLE {
            return Err(Error::InvalidArgument(format!(
                "key {} is a signing CA: it signs certificates, not images",
                key.key_id
            ))
            .into());
        }
        notation_key_spec(&key)?;
        let chains = self.chains();
        let ca = chains.ca(&ca_key)?;
        let days = u64::from(if req.days == 0 { 365 } else { req.days });
        let cn = if req.common_name.trim().is_empty() {
            format!("dct-agent {}", key.key_id.get(..16).unwrap_or(&key.key_id))
        } else {
            req.common_name.trim().to_string()
        };
        let now = std::time::SystemTime::now();
        let tbs = crate::tuf::cert::notation_leaf_tbs(
            &cn,
            &ca,
            &key.spki,
            now,
            now + std::time::Duration::from_secs(days * 86400),
        )
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let leaf = self.sign_certificate(ca_keys, tbs).await?;
        let chain = vec![
            leaf.to_der().map_err(Error::internal)?,
            ca.to_der().map_err(Error::internal)?,
        ];
        chains.save(&key, &chain)?;
        Ok(Response::new(pb::NotationCertIssueResponse {
            certificate_chain: chain,
            key_id: key.key_id,
        }))
    }

    async fn notation_cert_request(
        &self,
        req: Request<pb::NotationCertRequestRequest>,
    ) -> Result<Response<pb::NotationCertRequestResponse>, Status> {
        use der::Encode;
        let req = req.into_inner();
        let keys = self.keys.find_key(&req.key_id).await?;
        let key = keys
            .first()
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no key {}", req.key_id)))?;
        notation_key_spec(&key)?;
        let cn = if req.common_name.trim().is_empty() {
            format!("dct-agent {}", key.key_id.get(..16).unwrap_or(&key.key_id))
        } else {
            req.common_name.trim().to_string()
        };
        let info = crate::tuf::cert::csr_info(&cn, &key.spki)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let info_der = info.to_der().map_err(Error::internal)?;
        let s = self
            .guard
            .sign(SignRequest {
                keys,
                subject: Subject::CertRequest { info: info_der },
                versioning: Versioning::Final,
            })
            .await?;
        let csr = crate::tuf::cert::assemble_csr(info, &s.document).map_err(Error::internal)?;
        Ok(Response::new(pb::NotationCertRequestResponse {
            csr,
            key_id: key.key_id,
        }))
    }

    async fn notation_cert_sign(
        &self,
        req: Request<pb::NotationCertSignRequest>,
    ) -> Result<Response<pb::NotationCertIssueResponse>, Status> {
        use der::Encode;
        let req = req.into_inner();
        let (subject, spki) =
            crate::tuf::cert::check_csr(&req.csr).map_err(Error::InvalidArgument)?;
        let ca_keys = self.keys.find_key(&req.ca_key_id).await?;
        let ca_key = ca_keys
            .first()
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no key {}", req.ca_key_id)))?;
        if ca_key.role != NOTATION_CA_ROLE {
            return Err(Error::InvalidArgument(format!(
                "key {} is a {} key, not a Notation signing CA (`dct notation ca init`)",
                ca_key.key_id, ca_key.role
            ))
            .into());
        }
        let ca = self.chains().ca(&ca_key)?;
        let days = u64::from(if req.days == 0 { 365 } else { req.days });
        let now = std::time::SystemTime::now();
        let tbs = crate::tuf::cert::notation_leaf_tbs_named(
            subject,
            &ca,
            &spki,
            now,
            now + std::time::Duration::from_secs(days * 86400),
        )
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let leaf = self.sign_certificate(ca_keys, tbs).await?;
        Ok(Response::new(pb::NotationCertIssueResponse {
            certificate_chain: vec![
                leaf.to_der().map_err(Error::internal)?,
                ca.to_der().map_err(Error::internal)?,
            ],
            // The key is another agent's: it names it when the chain is imported there.
            key_id: String::new(),
        }))
    }

    async fn notation_cert_import(
        &self,
        req: Request<pb::NotationCertImportRequest>,
    ) -> Result<Response<pb::NotationCertImportResponse>, Status> {
        let req = req.into_inner();
        let key = self.first_key(&req.key_id).await?;
        let chain = self.chains().import(&key, &req.certificate_chain)?;
        self.guard
            .audit()
            .record(Event {
                key_id: key.key_id.clone(),
                role: key.role.clone(),
                artifact: format!(
                    "certificate chain {} until {}",
                    chain.subject(),
                    chain.expires()
                ),
                outcome: "ok".into(),
                ..Event::new("import_cert")
            })
            .await?;
        Ok(Response::new(pb::NotationCertImportResponse {
            key_id: key.key_id,
            subject: chain.subject(),
            expires: chain.expires(),
        }))
    }

    async fn notation_describe_key(
        &self,
        req: Request<pb::NotationDescribeKeyRequest>,
    ) -> Result<Response<pb::NotationDescribeKeyResponse>, Status> {
        let req = req.into_inner();
        // Notation's first step of `notation sign`: a refusal here is a refused signature,
        // and audited as one.
        let described = async {
            let key = self
                .keys
                .find_key(&req.key_id)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::NotFound(format!("no key {}", req.key_id)))?;
            let key_spec = notation_key_spec(&key)?;
            let chain = self.chains().for_signing(&key)?;
            Ok::<_, Error>((key, key_spec, chain))
        }
        .await;
        let (key, key_spec, chain) = match described {
            Ok(d) => d,
            Err(e) => {
                let event = Event {
                    key_id: req.key_id.clone(),
                    artifact: "notation describe-key".into(),
                    ..Event::new("sign")
                };
                self.guard.audit().refused(event, &e).await;
                return Err(e.into());
            }
        };
        Ok(Response::new(pb::NotationDescribeKeyResponse {
            key_id: key.key_id,
            key_spec: key_spec.into(),
            certificate_chain: chain.der,
        }))
    }

    async fn notation_trust(
        &self,
        req: Request<pb::NotationTrustRequest>,
    ) -> Result<Response<pb::NotationTrustResponse>, Status> {
        use der::Encode;
        let req = req.into_inner();
        let chains = self.chains();
        let cas = if req.ca_key_id.is_empty() {
            chains.all_cas()?
        } else {
            let key = self
                .keys
                .find_key(&req.ca_key_id)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::NotFound(format!("no key {}", req.ca_key_id)))?;
            vec![chains.ca(&key)?]
        };
        if cas.is_empty() {
            return Err(Error::NotFound(
                "this agent has made no Notation signing CA; make one with `dct notation ca init`"
                    .into(),
            )
            .into());
        }
        Ok(Response::new(pb::NotationTrustResponse {
            ca_certificates: cas
                .iter()
                .map(|c| c.to_der().map_err(Error::internal))
                .collect::<Result<_>>()?,
        }))
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let req = req.into_inner();
        let (keys, errors) = if req.token.is_empty() {
            self.keys.all_keys().await
        } else {
            (
                self.keys.token(&req.token)?.run(|b| b.list_keys()).await?,
                Vec::new(),
            )
        };
        Ok(Response::new(pb::ListKeysResponse {
            keys: {
                let chains = self.chains();
                keys.into_iter()
                    .map(|k| {
                        // A chain that cannot be read lists as none; signing says why.
                        let chain = chains.find(&k).ok().flatten();
                        let mut p = key_pb(k);
                        if let Some(c) = chain {
                            p.cert_subject = c.subject();
                            p.cert_expires = c.expires();
                        }
                        p
                    })
                    .collect()
            },
            errors,
        }))
    }

    async fn import_key(
        &self,
        req: Request<pb::ImportKeyRequest>,
    ) -> Result<Response<pb::ImportKeyResponse>, Status> {
        let mut req = req.into_inner();
        let mut pass = zeroize::Zeroizing::new(std::mem::take(&mut req.passphrase).into_bytes());
        if let Some(sealed) = &req.sealed_passphrase {
            let opened = self.channels.unseal(sealed)?;
            pass = zeroize::Zeroizing::new(
                secrecy::ExposeSecret::expose_secret(&opened)
                    .as_bytes()
                    .to_vec(),
            );
        }
        let file = zeroize::Zeroizing::new(std::mem::take(&mut req.file));
        // Decryption is deliberate CPU work (PBKDF2): off the async runtime.
        let key = tokio::task::spawn_blocking(move || {
            let text = std::str::from_utf8(&file)
                .map_err(|_| Error::InvalidArgument("the key file is not PEM text".into()))?;
            crate::tuf::keyfile::read(text, (!pass.is_empty()).then_some(pass.as_slice()))
                .map_err(|e| Error::InvalidArgument(format!("key file: {e}")))
        })
        .await
        .map_err(Error::internal)??;
        let token = self.keys.token(&req.token)?;
        let entry = self
            .guard
            .import_key(
                token,
                key,
                Some(req.role).filter(|r| !r.is_empty()),
                Some(req.gun).filter(|g| !g.is_empty()),
            )
            .await?;
        Ok(Response::new(pb::ImportKeyResponse {
            key: Some(key_pb(entry)),
        }))
    }

    async fn sign_metadata(
        &self,
        req: Request<pb::SignMetadataRequest>,
    ) -> Result<Response<pb::SignMetadataResponse>, Status> {
        let req = req.into_inner();
        if !req.gun.is_empty() {
            check_gun(&req.gun)?;
        }
        if !req.role.is_empty() {
            check_role(&req.role)?;
        }
        let keys = self.keys.find_key(&req.key_id).await?;
        if !req.confirm_ticket.is_empty() {
            return Err(self.guard.refuse_self_approval(&keys).await.into());
        }
        let s = self
            .guard
            .sign(SignRequest {
                keys,
                subject: Subject::Metadata {
                    document: req.document,
                    role: req.role,
                    gun: req.gun,
                    previous_root: None,
                    previous: (!req.previous.is_empty()).then_some(req.previous),
                },
                versioning: Versioning::Final,
            })
            .await?;
        Ok(Response::new(signed_pb(s)))
    }

    async fn sign_metadata_batch(
        &self,
        req: Request<pb::SignMetadataBatchRequest>,
    ) -> Result<Response<pb::SignMetadataBatchResponse>, Status> {
        let reqs = req.into_inner().requests;
        if reqs.len() > MAX_BATCH {
            return Err(Error::ResourceExhausted(format!(
                "{} documents in one batch; at most {MAX_BATCH}",
                reqs.len()
            ))
            .into());
        }
        // Resolve every key first (from the recent listing); a bad item fails alone.
        let mut results: Vec<Option<Result<Signed>>> = Vec::with_capacity(reqs.len());
        let mut items = Vec::new();
        let mut places = Vec::new();
        for r in reqs {
            let checked = (|| {
                if !r.gun.is_empty() {
                    check_gun(&r.gun)?;
                }
                if !r.role.is_empty() {
                    check_role(&r.role)?;
                }
                Ok::<_, Error>(())
            })();
            let keys = match checked {
                Ok(()) => self.keys.find_key(&r.key_id).await,
                Err(e) => Err(e),
            };
            match keys {
                Ok(keys) => {
                    places.push(results.len());
                    results.push(None);
                    items.push(SignRequest {
                        keys,
                        subject: Subject::Metadata {
                            document: r.document,
                            role: r.role,
                            gun: r.gun,
                            previous_root: None,
                            previous: None,
                        },
                        versioning: Versioning::Final,
                    });
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let signed = self.guard.sign_all(items).await;
        for (place, s) in places.into_iter().zip(signed) {
            // Every place was pushed above; a missing one would report "not signed".
            if let Some(slot) = results.get_mut(place) {
                *slot = Some(s);
            }
        }
        let results = results
            .into_iter()
            .map(|r| {
                let result = match r.unwrap_or_else(|| Err(Error::Internal("not signed".into()))) {
                    Ok(s) => pb::sign_metadata_result::Result::Signed(signed_pb(s)),
                    Err(e) => {
                        let st = Status::from(e);
                        pb::sign_metadata_result::Result::Error(pb::ErrorStatus {
                            code: st.code() as i32,
                            message: st.message().to_string(),
                        })
                    }
                };
                pb::SignMetadataResult {
                    result: Some(result),
                }
            })
            .collect();
        Ok(Response::new(pb::SignMetadataBatchResponse { results }))
    }

    async fn verify_repository(
        &self,
        req: Request<pb::VerifyRepositoryRequest>,
    ) -> Result<Response<pb::VerifyRepositoryResponse>, Status> {
        let req = req.into_inner();
        check_gun(&req.gun)?;
        let at = if req.at.is_empty() {
            OffsetDateTime::now_utc()
        } else {
            OffsetDateTime::parse(&req.at, &Rfc3339).map_err(|e| {
                Error::InvalidArgument(format!("--at {:?} is not RFC 3339: {e}", req.at))
            })?
        };
        let mut files = verify::RepoFiles::new();
        for f in req.files {
            if files.insert(f.role.clone(), f.content).is_some() {
                return Err(Error::InvalidArgument(format!("role {} given twice", f.role)).into());
            }
        }
        let gun = req.gun;
        let pins: Vec<String> = req
            .pinned_root_keys
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect();
        let result =
            tokio::task::spawn_blocking(move || verify::verify_repository(&gun, &files, at, &pins))
                .await
                .map_err(Error::internal)?;
        let resp = match result {
            Ok(repo) => pb::VerifyRepositoryResponse {
                valid: true,
                roles: repo
                    .roles
                    .into_iter()
                    .map(|r| pb::RoleSummary {
                        role: r.role,
                        version: r.version,
                        expires: r.expires,
                        signed_by: r.signed_by,
                        targets: r
                            .targets
                            .into_iter()
                            .map(|t| pb::Target {
                                name: t.name,
                                sha256: t.sha256_hex,
                                length: t.length,
                            })
                            .collect(),
                        unusable: r
                            .unusable
                            .into_iter()
                            .map(|u| pb::UnusableTarget {
                                name: u.name,
                                reason: u.reason,
                            })
                            .collect(),
                    })
                    .collect(),
                skipped: repo
                    .skipped
                    .into_iter()
                    .map(|s| pb::SkippedRole {
                        role: s.role,
                        reason: s.reason,
                        targets: s.targets,
                    })
                    .collect(),
                warnings: repo.warnings,
                pinned: repo.pinned,
                ..Default::default()
            },
            Err(e) => pb::VerifyRepositoryResponse {
                valid: false,
                failed_role: e.role,
                reason: e.reason,
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn trust_init(
        &self,
        req: Request<pb::TrustInitRequest>,
    ) -> Result<Response<pb::TrustInitResponse>, Status> {
        let req = req.into_inner();
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let _repo_lock = self.trust.lock(&req.gun).await;
        let r = if req.root_json.is_empty() {
            trust::init(
                &self.guard,
                &client,
                &self.trust,
                &req.gun,
                &req.root_key,
                &req.token,
                req.local_snapshot,
            )
            .await?
        } else {
            trust::init_from_root(&self.guard, &client, &self.trust, &req.gun, req.root_json)
                .await?
        };
        Ok(Response::new(pb::TrustInitResponse {
            root_key_id: r.root.key_id,
            root_canonical_id: r.root.canonical_id,
            targets_key_id: r.targets.key_id,
            snapshot_key_id: r.snapshot_key_id,
            timestamp_key_id: r.timestamp_key_id,
        }))
    }

    async fn ceremony_root_init(
        &self,
        req: Request<pb::CeremonyRootInitRequest>,
    ) -> Result<Response<pb::CeremonyRootInitResponse>, Status> {
        let req = req.into_inner();
        let offline = !req.timestamp_key.is_empty() || !req.snapshot_key.is_empty();
        let client = if offline {
            None
        } else {
            Some(trust::client(
                req.server.map(server_opts),
                &self.trust.server,
            )?)
        };
        let server_keys = match &client {
            Some(c) => trust::ServerKeys::Fetch(c),
            None => trust::ServerKeys::Given {
                timestamp: &req.timestamp_key,
                snapshot: &req.snapshot_key,
            },
        };
        let passphrase = match &req.sealed_backup_passphrase {
            Some(sealed) => {
                let opened = self.channels.unseal(sealed)?;
                Some(zeroize::Zeroizing::new(
                    secrecy::ExposeSecret::expose_secret(&opened)
                        .as_bytes()
                        .to_vec(),
                ))
            }
            None => None,
        };
        let backups = trust::RootBackups {
            wrapped: req.backups.clone(),
            files: req.backup_files.clone(),
            passphrase,
        };
        let r = trust::ceremony_root_init(
            &self.guard,
            server_keys,
            &req.gun,
            req.threshold as usize,
            &req.tokens,
            &req.targets_token,
            &backups,
        )
        .await?;
        self.audit_root_keys(&r.root_keys, &req.gun, "ceremony")
            .await?;
        Ok(Response::new(pb::CeremonyRootInitResponse {
            root_json: r.root_json,
            root_keys: r.root_keys.into_iter().map(ceremony_key_pb).collect(),
            targets_key_id: r.targets.key_id,
            timestamp_key_id: r.timestamp_key_id,
            snapshot_key_id: r.snapshot_key_id,
        }))
    }

    async fn ceremony_sign(
        &self,
        req: Request<pb::CeremonySignRequest>,
    ) -> Result<Response<pb::CeremonySignResponse>, Status> {
        let req = req.into_inner();
        let keys = self.keys.find_key(&req.key_id).await?;
        let role = keys
            .first()
            .map(|k| k.role.as_str())
            .ok_or_else(|| Error::NotFound(format!("no key {}", req.key_id)))?;
        if role != "root" {
            return Err(Error::InvalidArgument(format!(
                "key {} is a {role} key, not a root key",
                req.key_id
            ))
            .into());
        }
        // The ceremony's root leaves the agent: its version is final once signed.
        let s = self
            .guard
            .sign(SignRequest {
                keys,
                subject: Subject::Metadata {
                    document: req.root_json,
                    role: "root".into(),
                    gun: req.gun,
                    previous_root: None,
                    previous: None,
                },
                versioning: Versioning::Final,
            })
            .await?;
        Ok(Response::new(pb::CeremonySignResponse {
            root_json: s.document,
            key_id: s.keyid,
        }))
    }

    async fn ceremony_check(
        &self,
        req: Request<pb::CeremonyCheckRequest>,
    ) -> Result<Response<pb::CeremonyCheckResponse>, Status> {
        let req = req.into_inner();
        let (signed_by, threshold, root_keys) = trust::root_signatures(&req.root_json)?;
        let (previous_signed_by, previous_threshold) = if req.previous_root_json.is_empty() {
            (Vec::new(), 0)
        } else {
            trust::rotation_signatures(&req.previous_root_json, &req.root_json)?
        };
        Ok(Response::new(pb::CeremonyCheckResponse {
            signed_by,
            threshold: threshold.max(0) as u32,
            root_keys,
            previous_signed_by,
            previous_threshold: previous_threshold.max(0) as u32,
        }))
    }

    async fn ceremony_root_rotate(
        &self,
        req: Request<pb::CeremonyRootRotateRequest>,
    ) -> Result<Response<pb::CeremonyRootRotateResponse>, Status> {
        let req = req.into_inner();
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let _repo_lock = self.trust.lock(&req.gun).await;
        let (previous, root, keys) = trust::ceremony_root_rotate(
            &self.guard,
            &client,
            &self.trust,
            &req.gun,
            req.threshold as usize,
            &req.tokens,
        )
        .await?;
        self.audit_root_keys(&keys, &req.gun, "ceremony rotation")
            .await?;
        Ok(Response::new(pb::CeremonyRootRotateResponse {
            previous_root_json: previous,
            root_json: root,
            root_keys: keys.into_iter().map(ceremony_key_pb).collect(),
        }))
    }

    async fn trust_publish_root(
        &self,
        req: Request<pb::TrustPublishRootRequest>,
    ) -> Result<Response<pb::TrustPublishRootResponse>, Status> {
        let req = req.into_inner();
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let _repo_lock = self.trust.lock(&req.gun).await;
        let version = crate::tuf::metadata::Envelope::parse(&req.root_json)
            .ok()
            .and_then(|e| e.signed.get("version").and_then(|v| v.as_u64()))
            .unwrap_or(0);
        trust::publish_root(&self.guard, &client, &self.trust, &req.gun, req.root_json).await?;
        Ok(Response::new(pb::TrustPublishRootResponse { version }))
    }

    async fn trust_sign(
        &self,
        req: Request<pb::TrustSignRequest>,
    ) -> Result<Response<pb::TrustSignResponse>, Status> {
        let mut req = req.into_inner();
        trust::check_gun(&req.gun)?;
        let wanted: Vec<trust::WantedTag> = if req.tags.is_empty() {
            vec![trust::WantedTag {
                tag: std::mem::take(&mut req.tag),
                sha256: std::mem::take(&mut req.sha256),
                length: req.length,
                manifest: std::mem::take(&mut req.manifest),
            }]
        } else {
            if req.tags.len() > MAX_TAGS {
                return Err(Error::ResourceExhausted(format!(
                    "{} tags in one request; at most {MAX_TAGS}: send a longer list with \
                     TrustSignStream (a current dct does)",
                    req.tags.len()
                ))
                .into());
            }
            std::mem::take(&mut req.tags)
                .into_iter()
                .map(wanted_tag)
                .collect()
        };
        self.sign_tag_list(req, Vec::new(), wanted, true).await
    }

    async fn trust_sign_stream(
        &self,
        req: Request<tonic::Streaming<pb::TrustSignPiece>>,
    ) -> Result<Response<pb::TrustSignResponse>, Status> {
        let mut pieces = req.into_inner();
        let bad = |m: &str| Status::from(Error::InvalidArgument(m.into()));
        let first = pieces
            .message()
            .await?
            .ok_or_else(|| bad("an empty TrustSignStream: its first piece carries the request"))?;
        let Some(req) = first.request else {
            return Err(bad(
                "the first piece of a TrustSignStream carries the request",
            ));
        };
        if !req.tags.is_empty()
            || !req.tag.is_empty()
            || !req.manifest.is_empty()
            || !req.sha256.is_empty()
            || req.length != 0
        {
            return Err(bad(
                "a TrustSignStream's request names no tag: the pieces carry them",
            ));
        }
        trust::check_gun(&req.gun)?;
        // Each piece's tags are checked and held compact as they come (digests as bytes);
        // a tag without a digest is looked up in the registry once all have come.
        // The announced total sizes the list once, within reason (a client could announce
        // 2,000,000 and send one tag); a longer list grows as it comes.
        let total = usize::try_from(first.tags_total).unwrap_or(usize::MAX);
        let mut given = Vec::with_capacity(total.min(MAX_TAGS));
        let mut wanted = Vec::new();
        let mut piece = first.tags;
        loop {
            if piece.len() > dct_proto::MAX_TAGS_PER_PIECE {
                return Err(Error::ResourceExhausted(format!(
                    "{} tags in one piece; at most {}",
                    piece.len(),
                    dct_proto::MAX_TAGS_PER_PIECE
                ))
                .into());
            }
            if given.len() + wanted.len() + piece.len() > dct_proto::MAX_TAGS_PER_STREAM {
                return Err(Error::ResourceExhausted(format!(
                    "more than {} tags in one update: sign them in parts (--part-size)",
                    dct_proto::MAX_TAGS_PER_STREAM
                ))
                .into());
            }
            for t in piece {
                if t.sha256.is_empty() {
                    // Looked up in the registry once all have come: checked now, and as
                    // many as one request may ask for.
                    trust::check_tag(&t.tag)?;
                    if wanted.len() == MAX_TAGS {
                        return Err(Error::ResourceExhausted(format!(
                            "more than {MAX_TAGS} tags without a digest in one update: give \
                             their digests (--from FILE)"
                        ))
                        .into());
                    }
                    wanted.push(wanted_tag(t));
                } else {
                    given.push(trust::given_tag(t.tag, &t.sha256, t.length)?);
                }
            }
            match pieces.message().await? {
                Some(next) if next.request.is_some() => {
                    return Err(bad(
                        "only the first piece of a TrustSignStream carries the request",
                    ))
                }
                Some(next) => piece = next.tags,
                None => break,
            }
        }
        if given.is_empty() && wanted.is_empty() {
            return Err(bad("a TrustSignStream with no tags: nothing to sign"));
        }
        // The stream's receive buffer goes before the roles are written.
        drop(pieces);
        self.sign_tag_list(req, given, wanted, false).await
    }

    async fn trust_inspect(
        &self,
        req: Request<pb::TrustInspectRequest>,
    ) -> Result<Response<pb::TrustInspectResponse>, Status> {
        let req = req.into_inner();
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let r = trust::inspect(&client, &self.trust, &req.gun).await?;
        Ok(Response::new(pb::TrustInspectResponse {
            tags: r
                .tags
                .into_iter()
                .map(|t| pb::SignedTag {
                    tag: t.tag,
                    sha256: t.sha256_hex,
                    length: t.length,
                    signers: t.signers,
                })
                .collect(),
            signers: r
                .signers
                .into_iter()
                .map(|(name, key_ids)| pb::SignerKeys { name, key_ids })
                .collect(),
            root_keys: r
                .root_keys
                .into_iter()
                .map(|(key_id, canonical_id)| pb::RootKey {
                    key_id,
                    canonical_id,
                })
                .collect(),
            repository_keys: r.repository_keys,
        }))
    }

    type MigrateStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::MigrateProgress, Status>> + Send + 'static>,
    >;

    async fn migrate(
        &self,
        req: Request<pb::MigrateRequest>,
    ) -> Result<Response<Self::MigrateStream>, Status> {
        let req = req.into_inner();
        trust::check_gun(&req.gun)?;
        let formats = req
            .to
            .iter()
            .map(|f| trust::migrate::Format::parse(f))
            .collect::<Result<Vec<_>>>()?;
        if formats.is_empty() {
            return Err(
                Error::InvalidArgument("--to: name a format (cosign, notation)".into()).into(),
            );
        }
        let keys = self.keys.find_key(&req.key_id).await?;
        let creds = self.registry_creds(
            &req.registry_username,
            req.sealed_registry_password.as_ref(),
        )?;
        let ca = self.registry_ca(req.server.as_ref());
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (guard, ctx) = (self.guard.clone(), self.trust.clone());
        tokio::spawn(async move {
            let opts = trust::migrate::MigrateOpts {
                signers: req.signers,
                dry_run: req.dry_run,
            };
            let _repo_lock = ctx.lock(&req.gun).await;
            for format in formats {
                let sent = tx.clone();
                let creds = creds.as_ref().map(|c| crate::oci::registry::Credentials {
                    username: c.username.clone(),
                    password: c.password.clone(),
                });
                let r = trust::migrate::migrate(
                    format,
                    &guard,
                    &client,
                    &ctx,
                    &req.gun,
                    keys.clone(),
                    &opts,
                    (ca.as_deref(), creds),
                    |total, t| {
                        // Unbounded (one message per tag): none is dropped for a slow
                        // reader. A client that went away stops hearing; the run finishes.
                        let _ = sent.send(Ok(pb::MigrateProgress {
                            tag: t.tag.clone(),
                            sha256: t.sha256_hex.clone(),
                            format: format.name().into(),
                            outcome: t.outcome.name().into(),
                            detail: t.detail.clone(),
                            total: total as u32,
                        }));
                    },
                )
                .await;
                if let Err(e) = r {
                    let _ = tx.send(Err(Status::from(e)));
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn verify_image(
        &self,
        req: Request<pb::VerifyImageRequest>,
    ) -> Result<Response<pb::VerifyImageResponse>, Status> {
        let req = req.into_inner();
        trust::check_gun(&req.gun)?;
        if !req.tag.is_empty() {
            trust::check_tag(&req.tag)?;
        }
        if !req.sha256.is_empty()
            && (req.sha256.len() != 64 || !req.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(Error::InvalidArgument(format!(
                "digest {:?} is not 64 hex characters",
                req.sha256
            ))
            .into());
        }
        let policy = trust::combined::GatePolicy::parse(&req.policy_json)?;
        let creds = self.registry_creds(
            &req.registry_username,
            req.sealed_registry_password.as_ref(),
        )?;
        let ca = self.registry_ca(req.server.as_ref());
        let client = if req.offline {
            None
        } else {
            Some(trust::client(
                req.server.map(server_opts),
                &self.trust.server,
            )?)
        };
        let v = trust::combined::verify_image(
            client.as_ref(),
            &self.trust,
            &policy,
            trust::combined::GateInput {
                gun: &req.gun,
                tag: (!req.tag.is_empty()).then_some(req.tag.as_str()),
                digest: (!req.sha256.is_empty()).then_some(req.sha256.as_str()),
                offline: req.offline,
                registry_ca: ca.as_deref(),
                registry_creds: creds,
            },
        )
        .await?;
        Ok(Response::new(pb::VerifyImageResponse {
            sha256: v.sha256_hex,
            required: v.required as u32,
            signers: v
                .signers
                .into_iter()
                .map(|(name, passed, reason)| pb::GateSigner {
                    name,
                    passed,
                    reason,
                })
                .collect(),
        }))
    }

    async fn trust_export(
        &self,
        req: Request<pb::TrustExportRequest>,
    ) -> Result<Response<pb::TrustExportResponse>, Status> {
        let req = req.into_inner();
        trust::check_gun(&req.gun)?;
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let _held = self.trust.lock(&req.gun).await;
        let e = trust::archive::export(&client, &self.trust, &req.gun).await?;
        Ok(Response::new(pb::TrustExportResponse {
            archive: e.archive,
            roles: e.roles as u32,
            root_versions: e.root_versions as u32,
        }))
    }

    async fn trust_verify(
        &self,
        req: Request<pb::TrustVerifyRequest>,
    ) -> Result<Response<pb::TrustVerifyResponse>, Status> {
        let req = req.into_inner();
        trust::check_tag(&req.tag)?;
        if !req.sha256.is_empty()
            && (req.sha256.len() != 64 || !req.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(Error::InvalidArgument(format!(
                "digest {:?} is not 64 hex characters",
                req.sha256
            ))
            .into());
        }
        let from_archive = !req.archive.is_empty();
        let at = if req.at.is_empty() {
            None
        } else {
            if !req.offline && !from_archive {
                return Err(Error::InvalidArgument(
                    "--at checks cached or archived trust data: use it with --offline or --from"
                        .into(),
                )
                .into());
            }
            Some(OffsetDateTime::parse(&req.at, &Rfc3339).map_err(|e| {
                Error::InvalidArgument(format!("--at {:?} is not RFC 3339: {e}", req.at))
            })?)
        };
        let client = if req.offline || from_archive {
            None
        } else {
            Some(trust::client(
                req.server.map(server_opts),
                &self.trust.server,
            )?)
        };
        let opts = trust::VerifyOpts {
            tag: req.tag,
            digest: (!req.sha256.is_empty()).then(|| req.sha256.to_ascii_lowercase()),
            signers: req.signers,
            offline: req.offline,
            at,
            archive: from_archive.then_some(req.archive),
        };
        let v = trust::verify_tag(client.as_ref(), &self.trust, &req.gun, &opts).await?;
        Ok(Response::new(pb::TrustVerifyResponse {
            sha256: v.sha256_hex,
            length: v.length,
            role: v.role,
            signers: v.signers,
            root_key_ids: v.root_keys.into_iter().map(|(id, _)| id).collect(),
            trust: v.trust.into(),
            skipped: v
                .skipped
                .into_iter()
                .map(|(role, reason)| pb::SkippedRole {
                    role,
                    reason,
                    targets: Vec::new(),
                })
                .collect(),
        }))
    }

    async fn trust_revoke(
        &self,
        req: Request<pb::TrustRevokeRequest>,
    ) -> Result<Response<pb::TrustRevokeResponse>, Status> {
        let req = req.into_inner();
        if !req.tag.is_empty() {
            trust::check_tag(&req.tag)?;
        }
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let tag = (!req.tag.is_empty()).then_some(req.tag.as_str());
        let _repo_lock = self.trust.lock(&req.gun).await;
        let roles = trust::revoke(&self.guard, &client, &self.trust, &req.gun, tag).await?;
        Ok(Response::new(pb::TrustRevokeResponse { roles }))
    }

    async fn trust_signer_add(
        &self,
        req: Request<pb::TrustSignerAddRequest>,
    ) -> Result<Response<pb::TrustSignerAddResponse>, Status> {
        let req = req.into_inner();
        let key = match (req.public_pem.is_empty(), req.key_id.is_empty()) {
            (false, true) => {
                let text = String::from_utf8(req.public_pem).map_err(|_| {
                    Error::InvalidArgument("the signer's public key file is not PEM text".into())
                })?;
                crate::tuf::keys::key_from_pem(&text)
                    .map_err(|e| Error::InvalidArgument(format!("signer public key: {e}")))?
            }
            (true, false) => self.keys.find_key(&req.key_id).await?.remove(0).tuf_key(),
            _ => {
                return Err(Error::InvalidArgument(
                    "give the signer's key as a PEM file or a key ID, one of them".into(),
                )
                .into())
            }
        };
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let _repo_lock = self.trust.lock(&req.gun).await;
        let (key_id, initialized) = trust::signer_add(
            &self.guard,
            &client,
            &self.trust,
            &req.gun,
            &req.name,
            key,
            &req.token,
        )
        .await?;
        Ok(Response::new(pb::TrustSignerAddResponse {
            key_id,
            initialized,
        }))
    }

    async fn trust_signer_remove(
        &self,
        req: Request<pb::TrustSignerRemoveRequest>,
    ) -> Result<Response<pb::TrustSignerRemoveResponse>, Status> {
        let req = req.into_inner();
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let _repo_lock = self.trust.lock(&req.gun).await;
        trust::signer_remove(&self.guard, &client, &self.trust, &req.gun, &req.name).await?;
        Ok(Response::new(pb::TrustSignerRemoveResponse {}))
    }

    async fn trust_key_rotate(
        &self,
        req: Request<pb::TrustKeyRotateRequest>,
    ) -> Result<Response<pb::TrustKeyRotateResponse>, Status> {
        let req = req.into_inner();
        let client = trust::client(req.server.map(server_opts), &self.trust.server)?;
        let _repo_lock = self.trust.lock(&req.gun).await;
        let key_id = trust::rotate(
            &self.guard,
            &client,
            &self.trust,
            &req.gun,
            &req.role,
            req.server_managed,
            &req.token,
        )
        .await?;
        Ok(Response::new(pb::TrustKeyRotateResponse { key_id }))
    }
}

fn server_opts(s: pb::TrustServer) -> crate::trust::notary::ServerOpts {
    crate::trust::notary::ServerOpts {
        url: s.url,
        ca_pem: (!s.ca_pem.is_empty()).then_some(s.ca_pem),
        trust_on_first_use: s.trust_on_first_use,
    }
}
