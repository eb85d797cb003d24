//! `[mqtt]` configuration.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bus_core::config::{redact_url, Secret};
use bus_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::BACKEND;

/// Configuration of the MQTT backend (`[mqtt]` in `bus.toml`, `BUS_MQTT__*` variables).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (TLS). Default `mqtt://127.0.0.1:1883`.
    /// Credentials go in `username` and `password`, never in the URL.
    #[serde(deserialize_with = "bus_core::config::string")]
    pub url: String,
    /// Prefix of the client ids this process uses. Consumers get stable ids derived from it,
    /// the subscription and the topic, so a restarted consumer resumes its session. It must be
    /// unique per running instance (e.g. `llm-dispatch-1`, `llm-dispatch-2`): two processes with
    /// the same prefix would take over each other's sessions. Default `bus`.
    #[serde(deserialize_with = "bus_core::config::string")]
    pub client_id: String,
    /// Quality of service of publishes and subscriptions: 0, 1 or 2. Default 1. QoS 0 gives up
    /// at-least-once delivery.
    pub qos: u8,
    /// How long the broker keeps a consumer's session (and queues its messages) while it is
    /// disconnected, and so how long a subscription without any consumer keeps its messages.
    /// Default 86,400 s.
    pub session_expiry_secs: u32,
    /// How long a consumer's connection may be gone before the other consumers of its
    /// subscription take over what it held and what the broker queued for it: its will marks
    /// it `gone` as soon as the connection ends, and the others wait this long for it to come
    /// back before they drain its session. Default 2 s.
    pub handover_delay_secs: u32,
    /// After a broker restart, how long a publish to a topic waits for the consumers of its
    /// subscriptions to come back before bus anchors the missing subscriptions itself, so that
    /// nothing published in the meantime is discarded. Subscriptions without a live consumer are
    /// anchored at once. Default 3,000 ms.
    pub restore_grace_ms: u64,
    /// MQTT keep-alive, 5 to 65,535 s (MQTT's limit). Default 30 s.
    pub keep_alive_secs: u64,
    /// Largest MQTT packet sent or accepted. Default 16 MiB (rumqttc's own default is 10 KiB).
    pub max_packet_size: u32,
    /// Most unacked messages the broker sends one consumer (MQTT 5 receive maximum). Default 1000.
    pub receive_maximum: u16,
    /// Most QoS 1 and 2 publishes one connection keeps unconfirmed; more wait their turn (a
    /// broker's own receive maximum, Mosquitto's `max_inflight_messages`, lowers it further).
    /// rumqttc keeps a slot for each allowed one for the life of the connection (about 220
    /// bytes each: 65,535 would be about 14 MiB per connection, and every subscription has a
    /// connection of its own). Default 1,024.
    pub max_in_flight_publishes: u16,
    /// How long a publish may take, across reconnects and broker restarts, before it fails with
    /// a retryable error. Default 30 s.
    pub publish_timeout_ms: u64,
    /// How long connecting (and the first subscribe) may take before it is reported. Default 10 s.
    pub connect_timeout_ms: u64,
    /// First delay before reconnecting; doubled on each failure up to `reconnect_max_ms`, with
    /// jitter. Default 100 ms.
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnect attempts. Default 10,000 ms.
    pub reconnect_max_ms: u64,
    /// User name, if the broker wants one.
    #[serde(deserialize_with = "bus_core::config::option_string")]
    pub username: Option<String>,
    /// Password; never logged or shown by `Debug`.
    pub password: Option<Secret>,
    /// CA certificate (PEM) to verify an `mqtts://` broker. Default: the system's roots.
    #[serde(deserialize_with = "bus_core::config::option_path")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `client_key_file`.
    #[serde(deserialize_with = "bus_core::config::option_path")]
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[serde(deserialize_with = "bus_core::config::option_path")]
    pub client_key_file: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "bus".into(),
            qos: 1,
            session_expiry_secs: 86_400,
            handover_delay_secs: 2,
            restore_grace_ms: 3_000,
            keep_alive_secs: 30,
            max_packet_size: 16 * 1024 * 1024,
            receive_maximum: 1000,
            max_in_flight_publishes: 1024,
            publish_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 10_000,
            username: None,
            password: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &redact_url(&self.url))
            .field("client_id", &self.client_id)
            .field("qos", &self.qos)
            .field("session_expiry_secs", &self.session_expiry_secs)
            .field("handover_delay_secs", &self.handover_delay_secs)
            .field("restore_grace_ms", &self.restore_grace_ms)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("max_packet_size", &self.max_packet_size)
            .field("receive_maximum", &self.receive_maximum)
            .field("max_in_flight_publishes", &self.max_in_flight_publishes)
            .field("publish_timeout_ms", &self.publish_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("reconnect_min_ms", &self.reconnect_min_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish()
    }
}

/// Where the broker is, parsed from [`MqttConfig::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl MqttConfig {
    /// Checks every value, naming the key and the fix.
    pub fn validate(&self) -> Result<()> {
        self.checked_endpoint().map(|_| ())
    }

    /// Checks every value and returns where the broker is.
    pub(crate) fn checked_endpoint(&self) -> Result<Endpoint> {
        if self.qos > 2 {
            return Err(Error::config(
                BACKEND,
                format!("mqtt.qos = {} is not an MQTT QoS; use 0, 1 or 2", self.qos),
            ));
        }
        if self.client_id.is_empty() {
            return Err(Error::config(
                BACKEND,
                "mqtt.client_id is empty; set a prefix such as \"llm-dispatch\"",
            ));
        }
        if self.max_packet_size < 1024 {
            return Err(Error::config(
                BACKEND,
                format!(
                    "mqtt.max_packet_size = {} is too small; use at least 1024",
                    self.max_packet_size
                ),
            ));
        }
        if !(5..=65_535).contains(&self.keep_alive_secs) {
            return Err(Error::config(
                BACKEND,
                format!(
                    "mqtt.keep_alive_secs = {} is out of range; MQTT allows 5 to 65535 seconds (default 30)",
                    self.keep_alive_secs
                ),
            ));
        }
        if self.receive_maximum == 0 {
            return Err(Error::config(
                BACKEND,
                "mqtt.receive_maximum = 0 is not allowed; use 1 or more (default 1000)",
            ));
        }
        if self.max_in_flight_publishes == 0 {
            return Err(Error::config(
                BACKEND,
                "mqtt.max_in_flight_publishes = 0 would let no publish through; use 1 to 65535 (default 1024)",
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(Error::config(
                BACKEND,
                "mqtt.client_cert_file and mqtt.client_key_file go together; set both or neither",
            ));
        }
        self.endpoint()
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let shown = bus_core::printable(&redact_url(&self.url));
        let bad = |why: &str| {
            Error::config(
                BACKEND,
                format!("mqtt.url = \"{shown}\" {why}; use mqtt://HOST:PORT or mqtts://HOST:PORT"),
            )
        };
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| bad("has no scheme"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(bad("has an unknown scheme")),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(Error::config(
                BACKEND,
                format!(
                    "mqtt.url = \"{shown}\" has a user name or password in it; take them out of the URL and set mqtt.username and mqtt.password (BUS_MQTT__USERNAME, BUS_MQTT__PASSWORD)"
                ),
            ));
        }
        if !path.trim_matches('/').is_empty() {
            return Err(bad("has a path; an MQTT broker has none"));
        }
        let rest = authority;
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| bad("has an invalid port"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        Ok(Endpoint {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            tls,
        })
    }

    pub(crate) fn reconnect_delay(&self, failures: u32) -> Duration {
        let base = self
            .reconnect_min_ms
            .max(1)
            .saturating_mul(1u64 << failures.min(20))
            .min(self.reconnect_max_ms.max(1));
        // Full jitter in [base/2, base]: many clients never reconnect in lockstep.
        let jittered = base / 2 + rand::random_range(0..=base / 2);
        Duration::from_millis(jittered)
    }
}
