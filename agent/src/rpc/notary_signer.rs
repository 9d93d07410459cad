//! notary-signer's gRPC API (`proto.KeyManagement`, `proto.Signer`, `grpc.health.v1`)
//! over mutual TLS, so a notary-server (`trust_service.type: remote`) keeps its timestamp
//! and snapshot keys on the agent's token.
//!
//! What a notary-server may do here is narrow: make, find, delete and use `timestamp` and
//! `snapshot` keys on the one token `[notary_signer] token` names. Root, targets and
//! delegation keys on the same token are invisible to it, and every `Sign` parses the
//! content and refuses one whose `_type` is not the key's role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dct_proto::notary as pb;
use dct_proto::notary::key_management_server::{KeyManagement, KeyManagementServer};
use dct_proto::notary::signer_server::{Signer, SignerServer};
use serde::Deserialize;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::error::{Error, Result};
use crate::guard::audit::Event;
use crate::guard::{Guard, Request as SignRequest, Subject, Versioning};
use crate::keys::{check_gun, KeyEntry, Keyring};

#[derive(Debug, Clone, Deserialize)]
// Unknown keys are reported, all at once, by the config parser (serde_ignored).
pub struct NotarySignerConfig {
    /// `host:port`; TCP, always with mutual TLS.
    pub listen: std::net::SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// CA that client certificates must chain to; a client without one is refused.
    pub client_ca: PathBuf,
    /// Label of the token its keys are made on and served from.
    pub token: String,
}

/// The only roles notary-server keeps keys for.
const SERVER_ROLES: [&str; 2] = ["timestamp", "snapshot"];
/// The key algorithm this signer makes (P-256 ECDSA), as Notary names it.
const ECDSA: &str = "ecdsa";
/// Health service names notary-server checks.
const HEALTH_KEY_MANAGEMENT: &str = "grpc.health.v1.Health.KeyManagement";
const HEALTH_SIGNER: &str = "grpc.health.v1.Health.Signer";

#[derive(Clone)]
pub struct NotarySigner {
    guard: Guard,
    keys: Keyring,
    token: String,
}

impl NotarySigner {
    pub fn new(guard: Guard, token: String) -> Self {
        NotarySigner {
            keys: guard.keys().clone(),
            guard,
            token,
        }
    }

    fn served(&self, k: &KeyEntry) -> bool {
        k.token == self.token && SERVER_ROLES.contains(&k.role.as_str())
    }

    /// The server key with canonical ID `id`: from the recent listing, else a fresh one.
    async fn key(&self, id: &str) -> Result<KeyEntry> {
        let id = id.to_ascii_lowercase();
        self.keys
            .by_canonical_id(&id)
            .await
            .into_iter()
            .find(|k| self.served(k))
            .ok_or_else(|| Error::NotFound(format!("key {id} not found")))
    }
}

fn key_info(k: &KeyEntry) -> pb::KeyInfo {
    pb::KeyInfo {
        key_id: Some(pb::KeyId {
            id: k.canonical_id.clone(),
        }),
        algorithm: Some(pb::Algorithm {
            algorithm: ECDSA.into(),
        }),
    }
}

fn key_id(k: Option<pb::KeyId>) -> Result<String> {
    let id = k.map(|k| k.id).unwrap_or_default();
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(format!(
            "{id:?} is not a key ID (64 hex digits)"
        )));
    }
    Ok(id)
}

#[tonic::async_trait]
impl KeyManagement for NotarySigner {
    async fn create_key(
        &self,
        req: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::PublicKey>, Status> {
        let req = req.into_inner();
        if req.algorithm != ECDSA {
            return Err(Error::InvalidArgument(format!(
                "algorithm {:?} not supported for create key (this signer makes ecdsa P-256 keys)",
                req.algorithm
            ))
            .into());
        }
        if !SERVER_ROLES.contains(&req.role.as_str()) {
            return Err(Error::Refused(format!(
                "notary-server keys are timestamp or snapshot keys, not {:?}",
                req.role
            ))
            .into());
        }
        check_gun(&req.gun)?;
        let token = self.keys.token(&self.token)?;
        let key = token
            .generate(req.role.clone(), Some(req.gun.clone()))
            .await?;
        self.keys.invalidate();
        tracing::info!(key_id = %key.canonical_id, role = %req.role, gun = %req.gun, "notary-signer: created key");
        self.guard
            .audit()
            .record(Event {
                key_id: key.canonical_id.clone(),
                role: req.role.clone(),
                gun: req.gun.clone(),
                ..Event::new("create_key")
            })
            .await?;
        Ok(Response::new(pb::PublicKey {
            key_info: Some(key_info(&key)),
            public_key: key.spki,
        }))
    }

    async fn delete_key(&self, req: Request<pb::KeyId>) -> Result<Response<pb::Void>, Status> {
        let id = key_id(Some(req.into_inner()))?;
        match self.key(&id).await {
            Ok(key) => {
                let token = self.keys.token(&key.token)?;
                let event = Event {
                    key_id: key.canonical_id.clone(),
                    role: key.role.clone(),
                    gun: key.gun.clone().unwrap_or_default(),
                    ..Event::new("delete_key")
                };
                token.run(move |b| b.delete(&key)).await?;
                self.keys.invalidate();
                self.guard.audit().record(event).await?;
                tracing::info!(key_id = %id, "notary-signer: deleted key");
            }
            // As notary-signer: deleting an absent key succeeds.
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Response::new(pb::Void {}))
    }

    async fn get_key_info(
        &self,
        req: Request<pb::KeyId>,
    ) -> Result<Response<pb::GetKeyInfoResponse>, Status> {
        let id = key_id(Some(req.into_inner()))?;
        let key = self.key(&id).await?;
        Ok(Response::new(pb::GetKeyInfoResponse {
            key_info: Some(key_info(&key)),
            public_key: key.spki.clone(),
            role: key.role,
        }))
    }
}

#[tonic::async_trait]
impl Signer for NotarySigner {
    async fn sign(
        &self,
        req: Request<pb::SignatureRequest>,
    ) -> Result<Response<pb::Signature>, Status> {
        let req = req.into_inner();
        let id = key_id(req.key_id)?;
        let key = match self.key(&id).await {
            Ok(k) => k,
            Err(e) => {
                let event = Event {
                    key_id: id,
                    ..Event::new("sign")
                };
                self.guard.audit().refused(event, &e).await;
                return Err(e.into());
            }
        };
        let info = key_info(&key);
        // The guard parses the content as a document of the key's role, holds its version
        // (notary-server may repeat its highest, never go lower), signs and records.
        let signed = self
            .guard
            .sign(SignRequest {
                keys: vec![key],
                subject: Subject::ServerRole {
                    content: req.content,
                },
                versioning: Versioning::ServerManaged,
            })
            .await?;
        Ok(Response::new(pb::Signature {
            key_info: Some(info),
            algorithm: Some(pb::Algorithm {
                algorithm: ECDSA.into(),
            }),
            content: signed.document,
        }))
    }
}

fn read(path: &std::path::Path, what: &str) -> std::result::Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("[notary_signer] {what} {}: {e}", path.display()))
}

/// The TLS settings: our certificate and key, and the CA every client must present a
/// certificate from.
pub fn tls_config(c: &NotarySignerConfig) -> std::result::Result<ServerTlsConfig, String> {
    let cert = read(&c.tls_cert, "tls_cert")?;
    let key = read(&c.tls_key, "tls_key")?;
    let ca = read(&c.client_ca, "client_ca")?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false)
        .timeout(Duration::from_secs(10)))
}

/// Serves the API on `c.listen` until `shutdown` completes.
pub async fn serve(
    c: &NotarySignerConfig,
    builder: tonic::transport::server::Server<crate::rpc::limits::Limits>,
    guard: Guard,
    max_bytes: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::result::Result<(), String> {
    let tls = tls_config(c)?;
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .map_err(|e| format!("[notary_signer] cannot listen on {}: {e}", c.listen))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        "notary-signer API on {addr} (mutual TLS), keys on token {:?}",
        c.token
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    let keys = guard.keys().clone();
    let audit = guard.audit().clone();
    let signer = NotarySigner::new(guard, c.token.clone());
    // Healthy while the token is there and unlocked, as notary-server's checks expect, and
    // the audit log can be written (without it nothing is signed).
    let token = keys.token(&c.token).map_err(|e| e.to_string())?.clone();
    let watch = tokio::spawn(async move {
        let mut last = None;
        loop {
            let token_ok =
                matches!(token.run(|b| Ok(b.info())).await, Ok(i) if i.present && i.unlocked);
            let audit_ok = audit.state().error.is_none();
            let ok = token_ok && audit_ok;
            if last != Some(ok) {
                let status = if ok {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for s in [HEALTH_KEY_MANAGEMENT, HEALTH_SIGNER] {
                    health.set_service_status(s, status).await;
                }
                if !token_ok {
                    tracing::warn!(token = %token.label, "notary-signer: token absent or locked; reporting NOT_SERVING");
                } else if !audit_ok {
                    tracing::warn!(
                        "notary-signer: the audit log cannot be written; reporting NOT_SERVING"
                    );
                }
                last = Some(ok);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let result = builder
        .tls_config(tls)
        .map_err(|e| format!("[notary_signer] TLS: {e}"))?
        .layer(crate::guard::audit::PeerLayer)
        .add_service(health_service)
        .add_service(KeyManagementServer::new(signer.clone()).max_decoding_message_size(max_bytes))
        .add_service(SignerServer::new(signer).max_decoding_message_size(max_bytes))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    watch.abort();
    result.map_err(|e| format!("notary-signer API: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_64_hex() {
        assert!(key_id(Some(pb::KeyId {
            id: "ab".repeat(32)
        }))
        .is_ok());
        assert!(key_id(Some(pb::KeyId {
            id: "zz".repeat(32)
        }))
        .is_err());
        assert!(key_id(None).is_err());
    }
}
