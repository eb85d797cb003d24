//! `[gcp]` configuration.

use serde::{Deserialize, Serialize};

use bus_core::{Error, Result};

use crate::BACKEND;

/// The environment variable Google's tools use to point clients at an emulator. The
/// google-cloud-pubsub crate does not read it; bus-gcp does.
pub const EMULATOR_HOST_VAR: &str = "PUBSUB_EMULATOR_HOST";

/// Where the clients connect: a configured endpoint (an `http://` one is an emulator, reached
/// in plain text with anonymous credentials), or Google's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub configured: Option<String>,
    pub emulator: bool,
}

impl Endpoint {
    /// The URL, for messages.
    pub fn url(&self) -> &str {
        self.configured
            .as_deref()
            .unwrap_or("https://pubsub.googleapis.com")
    }

    /// What to check when it cannot be reached or authenticated.
    pub fn hint(&self) -> &'static str {
        if self.emulator {
            "is the emulator running there (PUBSUB_EMULATOR_HOST or gcp.endpoint = \"http://HOST:PORT\")?"
        } else {
            "check network access to Pub/Sub and the credentials: Application Default Credentials (`gcloud auth application-default login`, GOOGLE_APPLICATION_CREDENTIALS, or the attached service account); for Google's emulator set PUBSUB_EMULATOR_HOST or gcp.endpoint = \"http://HOST:PORT\""
        }
    }
}

/// Configuration of the Pub/Sub backend (`[gcp]` in `bus.toml`, `BUS_GCP__*` variables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpConfig {
    /// The Google Cloud project id (required); a project number works too.
    #[serde(deserialize_with = "bus_core::config::string")]
    pub project: String,
    /// The Pub/Sub endpoint. Unset: `PUBSUB_EMULATOR_HOST` if set (plain text, anonymous
    /// credentials), else Google's endpoint with Application Default Credentials. An
    /// `http://HOST:PORT` endpoint is an emulator; `https://...` is real Pub/Sub.
    #[serde(default, deserialize_with = "bus_core::config::option_string")]
    pub endpoint: Option<String>,
    /// Create missing topics and subscriptions (with the subscription options). Unset: on with
    /// an emulator, off against real Pub/Sub, where a missing one is a `NotFound` error.
    #[serde(default)]
    pub provisioning: Option<bool>,
    /// How long connecting and admin calls may take before a clear `Unavailable` error
    /// (the crate's default retry policy takes about 50 s). Default 10,000 ms.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a publish may keep retrying. Default 60,000 ms.
    #[serde(default = "defaults::publish_timeout_ms")]
    pub publish_timeout_ms: u64,
    /// How long the client waits to batch concurrent publishes. Every publish waits for its
    /// message id, so this is added to each one's latency. Default 1 ms (the crate's is 10 ms).
    #[serde(default = "defaults::publish_batch_delay_ms")]
    pub publish_batch_delay_ms: u64,
    /// Flow control: most unacked messages one consumer holds. Default 1,000. (Google's
    /// emulator ignores it.)
    #[serde(default = "defaults::max_outstanding_messages")]
    pub max_outstanding_messages: i64,
    /// Flow control: most unacked bytes one consumer holds. Default 100 MiB. (Google's
    /// emulator ignores it.)
    #[serde(default = "defaults::max_outstanding_bytes")]
    pub max_outstanding_bytes: i64,
    /// Streaming pulls per consumer. The emulator serves each stream about 2,000 messages/s and
    /// several scale almost linearly. Default 1.
    #[serde(default = "defaults::streams")]
    pub streams: usize,
}

mod defaults {
    pub fn connect_timeout_ms() -> u64 {
        10_000
    }
    pub fn publish_timeout_ms() -> u64 {
        60_000
    }
    pub fn publish_batch_delay_ms() -> u64 {
        1
    }
    pub fn max_outstanding_messages() -> i64 {
        1_000
    }
    pub fn max_outstanding_bytes() -> i64 {
        100 * 1024 * 1024
    }
    pub fn streams() -> usize {
        1
    }
}

impl GcpConfig {
    /// A config for `project` with every other value at its default.
    pub fn new(project: impl Into<String>) -> Self {
        GcpConfig {
            project: project.into(),
            endpoint: None,
            provisioning: None,
            connect_timeout_ms: defaults::connect_timeout_ms(),
            publish_timeout_ms: defaults::publish_timeout_ms(),
            publish_batch_delay_ms: defaults::publish_batch_delay_ms(),
            max_outstanding_messages: defaults::max_outstanding_messages(),
            max_outstanding_bytes: defaults::max_outstanding_bytes(),
            streams: defaults::streams(),
        }
    }

    /// Where to connect. A bare `HOST:PORT` (as in `PUBSUB_EMULATOR_HOST`) gets `http://`: the
    /// crate rejects it without a scheme.
    pub(crate) fn resolve_endpoint(&self) -> Result<Endpoint> {
        let (raw, source) = match (&self.endpoint, std::env::var(EMULATOR_HOST_VAR)) {
            (Some(endpoint), _) => (endpoint.trim().to_string(), "gcp.endpoint"),
            (None, Ok(host)) if !host.trim().is_empty() => {
                (host.trim().to_string(), EMULATOR_HOST_VAR)
            }
            _ => return Ok(Endpoint::default()),
        };
        let endpoint = if raw.contains("://") {
            raw
        } else {
            format!("http://{raw}")
        };
        let shown = bus_core::printable(&bus_core::config::redact_url(&endpoint));
        let emulator = if endpoint.starts_with("http://") {
            true
        } else if endpoint.starts_with("https://") {
            false
        } else {
            return Err(Error::config(
                BACKEND,
                format!("{source} = \"{shown}\" has an unknown scheme; use http://HOST:PORT (emulator) or https://HOST (Pub/Sub)"),
            ));
        };
        let authority = endpoint
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or("");
        if authority.trim_end_matches('/').is_empty() {
            return Err(Error::config(
                BACKEND,
                format!("{source} = \"{shown}\" has no host; use http://HOST:PORT"),
            ));
        }
        Ok(Endpoint {
            configured: Some(endpoint),
            emulator,
        })
    }

    /// Checks every value, naming the key and the fix.
    pub fn validate(&self) -> Result<()> {
        let project = &self.project;
        let valid = (6..=30).contains(&project.len())
            && project.starts_with(|c: char| c.is_ascii_lowercase())
            && project
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        // The emulator accepts any id; real projects follow Google's rules. Only reject what
        // cannot be part of a resource name at all.
        if project.is_empty() || project.contains('/') || project.contains(char::is_whitespace) {
            return Err(Error::config(
                BACKEND,
                format!("gcp.project = {project:?} is not a project id; set it to your project's id, e.g. \"autopatch\""),
            ));
        }
        if !valid {
            tracing::debug!(
                project,
                "gcp.project is not a valid Google Cloud project id (fine for the emulator)"
            );
        }
        if self.streams == 0 || self.streams > 64 {
            return Err(Error::config(
                BACKEND,
                format!(
                    "gcp.streams = {} is out of range; use 1 to 64",
                    self.streams
                ),
            ));
        }
        if self.max_outstanding_messages <= 0 || self.max_outstanding_bytes <= 0 {
            return Err(Error::config(
                BACKEND,
                "gcp.max_outstanding_messages and gcp.max_outstanding_bytes must be positive",
            ));
        }
        self.resolve_endpoint().map(|_| ())
    }
}
