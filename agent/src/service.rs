//! The dct gRPC API: thin handlers over the tokens, the TUF core and the signing checks.

use std::sync::Arc;

use dct_proto::dct::v1 as pb;
use dct_proto::dct::v1::agent_server::Agent;
use secrecy::SecretString;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::error::{Error, PinState, Result};
use crate::keys::{check_gun, check_role, KeyEntry, Token, TokenInfo};
use crate::signing;
use crate::tuf::verify;

pub struct AgentService {
    tokens: Arc<Vec<Token>>,
}

impl AgentService {
    pub fn new(tokens: Vec<Token>) -> Self {
        AgentService {
            tokens: Arc::new(tokens),
        }
    }

    /// The token a request names, or the only one when it names none.
    fn token(&self, label: &str) -> Result<&Token> {
        if label.is_empty() {
            return match self.tokens.as_slice() {
                [t] => Ok(t),
                [] => Err(Error::Unavailable(
                    "the agent has no tokens configured ([[pkcs11]] in agent.toml)".into(),
                )),
                _ => Err(Error::InvalidArgument(format!(
                    "several tokens are configured; name one with --token ({})",
                    self.labels()
                ))),
            };
        }
        self.tokens
            .iter()
            .find(|t| t.label == label)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no token {label:?} configured (have: {})",
                    self.labels()
                ))
            })
    }

    fn labels(&self) -> String {
        self.tokens
            .iter()
            .map(|t| t.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every key on every token, with the tokens that could not be read.
    async fn all_keys(&self) -> (Vec<KeyEntry>, Vec<String>) {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for t in self.tokens.iter() {
            match t.run(|b| b.list_keys()).await {
                Ok(k) => keys.extend(k),
                Err(e) => errors.push(format!("{}: {e}", t.label)),
            }
        }
        (keys, errors)
    }

    /// The listings of one key, found by key ID, canonical ID or a unique prefix of either.
    async fn find_key(&self, wanted: &str) -> Result<Vec<KeyEntry>> {
        if wanted.len() < 4 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!(
                "{wanted:?} is not a key ID (hex, at least 4 digits)"
            )));
        }
        let wanted = wanted.to_ascii_lowercase();
        let (keys, errors) = self.all_keys().await;
        let exact: Vec<KeyEntry> = keys
            .iter()
            .filter(|k| k.key_id == wanted || k.canonical_id == wanted)
            .cloned()
            .collect();
        let matches = if exact.is_empty() {
            keys.into_iter()
                .filter(|k| k.key_id.starts_with(&wanted) || k.canonical_id.starts_with(&wanted))
                .collect()
        } else {
            exact
        };
        let mut canon: Vec<&str> = matches.iter().map(|k| k.canonical_id.as_str()).collect();
        canon.dedup();
        match canon.len() {
            0 => {
                let mut msg = format!("no key {wanted} on the agent's tokens (see dct key list)");
                if !errors.is_empty() {
                    msg.push_str(&format!("; unreadable: {}", errors.join("; ")));
                }
                Err(Error::NotFound(msg))
            }
            1 => {
                // Put the listing whose key_id was asked for first.
                let mut m = matches;
                m.sort_by_key(|k| k.key_id != wanted);
                Ok(m)
            }
            _ => Err(Error::InvalidArgument(format!(
                "key ID prefix {wanted} is ambiguous"
            ))),
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
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let mut tokens = Vec::new();
        for t in self.tokens.iter() {
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
        Ok(Response::new(pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            backends: vec![crate::keys::pkcs11::BACKEND.into()],
            tokens,
        }))
    }

    async fn unlock(
        &self,
        req: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let mut req = req.into_inner();
        // Move the PIN out of the request into a zeroizing secret at once.
        let pin = SecretString::from(std::mem::take(&mut req.pin));
        let token = self.token(&req.token)?;
        if secrecy::ExposeSecret::expose_secret(&pin).is_empty() {
            return Err(Error::InvalidArgument("empty PIN".into()).into());
        }
        let force = req.force;
        let label = token.label.clone();
        let state = token.run(move |b| b.login(&pin, force)).await;
        match &state {
            Ok(_) => tracing::info!(token = %label, "unlocked"),
            Err(e) => tracing::warn!(token = %label, "unlock failed: {e}"),
        }
        Ok(Response::new(pb::UnlockResponse {
            token: label,
            pin: Some(pin_pb(&state?)),
        }))
    }

    async fn lock(
        &self,
        req: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let req = req.into_inner();
        let targets: Vec<&Token> = if req.token.is_empty() {
            self.tokens.iter().collect()
        } else {
            vec![self.token(&req.token)?]
        };
        // Try every token before reporting, so one failure leaves no other token unlocked.
        let mut locked = Vec::new();
        let mut errors = Vec::new();
        for t in targets {
            match t.run(|b| b.logout()).await {
                Ok(()) => {
                    tracing::info!(token = %t.label, "locked");
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
        let token = self.token(&req.token)?;
        let key = token.generate(req.role, gun).await?;
        tracing::info!(token = %token.label, key_id = %key.key_id, role = %key.role, "generated key");
        Ok(Response::new(pb::GenerateKeyResponse {
            key: Some(key_pb(key)),
        }))
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let req = req.into_inner();
        let (keys, errors) = if req.token.is_empty() {
            self.all_keys().await
        } else {
            (
                self.token(&req.token)?.run(|b| b.list_keys()).await?,
                Vec::new(),
            )
        };
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.into_iter().map(key_pb).collect(),
            errors,
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
        let keys = self.find_key(&req.key_id).await?;
        let token = self.token(&keys[0].token)?.clone();
        // Parsing and canonicalising a large document is CPU work: keep it off the reactor.
        let prepared = tokio::task::spawn_blocking(move || {
            let p = signing::prepare(&req.document, &keys, &req.role, &req.gun);
            p.map(|p| (p, keys.into_iter().next()))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        let (prepared, Some(key)) = prepared else {
            return Err(Error::Internal("key vanished".into()).into());
        };
        let digest = prepared.digest;
        let sig = token.run(move |b| b.sign_digest(&key, &digest)).await?;
        let (keyid, role, version) = (
            prepared.keyid.clone(),
            prepared.role.clone(),
            prepared.version,
        );
        tracing::info!(key_id = %keyid, role = %role, version, "signed metadata");
        let document = tokio::task::spawn_blocking(move || signing::finish(prepared, sig))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        Ok(Response::new(pb::SignMetadataResponse {
            document,
            key_id: keyid,
            role,
            version,
        }))
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
                .map_err(|e| Error::Internal(e.to_string()))?;
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
}
