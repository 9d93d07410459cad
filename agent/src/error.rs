//! The agent's errors, each carrying what a user needs to act, and a machine-readable
//! reason (the rpc layer maps both onto gRPC statuses).

/// PIN state as a token reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinState {
    /// Exact tries left, when the token says (PIV does; PKCS#11 has only flags).
    pub tries_left: Option<u32>,
    pub count_low: bool,
    pub final_try: bool,
    pub locked: bool,
}

impl PinState {
    /// A short phrase for messages: "2 tries left", "one try left", ...
    pub fn describe(&self) -> String {
        if self.locked {
            "the PIN is locked".into()
        } else if let Some(n) = self.tries_left {
            format!("{n} {} left", if n == 1 { "try" } else { "tries" })
        } else if self.final_try {
            "one try left".into()
        } else if self.count_low {
            "tries left: low (the token gives no count)".into()
        } else {
            "tries left: not reported by the token".into()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The key's role, GUN or document does not fit the request.
    #[error("refused: {0}")]
    Refused(String),
    /// A rule of the policy refused (the guard's checks): `rule` names it for metrics and
    /// scripts; shown as "refused: policy (RULE): WHY".
    #[error("refused: policy ({rule}): {why}")]
    Policy { rule: &'static str, why: String },
    #[error("token {token:?} is locked: run dct unlock --token {token}")]
    Locked { token: String },
    #[error("wrong PIN for token {token:?} ({}); not retried", state.describe())]
    WrongPin { token: String, state: PinState },
    #[error("the PIN of token {token:?} is locked; unblock it with the SO PIN (e.g. softhsm2-util or the token's own tool)")]
    PinLocked { token: String },
    #[error("token {token:?} reports one PIN try left; a wrong PIN would lock it. Check the PIN and repeat with --force")]
    FinalTry { token: String },
    /// Token absent or not usable right now (FailedPrecondition on the wire, so that
    /// Unavailable only ever means the transport).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// An internal failure that keeps the error that caused it as its `source()` (shown as
    /// `Internal` is).
    #[error("internal error: {source}")]
    Caused {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    /// The kind of error as a stable, machine-readable word, sent to clients beside the
    /// message (see the rpc layer's status mapping).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound(_) => "not_found",
            Error::Refused(_) | Error::Policy { .. } => "refused",
            Error::Locked { .. } => "locked",
            Error::WrongPin { .. } => "wrong_pin",
            Error::PinLocked { .. } => "pin_locked",
            Error::FinalTry { .. } => "final_try",
            Error::Unavailable(_) => "unavailable",
            Error::ResourceExhausted(_) => "resource_exhausted",
            Error::Internal(_) | Error::Caused { .. } => "internal",
        }
    }
}

impl Error {
    /// An internal failure caused by `source`, which the error keeps (`map_err(Error::internal)`).
    pub fn internal<E: std::error::Error + Send + Sync + 'static>(source: E) -> Error {
        Error::Caused {
            source: Box::new(source),
        }
    }

    /// The policy rule that refused, for a policy refusal.
    pub fn policy_rule(&self) -> Option<&'static str> {
        match self {
            Error::Policy { rule, .. } => Some(rule),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_keep_their_source_and_reason() {
        let e = Error::internal(std::io::Error::other("disk full"));
        assert_eq!(e.to_string(), "internal error: disk full");
        assert_eq!(e.reason(), "internal");
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("disk full"));
        let p = Error::Policy {
            rule: "guns",
            why: "not this one".into(),
        };
        assert_eq!(p.to_string(), "refused: policy (guns): not this one");
        assert_eq!((p.reason(), p.policy_rule()), ("refused", Some("guns")));
    }
}
