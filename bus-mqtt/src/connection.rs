//! One MQTT connection: its event loop polled continuously in its own task, reconnects with
//! exponential backoff and jitter, fatal refusals reported once, and publishes confirmed by the
//! broker's PUBACK/PUBCOMP.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{Error, ErrorKind, Result};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, PubAckReason, PubRecReason, Publish, PublishProperties, SubAck,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::BACKEND;

/// What a connection's owner wants to hear about.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Connected (again). `session_present` is false when the broker has no session for us.
    fn on_connected(&self, _session_present: bool, _client: &AsyncClient) {}
    /// A message arrived.
    fn on_publish(&self, _publish: Publish) {}
    /// A SUBACK arrived.
    fn on_suback(&self, _suback: SubAck) {}
}

/// A handler that ignores everything (publishers).
pub(crate) struct NoHandler;
impl Handler for NoHandler {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Connecting,
    Connected,
    Failed(ErrorKind, String),
    Closed,
}

/// Whether the broker found a subscription for a published message (MQTT 5 reason code 16,
/// "no matching subscribers", says it did not and discarded the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matched {
    /// Matched at least one subscription, or the broker did not say (QoS 0, QoS 2).
    Yes,
    /// No subscription matched; the broker discarded the message.
    No,
}

type Confirm = oneshot::Sender<Result<Matched>>;

/// Publishes waiting for the broker. rumqttc reports `Outgoing::Publish(pkid)` in request
/// order, so new publishes are matched to their packet id first-in first-out; replays after a
/// reconnect keep their packet id and are recognised by it.
#[derive(Default)]
struct Confirms {
    unsent: VecDeque<Confirm>,
    by_pkid: HashMap<u16, Confirm>,
}

pub(crate) struct Connection {
    pub client: AsyncClient,
    confirms: Arc<Mutex<Confirms>>,
    /// Keeps "queue the confirmation, send the request" atomic, so the FIFO matches.
    publish_order: tokio::sync::Mutex<()>,
    state: watch::Receiver<State>,
    stop: CancellationToken,
    qos_level: QoS,
    publish_timeout: Duration,
    url: String,
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
        client_id: String,
        clean_start: bool,
        session_expiry_secs: u32,
        handler: Arc<dyn Handler>,
    ) -> Result<Connection> {
        let endpoint = config.checked_endpoint()?;
        let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
        options
            .set_keep_alive(Duration::from_secs(config.keep_alive_secs.max(5)))
            .set_clean_start(clean_start)
            .set_session_expiry_interval(Some(session_expiry_secs))
            .set_manual_acks(true)
            .set_max_packet_size(Some(config.max_packet_size))
            .set_receive_maximum(Some(config.receive_maximum))
            .set_connection_timeout(config.connect_timeout_ms.div_ceil(1000).max(1));
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
        let confirms = Arc::new(Mutex::new(Confirms::default()));
        let stop = CancellationToken::new();
        tokio::spawn(run(
            eventloop,
            client.clone(),
            config.clone(),
            handler,
            LoopShared {
                confirms: confirms.clone(),
                state: state_tx,
                stop: stop.clone(),
                last_error: last_error.clone(),
            },
        ));
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let outcome = {
            let ready = tokio::time::timeout(
                connect_timeout,
                state.wait_for(|s| !matches!(s, State::Connecting)),
            )
            .await;
            match ready {
                Ok(Ok(s)) => s.clone(),
                Ok(Err(_)) => State::Closed,
                Err(_) => State::Connecting,
            }
        };
        match outcome {
            State::Connected => Ok(Connection {
                client,
                confirms,
                publish_order: tokio::sync::Mutex::new(()),
                state,
                stop,
                qos_level: qos(config.qos),
                publish_timeout: Duration::from_millis(config.publish_timeout_ms),
                url: config.url.clone(),
            }),
            State::Failed(kind, message) => {
                stop.cancel();
                Err(Error::new(kind, BACKEND, message))
            }
            State::Connecting | State::Closed => {
                stop.cancel();
                let last = lock(&last_error)
                    .clone()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default();
                Err(Error::new(
                    ErrorKind::Unavailable,
                    BACKEND,
                    format!(
                        "could not connect to the MQTT broker at {} within {connect_timeout:?}{last}; is it running, and are mqtt.url and the TLS settings right?",
                        config.url
                    ),
                ))
            }
        }
    }

    /// Publishes and waits for the broker's confirmation (immediately for QoS 0).
    pub async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        properties: PublishProperties,
    ) -> Result<Matched> {
        self.check_usable()?;
        let confirmed = {
            let _order = self.publish_order.lock().await;
            let (tx, rx) = oneshot::channel();
            lock(&self.confirms).unsent.push_back(tx);
            let sent = self
                .client
                .publish_with_properties(topic, self.qos_level, false, payload, properties)
                .await;
            if let Err(e) = sent {
                // Ours is the last queued confirmation: the order lock is still held.
                lock(&self.confirms).unsent.pop_back();
                return Err(Error::new(
                    ErrorKind::Closed,
                    BACKEND,
                    "the MQTT connection is closed",
                )
                .with_source(e));
            }
            rx
        };
        match tokio::time::timeout(self.publish_timeout, confirmed).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.unusable_error()),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                BACKEND,
                format!(
                    "the broker at {} did not confirm a publish to {topic} within {:?} (mqtt.publish_timeout_ms); it may still arrive",
                    self.url, self.publish_timeout
                ),
            )),
        }
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

    /// Sends DISCONNECT (the broker keeps the session) and stops the event loop.
    pub async fn close(&self) {
        if self.stop.is_cancelled() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.disconnect()).await;
        // Give the event loop a moment to write the DISCONNECT.
        let mut state = self.state.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            state.wait_for(|s| matches!(s, State::Closed | State::Failed(..))),
        )
        .await;
        self.stop.cancel();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the polling task shares with its [`Connection`].
struct LoopShared {
    confirms: Arc<Mutex<Confirms>>,
    state: watch::Sender<State>,
    stop: CancellationToken,
    /// The last connection error, for the connect-timeout message.
    last_error: Arc<Mutex<Option<String>>>,
}

/// Polls the event loop until stopped, reconnecting with backoff.
async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    config: MqttConfig,
    handler: Arc<dyn Handler>,
    shared: LoopShared,
) {
    let LoopShared {
        confirms,
        state,
        stop,
        last_error,
    } = shared;
    let mut failures: u32 = 0;
    // Requests rumqttc would drop when the broker has lost our session (it clears its pending
    // list on a CONNACK without a session): kept here and handed back after the CONNACK.
    let mut carried = VecDeque::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                failures = 0;
                eventloop.pending.extend(carried.drain(..));
                state.send_replace(State::Connected);
                handler.on_connected(connack.session_present, &client);
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => handler.on_publish(publish),
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                let result = match ack.reason {
                    PubAckReason::Success => Ok(Matched::Yes),
                    PubAckReason::NoMatchingSubscribers => Ok(Matched::No),
                    reason => Err(puback_error(
                        format!("{reason:?}"),
                        reason == PubAckReason::NotAuthorized,
                    )),
                };
                confirm(&confirms, ack.pkid, result);
            }
            Ok(Event::Incoming(Incoming::PubRec(rec))) => match rec.reason {
                PubRecReason::Success | PubRecReason::NoMatchingSubscribers => {}
                reason => confirm(
                    &confirms,
                    rec.pkid,
                    Err(puback_error(
                        format!("{reason:?}"),
                        reason == PubRecReason::NotAuthorized,
                    )),
                ),
            },
            Ok(Event::Incoming(Incoming::PubComp(comp))) => {
                confirm(&confirms, comp.pkid, Ok(Matched::Yes))
            }
            Ok(Event::Incoming(Incoming::SubAck(suback))) => handler.on_suback(suback),
            Ok(Event::Incoming(Incoming::Disconnect(disconnect))) => {
                tracing::warn!(url = %config.url, reason = ?disconnect.reason_code, "the broker disconnected us");
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => sent(&confirms, pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                state.send_replace(State::Closed);
            }
            Ok(_) => {}
            Err(error) => {
                if stop.is_cancelled() || matches!(error, ConnectionError::RequestsDone) {
                    break;
                }
                carried.extend(eventloop.pending.drain(..));
                if let Some((kind, message)) = fatal(&error, &config) {
                    tracing::error!(url = %config.url, %message, "MQTT connection refused; not retrying");
                    fail_all(&confirms, kind, &message);
                    state.send_replace(State::Failed(kind, message));
                    break;
                }
                if *state.borrow() == State::Closed {
                    break;
                }
                *lock(&last_error) = Some(error.to_string());
                state.send_replace(State::Connecting);
                failures = failures.saturating_add(1);
                let delay = config.reconnect_delay(failures);
                tracing::warn!(url = %config.url, %error, ?delay, "MQTT connection lost; reconnecting");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    if !matches!(*state.borrow(), State::Failed(..)) {
        state.send_replace(State::Closed);
    }
    let _ = client.try_disconnect();
}

fn puback_error(reason: String, not_authorized: bool) -> Error {
    if not_authorized {
        Error::new(
            ErrorKind::PermissionDenied,
            BACKEND,
            "the broker refused the publish: not authorized (check the broker's ACL for this user and topic)",
        )
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

fn sent(confirms: &Mutex<Confirms>, pkid: u16) {
    let mut confirms = lock(confirms);
    if pkid == 0 {
        // QoS 0: written is all the confirmation there is.
        if let Some(tx) = confirms.unsent.pop_front() {
            let _ = tx.send(Ok(Matched::Yes));
        }
    } else if !confirms.by_pkid.contains_key(&pkid) {
        if let Some(tx) = confirms.unsent.pop_front() {
            confirms.by_pkid.insert(pkid, tx);
        }
    }
}

fn confirm(confirms: &Mutex<Confirms>, pkid: u16, result: Result<Matched>) {
    if let Some(tx) = lock(confirms).by_pkid.remove(&pkid) {
        let _ = tx.send(result);
    }
}

fn fail_all(confirms: &Mutex<Confirms>, kind: ErrorKind, message: &str) {
    let mut confirms = lock(confirms);
    let mut waiting: Vec<Confirm> = confirms.unsent.drain(..).collect();
    waiting.extend(confirms.by_pkid.drain().map(|(_, tx)| tx));
    for tx in waiting {
        let _ = tx.send(Err(Error::new(kind, BACKEND, message)));
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
