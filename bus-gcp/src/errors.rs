//! google-cloud errors as bus errors.

use bus_core::{Error, ErrorKind};
use google_cloud_gax::error::rpc::Code;

use crate::BACKEND;

/// Maps a google-cloud error to a bus error; `what` says what was being done.
pub(crate) fn map_error(error: &google_cloud_pubsub::Error, what: &str) -> Error {
    let (kind, retryable) = match error.status().map(|s| s.code) {
        Some(Code::NotFound) => (ErrorKind::NotFound, false),
        Some(Code::AlreadyExists) => (ErrorKind::InvalidArgument, false),
        Some(Code::PermissionDenied) => (ErrorKind::PermissionDenied, false),
        Some(Code::Unauthenticated) => (ErrorKind::Unauthenticated, false),
        Some(Code::InvalidArgument) | Some(Code::FailedPrecondition) | Some(Code::OutOfRange) => {
            (ErrorKind::InvalidArgument, false)
        }
        Some(Code::Unavailable) | Some(Code::Aborted) | Some(Code::ResourceExhausted) => {
            (ErrorKind::Unavailable, true)
        }
        Some(Code::DeadlineExceeded) => (ErrorKind::Timeout, true),
        Some(Code::Unimplemented) => (ErrorKind::Unsupported, false),
        Some(_) => (ErrorKind::Internal, false),
        None if error.is_authentication() => (ErrorKind::Unauthenticated, false),
        None if error.is_timeout() || error.is_exhausted() => (ErrorKind::Unavailable, true),
        None if error.is_connect() || error.is_io() || error.is_transport() => {
            (ErrorKind::Unavailable, true)
        }
        None => (ErrorKind::Internal, false),
    };
    let message = match error.status() {
        Some(status) => format!("{what}: {:?}: {}", status.code, status.message),
        None => format!("{what}: {error}"),
    };
    Error::new(kind, BACKEND, message).with_retryable(retryable)
}

pub(crate) fn is_code(error: &google_cloud_pubsub::Error, code: Code) -> bool {
    error.status().is_some_and(|s| s.code == code)
}
