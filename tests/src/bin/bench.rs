//! Signing benchmark, everything measured in one run on one machine:
//! - the floor: in-process PKCS#11 on SoftHSM2 (one session, the key handle found once);
//! - the agent's own API over its Unix socket, one request per signature and batched;
//! - notary-signer's gRPC API (mutual TLS), driven by one load generator with the traffic
//!   notary-server sends (one timestamp key per repository made by CreateKey, each
//!   repository's versions counting up, repositories in parallel, the default policy, the
//!   audit log on the agent's disk): the agent with keys on SoftHSM2, the agent with keys in
//!   software (Notary key files), and the real notary-signer (Debian, memory storage,
//!   logging at error); rate, p50/p99/slowest, CPU per signature and the share of the
//!   token's threads and of the audit writer;
//! - end to end against a local notary-server: `dct trust sign` vs `notary add` +
//!   `notary publish` for 1 and 1,000 tags, and a 100,000-tag targets role with peak memory;
//! - a YubiKey (the virtual PIV card behind a real pcscd): the `yubikey` crate in-process
//!   (the floor), Yubico's PKCS#11 module in-process, and the agent over PIV and over ykcs11.
//!
//! - migration: `dct migrate` of 1,000 DCT-signed tags to cosign and to Notation, each in
//!   one run, against the real cosign and notation signing each tag through the plugins
//!   (same agent, key, registry), with the registry on this machine and behind a proxy
//!   that makes it a 10 ms round trip away (`DCT_BENCH_OURS_ONLY=1`: dct migrate alone).
//!
//! Every signing figure is the median of several runs; sample signatures of every run are
//! verified so the numbers are honest. Prints a table and (a full run) writes BENCHMARKS.md.
//!
//! Run: `softhsm/install-deps.sh && cargo build --release --workspace --bins && target/release/bench`
//! (`--only agent|signer|signer-hsm|signer-file|signer-real|piv|authz|migrate|e2e` to run
//! some sections; `DCT_BENCH_C=16,64`, `DCT_BENCH_N=40000`, `DCT_BENCH_SESSIONS=1` for
//! profiling runs).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use dct_proto::dct::v1 as pb;
use dct_proto::dct::v1::agent_client::AgentClient;
use dct_proto::notary as notary_pb;
use dct_tests::notary::{self, NotaryStack, SignerAt};
use dct_tests::{hex, signer_client, Agent, SoftHsm, SOFTHSM_MODULE};
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

const GUN: &str = "bench.example.com/app";

/// What was measured, signatures/s, latency where per-request, and the agent's CPU time per
/// signature where it was measured.
type Row = (String, f64, Option<Lat>, Option<Cpu>);

/// Latency per call: median, 99th percentile, slowest.
#[derive(Clone, Copy)]
struct Lat {
    p50: Duration,
    p99: Duration,
    max: Duration,
}
const RUNS: usize = 5;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only agent|signer|e2e` (repeatable) runs some sections, for profiling.
    let args: Vec<String> = std::env::args().collect();
    let only: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--only")
        .map(|w| w[1].as_str())
        .collect();
    let run = |section: &str| only.is_empty() || only.contains(&section);
    // `DCT_BENCH_N`: signatures per run (for profiling runs long enough to sample).
    let per_run = std::env::var("DCT_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 500 } else { 4000 });
    // `DCT_BENCH_C=16` (comma-separated) runs those concurrencies only, for profiling.
    let only_c: Vec<usize> = std::env::var("DCT_BENCH_C")
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_default();
    let concurrencies: Vec<usize> = [1usize, 4, 16, 64]
        .into_iter()
        .filter(|c| only_c.is_empty() || only_c.contains(c))
        .collect();
    let hsm = SoftHsm::new("bench", "bench-pin-1234");
    let agent = Agent::start_with_config(
        Some(&hsm),
        &format!(
            "{}{}{LOAD_TEST_POLICY}",
            hsm.agent_config(),
            bench_sessions()
        ),
    );
    agent.unlock(&hsm);
    let key_id = agent.generate("targets", Some(GUN));
    let vk = agent_key(&agent, 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut rows: Vec<Row> = Vec::new();
    eprintln!("floor ...");
    let floor = median((0..RUNS).map(|_| floor_run(&hsm, &vk, per_run)).collect());
    rows.push((
        "in-process PKCS#11 on SoftHSM2, 1 session (floor)".into(),
        floor,
        None,
        None,
    ));

    eprintln!("agent API ...");
    for &c in concurrencies.iter().filter(|_| run("agent")) {
        let r = repeat_cpu(|| rt.block_on(agent_run(&agent, &key_id, &vk, c, per_run, 1)));
        rows.push((
            format!("dct-agent API, 1 document per request, concurrency {c}"),
            r.0,
            Some(r.1),
            Some(r.2),
        ));
    }
    for &c in concurrencies.iter().filter(|_| run("agent")) {
        let r = repeat_cpu(|| rt.block_on(agent_run(&agent, &key_id, &vk, c, per_run, BATCH)));
        rows.push((
            format!("dct-agent API, batches of {BATCH}, concurrency {c}"),
            r.0,
            Some(r.1),
            Some(r.2),
        ));
    }
    drop(agent);

    // notary-signer's API: the same load generator against three signers, with the traffic
    // notary-server sends: one timestamp key per repository (CreateKey per GUN), each
    // repository's versions counting up, many repositories in parallel, default policy.
    let mut signer_rows = Vec::new();
    let mut measure = |what: &str, port: u16, pid: u32, pki: &Path| {
        eprintln!("notary-signer API: {what} ...");
        for &c in &concurrencies {
            let repos = rt.block_on(create_keys(port, pki, c));
            let mut run_no = 0;
            let r = repeat_cpu(|| {
                run_no += 1;
                rt.block_on(signer_run(pid, &repos, run_no - 1, per_run))
            });
            signer_rows.push((format!("{what}, concurrency {c}"), r.0, Some(r.1), r.2));
        }
    };
    if run("signer") || run("signer-hsm") {
        let pki = notary::pki();
        let hsm = SoftHsm::new("bench-signer", "bench-pin-1234");
        let (agent, port) = signer_agent(&hsm, pki.path(), None);
        measure("dct-agent, keys on SoftHSM2", port, agent.pid(), pki.path());
    }
    if run("signer") || run("signer-file") {
        let hsm = SoftHsm::new("bench-signer", "bench-pin-1234");
        let pki = notary::pki();
        let keydir = tempfile::tempdir().expect("tempdir");
        let (agent, port) = signer_agent(&hsm, pki.path(), Some(keydir.path()));
        measure(
            "dct-agent, keys in software (key files)",
            port,
            agent.pid(),
            pki.path(),
        );
    }
    let stack = NotaryStack::start_logging(notary::pki(), true, SignerAt::Real, "error");
    if run("signer") || run("signer-real") {
        let port = stack.signer_port.expect("real signer");
        let pid = stack.signer_pid().expect("real signer");
        measure(
            "real notary-signer (keys in memory)",
            port,
            pid,
            stack.dir.path(),
        );
    }

    let piv = if run("piv") {
        eprintln!("YubiKey (virtual PIV card) ...");
        piv_section(&rt, quick)
    } else {
        "(not run)\n".into()
    };

    eprintln!("dockerd with and without dct-authz ...");
    let authz = if run("authz") {
        authz_overhead(quick)
    } else {
        "(not run)\n".into()
    };
    eprintln!("migration to cosign ...");
    let migrate = if run("migrate") {
        migration(&stack, quick)
    } else {
        "(not run)\n".into()
    };
    eprintln!("end to end ...");
    let e2e = if run("e2e") {
        end_to_end(&stack, quick)
    } else {
        "(not run)\n".into()
    };

    let machine = machine();
    let mut table = String::new();
    table.push_str("| what | signatures/s | vs floor | p50 | p99 | agent CPU per signature (token threads, audit thread) |\n|---|---:|---:|---:|---:|---:|\n");
    for (what, rate, lat, cpu) in &rows {
        let line = row_line(what, *rate, floor, lat);
        table.push_str(&format!("{} {} |\n", line.trim_end(), cpu_cell(cpu)));
    }
    let real = |c: usize| {
        signer_rows
            .iter()
            .find(|r| r.0 == format!("real notary-signer (keys in memory), concurrency {c}"))
            .map(|r| r.1)
            .unwrap_or(f64::NAN)
    };
    let mut stable = String::new();
    stable.push_str("| signer, concurrency | signatures/s | vs real notary-signer | p50 | p99 | slowest | server CPU per signature (token threads, audit thread) |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (what, rate, lat, cpu) in &signer_rows {
        let c: usize = what
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let line = row_line(what, *rate, real(c), lat);
        let slowest = lat
            .map(|l| format!("{:.1} ms", l.max.as_secs_f64() * 1e3))
            .unwrap_or_default();
        stable.push_str(&format!(
            "{} {slowest} | {} |\n",
            line.trim_end(),
            cpu_cell(&Some(*cpu))
        ));
    }
    let report = format!(
        "# Benchmarks\n\n\
- machine: {machine}\n- date: {}\n- command: `cargo build --release --workspace --bins && target/release/bench{}`\n\n\
## Signing a small document\n\nECDSA P-256. Each figure is the median of {RUNS} runs of {per_run} signatures; sample \
signatures of every run are verified. The load generator runs on the same cores.\n\n{table}\n\
The agent's API path includes the gRPC client, the Unix socket, parsing and checking the document, canonical \
JSON, the hop to a signing thread and PKCS#11; the agent signs on a pool of sessions (two on this machine), \
the floor on one.\n\n\
## notary-signer's API (mutual TLS over TCP), one load generator for all three\n\n{stable}\n\
## End to end against a local notary-server (real notary-signer)\n\n{e2e}\n\
## A YubiKey: the virtual PIV card (tests/src/piv_card) behind a real pcscd\n\n{piv}\n\
## dockerd with dct-authz (engine enforcement): requests it does not judge\n\n{authz}\n\
## Carrying a DCT repository across: `dct migrate` against `cosign sign` / `notation sign` per tag\n\n{migrate}\n",
        now_utc(),
        if quick { " --quick" } else { "" }
    );
    println!("{report}");
    // A run of some sections (`--only`) would replace the file's other sections with "(not
    // run)": it only prints.
    if only.is_empty() {
        std::fs::write("BENCHMARKS.md", &report).expect("write BENCHMARKS.md");
        eprintln!("wrote BENCHMARKS.md");
    } else {
        eprintln!("--only: BENCHMARKS.md left as it was");
    }
}

/// Concurrent clients sign versions out of order: the benchmark's keys skip the
/// never-go-back version check (everything else in the policy stays on).
const LOAD_TEST_POLICY: &str = "\n[[policy]]\nrole = \"targets\"\ncheck_versions = false\n\n[[policy]]\nrole = \"timestamp\"\ncheck_versions = false\n";

/// Documents per SignMetadataBatch call.
const BATCH: usize = 64;

/// The median rate, the median p50/p99 and the server's median CPU per signature of
/// [`RUNS`] runs. Each run is also printed on stderr (`run: ...`), for paired comparisons.
fn repeat_cpu(mut f: impl FnMut() -> (f64, Lat, Cpu)) -> (f64, Lat, Cpu) {
    let results: Vec<_> = (0..RUNS)
        .map(|_| {
            let r = f();
            eprintln!(
                "run: {:.0} signatures/s, p50 {:.0} µs, p99 {:.0} µs, max {:.1} ms, CPU {:.1} µs/signature ({:.1} µs signing threads, {:.1} µs audit)",
                r.0,
                r.1.p50.as_secs_f64() * 1e6,
                r.1.p99.as_secs_f64() * 1e6,
                r.1.max.as_secs_f64() * 1e3,
                r.2.total_us,
                r.2.token_us,
                r.2.audit_us,
            );
            r
        })
        .collect();
    let rate = median(results.iter().map(|r| r.0).collect());
    let lat = Lat {
        p50: median_d(results.iter().map(|r| r.1.p50).collect()),
        p99: median_d(results.iter().map(|r| r.1.p99).collect()),
        max: median_d(results.iter().map(|r| r.1.max).collect()),
    };
    let cpu = Cpu {
        total_us: median(results.iter().map(|r| r.2.total_us).collect()),
        token_us: median(results.iter().map(|r| r.2.token_us).collect()),
        audit_us: median(results.iter().map(|r| r.2.audit_us).collect()),
    };
    (rate, lat, cpu)
}

/// A server's CPU time per signature: all its threads, and its signing threads.
#[derive(Default, Clone, Copy)]
struct Cpu {
    total_us: f64,
    token_us: f64,
    /// The audit writer thread's.
    audit_us: f64,
}

impl Cpu {
    /// From two [`cpu_ns`] readings around `signatures` signatures.
    fn per_signature(after: (u64, u64, u64), before: (u64, u64, u64), signatures: usize) -> Cpu {
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e3 / signatures.max(1) as f64;
        Cpu {
            total_us: per(after.0, before.0),
            token_us: per(after.1, before.1),
            audit_us: per(after.2, before.2),
        }
    }
}

/// A table cell: CPU per signature, and the signing threads' share in brackets.
fn cpu_cell(cpu: &Option<Cpu>) -> String {
    match cpu {
        Some(c) if c.audit_us > 0.0 => format!(
            "{:.0} µs ({:.0} µs, {:.0} µs)",
            c.total_us, c.token_us, c.audit_us
        ),
        Some(c) if c.token_us > 0.0 => format!("{:.0} µs ({:.0} µs)", c.total_us, c.token_us),
        Some(c) => format!("{:.0} µs", c.total_us),
        None => "-".into(),
    }
}

/// CPU time of every thread of `pid` so far, in ns: (all, threads named sign-* / token-*,
/// the thread named audit).
fn cpu_ns(pid: u32) -> (u64, u64, u64) {
    let mut all = 0;
    let mut token = 0;
    let mut audit = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0, 0);
    };
    for t in tasks.flatten() {
        let ns: u64 = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        all += ns;
        if comm.starts_with("sign-") || comm.starts_with("token-") {
            token += ns;
        }
        if comm.trim_end() == "audit" {
            audit += ns;
        }
    }
    (all, token, audit)
}

fn row_line(what: &str, rate: f64, base: f64, lat: &Option<Lat>) -> String {
    let (p50, p99) = match lat {
        Some(l) => (
            format!("{:.0} µs", l.p50.as_secs_f64() * 1e6),
            format!("{:.0} µs", l.p99.as_secs_f64() * 1e6),
        ),
        None => ("-".into(), "-".into()),
    };
    format!(
        "| {what} | {rate:.0} | {:.2} | {p50} | {p99} |\n",
        rate / base
    )
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
        "{{\"signed\":{{\"_type\":\"Targets\",\"delegations\":{{\"keys\":{{}},\"roles\":[]}},\"expires\":\"{}\",\
\"targets\":{{\"v{i}\":{{\"hashes\":{{\"sha256\":\"pLuirsl/lQcfqbn2EulmqJ/AcMyu0m8wdDwymr/Zj9w=\"}},\"length\":16}}}},\"version\":{}}},\"signatures\":[]}}",
        dct_tests::expires_in(300),
        i + 1
    )
    .into_bytes()
}

/// Runs `n` signatures from `c` concurrent clients, each call made by `op(client, i)` and
/// returning how many signatures it made and one signed output to verify.
/// (signatures/s, latency per call, samples).
async fn drive<C, F, Fut>(
    clients: Vec<C>,
    n: usize,
    per_call: usize,
    op: F,
) -> (f64, Lat, Vec<Vec<u8>>)
where
    C: Clone + Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send,
{
    let calls = (n / per_call / clients.len()).max(1);
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(t, client)| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(calls);
                let mut sample = None;
                for i in 0..calls {
                    let t0 = Instant::now();
                    let out = op(client.clone(), (t * calls + i) * per_call).await;
                    lat.push(t0.elapsed());
                    if i == 0 {
                        sample = Some(out);
                    }
                }
                (lat, sample)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut samples = Vec::new();
    for t in tasks {
        let (lat, sample) = t.await.expect("task");
        all.extend(lat);
        samples.extend(sample);
    }
    let rate = (all.len() * per_call) as f64 / start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    let lat = Lat {
        p50: pct(0.50),
        p99: pct(0.99),
        max: all[all.len() - 1],
    };
    (rate, lat, samples)
}

/// The agent's API: `n` documents signed by `c` clients, `batch` documents per call.
async fn agent_run(
    agent: &Agent,
    key_id: &str,
    vk: &p256::ecdsa::VerifyingKey,
    c: usize,
    n: usize,
    batch: usize,
) -> (f64, Lat, Cpu) {
    let mut clients = Vec::new();
    for _ in 0..c {
        clients.push(connect(&agent.socket).await);
    }
    let key_id = key_id.to_string();
    let before = cpu_ns(agent.pid());
    let calls = (n / batch / c).max(1);
    let signatures = calls * c * batch;
    let (rate, lat, samples) = drive(clients, n, batch, move |mut client, first| {
        let key_id = key_id.clone();
        async move {
            let req = |i: usize| pb::SignMetadataRequest {
                document: document(i),
                key_id: key_id.clone(),
                role: String::new(),
                gun: String::new(),
                confirm_ticket: String::new(),
                previous: Vec::new(),
            };
            if batch == 1 {
                let resp = client.sign_metadata(req(first)).await.expect("sign");
                return resp.into_inner().document;
            }
            let requests = (first..first + batch).map(req).collect();
            let resp = client
                .sign_metadata_batch(pb::SignMetadataBatchRequest { requests })
                .await
                .expect("sign batch")
                .into_inner();
            assert_eq!(resp.results.len(), batch);
            let mut docs = resp.results.into_iter().map(|r| match r.result {
                Some(pb::sign_metadata_result::Result::Signed(s)) => s.document,
                other => panic!("batch item not signed: {other:?}"),
            });
            let last = docs.next_back().expect("a result");
            docs.for_each(drop);
            last
        }
    })
    .await;
    let after = cpu_ns(agent.pid());
    for doc in samples {
        verify_doc(&doc, vk);
    }
    (rate, lat, Cpu::per_signature(after, before, signatures))
}

/// `DCT_BENCH_SESSIONS=n`: the token's signing sessions, as a line of its `[[pkcs11]]` table
/// (default: none, the agent's own choice).
fn bench_sessions() -> String {
    std::env::var("DCT_BENCH_SESSIONS")
        .map(|n| format!("sessions = {n}\n"))
        .unwrap_or_default()
}

/// An agent on `hsm` serving notary-signer's API with the certificates in `pki`; its keys
/// on the SoftHSM2 token, or in Notary key files in `keydir`.
fn signer_agent(hsm: &SoftHsm, pki: &Path, keydir: Option<&Path>) -> (Agent, u16) {
    let port = notary::free_port();
    let p = |f: &str| pki.join(f).display().to_string();
    let sessions = bench_sessions();
    let (tokens, token) = match keydir {
        None => (
            format!("{}{sessions}", hsm.agent_config()),
            hsm.label.clone(),
        ),
        Some(d) => (
            format!("[[file]]\ndir = {:?}\n", d.display().to_string()),
            format!("file:{}", d.display()),
        ),
    };
    // The default policy: every version check on (each repository's key signs its own
    // versions in order, as notary-server's are).
    let config = format!(
        "{tokens}\n[notary_signer]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = {:?}\ntls_key = {:?}\nclient_ca = {:?}\ntoken = {token:?}\n",
        p("leaf.crt"),
        p("leaf.key"),
        p("ca.crt"),
    );
    let agent = Agent::start_with_config(Some(hsm), &config);
    let pin = agent.dir.path().join("bench-pin");
    std::fs::write(&pin, &hsm.pin).expect("pin file");
    agent
        .dct(&[
            "unlock",
            "--token",
            &token,
            "--pin-file",
            pin.to_str().expect("utf-8"),
        ])
        .ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "agent did not listen: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (agent, port)
}

/// One repository as notary-server keeps it on its signer: a GUN, its timestamp key (ID and
/// verifying key) and a connection (one per repository, so `c` repositories are `c` clients).
#[derive(Clone)]
struct Repo {
    key_id: String,
    vk: p256::ecdsa::VerifyingKey,
    client: dct_proto::notary::signer_client::SignerClient<Channel>,
    /// Its place among the clients, to find its versions from the load generator's index.
    index: usize,
}

/// Makes `c` repositories' timestamp keys through the API (CreateKey per GUN).
async fn create_keys(port: u16, pki: &Path, c: usize) -> Vec<Repo> {
    let mut repos = Vec::with_capacity(c);
    for index in 0..c {
        let ch = signer_client::channel(port, pki, true).await.expect("mTLS");
        let (mut km, client) = signer_client::clients(ch);
        let k = km
            .create_key(notary_pb::CreateKeyRequest {
                algorithm: "ecdsa".into(),
                gun: format!("bench.example.com/c{c}/repo-{index}"),
                role: "timestamp".into(),
            })
            .await
            .expect("create key")
            .into_inner();
        let key_id = k.key_info.and_then(|i| i.key_id).expect("key id").id;
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&k.public_key).expect("P-256");
        repos.push(Repo {
            key_id,
            vk,
            client,
            index,
        });
    }
    repos
}

/// A timestamp's `signed` part at `version`, what notary-server asks its signer to sign.
fn timestamp(version: usize) -> Vec<u8> {
    format!(
        "{{\"_type\":\"Timestamp\",\"expires\":\"{}\",\"meta\":{{\"snapshot\":{{\"hashes\":{{\"sha256\":\"pLuirsl/lQcfqbn2EulmqJ/AcMyu0m8wdDwymr/Zj9w=\"}},\"length\":{}}}}},\"version\":{version}}}",
        dct_tests::expires_in(14),
        400 + version % 100,
    )
    .into_bytes()
}

/// notary-signer's Sign, run `run` of several: `n` timestamps over `repos` in parallel, each
/// repository's versions counting up from where its previous run stopped.
async fn signer_run(pid: u32, repos: &[Repo], run: usize, n: usize) -> (f64, Lat, Cpu) {
    let c = repos.len();
    let calls = (n / c).max(1);
    let before = cpu_ns(pid);
    let signatures = calls * c;
    let (rate, lat, samples) = drive(repos.to_vec(), n, 1, move |mut repo, i| async move {
        // drive() numbers client t's calls t*calls .. t*calls + calls - 1.
        let version = run * calls + (i - repo.index * calls) + 1;
        let content = timestamp(version);
        let sig = repo
            .client
            .sign(notary_pb::SignatureRequest {
                key_id: Some(notary_pb::KeyId {
                    id: repo.key_id.clone(),
                }),
                content: content.clone(),
            })
            .await
            .expect("sign")
            .into_inner()
            .content;
        // Sample = repository index (2 bytes) || signature || content, checked below.
        let mut out = (repo.index as u16).to_be_bytes().to_vec();
        out.extend(sig);
        out.extend(content);
        out
    })
    .await;
    let after = cpu_ns(pid);
    for s in samples {
        use p256::ecdsa::signature::Verifier;
        let repo = &repos[u16::from_be_bytes([s[0], s[1]]) as usize];
        let sig = p256::ecdsa::Signature::from_slice(&s[2..66]).expect("raw r||s");
        repo.vk
            .verify(&s[66..], &sig)
            .expect("notary-signer API signature verifies");
    }
    (rate, lat, Cpu::per_signature(after, before, signatures))
}

/// Wall time of a command; with `peak`, also its peak resident memory (VmHWM, polled).
fn timed(cmd: &mut Command) -> (Duration, Option<u64>) {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // Drained as it comes: a command that writes more than a pipe holds (dct migrate's
    // progress) would otherwise block until killed.
    let drain = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut err = String::new();
            let _ = e.read_to_string(&mut err);
            err
        })
    });
    let mut peak = None;
    let status = loop {
        if let Some(kb) = vm_hwm_kib(pid) {
            peak = Some(kb);
        }
        match child.try_wait().expect("wait") {
            Some(st) => break st,
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let took = t0.elapsed();
    let err = drain.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        panic!("{cmd:?} failed: {err}");
    }
    (took, peak)
}

/// Peak resident memory of a live process, KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn tag_list(gun: &str, prefix: &str, n: usize) -> String {
    let mut s = String::with_capacity(n * 120);
    for i in 0..n {
        let content = format!("{prefix} manifest {i}\n");
        let d: String = Sha256::digest(content.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        s.push_str(&format!("{gun}:{prefix}{i} sha256:{d} {}\n", content.len()));
    }
    s
}

/// `dct trust sign` against `notary add` + `notary publish`, and a 100,000-tag targets.
fn end_to_end(stack: &NotaryStack, quick: bool) -> String {
    let many = if quick { 100 } else { 1000 };
    let huge = if quick { 10_000 } else { 100_000 };
    let hsm = SoftHsm::new("bench-e2e", "bench-pin-1234");
    let agent = Agent::start(Some(&hsm));
    agent.unlock(&hsm);
    let ca = stack.ca.to_str().expect("utf-8").to_string();
    let dct = |args: &[&str]| {
        let mut c = Command::new(dct_tests::bin("dct"));
        c.env("DCT_SOCKET", &agent.socket)
            .args(["trust", "--server", &stack.url, "--tlscacert", &ca])
            .args(args);
        c
    };
    let work = tempfile::tempdir().expect("tempdir");
    let notary_dir = work.path().join("notary");
    let notary = |args: &[&str]| {
        let mut c = Command::new("notary");
        c.args(["-s", &stack.url, "--tlscacert", &ca, "-d"])
            .arg(&notary_dir)
            .args(args)
            .env("PCSCLITE_CSOCK_NAME", "/nonexistent/dct-bench")
            .env("NOTARY_ROOT_PASSPHRASE", "bench-root-passphrase")
            .env("NOTARY_TARGETS_PASSPHRASE", "bench-targets-passphrase")
            .env("NOTARY_SNAPSHOT_PASSPHRASE", "bench-snapshot-passphrase");
        c
    };
    let (ours, theirs) = ("bench.example.com/dct", "bench.example.com/notary");
    timed(&mut dct(&["init", ours]));
    timed(&mut notary(&["init", theirs]));
    timed(&mut notary(&["publish", theirs]));
    let file = work.path().join("content");
    std::fs::write(&file, b"one manifest\n").expect("write");
    let file = file.to_str().expect("utf-8").to_string();

    // One tag, process start to published: median of RUNS.
    let one_dct = median_d(
        (0..RUNS)
            .map(|i| {
                let image = format!("{ours}:one{i}");
                let digest = format!("sha256:{}", "ab".repeat(32));
                timed(&mut dct(&[
                    "sign", &image, "--digest", &digest, "--size", "100",
                ]))
                .0
            })
            .collect(),
    );
    let one_notary = median_d(
        (0..RUNS)
            .map(|i| {
                let tag = format!("one{i}");
                let a = timed(&mut notary(&["add", theirs, &tag, &file])).0;
                a + timed(&mut notary(&["publish", theirs])).0
            })
            .collect(),
    );

    // Many tags in one invocation vs one `notary add` each and one publish.
    let list = work.path().join("many.txt");
    let many_dct = median_d(
        (0..RUNS)
            .map(|r| {
                std::fs::write(&list, tag_list(ours, &format!("m{r}x"), many)).expect("write");
                timed(&mut dct(&["sign", "--from", list.to_str().expect("utf-8")])).0
            })
            .collect(),
    );
    let many_notary = {
        let t0 = Instant::now();
        for i in 0..many {
            timed(&mut notary(&["add", theirs, &format!("m{i}"), &file]));
        }
        timed(&mut notary(&["publish", theirs]));
        t0.elapsed()
    };

    // Huge targets roles, each size on fresh agents, so each peak memory is that work's.
    drop(agent);
    let sizes: Vec<usize> = std::env::var("DCT_BENCH_TAGS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            if quick {
                vec![huge]
            } else {
                vec![10_000, huge]
            }
        });
    let mut rows = String::new();
    for n in sizes {
        rows.push_str(&huge_role(stack, &hsm, &ca, n, work.path()));
    }

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    format!(
        "| work | dct trust sign | notary add + publish | notary / dct |\n|---|---:|---:|---:|\n\
| 1 tag, process start to published (median of {RUNS}) | {} | {} | {:.1}x |\n\
| {many} tags in one invocation (dct: median of {RUNS}; notary: one run) | {} | {} | {:.1}x |\n\n\
Huge targets roles, each on fresh agents (keys on SoftHSM2), the agent's peak resident memory \
(VmHWM; an idle agent is about 23 MiB) against the size of the targets.json published: one `dct trust sign \
--from` of all the tags into a new repository (sent to the agent in pieces of 10,000, signed and \
published as one update); one of its tags signed again with a new digest by a fresh agent (it \
fetches and verifies the whole role, edits, signs, publishes); then `dct trust inspect` by that agent, \
which must list every tag.\n\n\
| tags | targets.json | sign all: time | agent peak (x file) | re-sign 1 tag: time | agent peak | inspect: time | agent peak |\n\
|---:|---:|---:|---:|---:|---:|---:|---:|\n{rows}",
        ms(one_dct),
        ms(one_notary),
        one_notary.as_secs_f64() / one_dct.as_secs_f64(),
        ms(many_dct),
        ms(many_notary),
        many_notary.as_secs_f64() / many_dct.as_secs_f64(),
    )
}

/// One row of the huge-role table: `n` tags signed into a new repository by a fresh agent,
/// one more added by another fresh agent, then inspected by it.
fn huge_role(stack: &NotaryStack, hsm: &SoftHsm, ca: &str, n: usize, work: &Path) -> String {
    let gun = format!("bench.example.com/huge{n}");
    let fresh = || {
        let a = Agent::start(Some(hsm));
        a.unlock(hsm);
        a
    };
    let dct = |agent: &Agent, args: &[&str]| {
        let mut c = Command::new(dct_tests::bin("dct"));
        c.env("DCT_SOCKET", &agent.socket)
            .args(["trust", "--server", &stack.url, "--tlscacert", ca])
            .args(args);
        c
    };
    let mib_of = |kib: u64| kib as f64 / 1024.0;
    // One `dct trust sign --from` of them all: the CLI streams them to the agent in pieces,
    // one published update (more than 2,000,000 would go in parts).
    let agent = fresh();
    timed(&mut dct(&agent, &["init", &gun]));
    let list = work.join(format!("huge{n}.txt"));
    std::fs::write(&list, tag_list(&gun, "h0-", n)).expect("write");
    let (sign_took, _) = timed(&mut dct(
        &agent,
        &["sign", "--from", list.to_str().expect("utf-8")],
    ));
    let parts = n.div_ceil(dct_proto::MAX_TAGS_PER_STREAM);
    let sign_peak = mib_of(vm_hwm_kib(agent.pid()).unwrap_or(0));
    drop(agent);

    // The published file's size, as any client downloads it.
    let url = format!("{}/v2/{gun}/_trust/tuf/targets.json", stack.url);
    let file = Command::new("curl")
        .args(["-sf", "--cacert", ca, &url])
        .output()
        .expect("curl");
    assert!(file.status.success(), "GET {url}");
    let file_mib = file.stdout.len() as f64 / (1024.0 * 1024.0);

    let agent = fresh();
    // One tag signed again with a new digest (a million is the most one role may hold).
    let image = format!("{gun}:h0-0");
    let digest = format!("sha256:{}", "cd".repeat(32));
    let (add_took, _) = timed(&mut dct(
        &agent,
        &[
            "sign",
            "--trust-on-first-use",
            &image,
            "--digest",
            &digest,
            "--size",
            "100",
        ],
    ));
    let add_peak = mib_of(vm_hwm_kib(agent.pid()).unwrap_or(0));
    let t0 = Instant::now();
    let inspect = dct(&agent, &["--json", "inspect", &gun])
        .output()
        .expect("inspect");
    let inspect_took = t0.elapsed();
    let inspect_peak = mib_of(vm_hwm_kib(agent.pid()).unwrap_or(0));
    let signed: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("inspect JSON");
    let count = signed["signed_tags"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(
        count,
        n,
        "every tag of the huge targets role is published (inspect: {}, {})",
        inspect.status,
        String::from_utf8_lossy(&inspect.stderr)
    );
    let moved = signed["signed_tags"]
        .as_array()
        .and_then(|tags| tags.iter().find(|t| t["tag"] == "h0-0"))
        .map(|t| t.to_string())
        .unwrap_or_default();
    assert!(
        moved.contains(&"cd".repeat(32)),
        "the re-signed tag has its new digest: {moved}"
    );
    eprintln!(
        "huge role {n}: {file_mib:.1} MiB file, sign {sign_took:?} {sign_peak:.0} MiB, re-sign {add_took:?} {add_peak:.0} MiB, inspect {inspect_took:?} {inspect_peak:.0} MiB"
    );
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    format!(
        "| {n} | {file_mib:.1} MiB | {}{} | {sign_peak:.0} MiB ({:.1}x) | {} | {add_peak:.0} MiB | {} | {inspect_peak:.0} MiB |\n",
        ms(sign_took),
        if parts > 1 {
            format!(" ({parts} parts)")
        } else {
            String::new()
        },
        sign_peak / file_mib,
        ms(add_took),
        ms(inspect_took),
    )
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

/// Signatures with a P-256 key in slot 9a (PIN once, touch never) of the virtual PIV card:
/// in-process through the `yubikey` crate (the floor: one APDU exchange per signature over
/// pcscd and vpcd), in-process through libykcs11, and through the agent's API with the card
/// as a `[[piv]]` token and as a `[[pkcs11]]` token on libykcs11. One client, one document
/// per request: a card signs one thing at a time.
fn piv_section(rt: &tokio::runtime::Runtime, quick: bool) -> String {
    use dct_tests::piv::{CardOptions, VirtualPiv, YKCS11_MODULE};
    const PIN: &str = "123456";
    let n = if quick { 100 } else { 500 };
    let card = VirtualPiv::start(CardOptions::default());
    let piv = format!("piv:{}", card.serial());
    let piv_config = format!(
        "[[piv]]\nserial = {}\nmanagement_key = \"default\"\n{LOAD_TEST_POLICY}",
        card.serial()
    );
    let (key_id, vk) = {
        let agent = Agent::start_with_config(None, &piv_config);
        agent.unlock_token(&piv, PIN, &[]).ok();
        let id = agent
            .dct(&[
                "key", "generate", "--role", "targets", "--gun", GUN, "--token", &piv,
            ])
            .ok()
            .stdout
            .trim()
            .to_string();
        (id, agent_key(&agent, 0))
    };
    let digests: Vec<[u8; 32]> = (0..n)
        .map(|i| Sha256::digest(format!("doc {i}")).into())
        .collect();
    let check = |sig: &[u8], i: usize| {
        let sig = p256::ecdsa::Signature::from_slice(sig).expect("r||s");
        vk.verify_prehash(&digests[i], &sig)
            .expect("card signature verifies");
    };

    let crate_run = || {
        let mut yk =
            yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial())).expect("open card");
        yk.verify_pin(PIN.as_bytes()).expect("PIN");
        let slot = yubikey::piv::SlotId::Authentication;
        let start = Instant::now();
        let mut last = Vec::new();
        for d in &digests {
            let der = yubikey::piv::sign_data(&mut yk, d, yubikey::piv::AlgorithmId::EccP256, slot)
                .expect("sign");
            last = der.to_vec();
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        let sig = p256::ecdsa::Signature::from_der(&last).expect("DER");
        check(&sig.to_bytes(), n - 1);
        rate
    };
    let ykcs11_run = || {
        let ctx = Pkcs11::new(YKCS11_MODULE).expect("load libykcs11");
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("initialize");
        let slot = ctx.get_slots_with_token().expect("slots")[0];
        let session = ctx.open_ro_session(slot).expect("session");
        session
            .login(UserType::User, Some(&PIN.to_string().into()))
            .expect("login");
        // libykcs11's CKA_ID for slot 9a is 1.
        let key = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(vec![1]),
            ])
            .expect("find")[0];
        let start = Instant::now();
        let mut last = Vec::new();
        for d in &digests {
            last = session.sign(&Mechanism::Ecdsa, key, d).expect("sign");
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        check(&last, n - 1);
        drop(session);
        ctx.finalize().ok();
        rate
    };
    let floor = median((0..RUNS).map(|_| crate_run()).collect());
    let ykcs11 = median((0..RUNS).map(|_| ykcs11_run()).collect());
    let mut rows: Vec<Row> = vec![
        (
            "in-process `yubikey` crate (floor)".into(),
            floor,
            None,
            None,
        ),
        ("in-process PKCS#11 on libykcs11".into(), ykcs11, None, None),
    ];
    let label = {
        let out = Command::new("pkcs11-tool")
            .args(["--module", YKCS11_MODULE, "-L"])
            .output()
            .expect("pkcs11-tool");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("token label")
                    .and_then(|r| r.split_once(':'))
            })
            .map(|(_, v)| v.trim().to_string())
            .expect("ykcs11 token label")
    };
    for (what, config, token) in [
        ("dct-agent API, [[piv]] token", piv_config.clone(), piv.clone()),
        (
            "dct-agent API, [[pkcs11]] token on libykcs11",
            format!(
                "[[pkcs11]]\nmodule = \"{YKCS11_MODULE}\"\ntoken = \"{label}\"\nsessions = 1\n{LOAD_TEST_POLICY}"
            ),
            label.clone(),
        ),
    ] {
        let agent = Agent::start_with_config(None, &config);
        agent.unlock_token(&token, PIN, &[]).ok();
        let r = repeat_cpu(|| rt.block_on(agent_run(&agent, &key_id, &vk, 1, n, 1)));
        rows.push((what.into(), r.0, Some(r.1), Some(r.2)));
    }
    let mut table = String::from(
        "| what | signatures/s | vs floor | p50 | p99 | agent CPU per signature |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (what, rate, lat, cpu) in &rows {
        let line = row_line(what, *rate, floor, lat);
        table.push_str(&format!("{} {} |\n", line.trim_end(), cpu_cell(cpu)));
    }
    table.push_str(&format!(
        "\nECDSA P-256 in slot 9a (PIN once, touch never), {n} signatures per run, median of {RUNS}; \
the card is this repository's virtual card, so the floor is the PC/SC round trip (pcscd, vpcd, \
the card process), not a real YubiKey's, whose own signing time would dominate every row. The agent \
rows add the gRPC call, parsing and checking the document, canonical JSON and the audit record.\n"
    ));
    table
}

/// The verifying key of the `i`th key `dct key list` shows.
fn agent_key(agent: &Agent, i: usize) -> p256::ecdsa::VerifyingKey {
    use base64::Engine as _;
    let keys = agent.dct(&["--json", "key", "list"]).json();
    let b64 = keys["keys"][i]["tuf_key"]["keyval"]["public"]
        .as_str()
        .expect("public key");
    let spki = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    p256::ecdsa::VerifyingKey::from_public_key_der(&spki).expect("P-256 key")
}

/// One HTTP/1.1 GET on a kept-alive connection to dockerd's API socket; the body length.
fn docker_get(conn: &mut std::io::BufReader<std::os::unix::net::UnixStream>, path: &str) -> usize {
    use std::io::{BufRead, Read, Write};
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: docker\r\n\r\n"
    )
    .expect("request");
    let mut status = String::new();
    conn.read_line(&mut status).expect("status line");
    assert!(status.contains(" 200 "), "GET {path}: {status}");
    let mut len = None;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        conn.read_line(&mut h).expect("header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        let mut total = 0;
        loop {
            let mut size = String::new();
            conn.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            let mut buf = vec![0; n + 2];
            conn.read_exact(&mut buf).expect("chunk");
            total += n;
            if n == 0 {
                return total;
            }
        }
    }
    let n = len.expect("content-length");
    let mut buf = vec![0; n];
    conn.read_exact(&mut buf).expect("body");
    n
}

/// Requests/s (and p50/p99) of `paths` in turn, `c` clients of `n` requests each.
fn docker_load(
    sock: &std::path::Path,
    paths: &[&str],
    c: usize,
    n: usize,
) -> (f64, Duration, Duration) {
    let start = Instant::now();
    let lats: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..c)
            .map(|_| {
                s.spawn(move || {
                    let stream = std::os::unix::net::UnixStream::connect(sock).expect("dockerd");
                    let mut conn = std::io::BufReader::new(stream);
                    (0..n)
                        .map(|i| {
                            let t = Instant::now();
                            docker_get(&mut conn, paths[i % paths.len()]);
                            t.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    let took = start.elapsed();
    let mut l = lats;
    l.sort();
    let q = |f: f64| l[((l.len() as f64 * f) as usize).min(l.len() - 1)];
    ((c * n) as f64 / took.as_secs_f64(), q(0.5), q(0.99))
}

/// The same requests dockerd answers without judging them (ping, version, image list,
/// image inspect), through dockerd alone and through dockerd with dct-authz.
fn authz_overhead(quick: bool) -> String {
    use dct_tests::dockerd::{Dockerd, Plugin, DOCKERD};
    if !std::path::Path::new(DOCKERD).exists() {
        return format!("({DOCKERD} not installed)\n");
    }
    let n = if quick { 200 } else { 1000 };
    let paths = ["/_ping", "/v1.41/version", "/v1.41/images/json"];
    let mut rows = Vec::new();
    for with_plugin in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("docker.sock");
        let work = tempfile::tempdir().expect("tempdir");
        let plugin = with_plugin.then(|| {
            Plugin::start(
                work.path(),
                &sock,
                "mode = \"enforced\"\nunpinned = \"deny\"\n",
                &[],
            )
        });
        let name = format!("dct-bench-{}", std::process::id());
        let plugin_sock = work.path().join("plugin").join("authz.sock");
        let dockerd = Dockerd::start_with(
            dir,
            plugin
                .as_ref()
                .map(|_| (name.as_str(), plugin_sock.as_path())),
            "127.0.0.1:1",
        );
        for c in [1usize, 4] {
            let runs: Vec<(f64, Duration, Duration)> = (0..RUNS)
                .map(|_| docker_load(&dockerd.sock, &paths, c, n))
                .collect();
            let rate = median(runs.iter().map(|r| r.0).collect());
            let p50 = median_d(runs.iter().map(|r| r.1).collect());
            let p99 = median_d(runs.iter().map(|r| r.2).collect());
            rows.push((with_plugin, c, rate, p50, p99));
        }
        drop(dockerd);
        drop(plugin);
    }
    let mut t = String::from(
        "| clients | dockerd alone: requests/s | with dct-authz: requests/s | with / alone | p50 alone / with | p99 alone / with |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in [1usize, 4] {
        let get = |p: bool| rows.iter().find(|r| r.0 == p && r.1 == c).copied();
        if let (Some(a), Some(b)) = (get(false), get(true)) {
            t.push_str(&format!(
                "| {c} | {:.0} | {:.0} | {:.2} | {} / {} µs | {} / {} µs |\n",
                a.2,
                b.2,
                b.2 / a.2,
                a.3.as_micros(),
                b.3.as_micros(),
                a.4.as_micros(),
                b.4.as_micros()
            ));
        }
    }
    t.push_str(&format!(
        "\n`GET /_ping`, `/version`, `/images/json` in turn on kept-alive connections, {n} per client, median of {RUNS} runs; dockerd 20.10 (Debian), vfs, its own roots. dockerd asks the plugin about every request (AuthZReq and AuthZRes over its Unix socket): this is that round trip, with the plugin answering at once for requests it does not judge.\n"
    ));
    t
}

/// `dct migrate` of many DCT-signed tags to cosign and to Notation, against the real cosign
/// and notation signing the same number of digests one process at a time through the
/// plugins (same agent, key and registry; cosign's classic format, no transparency log):
/// once with the registry on this machine, once with it a network round trip away.
fn migration(stack: &NotaryStack, quick: bool) -> String {
    let n = if quick { 200 } else { 1000 };
    let registry = dct_tests::registry::Registry::start_in_memory(stack);
    let far = dct_tests::netdelay::DelayProxy::start(&registry.host, FAR_ONE_WAY);
    let hsm = SoftHsm::new("bench-migrate", "bench-pin-1234");
    let agent = Agent::start(Some(&hsm));
    agent.unlock(&hsm);
    let ca = stack.ca.to_str().expect("utf-8").to_string();
    let srv = ["--server", stack.url.as_str(), "--tlscacert", ca.as_str()];
    let dct = |args: &[&str]| {
        let mut c = Command::new(dct_tests::bin("dct"));
        c.env("DCT_SOCKET", &agent.socket).args(args).args(srv);
        c
    };
    let work = tempfile::tempdir().expect("tempdir");
    // Notation needs a chain for each key: a signing CA on the token, a leaf per key.
    let ca_init = agent
        .dct(&["--json", "notation", "ca", "init", "--name", "Bench CA"])
        .json();
    let ca_key = ca_init["key"]["key_id"]
        .as_str()
        .expect("CA key")
        .to_string();
    let config = work.path().join("notation-config");
    let out = agent.dct_env(
        &["notation", "install"],
        &[("XDG_CONFIG_HOME", config.to_str().expect("utf-8"))],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr());
    // Each place of the registry: n distinct images (one pushed by skopeo, the others its
    // manifest with an annotation) in each of two repositories, every tag signed in DCT:
    // one repository migrated by dct, one signed tag by tag by the CLIs.
    let places = [
        ("on this machine", registry.host.clone(), "near"),
        ("10 ms round trip away", far.host.clone(), "far"),
    ];
    let mut repos: Vec<Vec<(String, String, Vec<String>)>> = Vec::new();
    for (_, host, name) in &places {
        let mut pair = Vec::new();
        for side in ["migrated", "per-tag"] {
            let name = format!("bench/{side}-{name}");
            let base = registry.push_runnable(&name, "t0", "bench");
            let mut v: serde_json::Value = serde_json::from_slice(&base).expect("manifest");
            let gun = format!("{host}/{name}");
            let mut lines = String::new();
            let mut digests = Vec::new();
            for i in 0..n {
                let bytes = if i == 0 {
                    base.clone()
                } else {
                    v["annotations"] = serde_json::json!({"n": i.to_string()});
                    let b = serde_json::to_vec(&v).expect("json");
                    registry.put_manifest(&name, &format!("t{i}"), &b)
                };
                let d = hex(&Sha256::digest(&bytes));
                lines.push_str(&format!("{gun}:t{i} sha256:{d} {}\n", bytes.len()));
                digests.push(d);
            }
            let list = work.path().join("tags");
            std::fs::write(&list, lines).expect("write");
            timed(&mut dct(&["trust", "init", &gun]));
            timed(&mut dct(&[
                "trust",
                "sign",
                "--from",
                list.to_str().expect("utf-8"),
            ]));
            let keys = agent.dct(&["--json", "key", "list"]).json()["keys"].clone();
            let key = keys
                .as_array()
                .and_then(|a| a.iter().find(|k| k["role"] == "targets" && k["gun"] == gun))
                .and_then(|k| k["key_id"].as_str())
                .expect("targets key")
                .to_string();
            let out = agent.dct(&["notation", "cert", "issue", &key, "--ca", &ca_key]);
            assert_eq!(out.code(), 0, "{}", out.stderr());
            pair.push((gun, key, digests));
        }
        repos.push(pair);
    }
    let trust_dir = config.join("notation");
    let mut export = vec![
        "notation".to_string(),
        "export-trust".into(),
        trust_dir.to_str().expect("utf-8").into(),
    ];
    for (gun, _, _) in repos.iter().flatten() {
        export.extend(["--scope".to_string(), gun.clone()]);
    }
    let export: Vec<&str> = export.iter().map(String::as_str).collect();
    let out = agent.dct(&export);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let bin_dir = dct_tests::bin("sigstore-kms-dct")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cosign = dct_tests::gotools::cosign();
    let notation = dct_tests::gotools::notation();
    // A CLI run for one tag, timed whole (no polling in between).
    let cli = |c: &mut Command| {
        let out = c.output().expect("spawn");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let per = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3 / n as f64);
    let line = |what: &str, d: Duration, base: Duration| {
        format!(
            "| {what} | {:.1} s | {} | {:.1}x |\n",
            d.as_secs_f64(),
            per(d),
            d.as_secs_f64() / base.as_secs_f64()
        )
    };
    let mut table = String::new();
    for ((place, _, _), pair) in places.iter().zip(&repos) {
        let [(gun, key, _), (gun2, key2, digests2)] = &pair[..] else {
            unreachable!("two repositories per place")
        };
        // dct migrate: every tag of the first repository, one run per format.
        let (ours_cosign, _) = timed(&mut dct(&["migrate", gun, "--to", "cosign", "--key", key]));
        let (ours_notation, _) = timed(&mut dct(&[
            "migrate", gun, "--to", "notation", "--key", key,
        ]));
        // Where dct migrate's time went, from the agent's log.
        if let Ok(log) = std::fs::read_to_string(&agent.log) {
            for l in log
                .lines()
                .filter(|l| l.contains("migrate:") && l.contains(gun.as_str()))
            {
                eprintln!("{l}");
            }
        }
        // `DCT_BENCH_OURS_ONLY=1`: dct migrate alone (for profiling it).
        if std::env::var_os("DCT_BENCH_OURS_ONLY").is_some() {
            table.push_str(&format!(
                "registry {place}: dct migrate of {n} tags: cosign {:.1} s, notation {:.1} s\n",
                ours_cosign.as_secs_f64(),
                ours_notation.as_secs_f64()
            ));
            continue;
        }
        // The CLIs through the plugins, one process per tag, the second repository.
        let dct_key = format!("dct://{key2}");
        let t0 = Instant::now();
        for digest in digests2 {
            let image = format!("{gun2}@sha256:{digest}");
            cli(Command::new(&cosign)
                .args(["sign", "--key", &dct_key, "--use-signing-config=false"])
                .args([
                    "--tlog-upload=false",
                    "-y",
                    "--new-bundle-format=false",
                    &image,
                ])
                .env("PATH", &path)
                .env("HOME", work.path())
                .env("DCT_SOCKET", &agent.socket)
                .env("SSL_CERT_FILE", &ca));
        }
        let theirs_cosign = t0.elapsed();
        let t0 = Instant::now();
        for digest in digests2 {
            let image = format!("{gun2}@sha256:{digest}");
            cli(Command::new(&notation)
                .args(["sign", "--plugin", "dct", "--id", key2, &image])
                .env("XDG_CONFIG_HOME", &config)
                .env("HOME", &config)
                .env("DCT_SOCKET", &agent.socket)
                .env("SSL_CERT_FILE", &ca));
        }
        let theirs_notation = t0.elapsed();
        // What both wrote verifies: a sample of each, with each tool.
        for (g, k, tags) in pair {
            let pem = work.path().join("k.pub");
            let out = agent.dct(&[
                "cosign",
                "public-key",
                k,
                "--output",
                pem.to_str().expect("utf-8"),
            ]);
            assert_eq!(out.code(), 0, "{}", out.stderr());
            for digest in tags.iter().step_by(n / 4) {
                let image = format!("{g}@sha256:{digest}");
                cli(Command::new(&cosign)
                    .args(["verify", "--insecure-ignore-tlog=true", "--key"])
                    .arg(&pem)
                    .arg(&image)
                    .env("HOME", work.path())
                    .env("SSL_CERT_FILE", &ca));
                cli(Command::new(&notation)
                    .args(["verify", &image])
                    .env("XDG_CONFIG_HOME", &config)
                    .env("HOME", &config)
                    .env("SSL_CERT_FILE", &ca));
            }
        }
        table.push_str(&format!("| **registry {place}** | | | |\n"));
        table.push_str(&line(
            "`dct migrate --to cosign` (one run)",
            ours_cosign,
            ours_cosign,
        ));
        table.push_str(&line(
            "`cosign sign --key dct://KEYID` per tag (cosign v3.1.3, sigstore-kms-dct)",
            theirs_cosign,
            ours_cosign,
        ));
        table.push_str(&line(
            "`dct migrate --to notation` (one run)",
            ours_notation,
            ours_notation,
        ));
        table.push_str(&line(
            "`notation sign --plugin dct` per tag (notation v1.3.2, notation-dct)",
            theirs_notation,
            ours_notation,
        ));
    }
    if std::env::var_os("DCT_BENCH_OURS_ONLY").is_some() {
        return table;
    }
    format!(
        "| work ({n} tags, keys on SoftHSM2) | total | per tag | time vs dct migrate |\n|---|---:|---:|---:|\n{table}\n\
Each pair signs the same number of distinct images through the same agent and guard (payload parsed, \
policy, audit) and writes what the tool writes (cosign's classic `.sig`; Notation's JWS envelope and \
referrers index); a sample of each is checked by `cosign verify` and `notation verify`. The registry \
(docker-registry 2.8, TLS, the blob descriptor cache of its stock config) keeps its storage in memory (/dev/shm), so its writes are not this VM's disk; \
\"a round trip away\" puts a proxy in front of it that delays every byte by {} ms each way, as a registry \
in another data centre is. dct checks every tag against DCT and the registry (the tags listed once, one \
manifest read per tag), signs all in one guard pass and writes {} images at a time over HTTP/1.1 \
connections it keeps; the CLIs start a process (and their plugin's) per tag and wait on each request in \
turn. On this machine the registry's own work per tag (two or three uploads, a manifest, an index) is \
what bounds dct migrate: the registry process takes most of both cores.\n",
        FAR_ONE_WAY.as_millis(),
        MIGRATE_IN_FLIGHT,
    )
}

/// The one-way delay of the far registry (half its round trip).
const FAR_ONE_WAY: Duration = Duration::from_millis(5);
/// What `dct migrate` keeps in flight (agent/src/trust/migrate.rs IN_FLIGHT), for the note.
const MIGRATE_IN_FLIGHT: usize = 64;
