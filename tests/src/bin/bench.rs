//! Signing benchmark: the floor (in-process PKCS#11 on SoftHSM2, one session, the way the
//! agent signs) against the agent's own API over its Unix socket, at several
//! concurrencies. Every figure is the median of several runs; sample signatures are
//! verified so the numbers are honest. Prints a table and writes BENCHMARKS.md.
//!
//! Run: `softhsm/install-deps.sh && cargo build --release --workspace --bins && target/release/bench`

use std::path::Path;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use dct_proto::dct::v1 as pb;
use dct_proto::dct::v1::agent_client::AgentClient;
use dct_tests::{Agent, SoftHsm, SOFTHSM_MODULE};
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

const GUN: &str = "bench.example.com/app";

/// What was measured, signatures/s, and (p50, p99) latency where per-request.
type Row = (String, f64, Option<(Duration, Duration)>);
const RUNS: usize = 5;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let per_run = if quick { 500 } else { 4000 };
    let hsm = SoftHsm::new("bench", "bench-pin-1234");
    let agent = Agent::start(Some(&hsm));
    agent.unlock(&hsm);
    let key_id = agent.generate("targets", Some(GUN));
    let keys = agent.dct(&["--json", "key", "list"]).json();
    let spki = {
        use base64::Engine as _;
        let b64 = keys["keys"][0]["tuf_key"]["keyval"]["public"]
            .as_str()
            .expect("public key");
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64")
    };
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).expect("P-256 key");

    let mut rows: Vec<Row> = Vec::new();
    let floor = median((0..RUNS).map(|_| floor_run(&hsm, &vk, per_run)).collect());
    rows.push(("in-process PKCS#11, 1 session (floor)".into(), floor, None));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for c in [1usize, 4, 16, 64] {
        let results: Vec<(f64, Duration, Duration)> = (0..RUNS)
            .map(|_| rt.block_on(agent_run(&agent.socket, &key_id, &vk, c, per_run)))
            .collect();
        let rate = median(results.iter().map(|r| r.0).collect());
        let p50 = results.iter().map(|r| r.1).collect::<Vec<_>>();
        let p99 = results.iter().map(|r| r.2).collect::<Vec<_>>();
        rows.push((
            format!("dct-agent API over the socket, concurrency {c}"),
            rate,
            Some((median_d(p50), median_d(p99))),
        ));
    }

    let machine = machine();
    let mut table = String::new();
    table.push_str("| what | signatures/s | vs floor | p50 | p99 |\n|---|---:|---:|---:|---:|\n");
    for (what, rate, lat) in &rows {
        let (p50, p99) = match lat {
            Some((a, b)) => (
                format!("{:.0} µs", a.as_secs_f64() * 1e6),
                format!("{:.0} µs", b.as_secs_f64() * 1e6),
            ),
            None => ("-".into(), "-".into()),
        };
        table.push_str(&format!(
            "| {what} | {rate:.0} | {:.2} | {p50} | {p99} |\n",
            rate / floor
        ));
    }
    let report = format!(
        "# Benchmarks\n\nSigning a small Notary targets document (ECDSA P-256 on SoftHSM2). Each figure is the \
median of {RUNS} runs of {per_run} signatures; sample signatures of every run are verified.\n\n\
- machine: {machine}\n- date: {}\n- command: `cargo build --release --workspace --bins && target/release/bench{}`\n\n{table}\n\
The agent path includes a gRPC client, the Unix socket, parsing and checking the \
document, canonical JSON, the token worker thread and PKCS#11. Comparisons with the real \
notary-signer and the notary client are still to come (issue 7).\n",
        now_utc(),
        if quick { " --quick" } else { "" }
    );
    println!("{report}");
    std::fs::write("BENCHMARKS.md", &report).expect("write BENCHMARKS.md");
    eprintln!("wrote BENCHMARKS.md");
}

/// Signs `n` digests in-process, the way the agent's token worker does: one session,
/// logged in, the key handle found once, CKM_ECDSA over a host-side SHA-256.
fn floor_run(hsm: &SoftHsm, vk: &p256::ecdsa::VerifyingKey, n: usize) -> f64 {
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let ctx = Pkcs11::new(SOFTHSM_MODULE).expect("load SoftHSM2");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("initialize");
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|t| t.label().trim_end() == hsm.label)
                .unwrap_or(false)
        })
        .expect("bench token");
    let session = ctx.open_rw_session(slot).expect("session");
    let _ = session.login(UserType::User, Some(&hsm.pin.clone().into()));
    let label = format!("dct:targets:{GUN}").into_bytes();
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label),
        ])
        .expect("find")[0];
    let digests: Vec<[u8; 32]> = (0..n)
        .map(|i| Sha256::digest(format!("doc {i}")).into())
        .collect();
    let start = Instant::now();
    let mut sample = Vec::new();
    for (i, d) in digests.iter().enumerate() {
        let sig = session.sign(&Mechanism::Ecdsa, key, d).expect("sign");
        if i % (n / 4).max(1) == 0 {
            sample.push((i, sig));
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    for (i, sig) in sample {
        let sig = p256::ecdsa::Signature::from_slice(&sig).expect("r||s");
        vk.verify_prehash(&digests[i], &sig)
            .expect("floor signature verifies");
    }
    drop(session);
    ctx.finalize().ok();
    rate
}

async fn connect(socket: &Path) -> AgentClient<Channel> {
    let p = socket.to_path_buf();
    let channel = Endpoint::try_from("http://dct-agent.invalid")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move { tokio::net::UnixStream::connect(p).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect to the agent");
    AgentClient::new(channel)
}

fn document(i: usize) -> Vec<u8> {
    format!(
        "{{\"signed\":{{\"_type\":\"Targets\",\"delegations\":{{\"keys\":{{}},\"roles\":[]}},\"expires\":\"2030-01-01T00:00:00Z\",\
\"targets\":{{\"v{i}\":{{\"hashes\":{{\"sha256\":\"pLuirsl/lQcfqbn2EulmqJ/AcMyu0m8wdDwymr/Zj9w=\"}},\"length\":16}}}},\"version\":{}}},\"signatures\":[]}}",
        i + 1
    )
    .into_bytes()
}

/// `n` SignMetadata requests from `c` concurrent clients: (signatures/s, p50, p99).
async fn agent_run(
    socket: &Path,
    key_id: &str,
    vk: &p256::ecdsa::VerifyingKey,
    c: usize,
    n: usize,
) -> (f64, Duration, Duration) {
    let per = n / c;
    let mut clients = Vec::new();
    for _ in 0..c {
        clients.push(connect(socket).await);
    }
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(t, mut client)| {
            let key_id = key_id.to_string();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                let mut sample = None;
                for i in 0..per {
                    let doc = document(t * per + i);
                    let req = pb::SignMetadataRequest {
                        document: doc,
                        key_id: key_id.clone(),
                        role: String::new(),
                        gun: String::new(),
                    };
                    let t0 = Instant::now();
                    let resp = client.sign_metadata(req).await.expect("sign").into_inner();
                    lat.push(t0.elapsed());
                    if i == 0 {
                        sample = Some(resp.document);
                    }
                }
                (lat, sample)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    let mut samples = Vec::new();
    for t in tasks {
        let (lat, sample) = t.await.expect("task");
        all.extend(lat);
        samples.extend(sample);
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    for doc in samples {
        verify_doc(&doc, vk);
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (rate, pct(0.50), pct(0.99))
}

/// The signature over the canonical `signed` bytes (ours are written canonically).
fn verify_doc(doc: &[u8], vk: &p256::ecdsa::VerifyingKey) {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_slice(doc).expect("JSON");
    let start = b"{\"signed\":".len();
    let end = doc
        .windows(14)
        .rposition(|w| w == b",\"signatures\":")
        .expect("envelope");
    let sig = base64::engine::general_purpose::STANDARD
        .decode(v["signatures"][0]["sig"].as_str().expect("sig"))
        .expect("b64");
    let sig = p256::ecdsa::Signature::from_slice(&sig).expect("r||s");
    vk.verify_prehash(&Sha256::digest(&doc[start..end]), &sig)
        .expect("agent signature verifies");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn median_d(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

fn now_utc() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
