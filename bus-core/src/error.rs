//! The one error type every backend returns.

use std::error::Error as StdError;
use std::fmt;

use crate::Delivery;

/// The name errors carry when no backend raised them: bus itself (name validation, typed and
/// CloudEvents encoding and decoding, configuration).
pub const CORE: &str = "bus";

/// Text that came from the wire (a payload, an attribute, a decoder's complaint quoting them),
/// made safe for one log line or error message: control characters escaped (a newline cannot
/// forge another log line) and at most 200 characters kept.
///
/// ```
/// assert_eq!(bus_core::printable("fixed\nFORGED LINE"), "fixed\\nFORGED LINE");
/// assert!(bus_core::printable(&"x".repeat(5_000)).chars().count() <= 201);
/// ```
pub fn printable(text: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = text
        .chars()
        .take(MAX)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// A `Result` whose error is the bus [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of the backend that reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed something the contract does not allow (a bad topic name, too many
    /// attributes, ...). Retrying the same call cannot help.
    InvalidArgument,
    /// A topic or subscription does not exist and the backend was not allowed to create it.
    NotFound,
    /// The credentials are valid but may not do this.
    PermissionDenied,
    /// The credentials are missing or were rejected.
    Unauthenticated,
    /// The broker could not be reached or is overloaded; a later retry may succeed.
    Unavailable,
    /// The operation did not finish in time.
    Timeout,
    /// A message is larger than the backend accepts.
    PayloadTooLarge,
    /// The configuration is invalid; the message names the key and the fix.
    Config,
    /// The publisher, subscriber or subscription was closed.
    Closed,
    /// A payload could not be decoded into the requested type. The error carries the delivery
    /// (see [`Error::take_delivery`]) so it can still be acked or nacked.
    Decode,
    /// The backend does not support this operation (see its [`Capabilities`](crate::Capabilities)).
    Unsupported,
    /// A bug or an unexpected state inside the backend or the broker.
    Internal,
}

impl ErrorKind {
    /// Whether a retry of the same operation may succeed for errors of this kind, unless the
    /// backend says otherwise.
    pub fn default_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Timeout)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NotFound => "not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::PayloadTooLarge => "payload too large",
            ErrorKind::Config => "configuration error",
            ErrorKind::Closed => "closed",
            ErrorKind::Decode => "decode error",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bus error: a [`kind`](Error::kind), whether a [retry can help](Error::is_retryable), the
/// [backend](Error::backend) that raised it, a message for people and the underlying source.
///
/// ```
/// use bus_core::{Error, ErrorKind};
///
/// let err = Error::new(ErrorKind::Unavailable, "memory", "broker is restarting");
/// assert!(err.is_retryable());
/// assert_eq!(err.to_string(), "memory: unavailable: broker is restarting (retryable)");
/// ```
pub struct Error {
    kind: ErrorKind,
    retryable: bool,
    backend: &'static str,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    delivery: Option<Box<Delivery>>,
}

impl Error {
    /// A new error; whether it is retryable follows from the kind
    /// ([`ErrorKind::default_retryable`]).
    pub fn new(kind: ErrorKind, backend: &'static str, message: impl Into<String>) -> Self {
        Error {
            kind,
            retryable: kind.default_retryable(),
            backend,
            message: message.into(),
            source: None,
            delivery: None,
        }
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid_argument(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, backend, message)
    }

    /// Shorthand for an [`ErrorKind::Closed`] error naming what was closed.
    pub fn closed(backend: &'static str, what: &str) -> Self {
        Self::new(ErrorKind::Closed, backend, format!("{what} is closed"))
    }

    /// Shorthand for an [`ErrorKind::Config`] error.
    pub fn config(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, backend, message)
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Overrides whether a retry may help.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Attaches the delivery the error is about (used by [`ErrorKind::Decode`] errors).
    pub fn with_delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = Some(Box::new(delivery));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The name of the backend that raised the error (`memory`, `mqtt`, `gcp`, ...).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The human-readable message, without kind or backend.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The delivery this error is about, if any; for a [`ErrorKind::Decode`] error this is the
    /// message that failed to decode, which the caller still has to ack or nack.
    pub fn delivery(&self) -> Option<&Delivery> {
        self.delivery.as_deref()
    }

    /// Takes the delivery out of the error (see [`Error::delivery`]).
    pub fn take_delivery(&mut self) -> Option<Delivery> {
        self.delivery.take().map(|d| *d)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.kind)
            .field("retryable", &self.retryable)
            .field("backend", &self.backend)
            .field("message", &self.message)
            .field("source", &self.source);
        if let Some(delivery) = &self.delivery {
            s.field("delivery", delivery);
        }
        s.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.backend, self.kind, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        if self.retryable {
            f.write_str(" (retryable)")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}
