//! The checks: a pulled tag verifies under a pinned root (the deploy gate's `verify_tag`),
//! a pulled digest is named by a signed tag, a container's local image is the one signed
//! for the name it is created by.

use std::path::PathBuf;

use super::config::{Effective, Mode, Unpinned};
use super::docker;
use super::request::{action, parse_image, Action, AuthzRequest, ImageRef};
use crate::error::Error;
use crate::trust::notary::{NotaryClient, ServerOpts};
use crate::trust::{inspect, verify_tag, TrustContext, VerifyOpts};

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not judged (ping, list, inspect, ...).
    Pass,
    Allow,
    Deny(String),
}

/// A judged request, for the log and the audit file.
pub struct Judged {
    pub image: Option<String>,
    pub decision: Decision,
}

pub struct Judge {
    ctx: TrustContext,
    client: Option<NotaryClient>,
    pub mode: Mode,
    unpinned: Unpinned,
    docker_socket: PathBuf,
    config: crate::authz::config::AuthzConfig,
}

impl Judge {
    pub fn new(cfg: &Effective) -> Result<Judge, String> {
        let server = match &cfg.config.trust.server {
            Some(url) => {
                let ca_pem = match &cfg.config.trust.tlscacert {
                    Some(p) => Some(
                        std::fs::read(p).map_err(|e| format!("tlscacert {}: {e}", p.display()))?,
                    ),
                    None => None,
                };
                Some(ServerOpts {
                    url: url.clone(),
                    ca_pem,
                    trust_on_first_use: false,
                })
            }
            None => None,
        };
        let client = match &server {
            Some(s) => Some(NotaryClient::new(s).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Judge {
            ctx: TrustContext::new(cfg.config.cache_dir.clone(), server, cfg.pinning.clone()),
            client,
            mode: cfg.mode,
            unpinned: cfg.config.unpinned,
            docker_socket: cfg.config.docker_socket.clone(),
            config: cfg.config.clone(),
        })
    }

    /// Judges one request as enforced mode would (the caller applies permissive).
    pub async fn judge(&self, req: &AuthzRequest) -> Judged {
        if self.mode == Mode::Disabled {
            return Judged {
                image: None,
                decision: Decision::Pass,
            };
        }
        let act = match action(req) {
            Ok(a) => a,
            Err(e) => {
                return Judged {
                    image: None,
                    decision: Decision::Deny(e),
                }
            }
        };
        match act {
            Action::Other => Judged {
                image: None,
                decision: Decision::Pass,
            },
            Action::Pull(image) => Judged {
                image: Some(image.display()),
                decision: self.pull(&image).await,
            },
            Action::PullAll(gun) => {
                let decision = match self.scope(&gun) {
                    Some(d) => d,
                    None => Decision::Deny(format!(
                        "{gun}: pulling every tag is not checked; pull a signed tag"
                    )),
                };
                Judged {
                    image: Some(gun),
                    decision,
                }
            }
            Action::Create(name) => Judged {
                decision: self.create(&name).await,
                image: Some(name),
            },
            Action::CreateUnreadable => Judged {
                image: None,
                decision: Decision::Deny(
                    "container create without a readable Image in its body".into(),
                ),
            },
        }
    }

    /// None when the repository is pinned (judge it); else what `unpinned` says.
    fn scope(&self, gun: &str) -> Option<Decision> {
        let pinned =
            !self.ctx.pinning.for_gun(gun).is_empty() || self.ctx.pinning.ca_for_gun(gun).is_some();
        if pinned {
            return None;
        }
        Some(match self.unpinned {
            Unpinned::Allow => Decision::Allow,
            Unpinned::Deny => Decision::Deny(format!(
                "{gun} is outside every pinned repository (unpinned = deny)"
            )),
        })
    }

    async fn pull(&self, image: &ImageRef) -> Decision {
        if let Some(d) = self.scope(&image.gun) {
            return d;
        }
        match (&image.tag, &image.digest) {
            (_, Some(digest)) => self.digest_signed(&image.gun, digest).await,
            (Some(tag), None) => match self.signed_digest(&image.gun, tag).await {
                Ok(signed) => self.registry_serves(image, tag, &signed).await,
                Err(why) => Decision::Deny(why),
            },
            (None, None) => Decision::Deny(format!("{}: no tag or digest", image.gun)),
        }
    }

    /// The registry must serve the signed digest for the tag now: a tag re-pointed after it
    /// was signed is refused before dockerd pulls it. A registry the plugin cannot ask
    /// (credentials, network) leaves it to the create check, which refuses the image's
    /// digest if it is not the signed one.
    async fn registry_serves(&self, image: &ImageRef, tag: &str, signed: &str) -> Decision {
        let ca = self.ctx.server.as_ref().and_then(|s| s.ca_pem.as_deref());
        match crate::oci::registry::resolve(&image.gun, tag, ca, None).await {
            Ok((d, _)) => {
                let served = crate::tuf::keys::hex(&d);
                if served == signed {
                    Decision::Allow
                } else {
                    Decision::Deny(format!(
                        "{}: the registry now serves sha256:{served} for this tag, but the digest \
                         signed for it is sha256:{signed} (digest differs from the signed one)",
                        image.display()
                    ))
                }
            }
            Err(e) => {
                tracing::warn!(
                    image = image.display(),
                    "cannot ask the registry which digest it serves ({e}); the create check decides"
                );
                Decision::Allow
            }
        }
    }

    /// The digest `gun:tag` is signed for, online, else from the cached trust data while
    /// the trust server is unreachable; the refusal names the failed check.
    async fn signed_digest(&self, gun: &str, tag: &str) -> Result<String, String> {
        let opts = |offline| VerifyOpts {
            tag: tag.to_string(),
            digest: None,
            signers: self.config.signers_for(gun),
            offline,
            at: None,
            archive: None,
        };
        let online = match &self.client {
            Some(c) => verify_tag(Some(c), &self.ctx, gun, &opts(false)).await,
            None => Err(Error::Unavailable("no trust server configured".into())),
        };
        let v = match online {
            Err(Error::Unavailable(down)) => {
                tracing::warn!(gun, tag, "{down}: judging from cached trust data");
                match verify_tag(None, &self.ctx, gun, &opts(true)).await {
                    Ok(v) => v,
                    // Nothing cached: fail closed.
                    Err(e) if e.to_string().starts_with("refused: offline:") => {
                        return Err(format!(
                            "{gun}:{tag} cannot be checked: the trust server is unreachable and no trust data for {gun} is cached"
                        ))
                    }
                    Err(e) => {
                        return Err(format!(
                            "{} (judged from cached trust data: the trust server is unreachable)",
                            refusal(gun, tag, e)
                        ))
                    }
                }
            }
            Err(e) => return Err(refusal(gun, tag, e)),
            Ok(v) => v,
        };
        Ok(v.sha256_hex)
    }

    /// Is `digest` the one some signed tag of `gun` names (as docker resolves tags)?
    async fn digest_signed(&self, gun: &str, digest: &str) -> Decision {
        let unsigned = || {
            Decision::Deny(format!(
                "{gun}@sha256:{digest} is not signed: no signed tag of {gun} names this digest"
            ))
        };
        let online = match &self.client {
            Some(c) => inspect(c, &self.ctx, gun).await,
            None => Err(Error::Unavailable("no trust server configured".into())),
        };
        match online {
            Ok(ins) => {
                let naming: Vec<String> = ins
                    .tags
                    .iter()
                    .filter(|t| t.sha256_hex.eq_ignore_ascii_case(digest))
                    .map(|t| t.tag.clone())
                    .collect();
                let signers = self.config.signers_for(gun);
                if naming.is_empty() {
                    return unsigned();
                }
                if signers.is_empty() {
                    return Decision::Allow;
                }
                // Named signers required: some tag naming the digest must carry them all.
                let mut why = Vec::new();
                for tag in naming {
                    let opts = VerifyOpts {
                        tag: tag.clone(),
                        digest: Some(digest.to_string()),
                        signers: signers.clone(),
                        offline: false,
                        at: None,
                        archive: None,
                    };
                    match verify_tag(self.client.as_ref(), &self.ctx, gun, &opts).await {
                        Ok(_) => return Decision::Allow,
                        Err(e) => why.push(refusal(gun, &tag, e)),
                    }
                }
                Decision::Deny(why.join("; "))
            }
            Err(Error::Unavailable(down)) => {
                tracing::warn!(gun, "{down}: judging from cached trust data");
                // Each tag the cached data lists, verified from the cache as the gate does.
                let names = self.cached_tag_names(gun);
                if names.is_empty() {
                    return Decision::Deny(format!(
                        "{gun}@sha256:{digest} cannot be checked: the trust server is unreachable and no trust data for {gun} is cached"
                    ));
                }
                for tag in names {
                    let opts = VerifyOpts {
                        tag,
                        digest: Some(digest.to_string()),
                        signers: self.config.signers_for(gun),
                        offline: true,
                        at: None,
                        archive: None,
                    };
                    if verify_tag(None, &self.ctx, gun, &opts).await.is_ok() {
                        return Decision::Allow;
                    }
                }
                unsigned()
            }
            Err(Error::NotFound(_)) => Decision::Deny(format!(
                "{gun}@sha256:{digest} is not signed: {gun} has no trust data"
            )),
            Err(e) => Decision::Deny(format!("{gun}@sha256:{digest} is not signed: {e}")),
        }
    }

    /// Tag names any cached role of `gun` lists (candidates; each is then verified).
    fn cached_tag_names(&self, gun: &str) -> Vec<String> {
        let Ok(files) = self.ctx.load_metadata(gun) else {
            return Vec::new();
        };
        let mut names: Vec<String> = files
            .iter()
            .filter(|(role, _)| role.as_str() == "targets" || role.starts_with("targets/"))
            .filter_map(|(_, bytes)| {
                crate::tuf::metadata::RawEnvelope::parse(bytes)
                    .and_then(|f| f.target_names())
                    .ok()
            })
            .flatten()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// `docker create NAME`: the local image NAME resolves to must carry the signed digest
    /// among its repository digests (an image re-tagged locally does not).
    async fn create(&self, name: &str) -> Decision {
        let local = match docker::image_inspect(&self.docker_socket, name).await {
            Ok(Some(i)) => i,
            // dockerd itself answers "No such image" (and `docker run` pulls, judged then).
            Ok(None) => return Decision::Allow,
            Err(e) => {
                return Decision::Deny(format!("{name}: cannot inspect the local image: {e}"))
            }
        };
        // dockerd falls back to an ID prefix of any length when no image has the name: then
        // the name says nothing about where the image came from.
        let by_id = {
            let n = name.strip_prefix("sha256:").unwrap_or(name);
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_hexdigit())
                && local.id.trim_start_matches("sha256:").starts_with(n)
        };
        let repo_digests: Vec<ImageRef> = local
            .repo_digests
            .iter()
            .filter_map(|r| parse_image(r).ok())
            .filter(|r| r.digest.is_some())
            .collect();
        if by_id {
            // Named by ID: it runs if one of its repository digests is signed.
            let mut why = Vec::new();
            for r in &repo_digests {
                let (Some(d), None) = (&r.digest, self.scope(&r.gun)) else {
                    continue;
                };
                match self.digest_signed(&r.gun, d).await {
                    Decision::Allow => return Decision::Allow,
                    Decision::Deny(w) => why.push(w),
                    Decision::Pass => {}
                }
            }
            if why.is_empty() && repo_digests.iter().any(|r| self.scope(&r.gun).is_some()) {
                // Only unpinned repositories: as `unpinned` says for each.
                if self.unpinned == Unpinned::Allow {
                    return Decision::Allow;
                }
            }
            return Decision::Deny(format!(
                "image {name} (by ID) is not signed by a pinned root{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {}", why.join("; "))
                }
            ));
        }
        let image = match parse_image(name) {
            Ok(i) => i,
            Err(e) => return Decision::Deny(e),
        };
        if let Some(d) = self.scope(&image.gun) {
            return d;
        }
        let want = match (&image.digest, &image.tag) {
            (Some(d), _) => {
                let d = d.clone();
                match self.digest_signed(&image.gun, &d).await {
                    Decision::Allow => d,
                    other => return other,
                }
            }
            (None, tag) => {
                let tag = tag.clone().unwrap_or_else(|| "latest".into());
                match self.signed_digest(&image.gun, &tag).await {
                    Ok(d) => d,
                    Err(why) => return Decision::Deny(why),
                }
            }
        };
        if repo_digests
            .iter()
            .any(|r| r.gun == image.gun && r.digest.as_deref() == Some(want.as_str()))
        {
            return Decision::Allow;
        }
        let have: Vec<String> = repo_digests.iter().map(ImageRef::display).collect();
        Decision::Deny(format!(
            "{}: the local image's digest differs from the signed one (signed sha256:{want}; the image has {})",
            image.display(),
            if have.is_empty() {
                "no repository digest".to_string()
            } else {
                have.join(", ")
            }
        ))
    }
}

/// The gate's refusal as one line naming the failed check: "GUN:TAG is not signed by a
/// pinned root: CHECK: WHY".
fn refusal(gun: &str, tag: &str, e: Error) -> String {
    let msg = e.to_string();
    let msg = msg.strip_prefix("refused: ").unwrap_or(&msg);
    format!("{gun}:{tag} is not signed by a pinned root: {msg}")
}
