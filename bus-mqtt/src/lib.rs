#![doc = include_str!("../README.md")]
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

/// A map on a path every message takes (packet ids, delivery tags, topics): hashed with
/// foldhash, not the standard SipHash, which showed in profiles.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What this backend supports with `config`.
pub(crate) fn capabilities(config: &MqttConfig) -> Capabilities {
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
