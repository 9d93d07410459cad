//! `dct trust ...`: Docker's vocabulary. The CLI names the repository and the server; the
//! agent fetches, verifies, signs and publishes.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use dct_proto::dct::v1 as pb;

use crate::client::{Client, Failure};
use crate::image::{gun_of, split_tag};
use crate::output::{print_json, Table};

#[derive(Args)]
pub struct ServerArgs {
    /// The notary-server. Default: DCT_SERVER, else DOCKER_CONTENT_TRUST_SERVER, else the
    /// agent's [trust] server.
    #[arg(long, global = true, env = "DCT_SERVER", value_name = "URL")]
    server: Option<String>,
    /// A CA file for the server's TLS certificate.
    #[arg(long, global = true, env = "DCT_TLSCACERT", value_name = "FILE")]
    tlscacert: Option<PathBuf>,
    /// Sign on a repository whose root this agent has never seen and no pin names (the
    /// notary client does this silently; here it is a choice).
    #[arg(long, global = true)]
    trust_on_first_use: bool,
}

#[derive(Subcommand)]
pub enum TrustCmd {
    /// Create trust data for a repository: root and targets keys on a token (reused when
    /// present), snapshot and timestamp keys managed by the server.
    Init {
        /// The repository, e.g. registry.example.com/app.
        image: String,
        /// Use this root key (ID or prefix) instead of finding or making one.
        #[arg(long, value_name = "KEYID")]
        root_key: Option<String>,
        /// Token for new keys (needed when the agent has several).
        #[arg(long)]
        token: Option<String>,
        /// Keep the snapshot key on the token instead of letting the server manage it.
        #[arg(long)]
        local_snapshot: bool,
        /// Publish the root a ceremony signed (DIR/root.final.json, from `dct ceremony
        /// finish`), with targets version 1 signed by the targets key it names.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["root_key", "local_snapshot"])]
        root_from: Option<PathBuf>,
    },
    /// Sign tags: adds each to every delegation this agent holds a key for, else to targets,
    /// and publishes them in one update. Initialises the repository first when it has no
    /// trust data. A digest comes from --digest/--size or --manifest (one tag), from
    /// --from (many), or else from the registry the image names (HTTPS with --tlscacert;
    /// DCT_REGISTRY_USERNAME / DCT_REGISTRY_PASSWORD for basic or token auth).
    Sign {
        /// IMAGE:TAG, one or more of the same repository.
        images: Vec<String>,
        /// A file ("-": standard input) of lines `IMAGE:TAG sha256:<64 hex> SIZE`, all of
        /// one repository; blank lines and lines starting with # are skipped.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// With --from: tags per published version (default: all of them in one update,
        /// up to 2,000,000). A longer list is signed and published in parts, one after
        /// another.
        #[arg(long, value_name = "N", requires = "from",
              value_parser = clap::value_parser!(u64).range(1..=dct_proto::MAX_TAGS_PER_STREAM as u64))]
        part_size: Option<u64>,
        /// The manifest digest, sha256:<64 hex>.
        #[arg(long, requires = "size", conflicts_with = "manifest")]
        digest: Option<String>,
        /// The manifest size in bytes.
        #[arg(long, requires = "digest")]
        size: Option<u64>,
        /// The manifest file itself: its exact bytes are hashed.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        #[arg(long)]
        token: Option<String>,
        /// Dual signing: once published in DCT, also write these OCI signatures of each
        /// tag's digest (comma-separated: cosign, notation), made by the key(s) that signed it in
        /// DCT and written to the registry by the agent.
        #[arg(long, value_delimiter = ',', value_name = "FORMATS")]
        also: Vec<String>,
    },
    /// The deploy gate: exit 0 only if IMAGE:TAG is signed (in targets/releases, else
    /// targets, as docker resolves it) under a trusted root, every role unexpired, by one of
    /// the --signer names when given, and for --digest when given. Prints the signed digest
    /// and its signers; a failure prints one line naming the check. Needs no key.
    Verify {
        /// IMAGE:TAG
        image: String,
        /// The digest the tag must point at, sha256:<64 hex>.
        #[arg(long)]
        digest: Option<String>,
        /// A signer that must have signed it (a delegation name, or "Repo Admin"); repeat
        /// for "any of".
        #[arg(long = "signer", value_name = "NAME")]
        signers: Vec<String>,
        /// Use the trust data cached by the last online check; no network.
        #[arg(long)]
        offline: bool,
        /// Verify against a trust archive (`dct trust export`) instead: no network, no
        /// cache; expiry as of the export unless --at says otherwise.
        #[arg(long, value_name = "FILE", conflicts_with = "offline")]
        from: Option<PathBuf>,
        /// With --offline or --from: check expiry as of this RFC 3339 time.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Print only the signed digest (sha256:HEX), for `docker pull IMAGE@$(...)`.
        #[arg(long)]
        print_digest: bool,
    },
    /// Write everything needed to verify IMAGE's DCT signatures later without a server:
    /// every role file, every root version from the first, the pins. Verified first, under
    /// the pins or the cached root (never on first use).
    Export {
        image: String,
        /// The archive file to write (`-` for standard output).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Publish the next root a rotation ceremony finished (DIR/root.final.json, signed by a
    /// threshold of the current root keys and of its own).
    PublishRoot { image: String, dir: PathBuf },
    /// Signed tags, who signed them, and the repository's administrative keys.
    Inspect {
        /// IMAGE or IMAGE:TAG
        image: String,
    },
    /// Remove a tag's signature (IMAGE:TAG), or every tag's (IMAGE), from the roles this
    /// agent can sign.
    Revoke { image: String },
    /// Signers: delegations targets/NAME, with their keys also in targets/releases.
    #[command(subcommand)]
    Signer(SignerCmd),
    /// The repository's keys.
    #[command(subcommand)]
    Key(TrustKeyCmd),
}

#[derive(Subcommand)]
pub enum TrustKeyCmd {
    /// Replace a role's key: targets (new key on a token, targets re-signed), snapshot (on a
    /// token, or --server-managed), timestamp (always the server's), or root (a new root
    /// key, the new root signed by the old and the new one so clients follow it).
    Rotate {
        image: String,
        /// root, targets, snapshot or timestamp
        role: String,
        #[arg(long)]
        server_managed: bool,
        #[arg(long)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum SignerCmd {
    /// Add a signer: targets/NAME with the key, and the key in targets/releases.
    Add {
        name: String,
        image: String,
        /// The signer's public key (PEM public key or certificate).
        #[arg(
            long,
            value_name = "PUB.pem",
            conflicts_with = "key_id",
            required_unless_present = "key_id"
        )]
        key: Option<PathBuf>,
        /// A key on this agent's tokens (e.g. from `dct key generate --role targets/NAME`).
        #[arg(long, value_name = "KEYID")]
        key_id: Option<String>,
        #[arg(long)]
        token: Option<String>,
    },
    /// Remove a signer and its keys from targets/releases.
    Remove { name: String, image: String },
}

/// Each OCI signature written (or not) alongside DCT (`dct trust sign --also`).
fn print_also(gun: &str, also: &[pb::OciSignature]) {
    for a in also {
        if a.ok {
            eprintln!(
                "{gun}:{}: {} signature written (key {})",
                a.tag, a.format, a.key_id
            );
        } else {
            eprintln!(
                "{gun}:{}: {} signature failed: {}",
                a.tag, a.format, a.detail
            );
        }
    }
}

/// `list` in consecutive chunks of at most `size` (moved, not copied).
fn chunks<T>(list: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(list.len().div_ceil(size.max(1)));
    let mut it = list.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(size.max(1)).collect());
    }
    out
}

/// A TrustSignStream: `req` in the first piece, then `tags` in pieces of at most
/// `MAX_TAGS_PER_PIECE`. A long list takes a while once sent: it says so when its last
/// piece goes.
fn sign_pieces(
    req: pb::TrustSignRequest,
    tags: Vec<pb::TagTarget>,
) -> impl tonic::codegen::tokio_stream::Stream<Item = pb::TrustSignPiece> + Send + 'static {
    let total = tags.len();
    let mut pieces = vec![pb::TrustSignPiece {
        request: Some(req),
        tags: Vec::new(),
        tags_total: total as u64,
    }];
    pieces.extend(
        chunks(tags, dct_proto::MAX_TAGS_PER_PIECE)
            .into_iter()
            .map(|tags| pb::TrustSignPiece {
                request: None,
                tags,
                tags_total: 0,
            }),
    );
    let last = pieces.len() - 1;
    tonic::codegen::tokio_stream::iter(pieces.into_iter().enumerate().map(move |(k, p)| {
        if k == last && total > dct_proto::MAX_TAGS_PER_PIECE {
            eprintln!("{total} tags sent; the agent signs and publishes them as one update ...");
        }
        p
    }))
}

/// Reads `IMAGE:TAG sha256:<hex> SIZE` lines (see `dct trust sign --from`).
fn read_tag_list(path: &std::path::Path) -> Result<Vec<(String, pb::TagTarget)>, Failure> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure::failed(format!("cannot read standard input: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::failed(format!("cannot read {}: {e}", path.display())))?
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| {
            Failure::usage(format!(
                "{} line {}: {why}: expected `IMAGE:TAG sha256:<64 hex> SIZE`",
                path.display(),
                n + 1
            ))
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [image, digest, size] = fields.as_slice() else {
            return Err(bad("three fields"));
        };
        let (name, tag) = split_tag(image);
        let tag = tag.ok_or_else(|| bad("no tag"))?;
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| bad("bad digest"))?;
        let length = size.parse::<u64>().map_err(|_| bad("bad size"))?;
        out.push((
            gun_of(&name),
            pb::TagTarget {
                tag,
                sha256: hex.to_ascii_lowercase(),
                length,
            },
        ));
    }
    Ok(out)
}

impl ServerArgs {
    pub fn resolve(&self) -> Result<pb::TrustServer, Failure> {
        let url = self
            .server
            .clone()
            .or_else(|| std::env::var("DOCKER_CONTENT_TRUST_SERVER").ok())
            .unwrap_or_default();
        let ca_pem = match &self.tlscacert {
            Some(p) => std::fs::read(p)
                .map_err(|e| Failure::failed(format!("cannot read {}: {e}", p.display())))?,
            None => Vec::new(),
        };
        Ok(pb::TrustServer {
            url,
            ca_pem,
            trust_on_first_use: self.trust_on_first_use,
        })
    }
}

pub async fn run(
    c: &mut Client,
    server: &ServerArgs,
    cmd: TrustCmd,
    json: bool,
) -> Result<(), Failure> {
    let srv = server.resolve()?;
    match cmd {
        TrustCmd::Init {
            image,
            root_key,
            token,
            local_snapshot,
            root_from,
        } => {
            let (name, _) = split_tag(&image);
            let gun = gun_of(&name);
            let root_json = match &root_from {
                Some(dir) => crate::image::final_root(dir, &gun)?,
                None => Vec::new(),
            };
            let req = pb::TrustInitRequest {
                server: Some(srv.clone()),
                gun: gun.clone(),
                root_key: root_key.unwrap_or_default(),
                token: token.unwrap_or_default(),
                local_snapshot,
                root_json,
            };
            let r = c
                .call(|mut a| async move { a.trust_init(req).await })
                .await?;
            if json {
                return print_json(&serde_json::json!({
                    "gun": gun, "root_key_id": r.root_key_id, "root_canonical_id": r.root_canonical_id,
                    "targets_key_id": r.targets_key_id, "snapshot_key_id": r.snapshot_key_id,
                    "timestamp_key_id": r.timestamp_key_id,
                }));
            }
            println!("initialised trust data for {gun}");
            println!(
                "  root key        {} (canonical {})",
                r.root_key_id, r.root_canonical_id
            );
            println!("  repository key  {}", r.targets_key_id);
            let where_ = if local_snapshot {
                "on the token"
            } else {
                "server-managed"
            };
            println!("  snapshot key    {} ({where_})", r.snapshot_key_id);
            println!("  timestamp key   {} (server-managed)", r.timestamp_key_id);
            Ok(())
        }
        TrustCmd::Sign {
            images,
            from,
            part_size,
            digest,
            size,
            manifest,
            token,
            also,
        } => {
            let mut entries: Vec<(String, pb::TagTarget)> = Vec::new();
            for image in &images {
                let (name, tag) = split_tag(image);
                let tag = tag
                    .ok_or_else(|| Failure::usage(format!("{image} has no tag: sign IMAGE:TAG")))?;
                entries.push((
                    gun_of(&name),
                    pb::TagTarget {
                        tag,
                        ..Default::default()
                    },
                ));
            }
            if let Some(path) = &from {
                entries.extend(read_tag_list(path)?);
            }
            let many = entries.len() > 1 || from.is_some();
            if entries.is_empty() {
                return Err(Failure::usage(
                    "nothing to sign: give IMAGE:TAG or --from FILE",
                ));
            }
            if many && (digest.is_some() || manifest.is_some()) {
                return Err(Failure::usage(
                    "--digest and --manifest name one tag's manifest; for many tags use --from",
                ));
            }
            let gun = entries[0].0.clone();
            if let Some((other, _)) = entries.iter().find(|(g, _)| *g != gun) {
                return Err(Failure::usage(format!(
                    "all tags must be of one repository ({gun}, not also {other}); sign each repository in its own run"
                )));
            }
            let hex = match &digest {
                Some(d) => d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| Failure::usage(format!("digest {d:?} must be sha256:<64 hex>")))?
                    .to_string(),
                None => String::new(),
            };
            let manifest = match &manifest {
                Some(p) => std::fs::read(p)
                    .map_err(|e| Failure::failed(format!("cannot read {}: {e}", p.display())))?,
                None => Vec::new(),
            };
            let mut seen = std::collections::HashSet::new();
            if let Some((_, t)) = entries.iter().find(|(_, t)| !seen.insert(t.tag.as_str())) {
                return Err(Failure::usage(format!("tag {:?} is given twice", t.tag)));
            }
            let count = entries.len();
            let (tag, tags) = if many {
                (String::new(), entries.into_iter().map(|(_, t)| t).collect())
            } else {
                (entries.remove(0).1.tag, Vec::new())
            };
            if many {
                eprintln!("signing {count} tags of {gun} ...");
            }
            // Many tags go to the agent in pieces (TrustSignStream), all of them one
            // update; with --part-size, in parts each signed and published before the next:
            // what is published stays if a later part fails, and signing the same list again
            // finishes it (a tag signed again with its digest is unchanged).
            let part_size = part_size
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(dct_proto::MAX_TAGS_PER_STREAM);
            // For --json: what was sent (the agent's answer to a stream lists only the tags
            // it looked up in the registry).
            let sent: Vec<pb::TagTarget> = if json { tags.clone() } else { Vec::new() };
            let parts: Vec<Vec<pb::TagTarget>> = if tags.len() > part_size {
                chunks(tags, part_size)
            } else {
                vec![tags]
            };
            let n_parts = parts.len();
            let mut r = pb::TrustSignResponse::default();
            let request = |sealed_registry_password, tags| pb::TrustSignRequest {
                server: Some(srv.clone()),
                gun: gun.clone(),
                tag: tag.clone(),
                sha256: hex.clone(),
                length: size.unwrap_or_default(),
                token: token.clone().unwrap_or_default(),
                manifest: manifest.clone(),
                registry_username: std::env::var("DCT_REGISTRY_USERNAME").unwrap_or_default(),
                registry_password: String::new(),
                tags,
                sealed_registry_password,
                also: also.clone(),
            };
            for (i, tags) in parts.into_iter().enumerate() {
                let in_part = tags.len();
                // An agent older than TrustSignStream takes a list in one request (up to
                // 200,000 tags): kept to send again if the agent does not know the stream.
                let unary_tags =
                    (many && in_part <= dct_proto::MAX_TAGS_PER_SIGN).then(|| tags.clone());
                let part = match sealed_registry_password(c).await {
                    Ok(sealed) if many => {
                        let pieces = sign_pieces(request(sealed, Vec::new()), tags);
                        match c
                            .call(|mut a| async move { a.trust_sign_stream(pieces).await })
                            .await
                        {
                            // (An error here is the part's: a later part's keeps the
                            // parts' context below.)
                            Err(f) if f.reason.as_deref() == Some("unimplemented") => {
                                match (unary_tags, f) {
                                    (None, f) => Err(f),
                                    (Some(tags), _) => match sealed_registry_password(c).await {
                                        Ok(sealed) => {
                                            let req = request(sealed, tags);
                                            c.call(|mut a| async move { a.trust_sign(req).await })
                                                .await
                                                .map(|mut p| {
                                                    p.count = p.tags.len() as u64;
                                                    p
                                                })
                                        }
                                        Err(e) => Err(e),
                                    },
                                }
                            }
                            other => other,
                        }
                    }
                    Ok(sealed) => {
                        let req = request(sealed, Vec::new());
                        c.call(|mut a| async move { a.trust_sign(req).await }).await
                    }
                    Err(f) => Err(f),
                };
                let part = match part {
                    Ok(p) => p,
                    Err(mut f) if i > 0 => {
                        // What the published parts did for Notation or cosign is said too.
                        print_also(&gun, &r.also);
                        f.message = format!(
                            "{} of {count} tags signed and published in {i} part(s); part {} of {n_parts} failed: {}",
                            r.count,
                            i + 1,
                            f.message
                        );
                        f.hint = Some(
                            "run the same command again to finish: tags signed again with the same digest are unchanged"
                                .into(),
                        );
                        return Err(f);
                    }
                    Err(f) => return Err(f),
                };
                if n_parts > 1 {
                    eprintln!(
                        "part {} of {n_parts}: {in_part} tags signed and published ({} of {count})",
                        i + 1,
                        r.count + part.count
                    );
                }
                r.initialized |= part.initialized;
                for role in part.roles {
                    if !r.roles.contains(&role) {
                        r.roles.push(role);
                    }
                }
                if r.sha256.is_empty() {
                    (r.sha256, r.length) = (part.sha256, part.length);
                }
                r.count += part.count;
                r.tags.extend(part.tags);
                r.also.extend(part.also);
            }
            let also_failed: Vec<&pb::OciSignature> = r.also.iter().filter(|a| !a.ok).collect();
            let also_done = || -> Result<(), Failure> {
                print_also(&gun, &r.also);
                match also_failed.first() {
                    None => Ok(()),
                    Some(a) => Err(Failure::partial(format!(
                        "signed in DCT, but {} of {} {} signature(s) failed; `dct migrate {gun} --to {} --key {}` writes what is missing",
                        also_failed.len(),
                        r.also.len(),
                        a.format,
                        a.format,
                        a.key_id
                    ))),
                }
            };
            if json {
                // Each tag as signed: the digest sent, or the one the agent looked up.
                let looked_up: std::collections::HashMap<&str, &pb::TagTarget> =
                    r.tags.iter().map(|t| (t.tag.as_str(), t)).collect();
                let listed: Vec<&pb::TagTarget> = if many {
                    sent.iter()
                        .map(|t| looked_up.get(t.tag.as_str()).copied().unwrap_or(t))
                        .collect()
                } else {
                    r.tags.iter().collect()
                };
                let tags: Vec<_> = listed
                    .iter()
                    .map(|t| serde_json::json!({"tag": t.tag, "digest": format!("sha256:{}", t.sha256), "size": t.length}))
                    .collect();
                let mut out = serde_json::json!({"gun": gun, "roles": r.roles, "initialized": r.initialized, "tags": tags});
                if !many {
                    out["tag"] = tag.clone().into();
                    out["digest"] = format!("sha256:{}", r.sha256).into();
                    out["size"] = r.length.into();
                }
                if !r.also.is_empty() {
                    out["also"] = r
                        .also
                        .iter()
                        .map(|a| serde_json::json!({"tag": a.tag, "format": a.format, "key_id": a.key_id, "ok": a.ok, "detail": (!a.detail.is_empty()).then_some(&a.detail)}))
                        .collect();
                }
                print_json(&out)?;
                return also_done();
            }
            if r.initialized {
                eprintln!("initialised trust data for {gun}");
            }
            if many {
                println!("signed {} tags of {gun} in {}", r.count, r.roles.join(", "));
            } else {
                println!(
                    "signed {gun}:{tag} (sha256:{}, {} bytes) in {}",
                    r.sha256,
                    r.length,
                    r.roles.join(", ")
                );
            }
            also_done()
        }
        TrustCmd::Revoke { image } => {
            let (name, tag) = split_tag(&image);
            let gun = gun_of(&name);
            let req = pb::TrustRevokeRequest {
                server: Some(srv),
                gun: gun.clone(),
                tag: tag.clone().unwrap_or_default(),
            };
            let r = c
                .call(|mut a| async move { a.trust_revoke(req).await })
                .await?;
            if json {
                return print_json(&serde_json::json!({"gun": gun, "tag": tag, "roles": r.roles}));
            }
            match tag {
                Some(t) => println!("revoked {gun}:{t} in {}", r.roles.join(", ")),
                None => println!("revoked every tag of {gun} in {}", r.roles.join(", ")),
            }
            Ok(())
        }
        TrustCmd::Signer(SignerCmd::Add {
            name,
            image,
            key,
            key_id,
            token,
        }) => {
            let gun = gun_of(&split_tag(&image).0);
            let public_pem = match &key {
                Some(p) => std::fs::read(p)
                    .map_err(|e| Failure::failed(format!("cannot read {}: {e}", p.display())))?,
                None => Vec::new(),
            };
            let req = pb::TrustSignerAddRequest {
                server: Some(srv),
                gun: gun.clone(),
                name: name.clone(),
                public_pem,
                key_id: key_id.unwrap_or_default(),
                token: token.unwrap_or_default(),
            };
            let r = c
                .call(|mut a| async move { a.trust_signer_add(req).await })
                .await?;
            if json {
                return print_json(
                    &serde_json::json!({"gun": gun, "signer": name, "key_id": r.key_id, "initialized": r.initialized}),
                );
            }
            if r.initialized {
                eprintln!("initialised trust data for {gun}");
            }
            println!("added signer {name} to {gun} with key {}", r.key_id);
            Ok(())
        }
        TrustCmd::Signer(SignerCmd::Remove { name, image }) => {
            let gun = gun_of(&split_tag(&image).0);
            let req = pb::TrustSignerRemoveRequest {
                server: Some(srv),
                gun: gun.clone(),
                name: name.clone(),
            };
            c.call(|mut a| async move { a.trust_signer_remove(req).await })
                .await?;
            if json {
                return print_json(&serde_json::json!({"gun": gun, "removed": name}));
            }
            println!("removed signer {name} from {gun}");
            Ok(())
        }
        TrustCmd::Key(TrustKeyCmd::Rotate {
            image,
            role,
            server_managed,
            token,
        }) => {
            let gun = gun_of(&split_tag(&image).0);
            let req = pb::TrustKeyRotateRequest {
                server: Some(srv),
                gun: gun.clone(),
                role: role.clone(),
                server_managed,
                token: token.unwrap_or_default(),
            };
            let r = c
                .call(|mut a| async move { a.trust_key_rotate(req).await })
                .await?;
            if json {
                return print_json(
                    &serde_json::json!({"gun": gun, "role": role, "key_id": r.key_id}),
                );
            }
            println!("rotated the {role} key of {gun}: new key {}", r.key_id);
            Ok(())
        }
        TrustCmd::Verify {
            image,
            digest,
            signers,
            offline,
            from,
            at,
            print_digest,
        } => {
            if at.is_some() && !offline && from.is_none() {
                return Err(Failure::usage(
                    "--at checks cached or archived trust data: use it with --offline or --from",
                ));
            }
            let archive = match &from {
                Some(f) => crate::read_input(f)?,
                None => Vec::new(),
            };
            let (name, tag) = split_tag(&image);
            let tag =
                tag.ok_or_else(|| Failure::usage(format!("{image} has no tag: verify IMAGE:TAG")))?;
            let sha256 = match &digest {
                Some(d) => d
                    .strip_prefix("sha256:")
                    .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| Failure::usage(format!("digest {d:?} must be sha256:<64 hex>")))?
                    .to_string(),
                None => String::new(),
            };
            let gun = gun_of(&name);
            let req = pb::TrustVerifyRequest {
                server: (!offline && from.is_none()).then_some(srv),
                gun: gun.clone(),
                tag: tag.clone(),
                sha256,
                signers,
                offline,
                at: at.unwrap_or_default(),
                archive,
            };
            let r = c
                .call(|mut a| async move { a.trust_verify(req).await })
                .await?;
            // The agent passes a tag only with a 32-byte sha256; never print anything else
            // as a digest.
            if r.sha256.len() != 64 || !r.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Failure::failed(format!(
                    "tag: {gun}:{tag} has no usable sha256 digest"
                )));
            }
            let skipped: Vec<serde_json::Value> = r
                .skipped
                .iter()
                .map(|s| serde_json::json!({"role": s.role, "reason": s.reason}))
                .collect();
            if json {
                return print_json(&serde_json::json!({
                    "gun": gun, "tag": tag, "digest": format!("sha256:{}", r.sha256),
                    "size": r.length, "role": r.role, "signers": r.signers,
                    "root_key_ids": r.root_key_ids, "trust": r.trust, "verified": true,
                    "skipped": skipped,
                }));
            }
            for s in &r.skipped {
                eprintln!(
                    "warning: {} skipped, its tags untrusted: {}",
                    s.role, s.reason
                );
            }
            if print_digest {
                println!("sha256:{}", r.sha256);
                return Ok(());
            }
            println!(
                "{gun}:{tag} is signed: sha256:{} ({} bytes) in {} by {} (root trusted: {})",
                r.sha256,
                r.length,
                r.role,
                if r.signers.is_empty() {
                    "-".to_string()
                } else {
                    r.signers.join(", ")
                },
                r.trust
            );
            Ok(())
        }
        TrustCmd::Export { image, out } => {
            let gun = gun_of(&split_tag(&image).0);
            let req = pb::TrustExportRequest {
                server: Some(srv),
                gun: gun.clone(),
            };
            let r = c
                .call(|mut a| async move { a.trust_export(req).await })
                .await?;
            crate::write_output(&out, &r.archive)?;
            if json {
                return print_json(&serde_json::json!({
                    "gun": gun, "out": out.display().to_string(), "roles": r.roles,
                    "root_versions": r.root_versions, "bytes": r.archive.len(),
                }));
            }
            eprintln!(
                "{gun}: {} role files and {} root version(s) archived in {} ({} bytes); \
                 verify later with `dct trust verify {gun}:TAG --from {}`",
                r.roles,
                r.root_versions,
                out.display(),
                r.archive.len(),
                out.display()
            );
            Ok(())
        }
        TrustCmd::PublishRoot { image, dir } => {
            let gun = gun_of(&split_tag(&image).0);
            let req = pb::TrustPublishRootRequest {
                server: Some(srv),
                gun: gun.clone(),
                root_json: crate::image::final_root(&dir, &gun)?,
            };
            let r = c
                .call(|mut a| async move { a.trust_publish_root(req).await })
                .await?;
            println!("published root version {} of {gun}", r.version);
            Ok(())
        }
        TrustCmd::Inspect { image } => {
            let (name, tag) = split_tag(&image);
            let gun = gun_of(&name);
            let req = pb::TrustInspectRequest {
                server: Some(srv),
                gun: gun.clone(),
            };
            let r = c
                .call(|mut a| async move { a.trust_inspect(req).await })
                .await?;
            let tags: Vec<&pb::SignedTag> = r
                .tags
                .iter()
                .filter(|t| tag.as_deref().is_none_or(|want| t.tag == want))
                .collect();
            if let Some(want) = &tag {
                if tags.is_empty() {
                    return Err(Failure::failed(format!("no signatures for {gun}:{want}")));
                }
            }
            if json {
                let tags: Vec<_> = tags
                    .iter()
                    .map(|t| serde_json::json!({"tag": t.tag, "digest": format!("sha256:{}", t.sha256), "size": t.length, "signers": t.signers}))
                    .collect();
                let signers: Vec<_> = r
                    .signers
                    .iter()
                    .map(|s| serde_json::json!({"name": s.name, "keys": s.key_ids}))
                    .collect();
                let root: Vec<_> = r
                    .root_keys
                    .iter()
                    .map(
                        |k| serde_json::json!({"key_id": k.key_id, "canonical_id": k.canonical_id}),
                    )
                    .collect();
                return print_json(&serde_json::json!({
                    "name": gun, "signed_tags": tags, "signers": signers,
                    "administrative_keys": {"root": root, "repository": r.repository_keys},
                }));
            }
            println!("Signatures for {gun}\n");
            let mut t = Table::new(&["SIGNED TAG", "DIGEST", "SIGNERS"]);
            for s in &tags {
                t.row(vec![s.tag.clone(), s.sha256.clone(), s.signers.join(", ")]);
            }
            t.print();
            if !r.signers.is_empty() {
                println!("\nList of signers and their keys for {gun}\n");
                let mut t = Table::new(&["SIGNER", "KEYS"]);
                for s in &r.signers {
                    let short: Vec<String> = s
                        .key_ids
                        .iter()
                        .map(|k| k.chars().take(12).collect())
                        .collect();
                    t.row(vec![s.name.clone(), short.join(", ")]);
                }
                t.print();
            }
            println!("\nAdministrative keys for {gun}\n");
            for k in &r.root_keys {
                println!("  Root Key:\t{} (canonical {})", k.key_id, k.canonical_id);
            }
            println!("  Repository Key:\t{}", r.repository_keys.join(", "));
            Ok(())
        }
    }
}

/// `DCT_REGISTRY_PASSWORD` (from the environment only), sealed to the agent; None when unset.
pub async fn sealed_registry_password(c: &mut Client) -> Result<Option<pb::SealedSecret>, Failure> {
    let password =
        secrecy::SecretString::from(std::env::var("DCT_REGISTRY_PASSWORD").unwrap_or_default());
    if secrecy::ExposeSecret::expose_secret(&password).is_empty() {
        return Ok(None);
    }
    crate::seal(c, &password).await.map(Some)
}

/// `dct migrate`: what to migrate.
pub struct Migrate {
    pub image: String,
    pub to: Vec<String>,
    pub key: String,
    pub signers: Vec<String>,
    pub dry_run: bool,
}

/// Runs a migration in the agent, printing each tag as it is settled and a summary.
pub async fn migrate(
    c: &mut Client,
    server: &ServerArgs,
    m: Migrate,
    json: bool,
) -> Result<(), Failure> {
    let srv = server.resolve()?;
    let gun = gun_of(&split_tag(&m.image).0);
    let sealed_registry_password = sealed_registry_password(c).await?;
    let req = pb::MigrateRequest {
        server: Some(srv),
        gun: gun.clone(),
        to: m.to,
        key_id: m.key,
        signers: m.signers,
        dry_run: m.dry_run,
        registry_username: std::env::var("DCT_REGISTRY_USERNAME").unwrap_or_default(),
        sealed_registry_password,
    };
    let mut stream = c.call(|mut a| async move { a.migrate(req).await }).await?;
    let mut rows: Vec<pb::MigrateProgress> = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                eprintln!(
                    "[{}/{}] {gun}:{} sha256:{} {}: {}{}",
                    rows.len() + 1,
                    p.total,
                    p.tag,
                    p.sha256,
                    p.format,
                    p.outcome,
                    if p.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", p.detail)
                    }
                );
                rows.push(p);
            }
            Ok(None) => break,
            Err(s) => return Err(crate::client::failure(s)),
        }
    }
    let count = |o: &str| rows.iter().filter(|r| r.outcome == o).count();
    let failed = count("failed");
    if json {
        print_json(&serde_json::json!({
            "gun": gun,
            "dry_run": m.dry_run,
            "tags": rows.iter().map(|r| serde_json::json!({
                "tag": r.tag, "digest": format!("sha256:{}", r.sha256), "format": r.format,
                "outcome": r.outcome, "detail": (!r.detail.is_empty()).then_some(&r.detail),
            })).collect::<Vec<_>>(),
            "summary": {
                "signed": count("signed"), "already_signed": count("already signed"),
                "moved": count("moved"), "would_sign": count("would sign"), "failed": failed,
            },
        }))?;
    } else {
        let mut t = Table::new(&["outcome", "tags"]);
        for o in ["signed", "already signed", "would sign", "moved", "failed"] {
            t.row(vec![o.to_string(), count(o).to_string()]);
        }
        t.print();
    }
    if failed > 0 {
        return Err(Failure::partial(format!(
            "{failed} of {} tags failed; run again to retry them (signed tags are skipped)",
            rows.len()
        )));
    }
    Ok(())
}
