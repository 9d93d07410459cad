//! The one mapping from the agent's errors to gRPC statuses. Besides the code and the
//! message, every status carries the error's kind in the `dct-reason` metadata entry
//! ([`REASON_KEY`]), so a client decides on `Error::reason`, never on message text.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::Error;

/// The metadata key of the machine-readable reason (see `dct_proto::REASON_KEY`).
pub const REASON_KEY: &str = dct_proto::REASON_KEY;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::Refused(_) | Error::Policy { .. } => Code::PermissionDenied,
            Error::WrongPin { .. } => Code::Unauthenticated,
            Error::Locked { .. }
            | Error::PinLocked { .. }
            | Error::FinalTry { .. }
            | Error::Unavailable(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Internal(_) | Error::Caused { .. } => Code::Internal,
        };
        let reason = e.reason();
        let mut status = Status::new(code, e.to_string());
        status
            .metadata_mut()
            .insert(REASON_KEY, MetadataValue::from_static(reason));
        status
    }
}
