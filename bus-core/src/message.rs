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
/// redelivery of the same message was already acked) must not fail. A backend whose broker
/// settles many deliveries at once implements [`BatchAcker`] instead.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Acker: Send + Sync + 'static {
    /// The message was handled; do not deliver it again.
    async fn ack(&self) -> Result<()>;
    /// The message was not handled; deliver it again (with the attempt number increased).
    async fn nack(&self) -> Result<()>;
}

/// Settles the deliveries of one subscription by a tag the backend gave each of them, one at a
/// time or many in one step. Implemented by backends whose broker settles many deliveries at
/// once: one acker is shared by all the deliveries it settles (made with
/// [`Delivery::tagged`]), so a delivery costs no acker of its own, and [`ack_all`] /
/// [`nack_all`] hand each acker its deliveries' tags together.
///
/// Implementations must be idempotent per tag, as [`Acker`]'s are.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait BatchAcker: Send + Sync + 'static {
    /// Acks (`ack`) or nacks the delivery `tag`.
    async fn settle(&self, tag: u64, ack: bool) -> Result<()>;

    /// Acks (`ack`) or nacks every delivery of `tags`, in order, and returns one result per
    /// tag. The default settles one after the other; backends override it to settle the
    /// whole batch in one step.
    async fn settle_all(&self, tags: &[u64], ack: bool) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(tags.len());
        for tag in tags {
            results.push(self.settle(*tag, ack).await);
        }
        results
    }
}

/// How one delivery is settled: by an acker of its own, or by its tag through an acker shared
/// with the other deliveries of its subscription.
enum Settler {
    Own(Box<dyn Acker>),
    Tagged(Arc<dyn BatchAcker>, u64),
}

impl Settler {
    async fn settle(&self, ack: bool) -> Result<()> {
        match self {
            Settler::Own(acker) if ack => acker.ack().await,
            Settler::Own(acker) => acker.nack().await,
            Settler::Tagged(acker, tag) => acker.settle(*tag, ack).await,
        }
    }
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
    settler: Settler,
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
        Self::settled_by(message, id.into(), attempt, topic, Settler::Own(acker))
    }

    /// Made by backends whose deliveries share one [`BatchAcker`]: as [`new`](Self::new), but
    /// settled through `acker` by `tag`.
    pub fn tagged(
        message: Message,
        id: impl Into<Arc<str>>,
        attempt: u32,
        topic: Topic,
        acker: Arc<dyn BatchAcker>,
        tag: u64,
    ) -> Self {
        Self::settled_by(
            message,
            id.into(),
            attempt,
            topic,
            Settler::Tagged(acker, tag),
        )
    }

    fn settled_by(
        message: Message,
        id: Arc<str>,
        attempt: u32,
        topic: Topic,
        settler: Settler,
    ) -> Self {
        Delivery {
            message,
            id,
            attempt,
            topic,
            settler,
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
        settle(&self.settler, self.settlement, true).await
    }

    /// Asks for redelivery (attempt + 1). After the subscription's `max_delivery_attempts` the
    /// message goes to its dead-letter topic, if one is configured.
    pub async fn nack(self) -> Result<()> {
        settle(&self.settler, self.settlement, false).await
    }

    /// Splits the delivery into its message and a handle that can still settle it, for code
    /// that wants to own the payload (for example to decode it) before deciding.
    pub fn into_parts(self) -> (Message, DeliveryHandle) {
        let handle = DeliveryHandle {
            id: self.id,
            attempt: self.attempt,
            topic: self.topic,
            settler: self.settler,
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
    settler: Settler,
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
        settle(&self.settler, self.settlement, true).await
    }

    /// See [`Delivery::nack`].
    pub async fn nack(self) -> Result<()> {
        settle(&self.settler, self.settlement, false).await
    }

    /// Joins the message back into a [`Delivery`].
    pub fn into_delivery(self, message: Message) -> Delivery {
        Delivery {
            message,
            id: self.id,
            attempt: self.attempt,
            topic: self.topic,
            settler: self.settler,
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

/// Settles through `settler`, and through the telemetry layer's `settlement` when there is one.
async fn settle(settler: &Settler, settlement: Option<Settlement>, ack: bool) -> Result<()> {
    match settlement {
        Some(settlement) => settlement.settle(ack, settler.settle(ack)).await,
        None => settler.settle(ack).await,
    }
}

/// Acks every delivery of `deliveries` at once and returns one result per delivery, in order.
/// Deliveries that share a [`BatchAcker`] are settled in one step per acker (the in-memory
/// broker takes its lock once, an MQTT consumer sends its PUBACKs back to back); the others
/// are settled concurrently, which the backend turns into few requests (one for several on
/// Pub/Sub). Nothing else is acked: deliveries of the same batch that are not passed here
/// stay unsettled.
pub async fn ack_all(deliveries: impl IntoIterator<Item = Delivery>) -> Vec<Result<()>> {
    settle_all(deliveries, true).await
}

/// Nacks every delivery of `deliveries` at once; one result per delivery, in order (see
/// [`ack_all`]).
pub async fn nack_all(deliveries: impl IntoIterator<Item = Delivery>) -> Vec<Result<()>> {
    settle_all(deliveries, false).await
}

/// The deliveries of one [`BatchAcker`] in a call to [`settle_all`].
struct Group {
    acker: Arc<dyn BatchAcker>,
    tags: Vec<u64>,
    /// Each delivery's place in the results, and the telemetry layer's part in settling it.
    members: Vec<(usize, Option<Settlement>)>,
}

async fn settle_all(deliveries: impl IntoIterator<Item = Delivery>, ack: bool) -> Vec<Result<()>> {
    let deliveries = deliveries.into_iter();
    // Sized for the usual batch: one subscription's deliveries.
    let expected = deliveries.size_hint().0;
    let mut groups: Vec<Group> = Vec::new();
    let mut own = Vec::new();
    let mut count = 0;
    for (index, delivery) in deliveries.enumerate() {
        count += 1;
        match delivery.settler {
            Settler::Tagged(acker, tag) => {
                // A batch comes from a few subscriptions at most: a linear search is enough.
                let at = groups.iter().position(|group| {
                    std::ptr::addr_eq(Arc::as_ptr(&group.acker), Arc::as_ptr(&acker))
                });
                let at = at.unwrap_or_else(|| {
                    let capacity = expected.saturating_sub(index);
                    groups.push(Group {
                        acker,
                        tags: Vec::with_capacity(capacity),
                        members: Vec::with_capacity(capacity),
                    });
                    groups.len() - 1
                });
                let group = &mut groups[at];
                group.tags.push(tag);
                group.members.push((index, delivery.settlement));
            }
            settler => own.push((index, settler, delivery.settlement)),
        }
    }
    let mut results: Vec<Option<Result<()>>> =
        std::iter::repeat_with(|| None).take(count).collect();
    let own = futures::future::join_all(
        own.into_iter()
            .map(|(index, settler, settlement)| async move {
                (index, settle(&settler, settlement, ack).await)
            }),
    );
    let grouped = futures::future::join_all(groups.into_iter().map(|group| async move {
        let recordings: Vec<_> = group
            .members
            .into_iter()
            .map(|(index, settlement)| (index, settlement.map(|s| s.start(ack))))
            .collect();
        let settled = group.acker.settle_all(&group.tags, ack).await;
        let mut settled = settled.into_iter();
        recordings
            .into_iter()
            .map(|(index, recording)| {
                // A backend that returned too few results failed the rest.
                let result = settled.next().unwrap_or_else(|| {
                    Err(crate::Error::new(
                        crate::ErrorKind::Internal,
                        crate::CORE,
                        "the acker returned fewer results than deliveries",
                    ))
                });
                if let Some(recording) = recording {
                    recording.finish(&result);
                }
                (index, result)
            })
            .collect::<Vec<_>>()
    }));
    let (own, grouped) = futures::future::join(own, grouped).await;
    for (index, result) in own.into_iter().chain(grouped.into_iter().flatten()) {
        results[index] = Some(result);
    }
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                Err(crate::Error::new(
                    crate::ErrorKind::Internal,
                    crate::CORE,
                    "a delivery was not settled",
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{Error, ErrorKind};

    /// A shared acker that records each call and fails the tags in `failing`.
    #[derive(Default)]
    struct RecordingAcker {
        calls: Mutex<Vec<(Vec<u64>, bool)>>,
        failing: Vec<u64>,
    }

    #[async_trait]
    impl BatchAcker for RecordingAcker {
        async fn settle(&self, tag: u64, ack: bool) -> Result<()> {
            self.calls.lock().unwrap().push((vec![tag], ack));
            self.outcome(tag)
        }

        async fn settle_all(&self, tags: &[u64], ack: bool) -> Vec<Result<()>> {
            self.calls.lock().unwrap().push((tags.to_vec(), ack));
            tags.iter().map(|tag| self.outcome(*tag)).collect()
        }
    }

    impl RecordingAcker {
        fn outcome(&self, tag: u64) -> Result<()> {
            if self.failing.contains(&tag) {
                Err(Error::new(
                    ErrorKind::Unavailable,
                    "test",
                    format!("tag {tag}"),
                ))
            } else {
                Ok(())
            }
        }
    }

    fn tagged(acker: &Arc<RecordingAcker>, tag: u64) -> Delivery {
        let topic = Topic::new("t").unwrap();
        Delivery::tagged(
            Message::new("m"),
            tag.to_string(),
            1,
            topic,
            acker.clone(),
            tag,
        )
    }

    /// A delivery's own acker, recording its name when it is acked.
    struct NamedAcker {
        name: &'static str,
        acked: Arc<Mutex<Vec<&'static str>>>,
    }

    #[async_trait]
    impl Acker for NamedAcker {
        async fn ack(&self) -> Result<()> {
            self.acked.lock().unwrap().push(self.name);
            Ok(())
        }

        async fn nack(&self) -> Result<()> {
            panic!("{} was nacked", self.name)
        }
    }

    fn own(acked: &Arc<Mutex<Vec<&'static str>>>, name: &'static str) -> Delivery {
        let acker = NamedAcker {
            name,
            acked: acked.clone(),
        };
        let topic = Topic::new("t").unwrap();
        Delivery::new(Message::new("m"), name, 1, topic, Box::new(acker))
    }

    #[tokio::test]
    async fn ack_all_settles_each_shared_ackers_deliveries_in_one_call_and_keeps_their_order() {
        let first = Arc::new(RecordingAcker {
            failing: vec![3],
            ..RecordingAcker::default()
        });
        let second = Arc::new(RecordingAcker::default());
        let acked = Arc::new(Mutex::new(Vec::new()));
        let batch = vec![
            tagged(&first, 1),
            own(&acked, "own"),
            tagged(&second, 7),
            tagged(&first, 3),
            tagged(&second, 8),
            tagged(&first, 2),
        ];
        let results = ack_all(batch).await;
        let failed: Vec<bool> = results.iter().map(Result::is_err).collect();
        assert_eq!(failed, [false, false, false, true, false, false]);
        assert_eq!(*first.calls.lock().unwrap(), [(vec![1, 3, 2], true)]);
        assert_eq!(*second.calls.lock().unwrap(), [(vec![7, 8], true)]);
        assert_eq!(*acked.lock().unwrap(), ["own"]);
    }

    #[tokio::test]
    async fn nack_all_nacks_and_a_tagged_delivery_settles_alone_by_its_tag() {
        let acker = Arc::new(RecordingAcker::default());
        let results = nack_all(vec![tagged(&acker, 4), tagged(&acker, 5)]).await;
        assert!(results.iter().all(Result::is_ok));
        tagged(&acker, 6).ack().await.unwrap();
        let (message, handle) = tagged(&acker, 9).into_parts();
        handle.into_delivery(message).nack().await.unwrap();
        assert_eq!(
            *acker.calls.lock().unwrap(),
            [(vec![4, 5], false), (vec![6], true), (vec![9], false)]
        );
        assert!(ack_all(Vec::new()).await.is_empty());
    }
}
