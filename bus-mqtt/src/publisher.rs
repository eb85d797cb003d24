//! Publishing: the message on the wire, and the restore barrier that keeps a publish from
//! succeeding while the broker would discard the message for a subscription that exists.
//!
//! The publisher's connection reads the subscription registry (`_bus/sub/#`) and the sessions'
//! states (`_bus/slot/#`) on every connect. Before the first publish to a topic on a connection,
//! it probes each registered subscription of the topic (`_bus/probe/<name>/<topic>`, QoS 1):
//! a PUBACK without reason 16 means the subscription has a member (a consumer's shared
//! subscription or its anchor's plain one). A missing one is waited for (its consumers
//! resubscribe after a broker restart) and, after `mqtt.restore_grace_ms` or at once if it has
//! no live consumer, anchored. A publish counts as done only when its PUBACK came after the
//! topic's probes on the same connection, since the broker handles one connection's packets in
//! order; otherwise it is verified again and sent again (a duplicate at worst).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bus_core::backend::PublishGate;
use bus_core::{
    Capabilities, Error, ErrorKind, Message, Publisher, Result, SubscriptionName, Topic,
};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::MqttConfig;
use crate::connect::{lock, qos, Confirmed, Connection, Handler, Matched, Session};
use crate::reserved::{self, Reserved, SlotState, SubscriptionKey};
use crate::{
    ATTEMPT_PROPERTY, BACKEND, CONTENT_TYPE_ATTRIBUTE, ID_PROPERTY, KEY_PROPERTY, RESERVED_PREFIX,
};

/// The MQTT 5 properties for `message`: the attributes as user properties (the content type
/// in the Content Type property, as the CloudEvents MQTT binding wants it), plus bus's own.
pub(crate) fn message_properties(
    message: &Message,
    id: &str,
    attempt: Option<u32>,
) -> PublishProperties {
    let mut user_properties = Vec::with_capacity(message.attributes.len() + 3);
    user_properties.push((ID_PROPERTY.to_string(), id.to_string()));
    if let Some(key) = &message.ordering_key {
        user_properties.push((KEY_PROPERTY.to_string(), key.clone()));
    }
    if let Some(attempt) = attempt {
        user_properties.push((ATTEMPT_PROPERTY.to_string(), attempt.to_string()));
    }
    let mut content_type = None;
    for (key, value) in &message.attributes {
        if key == CONTENT_TYPE_ATTRIBUTE {
            content_type = Some(value.clone());
        } else {
            user_properties.push((key.clone(), value.clone()));
        }
    }
    PublishProperties {
        user_properties,
        content_type,
        ..PublishProperties::default()
    }
}

/// What the publisher knows of the broker's subscriptions.
#[derive(Default)]
struct RegistryState {
    subscriptions: HashMap<Topic, BTreeSet<SubscriptionName>>,
    /// Per subscription, the state of each of its sessions (by client id hash).
    sessions: HashMap<SubscriptionKey, HashMap<String, SlotState>>,
    /// Topics whose registered subscriptions all had a member on a connection.
    verified: crate::FastMap<Topic, Verified>,
    /// When a subscription was first found missing, on which connection.
    missing_since: HashMap<SubscriptionKey, (u64, Instant)>,
    /// When each connection began, to bound the registry read.
    connected_at: (u64, Option<Instant>),
    /// The broker refused the registry subscription.
    refused: Option<(ErrorKind, String)>,
}

/// A topic's verification on one connection.
#[derive(Debug, Clone, Copy)]
struct Verified {
    epoch: u64,
    /// The answer position of its last probe: what the broker handled after it is safe.
    seq: u64,
    /// No subscription was registered: a message that matches nothing is discarded, as
    /// Pub/Sub discards what is published to a topic without subscriptions. (A subscription
    /// registered later was made on this broker run, so it is a member already.)
    unregistered: bool,
}

/// The publisher connection's handler: keeps the registry from the retained entries.
struct Registry {
    state: Mutex<RegistryState>,
    /// The connection epoch whose registry read is complete.
    synced: watch::Sender<u64>,
    /// Connection epochs whose subscriptions were accepted: the marker goes out then.
    subscribed: mpsc::UnboundedSender<u64>,
    mark: String,
}

impl Registry {
    fn nonce(epoch: u64) -> Bytes {
        Bytes::from(format!("registry-sync-{epoch}"))
    }
}

impl Handler for Registry {
    fn on_connected(&self, epoch: u64, _session_present: bool) {
        lock(&self.state).connected_at = (epoch, Some(Instant::now()));
    }

    fn on_subscribed(&self, epoch: u64, result: Result<()>) {
        match result {
            Ok(()) => {
                let _ = self.subscribed.send(epoch);
            }
            Err(e) => {
                tracing::error!(error = %e, "the broker refused bus-mqtt's registry subscription");
                lock(&self.state).refused = Some((e.kind(), e.message().to_string()));
                self.synced.send_modify(|_| {});
            }
        }
    }

    fn on_publish(&self, publish: Publish, epoch: u64, _client: &AsyncClient) {
        let topic = String::from_utf8_lossy(&publish.topic);
        match reserved::classify(&topic) {
            Some(Reserved::Registry { key }) => {
                let mut state = lock(&self.state);
                let names = state.subscriptions.entry(key.topic.clone()).or_default();
                if reserved::parse_registry(&key, &publish.payload).is_some() {
                    names.insert(key.name.clone());
                } else {
                    names.remove(&key.name);
                }
            }
            Some(Reserved::Slot { key, hash }) => {
                let entry = reserved::parse_slot(&key, &hash, &publish.payload);
                let mut state = lock(&self.state);
                let sessions = state.sessions.entry(key).or_default();
                match entry {
                    Some(entry) => sessions.insert(hash, entry.state),
                    None => sessions.remove(&hash),
                };
            }
            _ if *topic == self.mark && publish.payload == Registry::nonce(epoch) => {
                self.synced.send_replace(epoch);
            }
            _ => {}
        }
    }
}

/// A publisher connection with its registry, shared by a backend's publishers (and by its
/// consumers, for dead-lettering).
pub(crate) struct PublisherCore {
    connection: Connection,
    config: MqttConfig,
    capabilities: Capabilities,
    registry: Arc<Registry>,
    /// One verification at a time per topic; concurrent publishes wait for its result.
    verifying: Mutex<HashMap<Topic, Arc<tokio::sync::Mutex<()>>>>,
    qos: QoS,
}

impl std::fmt::Debug for PublisherCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherCore")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl PublisherCore {
    /// Connects and reads the registry; fails within `mqtt.connect_timeout_ms` if no broker
    /// answers or the registry cannot be read (an ACL without `_bus/#`).
    pub async fn connect(config: &MqttConfig, capabilities: Capabilities) -> Result<Arc<Self>> {
        let client_id = format!("{}-pub-{}", config.client_id, short_id());
        let mark = reserved::mark_topic(&client_id);
        let (subscribed_tx, mut subscribed_rx) = mpsc::unbounded_channel();
        let registry = Arc::new(Registry {
            state: Mutex::default(),
            synced: watch::channel(0).0,
            subscribed: subscribed_tx,
            mark: mark.clone(),
        });
        let session = Session {
            client_id,
            // No broker session needed: what was not confirmed is sent again by the client.
            clean_start: true,
            session_expiry_secs: 0,
            will: None,
            subscriptions: vec![
                Filter::new(format!("{}sub/#", reserved::PREFIX), QoS::AtLeastOnce),
                Filter::new(format!("{}slot/#", reserved::PREFIX), QoS::AtLeastOnce),
                Filter::new(mark.clone(), QoS::AtLeastOnce),
            ],
            reconnect: true,
            manual_acks: false,
        };
        let connection = Connection::open(config, session, registry.clone()).await?;
        let core = Arc::new(PublisherCore {
            connection,
            config: config.clone(),
            capabilities,
            registry,
            verifying: Mutex::default(),
            qos: qos(config.qos),
        });
        // After each connect's SUBACK the retained entries are on their way: a marker sent to
        // ourselves arrives after them.
        let weak: Weak<PublisherCore> = Arc::downgrade(&core);
        tokio::spawn(async move {
            while let Some(epoch) = subscribed_rx.recv().await {
                let Some(core) = weak.upgrade() else { return };
                let deadline = Instant::now() + core.publish_timeout();
                let sent = core
                    .connection
                    .publish(
                        &mark,
                        QoS::AtLeastOnce,
                        false,
                        Registry::nonce(epoch),
                        PublishProperties::default(),
                        deadline,
                    )
                    .await;
                if let Err(e) = sent {
                    if e.kind() == ErrorKind::PermissionDenied {
                        lock(&core.registry.state).refused =
                            Some((e.kind(), e.message().to_string()));
                        core.registry.synced.send_modify(|_| {});
                    }
                    tracing::warn!(error = %e, "could not send the registry marker");
                }
            }
        });
        let deadline = Instant::now() + Duration::from_millis(config.connect_timeout_ms);
        core.registry_read(deadline).await?;
        Ok(core)
    }

    fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.config.publish_timeout_ms)
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.connection.close().await;
    }

    /// Waits until the registry is read on the current connection; returns its epoch.
    async fn registry_read(&self, deadline: Instant) -> Result<u64> {
        let mut synced = self.registry.synced.subscribe();
        loop {
            let epoch = self.connection.connected(deadline).await?;
            let (started, refused) = {
                let state = lock(&self.registry.state);
                let started = match state.connected_at {
                    (e, Some(at)) if e == epoch => at,
                    _ => Instant::now(),
                };
                (started, state.refused.clone())
            };
            if let Some((kind, message)) = refused {
                return Err(Error::new(kind, BACKEND, message));
            }
            if *synced.borrow_and_update() == epoch {
                return Ok(epoch);
            }
            let limit =
                (started + Duration::from_millis(self.config.connect_timeout_ms)).min(deadline);
            if tokio::time::timeout_at(limit, synced.changed())
                .await
                .is_err()
            {
                if limit == deadline {
                    return Err(self.held_error("the subscription registry has not been read yet"));
                }
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    BACKEND,
                    format!(
                        "bus-mqtt could not read its subscription registry on the broker at {} (it subscribed to `{}sub/#` and never got its own marker back); the broker's ACL probably hides it: {}",
                        self.config.url,
                        reserved::PREFIX,
                        crate::connect::acl_hint(self.config.username.as_deref(), reserved::PREFIX)
                    ),
                ));
            }
        }
    }

    fn held_error(&self, why: &str) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            BACKEND,
            format!(
                "the publish was held for mqtt.publish_timeout_ms = {} and not sent: {why}",
                self.config.publish_timeout_ms
            ),
        )
        .with_retryable(true)
    }

    /// Whether `topic` was verified on connection `epoch`.
    fn verified(&self, topic: &Topic, epoch: u64) -> bool {
        lock(&self.registry.state)
            .verified
            .get(topic)
            .is_some_and(|v| v.epoch == epoch)
    }

    /// Whether a confirmed publish reached every registered subscription of its topic: its
    /// PUBACK came after the topic's verification on the same connection, and it matched (or
    /// nothing was registered to match).
    fn delivered(&self, topic: &Topic, confirmed: Confirmed) -> bool {
        let mut state = lock(&self.registry.state);
        let Some(verified) = state.verified.get(topic).copied() else {
            return false;
        };
        let in_order = verified.epoch == confirmed.epoch && confirmed.seq > verified.seq;
        if confirmed.matched == Matched::No && !verified.unregistered {
            // Registered, yet nothing matched: look again (an anchor may have expired).
            state.verified.remove(topic);
            return false;
        }
        in_order
    }

    /// Makes sure every registered subscription of `topic` has a member on the current
    /// connection, waiting for consumers to come back and anchoring where needed.
    async fn verify(&self, topic: &Topic, deadline: Instant) -> Result<()> {
        let lock_for_topic = lock(&self.verifying)
            .entry(topic.clone())
            .or_default()
            .clone();
        let _verifying = lock_for_topic.lock().await;
        let mut pause = Duration::from_millis(50);
        let mut warned = false;
        loop {
            let epoch = self.registry_read(deadline).await?;
            if self.verified(topic, epoch) {
                return Ok(());
            }
            let names: Vec<SubscriptionName> = lock(&self.registry.state)
                .subscriptions
                .get(topic)
                .map(|names| names.iter().cloned().collect())
                .unwrap_or_default();
            let probes = names.iter().map(|name| {
                let key = SubscriptionKey::new(name.clone(), topic.clone());
                async move {
                    let answer = self
                        .connection
                        .publish(
                            &key.probe_topic(),
                            QoS::AtLeastOnce,
                            false,
                            Bytes::new(),
                            reserved::probe_properties(),
                            deadline,
                        )
                        .await;
                    (key, answer)
                }
            });
            let mut missing = Vec::new();
            let mut last_seq = 0;
            let mut complete = true;
            for (key, answer) in futures::future::join_all(probes).await {
                match answer {
                    Ok(c) if c.epoch != epoch => complete = false,
                    Ok(c) if c.matched == Matched::Yes => last_seq = last_seq.max(c.seq),
                    Ok(_) => missing.push(key),
                    Err(e) if e.kind() == ErrorKind::PermissionDenied => return Err(e),
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => complete = false,
                }
            }
            tracing::debug!(%topic, epoch, complete, missing = missing.len(), last_seq, "verified");
            if complete && missing.is_empty() {
                let mut state = lock(&self.registry.state);
                let verified = Verified {
                    epoch,
                    seq: last_seq,
                    unregistered: names.is_empty(),
                };
                state.verified.insert(topic.clone(), verified);
                state.missing_since.retain(|key, _| &key.topic != topic);
                return Ok(());
            }
            if !missing.is_empty() {
                if !warned {
                    let names: Vec<&str> = missing.iter().map(|k| k.name.as_str()).collect();
                    tracing::warn!(%topic, subscriptions = ?names, "publishes wait: registered subscriptions have no member on the broker (restarted?)");
                    warned = true;
                }
                self.anchor_missing(&missing, epoch).await;
            }
            if Instant::now() + pause >= deadline {
                let names: Vec<&str> = missing.iter().map(|k| k.name.as_str()).collect();
                return Err(self.held_error(&format!(
                    "subscriptions {names:?} registered on {topic} have no consumer on the broker and could not be anchored"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Anchors the missing subscriptions whose consumers all left (closed), at once, and the
    /// others once they waited longer than the grace period for theirs: a consumer that is
    /// live or gone without closing (Mosquitto fires the wills of connected clients when it
    /// stops) is expected back after a restart.
    async fn anchor_missing(&self, missing: &[SubscriptionKey], epoch: u64) {
        let grace = Duration::from_millis(self.config.restore_grace_ms);
        let now = Instant::now();
        let due: Vec<&SubscriptionKey> = {
            let mut state = lock(&self.registry.state);
            missing
                .iter()
                .filter(|key| {
                    let expected = state.sessions.get(*key).is_some_and(|s| {
                        s.values().any(|st| {
                            matches!(st, SlotState::Live | SlotState::Gone | SlotState::Draining)
                        })
                    });
                    let since = state
                        .missing_since
                        .entry((*key).clone())
                        .or_insert((epoch, now));
                    if since.0 != epoch {
                        *since = (epoch, now);
                    }
                    !expected || now.duration_since(since.1) >= grace
                })
                .collect()
        };
        for key in due {
            match reserved::anchor(&self.config, key).await {
                Ok(()) => {
                    tracing::info!(subscription = %key.name, topic = %key.topic, "anchored a subscription without consumers: its messages are kept for its next consumer")
                }
                Err(e) => {
                    tracing::debug!(subscription = %key.name, topic = %key.topic, error = %e, "anchoring failed; trying again")
                }
            }
        }
    }

    /// Publishes `message` with id `id` and returns once every registered subscription of the
    /// topic holds it (see the module docs).
    pub async fn publish_message(&self, topic: &Topic, message: &Message, id: &str) -> Result<()> {
        let deadline = Instant::now() + self.publish_timeout();
        loop {
            if self.qos != QoS::AtMostOnce {
                let current = self.connection.epoch();
                if !current.is_some_and(|epoch| self.verified(topic, epoch)) {
                    self.verify(topic, deadline).await?;
                }
            }
            let confirmed = self
                .connection
                .publish(
                    topic.as_str(),
                    self.qos,
                    false,
                    message.payload.clone(),
                    message_properties(message, id, None),
                    deadline,
                )
                .await;
            let confirmed = match confirmed {
                Ok(confirmed) => confirmed,
                // Lost with the connection before its PUBACK: send it again.
                Err(e) if e.kind() == ErrorKind::Unavailable && Instant::now() < deadline => {
                    continue
                }
                Err(e) => return Err(e),
            };
            if self.qos == QoS::AtMostOnce || self.delivered(topic, confirmed) {
                return Ok(());
            }
            tracing::debug!(%topic, "a publish was confirmed before its topic was verified on this connection; sending it again");
        }
    }
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Publishes to MQTT topics over its backend's publisher connection.
///
/// `close` stops this publisher (after what it has in flight); the connection, shared with
/// the backend's other publishers, closes with the backend (`Backend::close`).
pub struct MqttPublisher {
    core: Arc<PublisherCore>,
    gate: PublishGate,
}

impl std::fmt::Debug for MqttPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttPublisher")
            .field("connection", &self.core.connection)
            .field("closed", &self.gate.is_closed())
            .finish()
    }
}

impl MqttPublisher {
    pub(crate) fn new(core: Arc<PublisherCore>) -> Self {
        MqttPublisher {
            core,
            gate: PublishGate::default(),
        }
    }
}

#[async_trait]
impl Publisher for MqttPublisher {
    async fn publish(&self, topic: &Topic, message: Message) -> Result<String> {
        let _publishing = self.gate.enter(BACKEND)?;
        self.publish_one(topic, message).await
    }

    /// Pipelined: the topic's subscriptions are verified once, then every message is written
    /// before the first PUBACK is awaited.
    async fn publish_batch(&self, topic: &Topic, messages: Vec<Message>) -> Vec<Result<String>> {
        let count = messages.len();
        self.gate
            .batch(BACKEND, count, || {
                let sends = messages
                    .into_iter()
                    .map(|message| self.publish_one(topic, message));
                futures::future::join_all(sends)
            })
            .await
    }

    async fn flush(&self) -> Result<()> {
        self.gate.flush().await;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.gate.close().await;
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.core.capabilities.clone()
    }
}

impl MqttPublisher {
    /// Publishes one message (the caller entered the gate).
    async fn publish_one(&self, topic: &Topic, message: Message) -> Result<String> {
        self.core.capabilities.check_message(BACKEND, &message)?;
        if let Some(key) = message
            .attributes
            .keys()
            .find(|k| k.starts_with(RESERVED_PREFIX))
        {
            return Err(Error::invalid_argument(
                BACKEND,
                format!(
                    "attribute {:?}: names starting with {RESERVED_PREFIX:?} are reserved by bus",
                    bus_core::printable(key)
                ),
            ));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.core.publish_message(topic, &message, &id).await?;
        Ok(id)
    }
}
