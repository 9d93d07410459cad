//! `[metrics]`: the agent's Prometheus endpoint, scraped during a signing run and read by
//! an independent parser (the Prometheus project's Python client, Debian's
//! python3-prometheus-client), whose counters match the signatures made.

use std::collections::BTreeMap;
use std::process::Command;

use dct_tests::notary::free_port;
use dct_tests::{Agent, SoftHsm};

const GUN: &str = "example.com/metered";

fn doc(agent: &Agent, name: &str, expires: &str, version: u64) -> std::path::PathBuf {
    let path = agent.dir.path().join(name);
    std::fs::write(
        &path,
        format!(
            r#"{{"signed":{{"_type":"Targets","delegations":{{"keys":{{}},"roles":[]}},"expires":"{expires}","targets":{{}},"version":{version}}},"signatures":[]}}"#
        ),
    )
    .unwrap();
    path
}

fn http_get(port: u16, path: &str) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_string(), body.to_string())
}

/// Every sample as "name{labels}" -> value, as the OpenMetrics parser reads them.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (python3-prometheus-client)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not valid OpenMetrics text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_count_every_signature_and_refusal_and_parse_as_openmetrics() {
    let hsm = SoftHsm::new("metered", "8642");
    let port = free_port();
    let agent = Agent::start_with_config(
        Some(&hsm),
        &format!(
            "{}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            hsm.agent_config()
        ),
    );
    let before = parse(&http_get(port, "/metrics").1);
    assert_eq!(
        before.get(&format!(
            "dct_agent_token_unlocked{{token=\"{}\"}}",
            hsm.label
        )),
        Some(&0.0),
        "{before:#?}"
    );
    agent.unlock(&hsm);
    let key = agent.generate("targets", Some(GUN));
    let signed = 5;
    for v in 1..=signed {
        let d = doc(&agent, &format!("t{v}.json"), "2028-01-01T00:00:00Z", v);
        agent.tuf_sign(&d, &key, &["--gun", GUN]).ok();
    }
    // Refused by the policy: beyond the default lifetime of a targets document.
    let far = doc(&agent, "far.json", "2045-01-01T00:00:00Z", 9);
    agent
        .tuf_sign(&far, &key, &["--gun", GUN])
        .fails(1, "policy (max_expiry)");
    // Refused by the version ledger: version 2 again, other content.
    let again = doc(&agent, "again.json", "2027-06-01T00:00:00Z", 2);
    agent
        .tuf_sign(&again, &key, &["--gun", GUN])
        .fails(1, "policy (version)");

    let (code, text) = http_get(port, "/metrics");
    assert_eq!(code, "200");
    let m = parse(&text);
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get(r#"dct_agent_signatures_total{api="dct",outcome="ok",role="targets"}"#),
        signed as f64,
        "{m:#?}"
    );
    assert_eq!(
        get(r#"dct_agent_signatures_total{api="dct",outcome="refused",role="targets"}"#),
        2.0,
        "{m:#?}"
    );
    assert_eq!(get(r#"dct_agent_refusals_total{rule="max_expiry"}"#), 1.0);
    assert_eq!(get(r#"dct_agent_refusals_total{rule="version"}"#), 1.0);
    assert_eq!(
        get(r#"dct_agent_sign_seconds_count{api="dct"}"#),
        (signed + 2) as f64
    );
    // Every record in the audit log was counted as written (unlock, key, signatures,
    // refusals), and none failed.
    let records = std::fs::read_to_string(agent.audit_path())
        .unwrap()
        .lines()
        .count();
    assert_eq!(
        get("dct_agent_audit_records_total{}"),
        records as f64,
        "{m:#?}"
    );
    assert_eq!(get("dct_agent_audit_failures_total{}"), 0.0);
    assert!(get("dct_agent_audit_write_seconds_count{}") >= 1.0);
    assert_eq!(
        get(&format!(
            "dct_agent_token_unlocked{{token=\"{}\"}}",
            hsm.label
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            "dct_agent_token_present{{token=\"{}\"}}",
            hsm.label
        )),
        1.0
    );
    // Nothing of the repository or the key in the labels.
    assert!(!text.contains(GUN) && !text.contains(&key), "{text}");

    assert_eq!(http_get(port, "/healthz"), ("200".into(), "ok\n".into()));
    assert_eq!(http_get(port, "/nope").0, "404");
}

#[test]
fn a_metrics_port_in_use_fails_the_start_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "audit_log = {:?}\ntrust_dir = {:?}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("audit.log"),
            dir.path().join("trust")
        ),
    )
    .unwrap();
    let out = Command::new(dct_tests::bin("dct-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.path().join("run/agent.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[metrics] cannot listen on"), "{err}");
}
