//! One MQTT connection: its rumqttc event loop polled continuously in its own task, the
//! session's subscriptions made again on every connect, reconnects with exponential backoff and
//! jitter, fatal refusals reported once, and every request matched to the broker's answer
//! (PUBACK/PUBREC, SUBACK, UNSUBACK).
//!
//! Publishes that were not confirmed when a connection dropped are sent again after the next
//! CONNACK with new packet ids (a duplicate at worst, never a loss), so that answers are always
//! matched in the order requests are written. Each confirmation carries the connection's epoch
//! (how many times it connected) and the position of the answer in the broker's answers on this
//! connection: the broker handles one connection's packets in order, which is what the
//! publisher's restore barrier builds on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{Error, ErrorKind, Result};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, Filter, LastWill, PubAckReason, PubRecReason, Publish,
    PublishProperties, SubAck, Subscribe, SubscribeReasonCode, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Request, StateError,
};
use rumqttc::Outgoing;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::BACKEND;

/// Who to connect as, and how.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub client_id: String,
    pub clean_start: bool,
    pub session_expiry_secs: u32,
    /// Published by the broker if the connection ends without a DISCONNECT.
    pub will: Option<LastWill>,
    /// Subscribed again on every connect, before anything else is sent: rumqttc does not
    /// resubscribe, and Mosquitto forgets shared subscriptions when it restarts.
    pub subscriptions: Vec<Filter>,
    /// Reconnect after a drop. Off for a short session operation, which any drop ends (another
    /// client taking the session over included).
    pub reconnect: bool,
    /// PUBACK incoming messages only when told to ([`Connection::ack`]).
    pub manual_acks: bool,
}

/// What a connection's owner hears about. Called on the polling task: never block.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Connected, for the `epoch`-th time. `session_present` is false when the broker had no
    /// session for this client id.
    fn on_connected(&self, _epoch: u64, _session_present: bool) {}
    /// The broker answered the session's subscriptions made on connect `epoch`.
    fn on_subscribed(&self, _epoch: u64, _result: Result<()>) {}
    /// A message arrived on connection `epoch`. With manual acks the handler must see to its
    /// PUBACK (`client` can send it).
    fn on_publish(&self, _publish: Publish, _epoch: u64, _client: &AsyncClient) {}
}

/// Whether the broker found a subscription for a published message (MQTT 5 reason code 16,
/// "no matching subscribers", says it did not and discarded the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matched {
    /// Matched at least one subscription, or the broker did not say (QoS 0).
    Yes,
    /// No subscription matched; the broker discarded the message.
    No,
}

/// The broker's confirmation of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Confirmed {
    pub matched: Matched,
    /// The connection it was confirmed on.
    pub epoch: u64,
    /// Its place among the broker's answers (grows across connections).
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Connecting,
    Connected(u64),
    Failed(ErrorKind, String),
    Closed,
}

type Waiter<T> = oneshot::Sender<Result<T>>;

/// Requests of one kind waiting for the broker. rumqttc reports each request as it writes it
/// (`Outgoing::Publish(pkid)` ...) in the order they were queued, so waiters are matched to
/// packet ids first-in first-out.
struct Waiting<T> {
    unsent: VecDeque<T>,
    by_pkid: crate::FastMap<u16, T>,
}

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Waiting {
            unsent: VecDeque::new(),
            by_pkid: crate::FastMap::default(),
        }
    }
}

impl<T> Waiting<T> {
    fn sent(&mut self, pkid: u16) {
        if let Some(waiter) = self.unsent.pop_front() {
            self.by_pkid.insert(pkid, waiter);
        }
    }
}

#[derive(Default)]
struct Waiters {
    publishes: Waiting<Waiter<Confirmed>>,
    /// The session's own subscribe, made on every connect (its SUBACK goes to the handler).
    subscribes: Waiting<()>,
    unsubscribes: Waiting<Waiter<()>>,
}

/// Removes the waiter it guards from the back of its queue unless disarmed: a request whose
/// sending was abandoned half-way (its future dropped) must not leave a waiter behind that
/// would be matched to the next request's answer.
struct Queued<'a, F: Fn(&mut Waiters)> {
    waiters: &'a Mutex<Waiters>,
    unqueue: Option<F>,
}

impl<F: Fn(&mut Waiters)> Queued<'_, F> {
    fn disarm(mut self) {
        self.unqueue = None;
    }
}

impl<F: Fn(&mut Waiters)> Drop for Queued<'_, F> {
    fn drop(&mut self) {
        if let Some(unqueue) = self.unqueue.take() {
            unqueue(&mut lock(self.waiters));
        }
    }
}

/// One connection to the broker.
pub(crate) struct Connection {
    client: AsyncClient,
    waiters: Arc<Mutex<Waiters>>,
    /// Keeps "queue the waiter, send the request" atomic, so the FIFO matches.
    order: tokio::sync::Mutex<()>,
    state: watch::Receiver<State>,
    stop: CancellationToken,
    url: String,
    username: Option<String>,
    /// Why the connection was last lost, for the error of what waits for it.
    last_error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// " (last error: ...)" when the connection failed before, for an error message.
fn last_error_note(last_error: &Mutex<Option<String>>) -> String {
    lock(last_error)
        .as_ref()
        .map(|e| format!(" (last error: {e})"))
        .unwrap_or_default()
}

pub(crate) fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

impl Connection {
    /// Connects and waits for the first CONNACK (or a fatal refusal, or the connect timeout).
    pub async fn open(
        config: &MqttConfig,
        session: Session,
        handler: Arc<dyn Handler>,
    ) -> Result<Connection> {
        let endpoint = config.checked_endpoint()?;
        let mut options = MqttOptions::new(
            session.client_id.clone(),
            endpoint.host.clone(),
            endpoint.port,
        );
        options
            .set_keep_alive(Duration::from_secs(config.keep_alive_secs.max(5)))
            .set_clean_start(session.clean_start)
            .set_session_expiry_interval(Some(session.session_expiry_secs))
            .set_manual_acks(session.manual_acks)
            .set_max_packet_size(Some(config.max_packet_size))
            .set_receive_maximum(Some(config.receive_maximum))
            .set_outgoing_inflight_upper_limit(config.max_in_flight_publishes)
            .set_connection_timeout(config.connect_timeout_ms.div_ceil(1000).max(1));
        if let Some(will) = session.will.clone() {
            options.set_last_will(will);
        }
        if let Some(user) = &config.username {
            let password = config.password.as_ref().map(|p| p.expose()).unwrap_or("");
            options.set_credentials(user.clone(), password.to_string());
        }
        if endpoint.tls {
            options.set_transport(crate::tls::transport(config)?);
        }
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let (state_tx, mut state) = watch::channel(State::Connecting);
        let last_error = Arc::new(Mutex::new(None::<String>));
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let stop = CancellationToken::new();
        tokio::spawn(
            EventLoopTask {
                eventloop,
                client: client.clone(),
                config: config.clone(),
                session,
                handler,
                waiters: waiters.clone(),
                state: state_tx,
                stop: stop.clone(),
                last_error: last_error.clone(),
            }
            .run(),
        );
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let outcome = match tokio::time::timeout(
            connect_timeout,
            state.wait_for(|s| !matches!(s, State::Connecting)),
        )
        .await
        {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => State::Closed,
            Err(_) => State::Connecting,
        };
        match outcome {
            State::Connected(_) => Ok(Connection {
                client,
                waiters,
                order: tokio::sync::Mutex::new(()),
                state,
                stop,
                url: config.url.clone(),
                username: config.username.clone(),
                last_error,
            }),
            State::Failed(kind, message) => {
                stop.cancel();
                Err(Error::new(kind, BACKEND, message))
            }
            State::Connecting | State::Closed => {
                stop.cancel();
                let last = last_error_note(&last_error);
                Err(Error::new(
                    ErrorKind::Unavailable,
                    BACKEND,
                    format!(
                        "could not connect to the MQTT broker at {} within {connect_timeout:?}{last}; is it running, and are mqtt.url and the TLS settings right?",
                        bus_core::config::redact_url(&config.url)
                    ),
                ))
            }
        }
    }

    /// The current connection's epoch, or None while (re)connecting or after the end.
    pub fn epoch(&self) -> Option<u64> {
        match *self.state.borrow() {
            State::Connected(epoch) => Some(epoch),
            _ => None,
        }
    }

    /// Waits until connected (again) and returns the epoch; fails once the connection ended
    /// or at `deadline`.
    pub async fn connected(&self, deadline: Instant) -> Result<u64> {
        let mut state = self.state.clone();
        let waited = tokio::time::timeout_at(
            deadline,
            state.wait_for(|s| !matches!(s, State::Connecting)),
        )
        .await;
        match waited {
            Ok(Ok(s)) => match &*s {
                State::Connected(epoch) => Ok(*epoch),
                _ => Err(self.unusable_error()),
            },
            Ok(Err(_)) => Err(self.unusable_error()),
            Err(_) => {
                let last = last_error_note(&self.last_error);
                Err(Error::new(
                    ErrorKind::Unavailable,
                    BACKEND,
                    format!(
                        "no connection to the MQTT broker at {} before the deadline{last}; is it running, and reachable in time?",
                        self.url
                    ),
                ))
            }
        }
    }

    /// Whether the connection ended for good (closed, refused, or lost when it does not
    /// reconnect).
    pub fn is_finished(&self) -> bool {
        matches!(*self.state.borrow(), State::Failed(..) | State::Closed)
    }

    /// Completes when the connection ended for good.
    pub async fn finished(&self) {
        let mut state = self.state.clone();
        let _ = state
            .wait_for(|s| matches!(s, State::Failed(..) | State::Closed))
            .await;
    }

    /// Publishes and waits, until `deadline`, for the broker's confirmation (immediate for
    /// QoS 0). A publish that is not confirmed when the connection drops is sent again after
    /// reconnecting.
    pub async fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        properties: PublishProperties,
        deadline: Instant,
    ) -> Result<Confirmed> {
        self.check_usable()?;
        let confirmed = {
            let _order = self.order.lock().await;
            let (tx, rx) = oneshot::channel();
            lock(&self.waiters).publishes.unsent.push_back(tx);
            let queued = Queued {
                waiters: &self.waiters,
                unqueue: Some(|w: &mut Waiters| {
                    w.publishes.unsent.pop_back();
                }),
            };
            let sent = tokio::time::timeout_at(
                deadline,
                self.client
                    .publish_with_properties(topic, qos, retain, payload, properties),
            )
            .await;
            match sent {
                Ok(Ok(())) => queued.disarm(),
                Ok(Err(e)) => {
                    return Err(Error::new(
                        ErrorKind::Closed,
                        BACKEND,
                        "the MQTT connection is closed",
                    )
                    .with_source(e))
                }
                Err(_) => return Err(self.publish_timeout(topic)),
            }
            rx
        };
        match tokio::time::timeout_at(deadline, confirmed).await {
            Ok(Ok(Ok(confirmed))) => Ok(confirmed),
            Ok(Ok(Err(e))) => Err(self.with_topic(e, topic)),
            Ok(Err(_)) => Err(self.unusable_error()),
            Err(_) => Err(self.publish_timeout(topic)),
        }
    }

    /// Unsubscribes one filter (on a connection that does not reconnect) and waits for the
    /// UNSUBACK. A filter the session did not have is not an error.
    pub async fn unsubscribe(&self, filter: &str, deadline: Instant) -> Result<()> {
        self.check_usable()?;
        let answer = {
            let _order = self.order.lock().await;
            let (tx, rx) = oneshot::channel();
            lock(&self.waiters).unsubscribes.unsent.push_back(tx);
            let queued = Queued {
                waiters: &self.waiters,
                unqueue: Some(|w: &mut Waiters| {
                    w.unsubscribes.unsent.pop_back();
                }),
            };
            match tokio::time::timeout_at(deadline, self.client.unsubscribe(filter)).await {
                Ok(Ok(())) => queued.disarm(),
                _ => return Err(self.unusable_error()),
            }
            rx
        };
        self.answer(answer, deadline, "UNSUBACK").await
    }

    async fn answer(
        &self,
        answer: oneshot::Receiver<Result<()>>,
        deadline: Instant,
        what: &str,
    ) -> Result<()> {
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.unusable_error()),
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                format!("the broker at {} sent no {what} in time", self.url),
            )),
        }
    }

    /// PUBACKs a message received on connection `epoch`. A message from an earlier connection
    /// is left alone: the broker sends it again (same session) and that copy is acked instead;
    /// a late PUBACK could hit another message that reuses the packet id.
    pub async fn ack(&self, publish: &Publish, epoch: u64) -> Result<()> {
        if self.epoch() != Some(epoch) {
            tracing::debug!(pkid = publish.pkid, epoch, current = ?self.epoch(), "not acking a message of an earlier connection");
            return Ok(());
        }
        tracing::trace!(pkid = publish.pkid, epoch, "PUBACK");
        self.client.ack(publish).await.map_err(|e| {
            Error::new(
                ErrorKind::Closed,
                BACKEND,
                "the connection is closed; the broker will deliver the message again",
            )
            .with_source(e)
        })
    }

    /// Sends DISCONNECT (the broker keeps the session and drops the will) and stops the event
    /// loop.
    pub async fn close(&self) {
        if self.stop.is_cancelled() {
            return;
        }
        if self.epoch().is_some() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.client.disconnect()).await;
            // Give the event loop a moment to write the DISCONNECT.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.finished()).await;
        }
        self.stop.cancel();
    }

    /// Drops the connection without DISCONNECT, so that the broker publishes the will.
    pub fn abandon(&self) {
        self.stop.cancel();
    }

    fn check_usable(&self) -> Result<()> {
        match &*self.state.borrow() {
            State::Failed(..) | State::Closed => Err(self.unusable_error()),
            _ => Ok(()),
        }
    }

    fn unusable_error(&self) -> Error {
        match &*self.state.borrow() {
            State::Failed(kind, message) => Error::new(*kind, BACKEND, message.clone()),
            _ => Error::closed(BACKEND, "MQTT connection"),
        }
    }

    fn publish_timeout(&self, topic: &str) -> Error {
        Error::new(
            ErrorKind::Timeout,
            BACKEND,
            format!(
                "the broker at {} did not confirm a publish to {topic} in time (mqtt.publish_timeout_ms); it may still arrive",
                self.url
            ),
        )
    }

    /// Names the topic (and, for a refusal, the ACL line that would allow it).
    fn with_topic(&self, error: Error, topic: &str) -> Error {
        if error.kind() == ErrorKind::PermissionDenied {
            Error::new(
                ErrorKind::PermissionDenied,
                BACKEND,
                format!(
                    "the broker refused the publish to {topic}: not authorized; {}",
                    acl_hint(self.username.as_deref(), topic)
                ),
            )
        } else {
            Error::new(
                error.kind(),
                BACKEND,
                format!("publish to {topic}: {}", error.message()),
            )
            .with_retryable(error.is_retryable())
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The ACL line a broker needs for this user to use `topic`.
pub(crate) fn acl_hint(username: Option<&str>, topic: &str) -> String {
    let user = match username {
        Some(user) => format!("user {user}"),
        None => "the anonymous user (or `pattern`)".to_string(),
    };
    if topic.starts_with(crate::reserved::PREFIX) {
        format!(
            "bus-mqtt keeps its subscription registry and hand-over state under `{}`: add `topic readwrite {}#` for {user} to the broker's ACL",
            crate::reserved::PREFIX,
            crate::reserved::PREFIX
        )
    } else {
        format!("add `topic readwrite {topic}` for {user} to the broker's ACL")
    }
}

/// Counts a polling task's connections and the confirmations it received.
#[derive(Default)]
struct Counters {
    /// The current connection's number (1 for the first).
    epoch: u64,
    /// Confirmations received so far, over all connections: orders a confirmation against
    /// another one of the same connection.
    seq: u64,
}

/// The polling task's state.
struct EventLoopTask {
    eventloop: EventLoop,
    client: AsyncClient,
    config: MqttConfig,
    session: Session,
    handler: Arc<dyn Handler>,
    waiters: Arc<Mutex<Waiters>>,
    state: watch::Sender<State>,
    stop: CancellationToken,
    /// The last connection error, for the connect-timeout message.
    last_error: Arc<Mutex<Option<String>>>,
}

impl EventLoopTask {
    /// Polls the event loop until stopped, reconnecting with backoff.
    async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut counters = Counters::default();
        // What the last connection did not get confirmed, sent again after the next CONNACK.
        let mut carried: VecDeque<Request> = VecDeque::new();
        loop {
            let event = tokio::select! {
                _ = self.stop.cancelled() => break,
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(event) => {
                    if matches!(event, Event::Incoming(Incoming::ConnAck(_))) {
                        failures = 0;
                    }
                    self.on_event(event, &mut counters, &mut carried);
                }
                Err(error) => {
                    if self.stop.is_cancelled() || matches!(error, ConnectionError::RequestsDone) {
                        break;
                    }
                    // rumqttc keeps the events it had queued when the connection failed (the
                    // write of a publish whose flush failed, acks read in the same batch) and
                    // would hand them out after the next connect, where they would be taken for
                    // the new connection's: they belong to this one, so handle them now.
                    for event in std::mem::take(&mut self.eventloop.state.events) {
                        self.on_event(event, &mut counters, &mut carried);
                    }
                    let leftover: Vec<Request> = self.eventloop.pending.drain(..).collect();
                    if let Some((kind, message)) = fatal(&error, &self.config) {
                        tracing::error!(url = %self.config.url, %message, "MQTT connection refused; not retrying");
                        self.fail_all(kind, &message);
                        self.state.send_replace(State::Failed(kind, message));
                        break;
                    }
                    if *self.state.borrow() == State::Closed {
                        break;
                    }
                    let taken_over = is_taken_over(&error);
                    if !self.session.reconnect {
                        let message = if taken_over {
                            format!(
                                "another client took over session {}",
                                self.session.client_id
                            )
                        } else {
                            format!(
                                "the connection of session {} was lost: {error}",
                                self.session.client_id
                            )
                        };
                        self.fail_all(ErrorKind::Unavailable, &message);
                        self.state
                            .send_replace(State::Failed(ErrorKind::Unavailable, message));
                        break;
                    }
                    if taken_over {
                        tracing::warn!(
                            client_id = %self.session.client_id,
                            "another client took this session over (a consumer taking over a session it thought abandoned, or two processes with the same mqtt.client_id); reconnecting"
                        );
                    }
                    self.requeue(leftover, &mut carried);
                    *lock(&self.last_error) = Some(error.to_string());
                    self.state.send_replace(State::Connecting);
                    failures = failures.saturating_add(1);
                    let delay = self.config.reconnect_delay(failures);
                    tracing::warn!(url = %self.config.url, client_id = %self.session.client_id, %error, ?delay, "MQTT connection lost; reconnecting");
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        if !matches!(*self.state.borrow(), State::Failed(..)) {
            self.state.send_replace(State::Closed);
        }
        self.fail_all(ErrorKind::Closed, "the MQTT connection is closed");
        let _ = self.client.try_disconnect();
    }

    /// Handles one event of the event loop.
    fn on_event(&mut self, event: Event, counters: &mut Counters, carried: &mut VecDeque<Request>) {
        match event {
            Event::Incoming(Incoming::ConnAck(connack)) => {
                counters.epoch += 1;
                if !self.session.subscriptions.is_empty() {
                    lock(&self.waiters).subscribes.unsent.push_front(());
                    let subscribe = Subscribe::new_many(self.session.subscriptions.clone(), None);
                    self.eventloop
                        .pending
                        .push_front(Request::Subscribe(subscribe));
                }
                self.eventloop.pending.extend(carried.drain(..));
                self.state.send_replace(State::Connected(counters.epoch));
                self.handler
                    .on_connected(counters.epoch, connack.session_present);
            }
            Event::Incoming(Incoming::Publish(publish)) => {
                self.handler
                    .on_publish(publish, counters.epoch, &self.client)
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                counters.seq += 1;
                let matched = match ack.reason {
                    PubAckReason::Success => Ok(Matched::Yes),
                    PubAckReason::NoMatchingSubscribers => Ok(Matched::No),
                    reason => Err(refused(
                        format!("{reason:?}"),
                        reason == PubAckReason::NotAuthorized,
                    )),
                };
                self.confirm(ack.pkid, matched, counters.epoch, counters.seq);
            }
            // QoS 2: the broker owns the message from PUBREC on.
            Event::Incoming(Incoming::PubRec(rec)) => {
                counters.seq += 1;
                let matched = match rec.reason {
                    PubRecReason::Success => Ok(Matched::Yes),
                    PubRecReason::NoMatchingSubscribers => Ok(Matched::No),
                    reason => Err(refused(
                        format!("{reason:?}"),
                        reason == PubRecReason::NotAuthorized,
                    )),
                };
                self.confirm(rec.pkid, matched, counters.epoch, counters.seq);
            }
            Event::Incoming(Incoming::SubAck(suback)) => {
                let waiter = lock(&self.waiters).subscribes.by_pkid.remove(&suback.pkid);
                let result = suback_result(&suback, &self.config);
                if waiter.is_some() {
                    self.handler.on_subscribed(counters.epoch, result);
                }
            }
            Event::Incoming(Incoming::UnsubAck(unsuback)) => {
                if let Some(tx) = lock(&self.waiters)
                    .unsubscribes
                    .by_pkid
                    .remove(&unsuback.pkid)
                {
                    let refusal = unsuback.reasons.iter().find(|r| {
                        !matches!(
                            r,
                            UnsubAckReason::Success | UnsubAckReason::NoSubscriptionExisted
                        )
                    });
                    let _ = tx.send(match refusal {
                        None => Ok(()),
                        Some(reason) => Err(Error::new(
                            ErrorKind::Internal,
                            BACKEND,
                            format!("the broker refused an unsubscribe: {reason:?}"),
                        )),
                    });
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                self.sent_publish(pkid, counters.epoch, counters.seq)
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) => lock(&self.waiters).subscribes.sent(pkid),
            Event::Outgoing(Outgoing::Unsubscribe(pkid)) => {
                lock(&self.waiters).unsubscribes.sent(pkid)
            }
            Event::Outgoing(Outgoing::Disconnect) => {
                self.state.send_replace(State::Closed);
            }
            _ => {}
        }
    }

    fn confirm(&self, pkid: u16, matched: Result<Matched>, epoch: u64, seq: u64) {
        if let Some(tx) = lock(&self.waiters).publishes.by_pkid.remove(&pkid) {
            let _ = tx.send(matched.map(|matched| Confirmed {
                matched,
                epoch,
                seq,
            }));
        }
    }

    fn sent_publish(&self, pkid: u16, epoch: u64, seq: u64) {
        let mut waiters = lock(&self.waiters);
        if pkid == 0 {
            // QoS 0: written is all the confirmation there is.
            if let Some(tx) = waiters.publishes.unsent.pop_front() {
                let _ = tx.send(Ok(Confirmed {
                    matched: Matched::Yes,
                    epoch,
                    seq,
                }));
            }
        } else {
            waiters.publishes.sent(pkid);
        }
    }

    /// Keeps what the dropped connection had not got confirmed, to send after the next
    /// CONNACK: publishes that were written get a new packet id (their waiters go back to the
    /// front of the queue, in the order they will be written), subscribes and unsubscribes are
    /// failed (a reconnecting session makes its own subscriptions again), acks are dropped (the
    /// broker sends unacked messages again).
    fn requeue(&self, leftover: Vec<Request>, carried: &mut VecDeque<Request>) {
        let mut waiters = lock(&self.waiters);
        let mut written = Vec::new();
        let mut written_waiters = Vec::new();
        let mut unwritten = Vec::new();
        let mut other = Vec::new();
        for request in carried.drain(..).chain(leftover) {
            match request {
                Request::Publish(mut publish) if publish.pkid != 0 => {
                    let waiter = waiters
                        .publishes
                        .by_pkid
                        .remove(&publish.pkid)
                        .unwrap_or_else(|| oneshot::channel().0);
                    written_waiters.push(waiter);
                    publish.pkid = 0;
                    publish.dup = false;
                    written.push(Request::Publish(publish));
                }
                Request::Publish(publish) => unwritten.push(Request::Publish(publish)),
                Request::PubRel(_) | Request::Disconnect => other.push(request),
                _ => {}
            }
        }
        for tx in waiters.publishes.by_pkid.drain().map(|(_, tx)| tx) {
            let _ = tx.send(Err(Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                "the connection was lost before the broker confirmed the publish",
            )));
        }
        for waiter in written_waiters.into_iter().rev() {
            waiters.publishes.unsent.push_front(waiter);
        }
        fail_subscribes(&mut waiters, "the connection was lost");
        carried.extend(written);
        carried.extend(unwritten);
        carried.extend(other);
    }

    fn fail_all(&self, kind: ErrorKind, message: &str) {
        let mut waiters = lock(&self.waiters);
        let publishes = &mut waiters.publishes;
        let pending: Vec<_> = publishes
            .unsent
            .drain(..)
            .chain(publishes.by_pkid.drain().map(|(_, tx)| tx))
            .collect();
        for tx in pending {
            let _ = tx.send(Err(Error::new(kind, BACKEND, message)));
        }
        fail_subscribes(&mut waiters, message);
    }
}

fn fail_subscribes(waiters: &mut Waiters, message: &str) {
    waiters.subscribes.unsent.clear();
    waiters.subscribes.by_pkid.clear();
    let unsubscribes = &mut waiters.unsubscribes;
    for tx in unsubscribes
        .unsent
        .drain(..)
        .chain(unsubscribes.by_pkid.drain().map(|(_, w)| w))
    {
        let _ = tx.send(Err(Error::new(ErrorKind::Unavailable, BACKEND, message)));
    }
}

fn is_taken_over(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            ..
        })
    )
}

fn suback_result(suback: &SubAck, config: &MqttConfig) -> Result<()> {
    match suback
        .return_codes
        .iter()
        .find(|code| !matches!(code, SubscribeReasonCode::Success(_)))
    {
        None => Ok(()),
        Some(SubscribeReasonCode::NotAuthorized) => Err(Error::new(
            ErrorKind::PermissionDenied,
            BACKEND,
            format!(
                "the broker refused a subscription: not authorized; the user needs read access to the topic and {}",
                acl_hint(config.username.as_deref(), crate::reserved::PREFIX)
            ),
        )),
        Some(code) => Err(Error::new(
            ErrorKind::Internal,
            BACKEND,
            format!("the broker refused a subscription: {code:?}"),
        )),
    }
}

fn refused(reason: String, not_authorized: bool) -> Error {
    if not_authorized {
        Error::new(ErrorKind::PermissionDenied, BACKEND, "not authorized")
    } else {
        Error::new(
            ErrorKind::Internal,
            BACKEND,
            format!("the broker refused the publish: {reason}"),
        )
    }
}

/// Refusals that retrying cannot fix.
fn fatal(error: &ConnectionError, config: &MqttConfig) -> Option<(ErrorKind, String)> {
    let ConnectionError::ConnectionRefused(code) = error else {
        return None;
    };
    let user = config.username.as_deref().unwrap_or("(none)");
    let (kind, why) = match code {
        // Mosquitto 2.0 answers a wrong password with "not authorized" (0x87), not 0x86: at
        // CONNECT both mean the credentials were not accepted.
        ConnectReturnCode::BadUserNamePassword
        | ConnectReturnCode::BadAuthenticationMethod
        | ConnectReturnCode::NotAuthorized => (
            ErrorKind::Unauthenticated,
            format!("credentials not accepted ({code:?}; mqtt.username = {user:?}); check mqtt.username and mqtt.password"),
        ),
        ConnectReturnCode::Banned => (
            ErrorKind::PermissionDenied,
            format!("this client is banned (mqtt.username = {user:?})"),
        ),
        ConnectReturnCode::ClientIdentifierNotValid | ConnectReturnCode::BadClientId => (
            ErrorKind::Config,
            format!("client id rejected; change mqtt.client_id = {:?}", config.client_id),
        ),
        ConnectReturnCode::RefusedProtocolVersion | ConnectReturnCode::UnsupportedProtocolVersion => (
            ErrorKind::Unsupported,
            "the broker does not speak MQTT 5".to_string(),
        ),
        _ => return None,
    };
    Some((
        kind,
        format!("{} refused the connection: {why}", config.url),
    ))
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
