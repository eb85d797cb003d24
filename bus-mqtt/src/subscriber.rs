//! Subscribing: one consumer per `subscribe`, on a persistent session of its own that holds a
//! share of the subscription; hand-over of what departed sessions and the anchor hold.
//!
//! A consumer's session (`<client_id>-<name>-<topic hash>-<slot>`) subscribes to its share of
//! the topic, of the subscription's retry and probe topics, and to the subscription's session
//! states (`_bus/slot/<name>/+/<topic>`). On every connect it writes the registry entry and its
//! own state `live`; its will (when its connection ends without DISCONNECT) writes `gone`, its
//! `close` writes `left`.
//! When a consumer sees another session of its subscription `left`, still `gone`
//! `mqtt.handover_delay_secs` later, or the anchor holding messages, it drains it: it takes the session over, removes its subscriptions, sends itself
//! a marker through it, and delivers what arrives before the marker (redeliveries first) as its
//! own deliveries, acked through that session. Once all are settled it deletes the state entry;
//! the emptied session (no subscriptions, no messages) expires on its own — deleting it could
//! hit its consumer, back in the meantime under the same client id.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bus_core::backend::Lifecycle;
use bus_core::{
    Capabilities, Delivery, Error, ErrorKind, Message, Result, Subscriber, Subscription,
    SubscriptionOptions, Topic,
};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::acks::sweep_deadlines;
use crate::connect::{lock, qos, Connection, Handler, Session};
use crate::reserved::{self, Reserved, SlotEntry, SlotState, SubscriptionKey};
use crate::{Shared, ATTEMPT_PROPERTY, BACKEND, CONTENT_TYPE_ATTRIBUTE, ID_PROPERTY, KEY_PROPERTY};

/// Makes consumers of MQTT subscriptions (one connection and persistent session each).
pub struct MqttSubscriber {
    shared: Arc<Shared>,
    lifecycle: Lifecycle,
    consumers: Mutex<Vec<Weak<Consumer>>>,
}

impl std::fmt::Debug for MqttSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSubscriber")
            .field("client_id", &self.shared.config.client_id)
            .field("closed", &self.lifecycle.is_closed())
            .finish()
    }
}

impl MqttSubscriber {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        MqttSubscriber {
            shared,
            lifecycle: Lifecycle::new(),
            consumers: Mutex::default(),
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
        let lifecycle = self
            .lifecycle
            .admit(BACKEND, &self.shared.capabilities, &options)?;
        let key = SubscriptionKey::new(options.name.clone(), topic.clone());
        let consumer = Consumer::attach(self.shared.clone(), key, options, lifecycle).await?;
        let mut consumers = lock(&self.consumers);
        consumers.retain(|c| c.strong_count() > 0);
        consumers.push(Arc::downgrade(&consumer));
        Ok(Box::new(MqttSubscription(consumer)))
    }

    /// Anchors the subscription: a session of its own with plain subscriptions keeps every
    /// message until a consumer attaches (and takes them over).
    async fn create_subscription(&self, topic: &Topic, options: SubscriptionOptions) -> Result<()> {
        self.lifecycle.check_open(BACKEND, "subscriber")?;
        options.check(BACKEND, &self.shared.capabilities)?;
        let key = SubscriptionKey::new(options.name, topic.clone());
        let mut attempt = 0;
        loop {
            // Fails when a consumer is taking the anchor's messages over at this moment.
            match reserved::anchor(&self.shared.config, &key).await {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Unavailable && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn close(&self) -> Result<()> {
        self.lifecycle.close();
        let consumers: Vec<_> = lock(&self.consumers).drain(..).collect();
        for consumer in consumers.iter().filter_map(Weak::upgrade) {
            consumer.close().await;
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.capabilities.clone()
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

    fn client_id(&self) -> String {
        format!("{}-{}", self.base, self.index)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(used) = lock(slots()).get_mut(&self.base) {
            used.remove(&self.index);
        }
    }
}

/// The consumer's own session.
pub(crate) const OWN: u64 = 0;

/// A message as it came from one of the consumer's sessions.
pub(crate) struct Received {
    pub publish: Publish,
    /// [`OWN`], or the drain it came through.
    pub source: u64,
    pub epoch: u64,
}

/// A delivery handed to the application and not settled yet.
pub(crate) struct InFlight {
    pub received: Received,
    pub message: Message,
    pub id: Arc<str>,
    pub attempt: u32,
    pub deadline: Instant,
}

/// What the consumer's own connection reports to its control task.
enum Control {
    Subscribed(u64),
    State {
        hash: String,
        payload: Bytes,
        /// Sent because we subscribed (the entry was there before), not because it changed.
        retained: bool,
    },
}

/// PUBACKs a bus-internal message at once (without blocking the polling task).
fn ack_now(client: &AsyncClient, publish: Publish) {
    if client.try_ack(&publish).is_err() {
        let client = client.clone();
        tokio::spawn(async move {
            let _ = client.ack(&publish).await;
        });
    }
}

/// Deliveries one connection handed to the consumer that are not settled yet, against the
/// receive maximum the broker should keep to. Mosquitto before 2.0.13 does not for queued
/// messages (each in-order PUBACK lets up to a receive maximum more out), and a backlog then
/// arrives whole and waits in this process's memory: said once per connection, not hidden.
struct Unsettled {
    count: AtomicUsize,
    limit: usize,
    warned: AtomicBool,
}

impl Unsettled {
    fn new(limit: u16) -> Unsettled {
        Unsettled {
            count: AtomicUsize::new(0),
            limit: usize::from(limit),
            warned: AtomicBool::new(false),
        }
    }

    /// One more delivery from `session`; warns once when the broker has clearly overrun the
    /// receive maximum (twice it: a reconnect may briefly leave the old connection's in flight).
    fn received(&self, session: &str) {
        let held = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        if held > 2 * self.limit && !self.warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                session,
                held,
                receive_maximum = self.limit,
                "the broker sent more unacknowledged messages than mqtt.receive_maximum allows; they wait in this consumer's memory. Mosquitto before 2.0.13 does this for queued messages: upgrade the broker (see bus-mqtt's README, \"Large backlogs\")"
            );
        }
    }

    fn settled(&self) {
        let _ = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// The handler of the consumer's own connection.
struct OwnHandler {
    incoming: mpsc::UnboundedSender<Received>,
    control: mpsc::UnboundedSender<Control>,
    first_subscribed: Mutex<Option<oneshot::Sender<Result<()>>>>,
    /// The connection epoch whose subscriptions the broker accepted.
    subscribed: Arc<AtomicU64>,
    unsettled: Arc<Unsettled>,
    client_id: String,
}

impl Handler for OwnHandler {
    fn on_subscribed(&self, epoch: u64, result: Result<()>) {
        let ok = result.is_ok();
        if ok {
            self.subscribed.store(epoch, Ordering::Release);
        }
        match lock(&self.first_subscribed).take() {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "resubscribe refused");
                }
            }
        }
        if ok {
            let _ = self.control.send(Control::Subscribed(epoch));
        }
    }

    fn on_publish(&self, publish: Publish, epoch: u64, client: &AsyncClient) {
        // Borrowed, not copied, for a topic in UTF-8 (every one bus sends).
        match reserved::classify(&String::from_utf8_lossy(&publish.topic)) {
            None | Some(Reserved::Retry) => {
                // Bounded by the receive maximum where the broker keeps to it.
                self.unsettled.received(&self.client_id);
                let _ = self.incoming.send(Received {
                    publish,
                    source: OWN,
                    epoch,
                });
            }
            Some(Reserved::Slot { hash, .. }) => {
                let (payload, retained) = (publish.payload.clone(), publish.retain);
                ack_now(client, publish);
                let _ = self.control.send(Control::State {
                    hash,
                    payload,
                    retained,
                });
            }
            Some(_) => ack_now(client, publish),
        }
    }
}

/// How far a drain got.
struct DrainProgress {
    nonce: Bytes,
    subscribed: Notify,
    is_subscribed: AtomicBool,
    marked: AtomicBool,
    /// Signalled when the connection is open (or failed to open).
    opened: Notify,
    /// Messages received through the drain and not settled yet.
    outstanding: AtomicUsize,
    changed: Notify,
}

impl DrainProgress {
    fn done(&self) -> bool {
        self.marked.load(Ordering::Acquire) && self.outstanding.load(Ordering::Acquire) == 0
    }
}

/// The handler of a drained session's connection.
struct DrainHandler {
    incoming: mpsc::UnboundedSender<Received>,
    source: u64,
    progress: Arc<DrainProgress>,
    unsettled: Arc<Unsettled>,
    session: String,
}

impl Handler for DrainHandler {
    fn on_subscribed(&self, _epoch: u64, result: Result<()>) {
        if result.is_ok() {
            self.progress.is_subscribed.store(true, Ordering::Release);
        }
        self.progress.subscribed.notify_waiters();
    }

    fn on_publish(&self, publish: Publish, epoch: u64, client: &AsyncClient) {
        // Borrowed, not copied, for a topic in UTF-8 (every one bus sends).
        match reserved::classify(&String::from_utf8_lossy(&publish.topic)) {
            None | Some(Reserved::Retry) => {
                self.progress.outstanding.fetch_add(1, Ordering::AcqRel);
                self.unsettled.received(&self.session);
                let _ = self.incoming.send(Received {
                    publish,
                    source: self.source,
                    epoch,
                });
            }
            Some(Reserved::Mark) if publish.payload == self.progress.nonce => {
                ack_now(client, publish);
                self.progress.marked.store(true, Ordering::Release);
                self.progress.changed.notify_waiters();
            }
            Some(_) => ack_now(client, publish),
        }
    }
}

/// A session of the subscription being drained by this consumer. Registered before its
/// connection exists: the broker starts sending what the session holds as soon as it connects.
pub(crate) struct Drain {
    target: String,
    state_before: SlotState,
    connection: tokio::sync::OnceCell<Connection>,
    progress: Arc<DrainProgress>,
    /// What this drain delivered and the application has not settled.
    unsettled: Arc<Unsettled>,
    /// Serialises the drain's state writes; `true` once it was aborted, after which the
    /// hand-over writes nothing more (else its `draining` could land after the abort's
    /// restored state, and no one would drain the session again).
    aborted: tokio::sync::Mutex<bool>,
}

impl Drain {
    /// The drain's connection, once it is open.
    pub(crate) async fn connection(&self) -> Option<&Connection> {
        if self.connection.get().is_none() {
            let opened = self.progress.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.connection.get().is_none() {
                let _ = tokio::time::timeout(Duration::from_secs(30), opened).await;
            }
        }
        self.connection.get()
    }
}

pub(crate) struct Consumer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: SubscriptionKey,
    pub(crate) options: SubscriptionOptions,
    pub(crate) retry_topic: String,
    client_id: String,
    pub(crate) own: Connection,
    /// The own connection's epoch whose subscriptions the broker accepted (see `is_member`).
    own_subscribed: Arc<AtomicU64>,
    /// What the own connection delivered and the application has not settled.
    own_unsettled: Arc<Unsettled>,
    pub(crate) drains: Mutex<HashMap<u64, Arc<Drain>>>,
    next_source: AtomicU64,
    /// The latest state entry of each session of the subscription, by client id hash.
    states: Mutex<HashMap<String, SlotEntry>>,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    incoming_tx: mpsc::UnboundedSender<Received>,
    pub(crate) in_flight: Mutex<crate::FastMap<u64, InFlight>>,
    next_tag: AtomicU64,
    pub(crate) lifecycle: Lifecycle,
    closing: AtomicBool,
    /// Serialises writes of this session's state: once `close` wrote `left`, nothing writes
    /// `live` over it.
    state_writes: tokio::sync::Mutex<()>,
    _slot: Slot,
}

impl Consumer {
    async fn attach(
        shared: Arc<Shared>,
        key: SubscriptionKey,
        options: SubscriptionOptions,
        lifecycle: Lifecycle,
    ) -> Result<Arc<Consumer>> {
        let config = &shared.config;
        let slot = Slot::take(key.slot_base(&config.client_id));
        let client_id = slot.client_id();
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = oneshot::channel();
        let own_subscribed = Arc::new(AtomicU64::new(0));
        let own_unsettled = Arc::new(Unsettled::new(config.receive_maximum));
        let handler = Arc::new(OwnHandler {
            incoming: incoming_tx.clone(),
            control: control_tx,
            first_subscribed: Mutex::new(Some(subscribed_tx)),
            subscribed: own_subscribed.clone(),
            unsettled: own_unsettled.clone(),
            client_id: client_id.clone(),
        });
        let session = Session {
            client_id: client_id.clone(),
            clean_start: false,
            session_expiry_secs: config.session_expiry_secs,
            // At once: the other consumers give it `handover_delay_secs` to come back.
            will: Some(reserved::state_will(&key, &client_id, SlotState::Gone, 0)),
            subscriptions: key.consumer_filters(qos(config.qos)),
            reconnect: true,
            manual_acks: true,
        };
        let own = Connection::open(config, session, handler).await?;
        let wait = Duration::from_millis(config.connect_timeout_ms);
        let subscribed = match tokio::time::timeout(wait, subscribed_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::closed(BACKEND, "MQTT connection")),
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                format!(
                    "the broker did not confirm the subscription to {} within {wait:?}",
                    key.topic
                ),
            )),
        };
        if let Err(e) = subscribed {
            own.close().await;
            return Err(e);
        }
        let consumer = Arc::new(Consumer {
            retry_topic: key.retry_topic(),
            shared,
            key,
            options,
            client_id,
            own,
            own_subscribed,
            own_unsettled,
            drains: Mutex::default(),
            next_source: AtomicU64::new(OWN + 1),
            states: Mutex::default(),
            incoming: tokio::sync::Mutex::new(incoming_rx),
            incoming_tx,
            in_flight: Mutex::default(),
            next_tag: AtomicU64::new(0),
            lifecycle,
            closing: AtomicBool::new(false),
            state_writes: tokio::sync::Mutex::new(()),
            _slot: slot,
        });
        // The registry entry and our state go out before subscribe returns, so a publisher
        // that starts now already protects this subscription.
        if let Err(e) = consumer.announce().await {
            consumer.close().await;
            return Err(e);
        }
        tokio::spawn(control(Arc::downgrade(&consumer), control_rx));
        tokio::spawn(sweep_deadlines(Arc::downgrade(&consumer)));
        Ok(consumer)
    }

    /// Writes the registry entry and this session's state `live` (unless it is closing).
    async fn announce(&self) -> Result<()> {
        let _writing = self.state_writes.lock().await;
        if self.lifecycle.is_closed() {
            return Ok(());
        }
        let deadline =
            Instant::now() + Duration::from_millis(self.shared.config.publish_timeout_ms);
        reserved::put_retained(
            &self.own,
            &self.key.registry_topic(),
            reserved::registry_payload(&self.key),
            deadline,
        )
        .await?;
        let live = SlotEntry::new(&self.client_id, SlotState::Live).payload();
        reserved::put_retained(
            &self.own,
            &self.key.slot_topic(&self.client_id),
            live,
            deadline,
        )
        .await
    }

    /// A session state entry arrived: take over what a departed session or the anchor holds.
    /// A `gone` consumer gets `mqtt.handover_delay_secs` to come back first, however the entry
    /// came: a will the broker fired when it stopped reaches the other consumers' sessions
    /// after the restart as an ordinary (not retained) message, while its consumer is on its
    /// way back. Taken for a departure, it would have the consumers drain one another, and a
    /// drain takes its target's shares away: drained both at once, the subscription would
    /// have no member for a moment, and what the broker routes then is gone.
    fn on_state(self: &Arc<Self>, hash: String, payload: Bytes, retained: bool) {
        let entry = reserved::parse_slot(&self.key, &hash, &payload);
        tracing::debug!(consumer = %self.client_id, ?entry, retained, "session state");
        {
            let mut states = lock(&self.states);
            match &entry {
                Some(entry) => states.insert(hash, entry.clone()),
                None => states.remove(&hash),
            };
        }
        let Some(entry) = entry else { return };
        if entry.client_id == self.client_id {
            if entry.state != SlotState::Live {
                // A stale entry (ours from before a restart, or a will fired during a long
                // outage): we are here.
                let consumer = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = consumer.announce().await {
                        tracing::debug!(error = %e, "could not write the consumer's state");
                    }
                });
            }
            return;
        }
        let wait = match entry.state {
            SlotState::Gone => {
                Duration::from_secs(u64::from(self.shared.config.handover_delay_secs))
            }
            SlotState::Left | SlotState::Anchor => Duration::ZERO,
            SlotState::Live | SlotState::Draining => return,
        };
        tokio::spawn(drain(
            Arc::downgrade(self),
            entry.client_id,
            entry.state,
            wait,
        ));
    }

    /// Whether this consumer's own session holds its shares on the broker as it runs now: its
    /// connection is up and the broker accepted its subscriptions on this very connection. A
    /// broker restart drops every connection, so a share accepted on the current connection
    /// exists. Only a member may take another session's subscriptions away: otherwise the
    /// subscription could be left with no member at all (right after a restart, say, while
    /// this consumer has not subscribed again yet).
    fn is_member(&self) -> bool {
        let subscribed = self.own_subscribed.load(Ordering::Acquire);
        subscribed != 0 && self.own.epoch() == Some(subscribed)
    }

    fn current_state(&self, client_id: &str) -> Option<SlotState> {
        let states = lock(&self.states);
        states
            .values()
            .find(|entry| entry.client_id == client_id)
            .map(|entry| entry.state)
    }

    /// Takes over the session `target`: see the module docs.
    async fn run_drain(self: &Arc<Self>, target: &str, state_before: SlotState) -> Result<()> {
        let config = &self.shared.config;
        let source = self.next_source.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(DrainProgress {
            nonce: Bytes::from(format!(
                "drain-{}-{source}-{}",
                self.client_id,
                uuid::Uuid::new_v4().simple()
            )),
            subscribed: Notify::new(),
            is_subscribed: AtomicBool::new(false),
            marked: AtomicBool::new(false),
            opened: Notify::new(),
            outstanding: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let unsettled = Arc::new(Unsettled::new(config.receive_maximum));
        let handler = Arc::new(DrainHandler {
            incoming: self.incoming_tx.clone(),
            source,
            progress: progress.clone(),
            unsettled: unsettled.clone(),
            session: target.to_string(),
        });
        let subscribed = progress.subscribed.notified();
        tokio::pin!(subscribed);
        subscribed.as_mut().enable();
        let session = Session {
            client_id: target.to_string(),
            clean_start: false,
            session_expiry_secs: config.session_expiry_secs,
            // Should this consumer vanish mid-way, the session is someone else's to drain.
            will: Some(reserved::state_will(
                &self.key,
                target,
                state_before,
                config.handover_delay_secs,
            )),
            subscriptions: vec![Filter::new(reserved::mark_topic(target), QoS::AtLeastOnce)],
            reconnect: false,
            manual_acks: true,
        };
        let drain = Arc::new(Drain {
            target: target.to_string(),
            state_before,
            connection: tokio::sync::OnceCell::new(),
            progress: progress.clone(),
            unsettled,
            aborted: tokio::sync::Mutex::new(false),
        });
        lock(&self.drains).insert(source, drain.clone());
        let opened = Connection::open(config, session, handler).await;
        let result = match opened {
            Ok(connection) => {
                let _ = drain.connection.set(connection);
                progress.opened.notify_waiters();
                self.hand_over(&drain, subscribed).await
            }
            Err(e) => {
                progress.opened.notify_waiters();
                Err(e)
            }
        };
        lock(&self.drains).remove(&source);
        match result {
            Ok(()) => {
                // The session stays, empty and without subscriptions, until it expires: deleting
                // it could hit its consumer, back in the meantime with a new session.
                if let Some(connection) = drain.connection.get() {
                    connection.close().await;
                }
                Ok(())
            }
            Err(e) => {
                self.abort_drain(&drain).await;
                Err(e)
            }
        }
    }

    async fn hand_over(
        &self,
        drain: &Drain,
        subscribed: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> Result<()> {
        let Some(connection) = drain.connection.get() else {
            return Err(Error::closed(BACKEND, "drain connection"));
        };
        let target = drain.target.as_str();
        let deadline =
            Instant::now() + Duration::from_millis(self.shared.config.connect_timeout_ms);
        if !drain.progress.is_subscribed.load(Ordering::Acquire)
            && tokio::time::timeout_at(deadline, subscribed).await.is_err()
        {
            return Err(Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                "no SUBACK while draining",
            ));
        }
        {
            let aborted = drain.aborted.lock().await;
            if *aborted {
                return Err(Error::closed(BACKEND, "subscription"));
            }
            let draining = SlotEntry::new(target, SlotState::Draining).payload();
            reserved::put_retained(connection, &self.key.slot_topic(target), draining, deadline)
                .await?;
        }
        if !self.is_member() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                "this consumer's own subscription is not in place; the hand-over waits",
            ));
        }
        for filter in self.key.handover_unsubscribes(drain.state_before) {
            connection.unsubscribe(&filter, deadline).await?;
        }
        tracing::debug!(consumer = %self.client_id, session = %target, "draining: unsubscribed");
        // Everything the session holds is queued before this marker.
        connection
            .publish(
                &reserved::mark_topic(target),
                QoS::AtLeastOnce,
                false,
                drain.progress.nonce.clone(),
                PublishProperties::default(),
                deadline,
            )
            .await?;
        loop {
            let changed = drain.progress.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if drain.progress.done() {
                break;
            }
            if self.lifecycle.is_closed() {
                return Err(Error::closed(BACKEND, "subscription"));
            }
            tokio::select! {
                _ = changed => {}
                _ = connection.finished() => {
                    return Err(Error::new(ErrorKind::Unavailable, BACKEND, format!("lost session {target} while draining it")));
                }
                _ = self.lifecycle.closed() => {}
            }
        }
        tracing::debug!(consumer = %self.client_id, session = %target, "drained");
        // Nothing is left to hand over.
        let aborted = drain.aborted.lock().await;
        if *aborted {
            return Err(Error::closed(BACKEND, "subscription"));
        }
        let deadline =
            Instant::now() + Duration::from_millis(self.shared.config.connect_timeout_ms);
        reserved::put_retained(
            connection,
            &self.key.slot_topic(target),
            Bytes::new(),
            deadline,
        )
        .await
    }

    /// Leaves a drain half-way: its state goes back to what it was, so that it is drained later.
    async fn abort_drain(&self, drain: &Drain) {
        let mut aborted = drain.aborted.lock().await;
        let Some(connection) = drain.connection.get() else {
            // Not open yet: the hand-over sees the flag once it is, and comes back here.
            *aborted = true;
            return;
        };
        if !*aborted && !connection.is_finished() {
            let deadline = Instant::now() + Duration::from_secs(2);
            let before = SlotEntry::new(&drain.target, drain.state_before).payload();
            let _ = reserved::put_retained(
                connection,
                &self.key.slot_topic(&drain.target),
                before,
                deadline,
            )
            .await;
        }
        *aborted = true;
        connection.close().await;
    }

    /// The connection a message came through, if it is still there.
    pub(crate) fn source(&self, source: u64) -> Option<SourceRef<'_>> {
        if source == OWN {
            return Some(SourceRef::Own(&self.own));
        }
        lock(&self.drains)
            .get(&source)
            .cloned()
            .map(SourceRef::Drain)
    }

    /// A message from drain `source` was settled.
    pub(crate) fn settled(&self, source: u64) {
        if source == OWN {
            self.own_unsettled.settled();
            return;
        }
        if let Some(drain) = lock(&self.drains).get(&source) {
            drain.unsettled.settled();
            drain.progress.outstanding.fetch_sub(1, Ordering::AcqRel);
            drain.progress.changed.notify_waiters();
        }
    }

    fn deliver(self: &Arc<Self>, mut received: Received) -> Delivery {
        let (message, id, attempt) = decode(&mut received.publish);
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.options.ack_deadline;
        let delivery = Delivery::tagged(
            message.clone(),
            id.clone(),
            attempt,
            self.key.topic.clone(),
            self.clone(),
            tag,
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

    /// Detaches: drains in progress go back to their sessions, and this session's state
    /// becomes `left`, so that the other consumers take over what it holds (or the next one
    /// does). Deliveries not settled yet are redelivered from the session.
    pub(crate) async fn close(&self) {
        self.lifecycle.close();
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let drains: Vec<Arc<Drain>> = lock(&self.drains).drain().map(|(_, d)| d).collect();
        for drain in drains {
            self.abort_drain(&drain).await;
        }
        let _writing = self.state_writes.lock().await;
        if self.own.epoch().is_some() {
            let deadline = Instant::now() + Duration::from_secs(2);
            let gone = SlotEntry::new(&self.client_id, SlotState::Left).payload();
            if let Err(e) = reserved::put_retained(
                &self.own,
                &self.key.slot_topic(&self.client_id),
                gone,
                deadline,
            )
            .await
            {
                tracing::warn!(error = %e, client_id = %self.client_id, "could not mark the consumer's session as gone; its will does when the connection ends");
            }
        }
        // DISCONNECT keeps the session (and drops the will): what it holds waits for a drain.
        self.own.close().await;
    }
}

/// Where a message came from, to PUBACK it there.
pub(crate) enum SourceRef<'a> {
    Own(&'a Connection),
    Drain(Arc<Drain>),
}

impl SourceRef<'_> {
    /// The connection to PUBACK on; None if the drain never got one.
    pub(crate) async fn connection(&self) -> Option<&Connection> {
        match self {
            SourceRef::Own(connection) => Some(connection),
            SourceRef::Drain(drain) => drain.connection().await,
        }
    }
}

/// The message, its id and its attempt number, from an MQTT publish. Payload and properties
/// are moved out (what is left is enough to PUBACK it).
fn decode(publish: &mut Publish) -> (Message, Arc<str>, u32) {
    let mut message = Message::new(std::mem::take(&mut publish.payload));
    let mut id = None;
    let mut attempt = 1;
    let mut content_type_property = None;
    if let Some(props) = &mut publish.properties {
        for (key, value) in std::mem::take(&mut props.user_properties) {
            match key.as_str() {
                // Straight into the shared id the delivery keeps.
                ID_PROPERTY => id = Some(Arc::from(value)),
                KEY_PROPERTY => message.ordering_key = Some(value),
                ATTEMPT_PROPERTY => attempt = value.parse().unwrap_or(2),
                _ => {
                    message.attributes.insert(key, value);
                }
            }
        }
        content_type_property = props.content_type.take();
    }
    // The MQTT 5 Content Type property (CloudEvents MQTT binding); older bus versions sent a
    // `content-type` user property, still read above.
    if let Some(content_type) = content_type_property {
        message
            .attributes
            .insert(CONTENT_TYPE_ATTRIBUTE.to_string(), content_type);
    }
    if publish.dup {
        // The broker resent it after a lost connection: at least one attempt came before.
        attempt = attempt.max(2);
    }
    // Plain MQTT clients send no id: make one up so the delivery still has one.
    let id = id.unwrap_or_else(|| {
        let mut text = uuid::Uuid::encode_buffer();
        Arc::from(&*uuid::Uuid::new_v4().simple().encode_lower(&mut text))
    });
    (message, id, attempt)
}

/// Handles what the own connection reports, until the consumer is gone.
async fn control(consumer: Weak<Consumer>, mut events: mpsc::UnboundedReceiver<Control>) {
    while let Some(event) = events.recv().await {
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        if consumer.lifecycle.is_closed() {
            return;
        }
        match event {
            Control::Subscribed(epoch) if epoch > 1 => {
                if let Err(e) = consumer.announce().await {
                    tracing::warn!(error = %e, "could not write the consumer's state after reconnecting");
                }
            }
            Control::Subscribed(_) => {}
            Control::State {
                hash,
                payload,
                retained,
            } => consumer.on_state(hash, payload, retained),
        }
    }
}

/// Drains `target` while it still needs it: after `wait` and a short random pause (so that
/// the consumers that saw it go do not all start at once), once this consumer is a member (see
/// `Consumer::is_member`), and again with a growing pause when an attempt fails.
async fn drain(consumer: Weak<Consumer>, target: String, state_before: SlotState, wait: Duration) {
    let mut pause = wait + Duration::from_millis(rand::random_range(0..=250));
    let mut backoff = Duration::from_secs(1);
    loop {
        // Membership first, the pause after it: the states the broker keeps for a fresh
        // subscription arrive right after it, and the check below should see them.
        let mut waited = Duration::ZERO;
        loop {
            let Some(consumer) = consumer.upgrade() else {
                return;
            };
            if consumer.lifecycle.is_closed() || waited > Duration::from_secs(60) {
                return;
            }
            if consumer.is_member() {
                break;
            }
            drop(consumer);
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        }
        tokio::time::sleep(pause).await;
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        if !consumer.is_member() {
            // Lost it during the pause (reconnecting): wait for it again.
            pause = Duration::from_millis(rand::random_range(0..=250));
            continue;
        }
        if consumer.lifecycle.is_closed()
            || consumer.current_state(&target) != Some(state_before)
            || lock(&consumer.drains).values().any(|d| d.target == target)
        {
            return;
        }
        match consumer.run_drain(&target, state_before).await {
            Ok(()) => {
                tracing::debug!(session = %target, "took over a departed session's messages");
                return;
            }
            Err(e) => {
                tracing::debug!(session = %target, error = %e, ?backoff, "handing a session over did not finish; trying again");
            }
        }
        pause = backoff + Duration::from_millis(rand::random_range(0..=250));
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One MQTT consumer attached to a subscription.
pub struct MqttSubscription(Arc<Consumer>);

impl std::fmt::Debug for MqttSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSubscription")
            .field("subscription", &self.0.key.name)
            .field("topic", &self.0.key.topic)
            .field("client_id", &self.0.client_id)
            .finish()
    }
}

#[async_trait]
impl Subscription for MqttSubscription {
    async fn receive(&self) -> Result<Delivery> {
        let consumer = &self.0;
        let received = consumer
            .lifecycle
            .until_closed(BACKEND, async {
                let mut incoming = consumer.incoming.lock().await;
                incoming
                    .recv()
                    .await
                    .ok_or_else(|| Error::closed(BACKEND, "subscription"))
            })
            .await?;
        Ok(consumer.deliver(received))
    }

    /// Takes what the connections delivered, up to `max`, under one lock.
    async fn receive_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let consumer = &self.0;
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        consumer
            .lifecycle
            .until_closed(BACKEND, async {
                let mut incoming = consumer.incoming.lock().await;
                match tokio::time::timeout(wait, incoming.recv()).await {
                    Ok(Some(first)) => batch.push(consumer.deliver(first)),
                    Ok(None) => return Err(Error::closed(BACKEND, "subscription")),
                    Err(_) => return Ok(()),
                }
                while batch.len() < max {
                    match incoming.try_recv() {
                        Ok(next) => batch.push(consumer.deliver(next)),
                        Err(_) => break,
                    }
                }
                Ok(())
            })
            .await?;
        Ok(batch)
    }

    async fn close(&self) -> Result<()> {
        self.0.close().await;
        Ok(())
    }
}

impl Drop for MqttSubscription {
    fn drop(&mut self) {
        self.0.lifecycle.close();
    }
}
