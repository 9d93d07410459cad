//! The agent's metrics (Prometheus / OpenMetrics text, served by the daemon when
//! `[metrics] listen` is set). Labels carry nothing the audit log does not already record,
//! and nothing of unbounded variety: no GUN, no key ID; delegation roles are all
//! `delegation`.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignLabels {
    /// `dct` (the dct API), `trust` (publishes the agent makes), `notary_signer`.
    pub api: &'static str,
    pub role: &'static str,
    /// `ok`, `refused` (policy, confirmation, versions) or `error` (token, audit, input).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The policy rule (`roles`, `guns`, `max_expiry`, `version`, `confirm`), else the
    /// error's kind (`locked`, `invalid_argument`, ...).
    pub rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub token: String,
}

pub struct Metrics {
    pub signatures: Family<SignLabels, Counter>,
    pub sign_seconds: Family<ApiLabels, Histogram>,
    pub refusals: Family<RefusalLabels, Counter>,
    pub audit_records: Counter,
    pub audit_write_seconds: Histogram,
    pub audit_failures: Counter,
    pub token_present: Family<TokenLabels, Gauge>,
    pub token_unlocked: Family<TokenLabels, Gauge>,
    pub token_pin_tries_left: Family<TokenLabels, Gauge>,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// The process's metrics (made on first use).
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("dct_agent");
        let m = Metrics {
            signatures: Family::default(),
            sign_seconds: Family::new_with_constructor(latency_histogram),
            refusals: Family::default(),
            audit_records: Counter::default(),
            audit_write_seconds: latency_histogram(),
            audit_failures: Counter::default(),
            token_present: Family::default(),
            token_unlocked: Family::default(),
            token_pin_tries_left: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "signatures",
            "Signature requests by API, role and outcome",
            m.signatures.clone(),
        );
        registry.register(
            "sign_seconds",
            "Time from a signing request's arrival at the guard to its answer",
            m.sign_seconds.clone(),
        );
        registry.register(
            "refusals",
            "Refused signature requests by the rule (or kind of error) that refused",
            m.refusals.clone(),
        );
        registry.register(
            "audit_records",
            "Audit records written and synced",
            m.audit_records.clone(),
        );
        registry.register(
            "audit_write_seconds",
            "Time to write and sync one batch of audit records",
            m.audit_write_seconds.clone(),
        );
        registry.register(
            "audit_failures",
            "Audit writes that failed (signing stops)",
            m.audit_failures.clone(),
        );
        registry.register(
            "token_present",
            "1 if the token (or card) is reachable",
            m.token_present.clone(),
        );
        registry.register(
            "token_unlocked",
            "1 if the token is unlocked",
            m.token_unlocked.clone(),
        );
        registry.register(
            "token_pin_tries_left",
            "PIN tries left, where the token says (PIV)",
            m.token_pin_tries_left.clone(),
        );
        Metrics { registry, ..m }
    })
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A role as a metric label: the top-level roles by name, every delegation as one.
pub fn role_label(role: &str) -> &'static str {
    match role {
        "root" => "root",
        "targets" => "targets",
        "snapshot" => "snapshot",
        "timestamp" => "timestamp",
        r if r.starts_with("targets/") => "delegation",
        "" => "unknown",
        _ => "other",
    }
}
