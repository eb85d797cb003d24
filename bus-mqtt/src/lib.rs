//! The MQTT 5 backend of bus, over [rumqttc], proven against Eclipse Mosquitto.
//!
//! # How the contract maps to MQTT
//!
//! - **Wire format.** The MQTT payload is exactly the message payload (no envelope), so plain
//!   clients (`mosquitto_pub`/`mosquitto_sub`, paho) interoperate both ways. Attributes travel
//!   as MQTT 5 user properties; bus adds `bus:id` (the message id), `bus:key` (the ordering key)
//!   and, on redeliveries, `bus:attempt`. Attribute names starting with `bus:` are reserved.
//!   Messages from plain clients arrive with no attributes and an id made up on arrival.
//! - **Publish** is QoS 1 by default (`mqtt.qos`) and returns after PUBACK (PUBCOMP for QoS 2);
//!   publishes made while the connection is down wait, and are sent after reconnecting, up to
//!   `mqtt.publish_timeout_ms`.
//! - **Subscriptions** are MQTT 5 shared subscriptions `$share/<name>/<topic>`: consumers with
//!   one name compete, different names fan out. Each consumer has a persistent session
//!   (clean start off, `mqtt.session_expiry_secs`) under a stable client id
//!   `<client_id>-<name>-<topic hash>-<n>`, so messages published while it is away are queued
//!   by the broker and delivered when it returns.
//! - **Acks are manual**: PUBACK is sent only when the application acks, so a consumer that
//!   dies unacked gets its messages again from the broker.
//! - **Nack and the ack deadline.** MQTT has no nack. On nack (or when a delivery is not settled
//!   within the ack deadline) the backend first publishes the message, with `bus:attempt`
//!   increased, to the subscription's own retry topic `_bus/retry/<name>/<topic>` (to which only
//!   this subscription's consumers are subscribed, so no other subscription sees it again),
//!   waits for the broker's PUBACK, and only then PUBACKs the original. If the process dies in
//!   between, the broker still has the original: a duplicate, never a loss. Once the attempts
//!   reach the dead-letter policy's maximum the message is published to the dead-letter topic
//!   instead, with its attributes.
//! - **Ordering** is not declared: shared subscriptions spread one key over several consumers
//!   and a redelivery goes behind later messages.
//! - **Connection.** The event loop is polled in its own task; it reconnects with exponential
//!   backoff and jitter, resubscribes when the broker has no session, and stops with a clear
//!   error on fatal refusals (bad credentials, not authorised).
//! - **Broker restarts.** Mosquitto 2.0.11 restores persistent sessions from its persistence
//!   file without their shared subscriptions, so consumers resubscribe on every connect, and a
//!   PUBACK is only sent on the connection a message arrived on (after a reconnect the broker
//!   resends unacked messages, and a late PUBACK could hit another message reusing the packet
//!   id). A message published before the consumers are back matches nothing and is discarded
//!   (reason code 16) unless the publisher sets `mqtt.retry_unmatched_ms`.
//! - **Instances.** `mqtt.client_id` must be unique per running process: consumer client ids
//!   are derived from it, and two processes with the same one take over each other's sessions.
//! - **Limits.** `mqtt.max_packet_size` (default 16 MiB, far above rumqttc's 10 KiB) is checked
//!   before sending.
#![deny(missing_docs)]

mod config;
mod connection;
mod tls;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bus_core::{
    Acker, Capabilities, Delivery, Error, ErrorKind, Message, Publisher, Result, Subscriber,
    Subscription, SubscriptionOptions, Topic,
};
use rumqttc::v5::mqttbytes::v5::{Filter, Publish, PublishProperties, SubAck, SubscribeReasonCode};
use rumqttc::v5::AsyncClient;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{MqttConfig, Secret};
use connection::{lock, Connection, Handler, Matched, NoHandler};

/// The backend's name, as reported in errors.
pub const BACKEND: &str = "mqtt";

/// User property carrying the message id.
pub const ID_PROPERTY: &str = "bus:id";
/// User property carrying the ordering key.
pub const KEY_PROPERTY: &str = "bus:key";
/// User property carrying the attempt number of a redelivery.
pub const ATTEMPT_PROPERTY: &str = "bus:attempt";
/// Attribute names starting with this are reserved for the properties above.
pub const RESERVED_PREFIX: &str = "bus:";

/// What this backend supports with `config`.
pub fn capabilities(config: &MqttConfig) -> Capabilities {
    Capabilities {
        ordering: false,
        min_ack_deadline: Duration::from_secs(1),
        // Room for the topic, the bus properties and MQTT framing inside one packet.
        max_message_bytes: (config.max_packet_size as usize).saturating_sub(4096),
        ..Capabilities::everything()
    }
}

// ---------------------------------------------------------------------------------------------
// Publish
// ---------------------------------------------------------------------------------------------

/// Publishes over one MQTT connection.
pub struct MqttPublisher {
    connection: Connection,
    capabilities: Capabilities,
    retry_unmatched: Duration,
    closed: AtomicBool,
    /// Publishes hold it shared; flush and close take it exclusively to wait for them.
    in_flight: tokio::sync::RwLock<()>,
}

impl MqttPublisher {
    /// Connects; fails within `mqtt.connect_timeout_ms` if no broker answers, and at once on a
    /// fatal refusal.
    pub async fn connect(config: &MqttConfig) -> Result<Self> {
        let client_id = format!("{}-pub-{}", config.client_id, short_id());
        // No broker session needed: unconfirmed publishes are replayed by the client itself.
        let connection = Connection::open(config, client_id, true, 0, Arc::new(NoHandler)).await?;
        Ok(MqttPublisher {
            connection,
            capabilities: capabilities(config),
            retry_unmatched: Duration::from_millis(config.retry_unmatched_ms),
            closed: AtomicBool::new(false),
            in_flight: tokio::sync::RwLock::new(()),
        })
    }
}

fn properties(message: &Message, id: &str, attempt: Option<u32>) -> PublishProperties {
    let mut user_properties = Vec::with_capacity(message.attributes.len() + 3);
    user_properties.push((ID_PROPERTY.to_string(), id.to_string()));
    if let Some(key) = &message.ordering_key {
        user_properties.push((KEY_PROPERTY.to_string(), key.clone()));
    }
    if let Some(attempt) = attempt {
        user_properties.push((ATTEMPT_PROPERTY.to_string(), attempt.to_string()));
    }
    user_properties.extend(
        message
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    PublishProperties {
        user_properties,
        ..PublishProperties::default()
    }
}

#[async_trait]
impl Publisher for MqttPublisher {
    async fn publish(&self, topic: &Topic, message: Message) -> Result<String> {
        let _in_flight = self.in_flight.read().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BACKEND, "publisher"));
        }
        self.capabilities.check_message(BACKEND, &message)?;
        if let Some(key) = message
            .attributes
            .keys()
            .find(|k| k.starts_with(RESERVED_PREFIX))
        {
            return Err(Error::invalid_argument(
                BACKEND,
                format!("attribute {key:?}: names starting with {RESERVED_PREFIX:?} are reserved by bus"),
            ));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let props = properties(&message, &id, None);
        let give_up = Instant::now() + self.retry_unmatched;
        let mut pause = Duration::from_millis(20);
        if self.retry_unmatched.is_zero() {
            self.connection
                .publish(topic.as_str(), message.payload, props)
                .await?;
            return Ok(id);
        }
        loop {
            let matched = self
                .connection
                .publish(topic.as_str(), message.payload.clone(), props.clone())
                .await?;
            if matched == Matched::Yes {
                return Ok(id);
            }
            if Instant::now() + pause > give_up {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    BACKEND,
                    format!(
                        "no subscription matched topic {topic} for {:?} (mqtt.retry_unmatched_ms); the broker discarded the message",
                        self.retry_unmatched
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    async fn flush(&self) -> Result<()> {
        drop(self.in_flight.write().await);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        drop(self.in_flight.write().await);
        self.connection.close().await;
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Subscribe
// ---------------------------------------------------------------------------------------------

/// Makes MQTT consumers (one connection and persistent session each).
pub struct MqttSubscriber {
    config: MqttConfig,
    closed: CancellationToken,
}

impl MqttSubscriber {
    /// A subscriber; connections are made per subscription.
    pub fn new(config: &MqttConfig) -> Result<Self> {
        config.validate()?;
        Ok(MqttSubscriber {
            config: config.clone(),
            closed: CancellationToken::new(),
        })
    }
}

/// Consumer slots in use in this process, per client-id base, so that each consumer of one
/// subscription gets its own stable session (`...-0`, `...-1`, ...).
fn slots() -> &'static Mutex<HashMap<String, BTreeSet<usize>>> {
    static SLOTS: OnceLock<Mutex<HashMap<String, BTreeSet<usize>>>> = OnceLock::new();
    SLOTS.get_or_init(Default::default)
}

struct Slot {
    base: String,
    index: usize,
}

impl Slot {
    fn take(base: String) -> Slot {
        let mut slots = lock(slots());
        let used = slots.entry(base.clone()).or_default();
        let index = (0..).find(|i| !used.contains(i)).unwrap_or(0);
        used.insert(index);
        Slot { base, index }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(used) = lock(slots()).get_mut(&self.base) {
            used.remove(&self.index);
        }
    }
}

/// FNV-1a: a hash that stays the same across Rust versions, for stable client ids.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Receives the connection's events for one consumer.
struct ConsumerHandler {
    filters: Vec<Filter>,
    incoming: mpsc::UnboundedSender<Received>,
    /// Counts connections (CONNACKs). A PUBACK only means something on the connection the
    /// message arrived on: after a reconnect the broker resends unacked messages (same packet
    /// id, DUP set) and a late PUBACK could hit another message that reuses the id.
    generation: AtomicU64,
    first_suback: Mutex<Option<oneshot::Sender<Result<()>>>>,
}

impl Handler for ConsumerHandler {
    fn on_connected(&self, session_present: bool, client: &AsyncClient) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Subscribe on every connection, even when the broker says it has our session:
        // rumqttc does not resubscribe by itself, and Mosquitto 2.0 restores a persistent
        // session after a restart without its shared subscriptions (measured with 2.0.11).
        let _ = session_present;
        let (client, filters) = (client.clone(), self.filters.clone());
        // Never block the polling task on the request channel.
        tokio::spawn(async move {
            if let Err(e) = client.subscribe_many(filters).await {
                tracing::warn!(error = %e, "MQTT subscribe request failed");
            }
        });
    }

    fn on_publish(&self, publish: Publish) {
        // Bounded by the receive maximum: the broker sends no more than that unacked.
        let generation = self.generation.load(Ordering::Acquire);
        let _ = self.incoming.send(Received {
            publish,
            generation,
        });
    }

    fn on_suback(&self, suback: SubAck) {
        let refused = suback
            .return_codes
            .iter()
            .find(|code| !matches!(code, SubscribeReasonCode::Success(_)));
        let result = match refused {
            None => Ok(()),
            Some(SubscribeReasonCode::NotAuthorized) => Err(Error::new(
                ErrorKind::PermissionDenied,
                BACKEND,
                "the broker refused the subscription: not authorized (check its ACL for this user and topic)",
            )),
            Some(code) => Err(Error::new(
                ErrorKind::Internal,
                BACKEND,
                format!("the broker refused the subscription: {code:?}"),
            )),
        };
        if let Some(tx) = lock(&self.first_suback).take() {
            let _ = tx.send(result);
        } else if let Err(e) = result {
            tracing::error!(error = %e, "resubscribe refused");
        }
    }
}

#[async_trait]
impl Subscriber for MqttSubscriber {
    async fn subscribe(
        &self,
        topic: &Topic,
        options: SubscriptionOptions,
    ) -> Result<Box<dyn Subscription>> {
        if self.closed.is_cancelled() {
            return Err(Error::closed(BACKEND, "subscriber"));
        }
        let capabilities = capabilities(&self.config);
        options.check(BACKEND, &capabilities)?;
        let name = options.name.as_str();
        let retry_topic = format!("_bus/retry/{name}/{topic}");
        let qos = connection::qos(self.config.qos);
        let filters = vec![
            Filter::new(format!("$share/{name}/{topic}"), qos),
            Filter::new(format!("$share/{name}/{retry_topic}"), qos),
        ];
        let slot = Slot::take(format!(
            "{}-{name}-{:016x}",
            self.config.client_id,
            stable_hash(topic.as_str())
        ));
        let client_id = format!("{}-{}", slot.base, slot.index);
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let (suback_tx, suback_rx) = oneshot::channel();
        let handler = Arc::new(ConsumerHandler {
            filters,
            incoming: incoming_tx,
            generation: AtomicU64::new(0),
            first_suback: Mutex::new(Some(suback_tx)),
        });
        let connection = Connection::open(
            &self.config,
            client_id,
            false,
            self.config.session_expiry_secs,
            handler.clone(),
        )
        .await?;
        let wait = Duration::from_millis(self.config.connect_timeout_ms);
        let subscribed = match tokio::time::timeout(wait, suback_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::closed(BACKEND, "MQTT connection")),
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                format!("the broker did not confirm the subscription to {topic} within {wait:?}"),
            )),
        };
        if let Err(e) = subscribed {
            connection.close().await;
            return Err(e);
        }
        let consumer = Arc::new(Consumer {
            connection,
            topic: topic.clone(),
            retry_topic,
            options,
            incoming: tokio::sync::Mutex::new(incoming_rx),
            handler,
            in_flight: Mutex::default(),
            next_tag: AtomicU64::new(0),
            closed: self.closed.child_token(),
            _slot: slot,
        });
        tokio::spawn(sweep_deadlines(Arc::downgrade(&consumer)));
        Ok(Box::new(MqttSubscription(consumer)))
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(&self.config)
    }
}

/// A message as it came from the connection.
struct Received {
    publish: Publish,
    generation: u64,
}

/// A delivery handed to the application and not settled yet.
struct InFlight {
    received: Received,
    message: Message,
    id: Arc<str>,
    attempt: u32,
    deadline: Instant,
}

struct Consumer {
    connection: Connection,
    topic: Topic,
    retry_topic: String,
    options: SubscriptionOptions,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    handler: Arc<ConsumerHandler>,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    next_tag: AtomicU64,
    closed: CancellationToken,
    _slot: Slot,
}

/// One MQTT consumer attached to a subscription.
pub struct MqttSubscription(Arc<Consumer>);

impl Consumer {
    fn deliver(self: &Arc<Self>, received: Received) -> Delivery {
        let publish = &received.publish;
        let mut message = Message::new(publish.payload.clone());
        let mut id = None;
        let mut attempt = 1;
        if let Some(props) = &publish.properties {
            for (key, value) in &props.user_properties {
                match key.as_str() {
                    ID_PROPERTY => id = Some(value.clone()),
                    KEY_PROPERTY => message.ordering_key = Some(value.clone()),
                    ATTEMPT_PROPERTY => attempt = value.parse().unwrap_or(2),
                    _ => {
                        message.attributes.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        if publish.dup {
            // The broker resent it after a lost connection: at least one attempt came before.
            attempt = attempt.max(2);
        }
        // Plain MQTT clients send no id: make one up so the delivery still has one.
        let id: Arc<str> = id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
            .into();
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.options.ack_deadline;
        let delivery = Delivery::new(
            message.clone(),
            id.clone(),
            attempt,
            self.topic.clone(),
            Box::new(MqttAcker {
                consumer: self.clone(),
                tag,
            }),
        );
        lock(&self.in_flight).insert(
            tag,
            InFlight {
                received,
                message,
                id,
                attempt,
                deadline,
            },
        );
        delivery
    }

    async fn ack(&self, tag: u64) -> Result<()> {
        let Some(entry) = lock(&self.in_flight).remove(&tag) else {
            return Ok(());
        };
        self.puback(&entry.received).await
    }

    async fn puback(&self, received: &Received) -> Result<()> {
        if received.generation != self.handler.generation.load(Ordering::Acquire) {
            // Received on an earlier connection: the broker has resent it (or lost our session);
            // the resent copy is acked when its own delivery is settled.
            return Ok(());
        }
        self.connection
            .client
            .ack(&received.publish)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Closed,
                    BACKEND,
                    "the consumer's connection is closed; the broker will redeliver the message",
                )
                .with_source(e)
            })
    }

    /// Redelivers through the retry topic (or dead-letters), then PUBACKs the original. On
    /// failure the delivery stays in flight and the deadline sweep tries again.
    async fn redeliver(&self, tag: u64) -> Result<()> {
        let Some(entry) = lock(&self.in_flight).remove(&tag) else {
            return Ok(());
        };
        let dead_letter = self
            .options
            .dead_letter
            .as_ref()
            .filter(|policy| entry.attempt >= policy.max_delivery_attempts);
        let published = match dead_letter {
            Some(policy) => {
                let props = properties(&entry.message, &entry.id, None);
                self.connection
                    .publish(policy.topic.as_str(), entry.message.payload.clone(), props)
                    .await
            }
            None => {
                let props = properties(&entry.message, &entry.id, Some(entry.attempt + 1));
                self.connection
                    .publish(&self.retry_topic, entry.message.payload.clone(), props)
                    .await
            }
        };
        match published {
            Ok(_) => self.puback(&entry.received).await,
            Err(e) => {
                let deadline = Instant::now() + self.options.ack_deadline;
                lock(&self.in_flight).insert(tag, InFlight { deadline, ..entry });
                Err(e)
            }
        }
    }
}

/// Redelivers deliveries whose ack deadline passed, until the consumer is gone.
async fn sweep_deadlines(consumer: Weak<Consumer>) {
    let period = match consumer.upgrade() {
        Some(c) => (c.options.ack_deadline / 4).min(Duration::from_millis(250)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        if consumer.closed.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let expired: Vec<u64> = lock(&consumer.in_flight)
            .iter()
            .filter(|(_, entry)| entry.deadline <= now)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in expired {
            if let Err(e) = consumer.redeliver(tag).await {
                tracing::warn!(error = %e, "redelivery after the ack deadline failed; retrying later");
            }
        }
    }
}

#[async_trait]
impl Subscription for MqttSubscription {
    async fn receive(&self) -> Result<Delivery> {
        let consumer = &self.0;
        let mut incoming = tokio::select! {
            _ = consumer.closed.cancelled() => return Err(Error::closed(BACKEND, "subscription")),
            incoming = consumer.incoming.lock() => incoming,
        };
        tokio::select! {
            _ = consumer.closed.cancelled() => Err(Error::closed(BACKEND, "subscription")),
            publish = incoming.recv() => match publish {
                Some(received) => Ok(consumer.deliver(received)),
                None => Err(Error::closed(BACKEND, "subscription")),
            },
        }
    }

    async fn close(&self) -> Result<()> {
        self.0.closed.cancel();
        // DISCONNECT keeps the session: unacked and later messages wait for the next consumer.
        self.0.connection.close().await;
        Ok(())
    }
}

impl Drop for MqttSubscription {
    fn drop(&mut self) {
        self.0.closed.cancel();
    }
}

struct MqttAcker {
    consumer: Arc<Consumer>,
    tag: u64,
}

#[async_trait]
impl Acker for MqttAcker {
    async fn ack(&self) -> Result<()> {
        self.consumer.ack(self.tag).await
    }

    async fn nack(&self) -> Result<()> {
        self.consumer.redeliver(self.tag).await
    }
}
