//! Registry credentials and key imports: the registry password travels sealed, goes to the
//! registry only after it asks (a 401 challenge), and leaves no trace in the agent's
//! memory; an imported key is audited, and no key is imported while the audit log cannot
//! take its record.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use dct_tests::notary::{notary_list, NotaryStack};
use dct_tests::registry::Registry;
use dct_tests::{hex, Agent, SoftHsm};
use serde_json::Value;
use sha2::{Digest, Sha256};

const USER: &str = "ci-user";

/// `dct trust --server --tlscacert sign IMAGE` with `env`.
fn sign_image(
    agent: &Agent,
    stack: &NotaryStack,
    image: &str,
    env: &[(&str, &str)],
) -> dct_tests::Run {
    agent.dct_env(
        &[
            "trust",
            "--server",
            &stack.url,
            "--tlscacert",
            stack.ca.to_str().unwrap(),
            "sign",
            image,
        ],
        env,
    )
}

fn row(tag: &str, content: &[u8], role: &str) -> (String, String, String, String) {
    (
        tag.into(),
        hex(&Sha256::digest(content)),
        content.len().to_string(),
        role.into(),
    )
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A raw gRPC client on the agent's socket (what an old dct would send).
async fn connect(
    socket: &Path,
) -> dct_proto::dct::v1::agent_client::AgentClient<tonic::transport::Channel> {
    let p = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://dct-agent.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = p.clone();
            async move {
                tokio::net::UnixStream::connect(p)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    dct_proto::dct::v1::agent_client::AgentClient::new(channel)
}

#[test]
fn a_tag_is_resolved_with_the_sealed_registry_password() {
    let stack = NotaryStack::start();
    let pass = "sealed-registry-pass";
    let registry = Registry::start_with_auth(&stack, USER, pass);
    let (_hsm, agent) = Agent::on_fresh_token("creds", "7777");
    let served = registry.push("team/private", "v1", "private v1");
    let gun = format!("{}/team/private", registry.host);
    let image = format!("{gun}:v1");

    // No credentials: the registry's challenge is shown, nothing is signed.
    let err = sign_image(&agent, &stack, &image, &[]).fails(1, "401");
    assert!(err.contains("DCT_REGISTRY_USERNAME"), "{err}");
    // A wrong password: refused by the registry.
    sign_image(
        &agent,
        &stack,
        &image,
        &[
            ("DCT_REGISTRY_USERNAME", USER),
            ("DCT_REGISTRY_PASSWORD", "wrong-pass"),
        ],
    )
    .fails(1, "not accepted");
    // A plaintext password in the old field (an old dct): refused before any registry
    // request, telling what to do.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let mut c = connect(&agent.socket).await;
        c.trust_sign(dct_proto::dct::v1::TrustSignRequest {
            server: Some(dct_proto::dct::v1::TrustServer {
                url: stack.url.clone(),
                ca_pem: std::fs::read(&stack.ca).unwrap(),
                ..Default::default()
            }),
            gun: gun.clone(),
            tag: "v1".into(),
            registry_username: USER.into(),
            registry_password: pass.into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("use a current dct"),
        "{refused:?}"
    );

    // The right credentials, from the environment: the digest the registry serves is signed.
    let out = sign_image(
        &agent,
        &stack,
        &image,
        &[
            ("DCT_REGISTRY_USERNAME", USER),
            ("DCT_REGISTRY_PASSWORD", pass),
        ],
    )
    .ok();
    assert!(
        out.stdout.contains(&hex(&Sha256::digest(&served))),
        "{}",
        out.stdout
    );
    assert_eq!(
        notary_list(&stack, &gun, &[]),
        vec![row("v1", &served, "targets")]
    );

    // Two tags at once go to the agent as a stream of pieces with no digests: the agent
    // looks both up and answers with them; the CLI lists them with what the registry serves.
    let v2 = registry.push("team/private", "v2", "private v2");
    // `dct trust --json sign ARGS` with the registry's credentials: each tag and digest.
    let sign_json = |args: &[&str]| -> Vec<(String, String)> {
        let ca = stack.ca.to_str().unwrap();
        let head = [
            "trust",
            "--server",
            &stack.url,
            "--tlscacert",
            ca,
            "--json",
            "sign",
        ];
        agent
            .dct_env(
                &[&head[..], args].concat(),
                &[
                    ("DCT_REGISTRY_USERNAME", USER),
                    ("DCT_REGISTRY_PASSWORD", pass),
                ],
            )
            .json()["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["tag"].as_str().unwrap().into(),
                    t["digest"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let digests = sign_json(&[&image, &format!("{gun}:v2")]);
    let (d1, d2) = (
        format!("sha256:{}", hex(&Sha256::digest(&served))),
        format!("sha256:{}", hex(&Sha256::digest(&v2))),
    );
    assert_eq!(digests, [("v1".into(), d1), ("v2".into(), d2.clone())]);
    let mut rows = notary_list(&stack, &gun, &[]);
    rows.sort();
    assert_eq!(
        rows,
        vec![row("v1", &served, "targets"), row("v2", &v2, "targets")]
    );

    // A tag looked up in the registry and a listed one with its digest, in one stream: each
    // keeps its own digest in the answer and on the server.
    let listed = b"listed manifest".to_vec();
    let file = agent.dir.path().join("list.txt");
    std::fs::write(
        &file,
        format!(
            "{gun}:v9 sha256:{} {}\n",
            hex(&Sha256::digest(&listed)),
            listed.len()
        ),
    )
    .unwrap();
    let digests = sign_json(&[&format!("{gun}:v2"), "--from", file.to_str().unwrap()]);
    let d9 = format!("sha256:{}", hex(&Sha256::digest(&listed)));
    assert_eq!(digests, [("v2".into(), d2), ("v9".into(), d9)]);
    let mut rows = notary_list(&stack, &gun, &[]);
    rows.sort();
    assert_eq!(
        rows,
        vec![
            row("v1", &served, "targets"),
            row("v2", &v2, "targets"),
            row("v9", &listed, "targets")
        ]
    );
}

/// A TrustSignStream is checked as it comes: the request first and once, no tag in it,
/// pieces within their size, no tag twice across pieces; each refusal with its code, before
/// any server or registry is asked.
#[test]
fn a_streamed_tag_list_is_checked_as_it_comes() {
    use dct_proto::dct::v1::{TagTarget, TrustServer, TrustSignPiece, TrustSignRequest};
    let (_hsm, agent) = Agent::on_fresh_token("stream", "7777");
    let request = || TrustSignRequest {
        server: Some(TrustServer {
            // Never contacted: every stream below is refused before.
            url: "https://127.0.0.1:9".into(),
            ..Default::default()
        }),
        gun: "registry.example.com/app".into(),
        ..Default::default()
    };
    let tag = |name: &str| TagTarget {
        tag: name.into(),
        sha256: "ab".repeat(32),
        length: 1,
    };
    let first = |tags: Vec<TagTarget>| TrustSignPiece {
        request: Some(request()),
        tags,
        tags_total: 0,
    };
    let more = |tags: Vec<TagTarget>| TrustSignPiece {
        request: None,
        tags,
        tags_total: 0,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let send = |pieces: Vec<TrustSignPiece>| {
        rt.block_on(async {
            let mut c = connect(&agent.socket).await;
            c.trust_sign_stream(tonic::codegen::tokio_stream::iter(pieces))
                .await
                .unwrap_err()
        })
    };
    let cases: Vec<(Vec<TrustSignPiece>, tonic::Code, &str)> = vec![
        (vec![], tonic::Code::InvalidArgument, "carries the request"),
        (
            vec![more(vec![tag("a")])],
            tonic::Code::InvalidArgument,
            "first piece",
        ),
        (
            vec![TrustSignPiece {
                request: Some(TrustSignRequest {
                    tag: "a".into(),
                    ..request()
                }),
                tags: vec![],
                tags_total: 1,
            }],
            tonic::Code::InvalidArgument,
            "names no tag",
        ),
        (
            vec![TrustSignPiece {
                request: Some(TrustSignRequest {
                    sha256: "ab".repeat(32),
                    ..request()
                }),
                tags: vec![tag("a")],
                tags_total: 1,
            }],
            tonic::Code::InvalidArgument,
            "names no tag",
        ),
        (
            vec![first(vec![TagTarget {
                sha256: String::new(),
                ..tag("-bad")
            }])],
            tonic::Code::InvalidArgument,
            "-bad",
        ),
        (
            vec![first(vec![tag("a")]), first(vec![tag("b")])],
            tonic::Code::InvalidArgument,
            "only the first piece",
        ),
        (vec![first(vec![])], tonic::Code::InvalidArgument, "no tags"),
        (
            vec![
                first(vec![tag("a"), tag("b")]),
                more(vec![tag("c"), tag("a")]),
            ],
            tonic::Code::InvalidArgument,
            "\"a\" is given twice",
        ),
        (
            vec![first(vec![TagTarget {
                sha256: "zz".into(),
                ..tag("a")
            }])],
            tonic::Code::InvalidArgument,
            "not 64 hex",
        ),
        (
            vec![
                first(vec![]),
                more(
                    (0..=dct_proto::MAX_TAGS_PER_PIECE)
                        .map(|i| tag(&format!("t{i}")))
                        .collect(),
                ),
            ],
            tonic::Code::ResourceExhausted,
            "in one piece",
        ),
    ];
    for (pieces, code, says) in cases {
        let err = send(pieces);
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(says), "{says}: {err:?}");
    }
}

/// What the proxy saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// A request's head (request line and headers).
    Request(String),
    /// A response's status line.
    Response(String),
}

/// A recording HTTPS proxy on 127.0.0.1: it terminates TLS with the stack's leaf
/// certificate, writes down every request head and response status line, and passes the
/// bytes on over TLS to the registry on `upstream`. HTTP/1.1 only (it offers no ALPN).
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    fn start(stack: &NotaryStack, upstream: u16) -> Proxy {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let d = stack.dir.path();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(d.join("leaf.crt"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(d.join("leaf.key")).unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&stack.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, connector, log) = (acceptor.clone(), connector.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(down) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
                    let Ok(up) = connector.connect(name, up).await else {
                        return;
                    };
                    let _ = relay(down, up, log).await;
                });
            }
        });
        Proxy {
            port,
            seen,
            _rt: rt,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 message head: the lines up to the blank one. Empty at end of stream.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    use tokio::io::AsyncBufReadExt;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(head);
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Ok(head);
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Passes requests and responses between `down` (the agent) and `up` (the registry), one
/// exchange at a time, recording each head.
async fn relay<D, U>(down: D, up: U, log: Arc<Mutex<Vec<Seen>>>) -> std::io::Result<()>
where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut down = tokio::io::BufReader::new(down);
    let mut up = tokio::io::BufReader::new(up);
    loop {
        let req = read_head(&mut down).await?;
        if req.is_empty() {
            return Ok(());
        }
        log.lock().unwrap().push(Seen::Request(req.clone()));
        up.get_mut().write_all(req.as_bytes()).await?;
        let body: u64 = header(&req, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::io::copy(&mut (&mut down).take(body), up.get_mut()).await?;
        up.get_mut().flush().await?;
        let resp = read_head(&mut up).await?;
        if resp.is_empty() {
            return Ok(());
        }
        let status = resp.lines().next().unwrap_or_default().to_string();
        log.lock().unwrap().push(Seen::Response(status));
        down.get_mut().write_all(resp.as_bytes()).await?;
        assert!(
            header(&resp, "transfer-encoding").is_none(),
            "the test proxy passes only Content-Length bodies: {resp}"
        );
        let body: u64 = header(&resp, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::io::copy(&mut (&mut up).take(body), down.get_mut()).await?;
        down.get_mut().flush().await?;
    }
}

#[test]
fn credentials_go_to_the_registry_only_after_it_asks() {
    let stack = NotaryStack::start();
    let pass = "asked-for-pass";
    let registry = Registry::start_with_auth(&stack, USER, pass);
    let (_hsm, agent) = Agent::on_fresh_token("asked", "7777");
    let served = registry.push("team/asked", "v1", "asked v1");
    let upstream: u16 = registry
        .host
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap();
    let proxy = Proxy::start(&stack, upstream);
    // The agent reaches the registry through the proxy: the GUN names the proxy's port.
    let gun = format!("127.0.0.1:{}/team/asked", proxy.port);
    let out = sign_image(
        &agent,
        &stack,
        &format!("{gun}:v1"),
        &[
            ("DCT_REGISTRY_USERNAME", USER),
            ("DCT_REGISTRY_PASSWORD", pass),
        ],
    )
    .ok();
    assert!(
        out.stdout.contains(&hex(&Sha256::digest(&served))),
        "{}",
        out.stdout
    );

    let seen = proxy.seen();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{pass}"))
    );
    // Exactly: an anonymous GET, the registry's 401 Basic challenge, the GET with the
    // credentials, the manifest.
    assert_eq!(seen.len(), 4, "{seen:#?}");
    let Seen::Request(first) = &seen[0] else {
        panic!("{seen:#?}")
    };
    assert!(
        first.starts_with("GET /v2/team/asked/manifests/v1 "),
        "{first}"
    );
    assert_eq!(header(first, "authorization"), None, "{first}");
    assert_eq!(
        seen[1],
        Seen::Response("HTTP/1.1 401 Unauthorized".into()),
        "{seen:#?}"
    );
    let Seen::Request(second) = &seen[2] else {
        panic!("{seen:#?}")
    };
    assert!(
        second.starts_with("GET /v2/team/asked/manifests/v1 "),
        "{second}"
    );
    assert_eq!(header(second, "authorization"), Some(basic.as_str()));
    assert_eq!(
        seen[3],
        Seen::Response("HTTP/1.1 200 OK".into()),
        "{seen:#?}"
    );

    // A public image needs no credentials: with them at hand, none are sent.
    let open = Registry::start(&stack);
    let served = open.push("team/open", "v1", "open v1");
    let upstream: u16 = open
        .host
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap();
    let proxy = Proxy::start(&stack, upstream);
    let gun = format!("127.0.0.1:{}/team/open", proxy.port);
    sign_image(
        &agent,
        &stack,
        &format!("{gun}:v1"),
        &[
            ("DCT_REGISTRY_USERNAME", USER),
            ("DCT_REGISTRY_PASSWORD", pass),
        ],
    )
    .ok();
    let seen = proxy.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let Seen::Request(only) = &seen[0] else {
        panic!("{seen:#?}")
    };
    assert_eq!(header(only, "authorization"), None, "{only}");
    assert_eq!(seen[1], Seen::Response("HTTP/1.1 200 OK".into()));
    assert_eq!(
        notary_list(&stack, &gun, &[]),
        vec![row("v1", &served, "targets")]
    );
}

#[test]
fn the_registry_password_leaves_no_trace_in_the_agents_memory() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: reading another process's memory needs root");
        return;
    }
    let stack = NotaryStack::start();
    let pass = "Rg5-unique-registry-pass-9043";
    let registry = Registry::start_with_auth(&stack, USER, pass);
    let (_hsm, agent) = Agent::on_fresh_token("regmem", "7777");
    let served = registry.push("team/memory", "v1", "memory v1");
    let gun = format!("{}/team/memory", registry.host);
    let out = sign_image(
        &agent,
        &stack,
        &format!("{gun}:v1"),
        &[
            ("DCT_REGISTRY_USERNAME", USER),
            ("DCT_REGISTRY_PASSWORD", pass),
        ],
    )
    .ok();
    assert!(
        out.stdout.contains(&hex(&Sha256::digest(&served))),
        "{}",
        out.stdout
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = agent.pid();
    assert_eq!(
        dct_tests::memory_hits(pid, pass.as_bytes()),
        0,
        "the registry password is in the agent's memory"
    );
    // Nor the Basic header made of it.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{pass}"));
    assert_eq!(
        dct_tests::memory_hits(pid, basic.as_bytes()),
        0,
        "the registry credentials (base64) are in the agent's memory"
    );
    // The check itself can find things: the repository's name is there.
    assert!(dct_tests::memory_hits(pid, gun.as_bytes()) > 0);
}

/// The notary 0.7 fixture's targets key file and its passphrase.
fn targets_key_file() -> (PathBuf, &'static str) {
    let fixture = dct_tests::fixture_dir("notary-0.7");
    let key = std::fs::read_dir(fixture.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains("role: targets")
        })
        .expect("a targets key file");
    (key, "test-targets-passphrase")
}

fn import(agent: &Agent) -> dct_tests::Run {
    let (key, pass) = targets_key_file();
    agent.dct_env(
        &["key", "import", key.to_str().unwrap()],
        &[("NOTARY_TARGETS_PASSPHRASE", pass)],
    )
}

fn listed_keys(agent: &Agent) -> Vec<Value> {
    agent.dct(&["--json", "key", "list"]).json()["keys"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_key_import_is_audited() {
    let (_hsm, agent) = Agent::on_fresh_token("import", "7777");
    import(&agent).ok();
    let keys = listed_keys(&agent);
    assert_eq!(keys.len(), 1, "{keys:#?}");
    let id = keys[0]["key_id"].as_str().unwrap();
    let recs = records(&agent.audit_path());
    let imported: Vec<&Value> = recs
        .iter()
        .filter(|r| r["action"] == "import_key")
        .collect();
    assert_eq!(imported.len(), 1, "{recs:#?}");
    assert_eq!(imported[0]["key_id"], id);
    assert_eq!(imported[0]["role"], "targets");
    assert_eq!(imported[0]["gun"], keys[0]["gun"]);
    assert!(
        imported[0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("ok, token import"),
        "{recs:#?}"
    );
    agent.dct(&["audit", "verify"]).ok();
}

#[test]
fn no_key_is_imported_while_the_audit_log_cannot_be_written() {
    // A full disk (opening works, writing fails), then a log that cannot even be opened.
    let dir = tempfile::tempdir().unwrap();
    for (label, log) in [
        ("full", "/dev/full".to_string()),
        ("nolog", dir.path().display().to_string()),
    ] {
        let hsm = SoftHsm::new(label, "2468");
        let config = format!("audit_log = {log:?}\n{}", hsm.agent_config());
        let agent = Agent::start_with_config(Some(&hsm), &config);
        agent.unlock(&hsm);
        let err = import(&agent).fails(1, "audit log");
        assert!(err.contains("nothing is imported"), "{label}: {err}");
        assert_eq!(listed_keys(&agent), Vec::<Value>::new(), "{label}");
    }
}

/// A tmpfs of `size` bytes at `at`, unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: usize) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}")])
            .arg("tmpfs")
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn an_import_whose_record_fails_is_taken_off_the_token_again() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: mounting a small file system needs root");
        return;
    }
    // The audit log on a small file system that fills up after the agent has started (so
    // the log still looks healthy when the import begins).
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("small"), 64 * 1024) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let log = fs.0.join("audit.log");
    let hsm = SoftHsm::new("rollback", "2468");
    let config = format!(
        "audit_log = {:?}\n{}",
        log.display().to_string(),
        hsm.agent_config()
    );
    let agent = Agent::start_with_config(Some(&hsm), &config);
    agent.unlock(&hsm);
    // The import's record (well over 200 bytes) must need a fresh page of the file system:
    // add lock/unlock records until fewer than 200 bytes are left in the log's last page.
    let page = 4096;
    let mut rounds = 0;
    while page - std::fs::metadata(&log).unwrap().len() as usize % page > 200 {
        agent.dct(&["lock"]).ok();
        agent.unlock(&hsm);
        rounds += 1;
        assert!(rounds < 100, "the log never came near a page boundary");
    }
    // Fill the file system.
    let mut filler = std::fs::File::create(fs.0.join("filler")).unwrap();
    let chunk = vec![0u8; page];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    let status = agent.dct(&["--json", "status"]).json();
    assert!(
        status["audit"]["error"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{status}"
    );

    let err = import(&agent).fails(1, "audit log");
    assert!(err.contains("No space left"), "{err}");
    // The key was on the token for a moment; unrecorded, it is gone again.
    assert_eq!(listed_keys(&agent), Vec::<Value>::new());
    assert!(
        agent.log_text().contains("key removed again"),
        "{}",
        agent.log_text()
    );
    drop(agent);
    drop(fs);
}
