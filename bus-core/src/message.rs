//! What is published ([`Message`]) and what is received ([`Delivery`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::telemetry::Settlement;
use crate::{Result, Topic};

/// Message attributes: string keys and values, sorted by key.
pub type Attributes = BTreeMap<String, String>;

/// A message to publish: any bytes (empty allowed), string attributes and an optional ordering
/// key. Messages with the same ordering key, from one publisher, reach a subscription in publish
/// order where the backend declares [`Capabilities::ordering`](crate::Capabilities::ordering).
///
/// ```
/// use bus_core::Message;
///
/// let message = Message::new("crash in boflow1")
///     .with_attribute("severity", "high")
///     .with_ordering_key("boflow1");
/// assert_eq!(&message.payload[..], b"crash in boflow1");
/// assert_eq!(message.attributes["severity"], "high");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The body, passed through unchanged.
    pub payload: Bytes,
    /// String key/value metadata.
    pub attributes: Attributes,
    /// Messages sharing a key are delivered in publish order (where supported).
    pub ordering_key: Option<String>,
}

impl Message {
    /// A message with this payload, no attributes and no ordering key.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            payload: payload.into(),
            ..Message::default()
        }
    }

    /// Adds (or replaces) an attribute.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Sets the ordering key.
    pub fn with_ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// Payload plus attribute and ordering-key bytes: what limits such as
    /// [`Capabilities::max_message_bytes`](crate::Capabilities::max_message_bytes) measure.
    pub fn encoded_len(&self) -> usize {
        self.payload.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.ordering_key.as_ref().map_or(0, String::len)
    }
}

impl fmt::Debug for Message {
    // Payloads can be megabytes of binary; show their size, not their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("payload_len", &self.payload.len())
            .field("attributes", &self.attributes)
            .field("ordering_key", &self.ordering_key)
            .finish()
    }
}

impl From<Bytes> for Message {
    fn from(payload: Bytes) -> Self {
        Message::new(payload)
    }
}

impl From<Vec<u8>> for Message {
    fn from(payload: Vec<u8>) -> Self {
        Message::new(payload)
    }
}

impl From<&'static str> for Message {
    fn from(payload: &'static str) -> Self {
        Message::new(payload)
    }
}

impl From<String> for Message {
    fn from(payload: String) -> Self {
        Message::new(payload)
    }
}

/// How a backend settles one delivery. Implemented by backends, called through
/// [`Delivery::ack`] and [`Delivery::nack`]; users never call it directly.
///
/// Implementations must be idempotent: a second call for the same delivery (for example after a
/// redelivery of the same message was already acked) must not fail.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Acker: Send + Sync + 'static {
    /// The message was handled; do not deliver it again.
    async fn ack(&self) -> Result<()>;
    /// The message was not handled; deliver it again (with the attempt number increased).
    async fn nack(&self) -> Result<()>;
}

/// One delivery of a message to a consumer.
///
/// Delivery is at-least-once: settle every delivery with [`ack`](Delivery::ack) (done) or
/// [`nack`](Delivery::nack) (deliver again). A delivery that is dropped without either is
/// redelivered once its subscription's ack deadline passes. Both consume the delivery.
pub struct Delivery {
    message: Message,
    // Shared: a backend that keeps the id (the in-memory broker) hands it out without a copy.
    id: Arc<str>,
    attempt: u32,
    topic: Topic,
    acker: Box<dyn Acker>,
    span: tracing::Span,
    /// The telemetry layer's part in settling (none without the layer).
    settlement: Option<Settlement>,
}

impl Delivery {
    /// Made by backends: the message, the id the backend assigned on publish, the attempt number
    /// (1 for the first delivery), the topic it was published to and how to settle it.
    pub fn new(
        message: Message,
        id: impl Into<Arc<str>>,
        attempt: u32,
        topic: Topic,
        acker: Box<dyn Acker>,
    ) -> Self {
        Delivery {
            message,
            id: id.into(),
            attempt,
            topic,
            acker,
            span: tracing::Span::none(),
            settlement: None,
        }
    }

    /// The message as published.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The attributes.
    pub fn attributes(&self) -> &Attributes {
        &self.message.attributes
    }

    /// The ordering key, if the message had one.
    pub fn ordering_key(&self) -> Option<&str> {
        self.message.ordering_key.as_deref()
    }

    /// The id the backend assigned when the message was published; the same on every
    /// redelivery, so it can be used to drop duplicates.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// 1 for the first delivery, 2 for the first redelivery, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The topic the message was published to.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The span of this delivery's processing (see [`telemetry`](crate::telemetry)): it
    /// continues the producer's trace, and acking or nacking is recorded inside it. Run the
    /// handling in it (`tracing::Instrument::instrument(work, delivery.span().clone())`) so that
    /// what the handler publishes continues the trace too. A disabled span where the delivery
    /// did not come through an instrumented subscriber.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The W3C trace context the message carries, if any (see
    /// [`TraceContext::from_attributes`](crate::telemetry::TraceContext::from_attributes)).
    pub fn trace_context(&self) -> Option<crate::telemetry::TraceContext> {
        crate::telemetry::TraceContext::from_attributes(&self.message.attributes)
    }

    /// The same delivery recorded in `span`, its settling observed by `settlement`.
    pub(crate) fn instrumented(mut self, span: tracing::Span, settlement: Settlement) -> Delivery {
        self.span = span;
        self.settlement = Some(settlement);
        self
    }

    /// Marks the message done: it is not delivered again on this subscription.
    pub async fn ack(self) -> Result<()> {
        settle(&*self.acker, self.settlement, true).await
    }

    /// Asks for redelivery (attempt + 1). After the subscription's `max_delivery_attempts` the
    /// message goes to its dead-letter topic, if one is configured.
    pub async fn nack(self) -> Result<()> {
        settle(&*self.acker, self.settlement, false).await
    }

    /// Splits the delivery into its message and a handle that can still settle it, for code
    /// that wants to own the payload (for example to decode it) before deciding.
    pub fn into_parts(self) -> (Message, DeliveryHandle) {
        let handle = DeliveryHandle {
            id: self.id,
            attempt: self.attempt,
            topic: self.topic,
            acker: self.acker,
            span: self.span,
            settlement: self.settlement,
        };
        (self.message, handle)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("topic", &self.topic)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

/// The settling half of a [`Delivery`] whose message was taken out with
/// [`Delivery::into_parts`].
pub struct DeliveryHandle {
    id: Arc<str>,
    attempt: u32,
    topic: Topic,
    acker: Box<dyn Acker>,
    span: tracing::Span,
    settlement: Option<Settlement>,
}

impl DeliveryHandle {
    /// See [`Delivery::id`].
    pub fn id(&self) -> &str {
        &self.id
    }

    /// See [`Delivery::attempt`].
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// See [`Delivery::topic`].
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// See [`Delivery::span`].
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// See [`Delivery::ack`].
    pub async fn ack(self) -> Result<()> {
        settle(&*self.acker, self.settlement, true).await
    }

    /// See [`Delivery::nack`].
    pub async fn nack(self) -> Result<()> {
        settle(&*self.acker, self.settlement, false).await
    }

    /// Joins the message back into a [`Delivery`].
    pub fn into_delivery(self, message: Message) -> Delivery {
        Delivery {
            message,
            id: self.id,
            attempt: self.attempt,
            topic: self.topic,
            acker: self.acker,
            span: self.span,
            settlement: self.settlement,
        }
    }
}

impl fmt::Debug for DeliveryHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryHandle")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Settles through `acker`, and through the telemetry layer's `settlement` when there is one.
async fn settle(acker: &dyn Acker, settlement: Option<Settlement>, ack: bool) -> Result<()> {
    match settlement {
        Some(settlement) => settlement.settle(acker, ack).await,
        None if ack => acker.ack().await,
        None => acker.nack().await,
    }
}

/// Acks every delivery of `deliveries` at once (the backends send the acks together: one
/// request for several on Pub/Sub, back to back on MQTT) and returns one result per delivery,
/// in order. Nothing else is acked: deliveries of the same batch that are not passed here stay
/// unsettled.
pub async fn ack_all(deliveries: impl IntoIterator<Item = Delivery>) -> Vec<Result<()>> {
    futures::future::join_all(deliveries.into_iter().map(Delivery::ack)).await
}

/// Nacks every delivery of `deliveries` at once; one result per delivery, in order (see
/// [`ack_all`]).
pub async fn nack_all(deliveries: impl IntoIterator<Item = Delivery>) -> Vec<Result<()>> {
    futures::future::join_all(deliveries.into_iter().map(Delivery::nack)).await
}
