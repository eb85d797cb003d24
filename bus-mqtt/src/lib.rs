//! The MQTT 5 backend of bus, over [rumqttc], proven against Eclipse Mosquitto 2.0.11, 2.0.20
//! and 2.1.2.
//!
//! ```no_run
//! use bus_core::{Backend, Message, SubscriptionOptions, Topic};
//! use bus_mqtt::{MqttBackend, MqttConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> bus_core::Result<()> {
//! let config = MqttConfig { url: "mqtt://127.0.0.1:1883".into(), client_id: "llm-dispatch".into(), ..Default::default() };
//! let backend = MqttBackend::connect(&config).await?;
//! let (publisher, subscriber) = (backend.publisher(), backend.subscriber());
//! let topic = Topic::new("autopatch/cpg-scan-result")?;
//! let scans = subscriber.subscribe(&topic, SubscriptionOptions::new("llm-dispatch")?).await?;
//! publisher.publish(&topic, Message::new("scan")).await?;
//! let delivery = scans.receive().await?;
//! delivery.ack().await?;
//! backend.close().await?;
//! # Ok(()) }
//! ```
//!
//! # How the contract maps to MQTT
//!
//! - **Wire format.** The MQTT payload is exactly the message payload (no envelope), so plain
//!   clients (`mosquitto_pub`/`mosquitto_sub`, paho) interoperate both ways. Attributes travel
//!   as MQTT 5 user properties, except `content-type`, which is the MQTT 5 Content Type property
//!   (as the CloudEvents MQTT binding wants; a `content-type` user property from older bus
//!   versions is still read). bus adds `bus:id` (the message id), `bus:key` (the ordering key)
//!   and, on redeliveries, `bus:attempt`; attribute names starting with `bus:` are reserved.
//!   Messages from plain clients arrive with no attributes and an id made up on arrival.
//! - **Publish** is QoS 1 by default (`mqtt.qos`) and returns after PUBACK (PUBREC for QoS 2)
//!   once every subscription of the topic holds the message (the restore barrier below).
//! - **Subscriptions** are MQTT 5 shared subscriptions `$share/<name>/<topic>`: consumers with
//!   one name compete, different names fan out. Each consumer has a persistent session (clean
//!   start off, `mqtt.session_expiry_secs`) under a stable client id
//!   `<client_id>-<name>-<topic hash>-<n>`; PUBACK is sent only when the application acks.
//! - **Nack and the ack deadline** go through the subscription's retry topic (see `acks`):
//!   redelivered, never lost; dead-lettered after `max_delivery_attempts`.
//! - **Ordering** is not declared: shared subscriptions spread one key over several consumers
//!   and a redelivery goes behind later messages.
//! - **Connection.** Each connection's event loop is polled in its own task; it reconnects with
//!   exponential backoff and jitter and stops with a clear error on fatal refusals.
//!
//! # Durability on Mosquitto: what the broker does, and what bus adds
//!
//! Measured on Mosquitto 2.0.11, 2.0.20 and 2.1.2 alike: a persistent session keeps its plain
//! subscriptions and its queued messages across a broker restart, but **not its shared
//! subscriptions**; a message published before the consumers have subscribed again matches
//! nothing (PUBACK reason 16) and is discarded, or, when another subscription of the topic is
//! back, is acknowledged and missed by this one. And Mosquitto keeps giving a departed
//! persistent member of a shared subscription its turn of the messages, which wait in its
//! session until it returns or the session expires. bus-mqtt keeps every message of every
//! subscription through both with a small protocol on reserved topics under `_bus/`:
//!
//! - **Registry.** `_bus/sub/<name>/<topic>` (retained) says the subscription exists; consumers
//!   and [`create_subscription`](bus_core::Subscriber::create_subscription) write it.
//! - **Session states.** `_bus/slot/<name>/<hash>/<topic>` (retained) says what one session of
//!   the subscription is doing: `live` (written by its consumer on every connect), `gone`
//!   (written by its `close`, or by the broker from its will `mqtt.handover_delay_secs` after its
//!   connection died without a DISCONNECT), `anchor`, `draining`.
//! - **Hand-over.** Every consumer reads its subscription's session states. When a session goes
//!   `gone`, a live consumer takes it over (connects with its client id), unsubscribes it,
//!   sends itself a marker through it and delivers everything the session held — unacked
//!   deliveries first, as redeliveries — until the marker; acks go back through that session.
//!   Then its state entry is deleted; the emptied session has no subscription left, so the
//!   departed consumer no longer gets a turn, and it expires on its own. A consumer that leaves while others remain hands over within milliseconds; one that
//!   is killed, within `mqtt.handover_delay_secs` plus about a second (the broker's will
//!   timer); the last one to leave keeps its session, so the subscription stays durable.
//! - **Anchor.** The session `bus-anchor-<name>-<topic hash>` holds *plain* subscriptions to the
//!   topic, the retry topic and the probe topic, which survive restarts. `create_subscription`
//!   makes it; publishers make it when a subscription has lost its members (below). Its state
//!   `anchor` makes live consumers drain it like a departed session.
//! - **Restore barrier.** Each publisher reads the registry on every connect. Before its first
//!   publish to a topic on a connection it sends a probe (`_bus/probe/<name>/<topic>`, QoS 1,
//!   expiring after 60 s, skipped by consumers) for each registered subscription: a PUBACK
//!   without reason 16 proves the subscription has a member. A missing one is waited for
//!   (consumers resubscribe on reconnect) and anchored after `mqtt.restore_grace_ms`, or at once
//!   when it has no live consumer. The publish returns only when its PUBACK came after those
//!   probes on the same connection (the broker handles one connection's packets in order);
//!   otherwise it is sent again. So a publish never succeeds for a message the broker discarded
//!   for want of a subscription that exists: it is held, then fails with a retryable error after
//!   `mqtt.publish_timeout_ms`.
//!
//! Costs: one probe per registered subscription per topic after each connect; a few retained
//! messages per subscription and per consumer session; one connection for each hand-over and
//! anchoring. In the steady state a publish costs what a plain QoS 1 publish costs.
//!
//! **ACL.** Every bus client needs `topic readwrite _bus/#` besides its own topics; without it
//! connecting fails with a `PermissionDenied` error that names that line. The reserved topics
//! are trusted as far as the ACL trusts their writers: an entry that does not parse, or names a
//! session of another subscription, is logged (escaped, cut short) and skipped.
//!
//! **Broker crash.** Mosquitto writes its state to disk on shutdown and every `autosave_interval`
//! seconds; a broker killed with SIGKILL loses what changed since the last save, even messages
//! it had acknowledged. The configurations shipped here save every second (`autosave_interval 1`).
//!
//! **Limits.** `mqtt.max_packet_size` (default 16 MiB, far above rumqttc's 10 KiB) is checked
//! before sending. `mqtt.client_id` must be unique per running process: consumer client ids are
//! derived from it, and two processes with the same one take over each other's sessions. Every
//! broker bus uses must set `max_queued_messages 0` (or a bound far above any backlog):
//! Mosquitto silently drops QoS 1 messages beyond it (default 1000), and persistence must be on.
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod acks;
mod config;
mod connect;
mod publisher;
mod reserved;
mod subscriber;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bus_core::{Backend, Capabilities, Publisher, Result, Subscriber};

pub use bus_core::config::Secret;
pub use config::MqttConfig;
pub use publisher::MqttPublisher;
pub use subscriber::{MqttSubscriber, MqttSubscription};

use publisher::PublisherCore;

/// The backend's name, as reported in errors.
pub const BACKEND: &str = "mqtt";

/// User property carrying the message id.
pub const ID_PROPERTY: &str = "bus:id";
/// User property carrying the ordering key.
pub const KEY_PROPERTY: &str = "bus:key";
/// User property carrying the attempt number of a redelivery.
pub const ATTEMPT_PROPERTY: &str = "bus:attempt";
/// User property marking a publisher's probe (see the crate docs).
pub const PROBE_PROPERTY: &str = "bus:probe";
/// Attribute names starting with this are reserved for the properties above.
pub const RESERVED_PREFIX: &str = "bus:";
/// The attribute that travels as the MQTT 5 Content Type property.
pub const CONTENT_TYPE_ATTRIBUTE: &str = bus_core::typed::CONTENT_TYPE_ATTRIBUTE;

/// What this backend supports with `config`.
pub fn capabilities(config: &MqttConfig) -> Capabilities {
    let mut caps = Capabilities::none();
    caps.fan_out = true;
    caps.competing_consumers = true;
    caps.durable = true;
    caps.prompt_handover = true;
    caps.nack = true;
    caps.ack_deadline = true;
    caps.min_ack_deadline = Duration::from_secs(1);
    caps.max_ack_deadline = Duration::from_secs(600);
    caps.dead_letter = true;
    // Room for the topic, the bus properties and MQTT framing inside one packet.
    caps.max_message_bytes = (config.max_packet_size as usize).saturating_sub(4096);
    // One MQTT packet carries the properties too; Pub/Sub's portable limits stay.
    caps
}

/// What a backend's publishers and subscribers share.
pub(crate) struct Shared {
    config: MqttConfig,
    capabilities: Capabilities,
    /// The publisher connection: the backend's publishers use it, and its consumers for
    /// dead-lettering.
    publisher: Arc<PublisherCore>,
}

/// A connection to an MQTT broker: hands out publishers (sharing one connection) and
/// subscribers (one connection per consumer).
#[derive(Clone)]
pub struct MqttBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MqttBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttBackend")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl MqttBackend {
    /// Checks the config, connects the publisher connection and reads the subscription
    /// registry; fails within `mqtt.connect_timeout_ms` if no broker answers, at once on a
    /// fatal refusal (credentials), and with a `PermissionDenied` error naming the ACL line to
    /// add when the broker hides `_bus/#`.
    pub async fn connect(config: &MqttConfig) -> Result<Self> {
        config.validate()?;
        let capabilities = capabilities(config);
        let publisher = PublisherCore::connect(config, capabilities.clone()).await?;
        Ok(MqttBackend {
            shared: Arc::new(Shared {
                config: config.clone(),
                capabilities,
                publisher,
            }),
        })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &MqttConfig {
        &self.shared.config
    }
}

#[async_trait]
impl Backend for MqttBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.capabilities.clone()
    }

    /// A publisher on the backend's publisher connection.
    fn publisher(&self) -> Box<dyn Publisher> {
        Box::new(MqttPublisher::new(self.shared.publisher.clone()))
    }

    /// A subscriber; each of its consumers connects on its own.
    fn subscriber(&self) -> Box<dyn Subscriber> {
        Box::new(MqttSubscriber::new(self.shared.clone()))
    }

    /// Closes the publisher connection (after what is in flight); publishers made from this
    /// backend fail from then on. Subscriptions close on their own (`Subscription::close`,
    /// `Subscriber::close`).
    async fn close(&self) -> Result<()> {
        self.shared.publisher.close().await;
        Ok(())
    }
}
