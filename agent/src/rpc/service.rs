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
use crate::keys::{check_gun, check_role, KeyEntry, Keyring, Token, TokenInfo};
use crate::trust;
use crate::tuf::verify;

/// Tags in one TrustSign call.
const MAX_TAGS: usize = 200_000;

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
        spki: k.spki,
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
        let key = self
            .keys
            .find_key(&req.key_id)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound(format!("no key {}", req.key_id)))?;
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
            certificate_chain: Vec::new(),
            repository: oci.repository,
            artifact: oci.artifact,
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
            keys: keys.into_iter().map(key_pb).collect(),
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
        let wanted: Vec<(String, String, u64, Vec<u8>)> = if req.tags.is_empty() {
            vec![(
                std::mem::take(&mut req.tag),
                std::mem::take(&mut req.sha256),
                req.length,
                std::mem::take(&mut req.manifest),
            )]
        } else {
            if req.tags.len() > MAX_TAGS {
                return Err(Error::ResourceExhausted(format!(
                    "{} tags in one request; at most {MAX_TAGS}",
                    req.tags.len()
                ))
                .into());
            }
            std::mem::take(&mut req.tags)
                .into_iter()
                .map(|t| (t.tag, t.sha256, t.length, Vec::new()))
                .collect()
        };
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
        let password = match &req.sealed_registry_password {
            Some(sealed) => Some(self.channels.unseal(sealed)?),
            None => None,
        };
        let creds = match (req.registry_username.is_empty(), password) {
            (true, None) => None,
            (true, Some(_)) => {
                return Err(Error::InvalidArgument(
                    "a registry password needs a registry username".into(),
                )
                .into())
            }
            (false, password) => Some(crate::oci::registry::Credentials {
                username: req.registry_username.clone(),
                password: password.unwrap_or_else(|| SecretString::from(String::new())),
            }),
        };
        let ca = req
            .server
            .as_ref()
            .filter(|s| !s.ca_pem.is_empty())
            .map(|s| s.ca_pem.clone())
            .or_else(|| self.trust.server.as_ref().and_then(|s| s.ca_pem.clone()));
        let wanted = wanted
            .into_iter()
            .map(|(tag, sha256, length, manifest)| trust::WantedTag {
                tag,
                sha256,
                length,
                manifest,
            })
            .collect();
        let tags = trust::resolve_tags(&req.gun, wanted, ca.as_deref(), creds.as_ref()).await?;
        // Resolved: the registry password is not kept while signing and publishing.
        drop(creds);
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
        let first = tags.first();
        Ok(Response::new(pb::TrustSignResponse {
            roles: r.roles,
            initialized: r.initialized,
            sha256: first
                .map(|t| crate::tuf::keys::hex(&t.sha256))
                .unwrap_or_default(),
            length: first.map(|t| t.length).unwrap_or_default(),
            tags: tags
                .iter()
                .map(|t| pb::TagTarget {
                    tag: t.tag.clone(),
                    sha256: crate::tuf::keys::hex(&t.sha256),
                    length: t.length,
                })
                .collect(),
        }))
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
        let at = if req.at.is_empty() {
            None
        } else {
            if !req.offline {
                return Err(Error::InvalidArgument(
                    "--at checks cached trust data: use it with --offline".into(),
                )
                .into());
            }
            Some(OffsetDateTime::parse(&req.at, &Rfc3339).map_err(|e| {
                Error::InvalidArgument(format!("--at {:?} is not RFC 3339: {e}", req.at))
            })?)
        };
        let client = if req.offline {
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
