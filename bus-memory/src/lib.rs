//! An in-process bus broker: the embedded default backend, with the whole bus contract.
//!
//! - **Fan-out and load sharing.** Each subscription name on a topic has its own queue; every
//!   queue gets every message published after the subscription was created. Consumers that
//!   subscribe with the same name take turns on that queue.
//! - **Durability** for the life of the process: a subscription and its messages stay when its
//!   last consumer closes, and the next consumer gets them.
//! - **At-least-once.** A delivery stays *in flight* until it is acked. A nack, or no ack within
//!   the ack deadline, puts it back with its attempt number increased; once the attempts reach
//!   the dead-letter policy's maximum the message is published to the dead-letter topic.
//! - **Ordering.** On a subscription with [`SubscriptionOptions::ordered`], a message with an
//!   ordering key is not handed out while an earlier message with that key is still in flight.
//! - **Bounded memory.** Each subscription holds at most
//!   [`MemoryConfig::max_queued_bytes`] of unacked messages (each message counted as its size
//!   plus [`PER_MESSAGE_OVERHEAD`]). A publisher waits for room rather than memory growing;
//!   after [`MemoryConfig::publish_timeout_ms`] it gets a retryable
//!   [`ErrorKind::Timeout`] error. A full subscription holds back the publishers of its topic,
//!   never the consumers of other subscriptions.
//! - Publishing returns once every subscription of the topic holds the message. A topic with no
//!   subscriptions discards what is published to it, as Pub/Sub does.
//!
//! ```
//! use bus_core::{Message, Publisher, Subscriber, SubscriptionOptions, Topic};
//! use bus_memory::MemoryBroker;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> bus_core::Result<()> {
//! let broker = MemoryBroker::new(Default::default())?;
//! let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
//! let topic = Topic::new("python/mqtt")?;
//! let subscription = subscriber.subscribe(&topic, SubscriptionOptions::new("consume")?).await?;
//!
//! publisher.publish(&topic, Message::new("Hello")).await?;
//! let delivery = subscription.receive().await?;
//! assert_eq!(delivery.payload().as_ref(), b"Hello");
//! assert_eq!(delivery.attempt(), 1);
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bus_core::{
    Acker, Capabilities, Delivery, Error, ErrorKind, Message, Publisher, Result, Subscriber,
    Subscription, SubscriptionOptions, Topic,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The backend's name, as reported in errors.
pub const BACKEND: &str = "memory";

/// Bytes each queued message is charged on top of its own size, for the bookkeeping around it,
/// so that floods of tiny messages are bounded too.
pub const PER_MESSAGE_OVERHEAD: usize = 128;

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Configuration of the in-memory backend (`[memory]` in `bus.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Brokers are shared by name within a process (see [`MemoryBroker::shared`]), so services
    /// that run in one process talk to each other. Default `default`.
    pub name: String,
    /// Most bytes of unacked messages one subscription holds before publishers wait.
    /// Default 64 MiB.
    pub max_queued_bytes: usize,
    /// How long a publish waits for room before it fails with a retryable timeout error;
    /// 0 waits forever. Default 30,000 ms.
    pub publish_timeout_ms: u64,
    /// Largest message accepted (payload plus attributes and ordering key). Default 10 MiB,
    /// Pub/Sub's limit, so what works here works there.
    pub max_message_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            name: "default".to_string(),
            max_queued_bytes: 64 * 1024 * 1024,
            publish_timeout_ms: 30_000,
            max_message_bytes: 10 * 1024 * 1024,
        }
    }
}

impl MemoryConfig {
    fn validate(&self) -> Result<()> {
        if self.max_message_bytes == 0 {
            return Err(Error::config(
                BACKEND,
                "memory.max_message_bytes = 0 would reject every message; set it to at least 1 (default 10485760)",
            ));
        }
        let smallest = self.max_message_bytes.saturating_add(PER_MESSAGE_OVERHEAD);
        if self.max_queued_bytes < smallest {
            return Err(Error::config(
                BACKEND,
                format!(
                    "memory.max_queued_bytes = {} cannot hold one message of memory.max_message_bytes = {} (plus {PER_MESSAGE_OVERHEAD} bytes overhead); set it to at least {smallest}",
                    self.max_queued_bytes, self.max_message_bytes
                ),
            ));
        }
        if self.max_queued_bytes > Semaphore::MAX_PERMITS {
            return Err(Error::config(
                BACKEND,
                format!(
                    "memory.max_queued_bytes = {} is larger than the supported maximum {}",
                    self.max_queued_bytes,
                    Semaphore::MAX_PERMITS
                ),
            ));
        }
        Ok(())
    }
}

/// What the in-memory backend supports with `config`: the whole contract.
pub fn capabilities(config: &MemoryConfig) -> Capabilities {
    let mut caps = Capabilities::none();
    caps.fan_out = true;
    caps.competing_consumers = true;
    caps.durable = true;
    caps.prompt_handover = true;
    caps.nack = true;
    caps.ack_deadline = true;
    caps.min_ack_deadline = Duration::from_millis(1);
    caps.max_ack_deadline = Duration::from_secs(600);
    caps.ordering = true;
    caps.dead_letter = true;
    caps.max_message_bytes = config.max_message_bytes;
    caps
}

// ---------------------------------------------------------------------------------------------
// Connect: the broker
// ---------------------------------------------------------------------------------------------

/// An in-process broker. Cheap to clone; clones share the same topics and subscriptions.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<BrokerInner>,
}

struct BrokerInner {
    config: MemoryConfig,
    capabilities: Capabilities,
    topics: RwLock<HashMap<Topic, Arc<TopicState>>>,
    next_message_id: AtomicU64,
}

#[derive(Default)]
struct TopicState {
    subscriptions: RwLock<BTreeMap<String, Arc<SubscriptionState>>>,
    /// The same subscriptions as a list that publishers clone without allocating; rebuilt on
    /// the (rare) subscribe that adds one.
    fan_out: RwLock<Arc<[Arc<SubscriptionState>]>>,
}

impl MemoryBroker {
    /// A new, private broker.
    pub fn new(config: MemoryConfig) -> Result<Self> {
        config.validate()?;
        let capabilities = capabilities(&config);
        Ok(MemoryBroker {
            inner: Arc::new(BrokerInner {
                config,
                capabilities,
                topics: RwLock::default(),
                next_message_id: AtomicU64::new(1),
            }),
        })
    }

    /// The process-wide broker named `config.name`, created with `config` on first use. Later
    /// calls with the same name return the same broker (and ignore the rest of `config`), so
    /// services running in one process reach each other through it.
    pub fn shared(config: MemoryConfig) -> Result<Self> {
        static REGISTRY: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
        let mut registry = lock(REGISTRY.get_or_init(Default::default));
        if let Some(broker) = registry.get(&config.name) {
            return Ok(broker.clone());
        }
        let name = config.name.clone();
        let broker = MemoryBroker::new(config)?;
        registry.insert(name, broker.clone());
        Ok(broker)
    }

    /// A publisher on this broker.
    pub fn publisher(&self) -> MemoryPublisher {
        MemoryPublisher {
            broker: self.clone(),
            closed: AtomicBool::new(false),
            in_flight: Arc::new(InFlightPublishes::default()),
        }
    }

    /// A subscriber on this broker.
    pub fn subscriber(&self) -> MemorySubscriber {
        MemorySubscriber {
            broker: self.clone(),
            closed: CancellationToken::new(),
        }
    }

    /// The configuration the broker was made with.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    fn topic(&self, topic: &Topic) -> Arc<TopicState> {
        if let Some(state) = read(&self.inner.topics).get(topic) {
            return state.clone();
        }
        write(&self.inner.topics)
            .entry(topic.clone())
            .or_default()
            .clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Publish
// ---------------------------------------------------------------------------------------------

/// Publishes to a [`MemoryBroker`].
pub struct MemoryPublisher {
    broker: MemoryBroker,
    closed: AtomicBool,
    in_flight: Arc<InFlightPublishes>,
}

/// Counts publishes under way so that `flush` and `close` can wait for them.
#[derive(Default)]
struct InFlightPublishes {
    count: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(Arc<InFlightPublishes>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlightPublishes {
    fn start(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl BrokerInner {
    fn publish_timeout(&self) -> Option<Duration> {
        match self.config.publish_timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

impl MemoryBroker {
    /// Stores `message` in every subscription of `topic`, waiting for room in each.
    async fn publish_message(&self, topic: &Topic, message: Message) -> Result<String> {
        let inner = &self.inner;
        inner.capabilities.check_message(BACKEND, &message)?;
        let number = inner.next_message_id.fetch_add(1, Ordering::Relaxed);
        let mut digits = itoa::Buffer::new();
        let id = digits.format(number);
        let subscriptions = read(&self.topic(topic).fan_out).clone();
        if subscriptions.is_empty() {
            return Ok(id.to_string());
        }
        let weight = message_weight(&message);
        // Reserve room everywhere first, so a message is stored in all subscriptions or none.
        for (reserved, subscription) in subscriptions.iter().enumerate() {
            if let Err(e) = subscription.reserve(weight, inner.publish_timeout()).await {
                for subscription in &subscriptions[..reserved] {
                    subscription.room.add_permits(weight as usize);
                }
                return Err(e);
            }
        }
        let stored = Arc::new(StoredMessage {
            id: Arc::from(id),
            topic: topic.clone(),
            message,
            weight,
        });
        for subscription in subscriptions.iter() {
            subscription.enqueue(stored.clone());
        }
        Ok(id.to_string())
    }
}

fn message_weight(message: &Message) -> u32 {
    // check_message bounded the size by max_message_bytes, which validate() keeps far below
    // u32::MAX only if configured so; saturate rather than wrap for absurd configs.
    u32::try_from(message.encoded_len() + PER_MESSAGE_OVERHEAD).unwrap_or(u32::MAX)
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn publish(&self, topic: &Topic, message: Message) -> Result<String> {
        let _guard = self.in_flight.start();
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BACKEND, "publisher"));
        }
        self.broker.publish_message(topic, message).await
    }

    async fn flush(&self) -> Result<()> {
        self.in_flight.wait_idle().await;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.in_flight.wait_idle().await;
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.broker.inner.capabilities.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Subscribe
// ---------------------------------------------------------------------------------------------

/// Creates subscriptions on a [`MemoryBroker`].
pub struct MemorySubscriber {
    broker: MemoryBroker,
    closed: CancellationToken,
}

struct StoredMessage {
    id: Arc<str>,
    topic: Topic,
    message: Message,
    weight: u32,
}

/// A message waiting in a subscription, with the number of times it was delivered so far.
struct Queued {
    message: Arc<StoredMessage>,
    deliveries: u32,
}

/// A message handed to a consumer and not settled yet.
struct InFlight {
    queued: Queued,
    deadline: Instant,
}

/// One named subscription: its queue, shared by all of its consumers.
struct SubscriptionState {
    /// Weak: the broker owns its subscriptions, not the other way round.
    broker: Weak<BrokerInner>,
    options: SubscriptionOptions,
    queue: Mutex<Queue>,
    /// Signalled when a message becomes ready.
    ready: Notify,
    /// Room left, in bytes (see [`PER_MESSAGE_OVERHEAD`]).
    room: Semaphore,
    max_queued_bytes: usize,
}

#[derive(Default)]
struct Queue {
    /// Messages that may be handed out now, in order.
    ready: VecDeque<Queued>,
    /// Ordered subscriptions: for each ordering key with a message ready or in flight, the
    /// later messages with that key, waiting their turn.
    waiting_by_key: HashMap<String, VecDeque<Queued>>,
    /// Deliveries not yet settled, in delivery-tag order from tag `first_tag`; settled ones
    /// leave a `None` until the front is trimmed. Every delivery gets the same ack deadline, so
    /// the front is always the first to expire (and a ring needs no allocation per message).
    in_flight: VecDeque<Option<InFlight>>,
    first_tag: u64,
}

impl Queue {
    /// Takes the delivery with `tag` out of flight, if it still is, and trims settled entries
    /// off the front.
    fn take_in_flight(&mut self, tag: u64) -> Option<InFlight> {
        let index = usize::try_from(tag.checked_sub(self.first_tag)?).ok()?;
        let taken = self.in_flight.get_mut(index)?.take();
        while let Some(None) = self.in_flight.front() {
            self.in_flight.pop_front();
            self.first_tag += 1;
        }
        taken
    }
}

impl SubscriptionState {
    async fn reserve(&self, weight: u32, timeout: Option<Duration>) -> Result<()> {
        let acquire = self.room.acquire_many(weight);
        let permit = match timeout {
            None => acquire.await,
            Some(limit) => match tokio::time::timeout(limit, acquire).await {
                Ok(permit) => permit,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        BACKEND,
                        format!(
                            "subscription {:?} is full (memory.max_queued_bytes = {}) and nothing was acked for {limit:?}; consume faster, raise memory.max_queued_bytes or memory.publish_timeout_ms",
                            self.options.name.as_str(),
                            self.max_queued_bytes
                        ),
                    ))
                }
            },
        };
        // The semaphore is never closed.
        permit
            .map_err(|e| Error::new(ErrorKind::Internal, BACKEND, "queue closed").with_source(e))?
            .forget();
        Ok(())
    }

    fn enqueue(&self, message: Arc<StoredMessage>) {
        let queued = Queued {
            message,
            deliveries: 0,
        };
        {
            let mut queue = lock(&self.queue);
            match self.ordering_key(&queued) {
                Some(key) => match queue.waiting_by_key.get_mut(key) {
                    Some(waiting) => {
                        waiting.push_back(queued);
                        return;
                    }
                    None => {
                        queue
                            .waiting_by_key
                            .insert(key.to_string(), VecDeque::new());
                        queue.ready.push_back(queued);
                    }
                },
                None => queue.ready.push_back(queued),
            }
        }
        self.ready.notify_one();
    }

    /// The key that orders this message on this subscription, if any.
    fn ordering_key<'a>(&self, queued: &'a Queued) -> Option<&'a str> {
        if self.options.ordered {
            queued.message.message.ordering_key.as_deref()
        } else {
            None
        }
    }

    /// Hands out the next ready message, after moving expired deliveries back. Returns the
    /// delivery (if any), messages to dead-letter, and when the next in-flight message expires.
    fn take_next(self: &Arc<Self>) -> (Option<Delivery>, Vec<Queued>, Option<Instant>) {
        let now = Instant::now();
        let mut dead = Vec::new();
        let mut queue = lock(&self.queue);
        while queue
            .in_flight
            .front()
            .and_then(Option::as_ref)
            .is_some_and(|front| front.deadline <= now)
        {
            let front = queue.first_tag;
            if let Some(expired) = queue.take_in_flight(front) {
                self.retry_or_dead_letter(&mut queue, expired.queued, &mut dead);
            }
        }
        let delivery = queue.ready.pop_front().map(|mut queued| {
            queued.deliveries += 1;
            let tag = queue.first_tag + queue.in_flight.len() as u64;
            let delivery = Delivery::new(
                queued.message.message.clone(),
                queued.message.id.clone(),
                queued.deliveries,
                queued.message.topic.clone(),
                Box::new(MemoryAcker {
                    subscription: self.clone(),
                    tag,
                }),
            );
            let deadline = now + self.options.ack_deadline;
            queue
                .in_flight
                .push_back(Some(InFlight { queued, deadline }));
            delivery
        });
        let more_ready = delivery.is_some() && !queue.ready.is_empty();
        let next_deadline = queue
            .in_flight
            .front()
            .and_then(Option::as_ref)
            .map(|f| f.deadline);
        drop(queue);
        if more_ready {
            // Another consumer may be waiting for the rest.
            self.ready.notify_one();
        }
        (delivery, dead, next_deadline)
    }

    /// A delivery failed (nack or expired): queue it again in front, or hand it to `dead` when
    /// it has used its attempts.
    fn retry_or_dead_letter(&self, queue: &mut Queue, queued: Queued, dead: &mut Vec<Queued>) {
        let exhausted = self
            .options
            .dead_letter
            .as_ref()
            .is_some_and(|policy| queued.deliveries >= policy.max_delivery_attempts);
        if exhausted {
            self.release_key(queue, &queued);
            dead.push(queued);
        } else {
            // In front: for an ordered key it is still the key's head, so order is kept.
            queue.ready.push_front(queued);
            self.ready.notify_one();
        }
    }

    /// A keyed message left the subscription: let the next message with its key go.
    fn release_key(&self, queue: &mut Queue, settled: &Queued) {
        let Some(key) = self.ordering_key(settled) else {
            return;
        };
        let next = match queue.waiting_by_key.get_mut(key) {
            Some(waiting) => waiting.pop_front(),
            None => None,
        };
        match next {
            Some(next) => {
                queue.ready.push_back(next);
                self.ready.notify_one();
            }
            None => {
                queue.waiting_by_key.remove(key);
            }
        }
    }

    /// Publishes exhausted messages to the dead-letter topic, then frees their room here. A
    /// message that cannot be dead-lettered (the broker is gone, or the dead-letter topic's
    /// subscriptions stay full) is queued here again rather than lost.
    async fn dead_letter(&self, dead: Vec<Queued>) -> Result<()> {
        let Some(policy) = &self.options.dead_letter else {
            return Ok(());
        };
        let mut dead = dead.into_iter();
        while let Some(queued) = dead.next() {
            let published = match self.broker.upgrade() {
                Some(broker) => {
                    let message = queued.message.message.clone();
                    MemoryBroker { inner: broker }
                        .publish_message(&policy.topic, message)
                        .await
                }
                None => Err(Error::closed(BACKEND, "broker")),
            };
            match published {
                Ok(_) => self.room.add_permits(queued.message.weight as usize),
                Err(e) => {
                    tracing::warn!(
                        subscription = self.options.name.as_str(),
                        dead_letter_topic = %policy.topic,
                        error = %e,
                        "dead-lettering failed; the messages stay on the subscription"
                    );
                    let mut queue = lock(&self.queue);
                    for queued in std::iter::once(queued).chain(dead) {
                        if let Some(key) = self.ordering_key(&queued) {
                            queue.waiting_by_key.entry(key.to_string()).or_default();
                        }
                        queue.ready.push_front(queued);
                    }
                    drop(queue);
                    self.ready.notify_one();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn settle(&self, tag: u64, ack: bool) -> Vec<Queued> {
        let mut dead = Vec::new();
        let mut queue = lock(&self.queue);
        // A delivery that already expired (or was settled) is no longer in flight: nothing to do.
        let Some(in_flight) = queue.take_in_flight(tag) else {
            return dead;
        };
        if ack {
            self.release_key(&mut queue, &in_flight.queued);
            drop(queue);
            self.room
                .add_permits(in_flight.queued.message.weight as usize);
        } else {
            self.retry_or_dead_letter(&mut queue, in_flight.queued, &mut dead);
        }
        dead
    }
}

#[async_trait]
impl Subscriber for MemorySubscriber {
    async fn subscribe(
        &self,
        topic: &Topic,
        options: SubscriptionOptions,
    ) -> Result<Box<dyn Subscription>> {
        if self.closed.is_cancelled() {
            return Err(Error::closed(BACKEND, "subscriber"));
        }
        let inner = &self.broker.inner;
        options.check(BACKEND, &inner.capabilities)?;
        let topic_state = self.broker.topic(topic);
        let mut subscriptions = write(&topic_state.subscriptions);
        let state = subscriptions
            .entry(options.name.as_str().to_string())
            .or_insert_with(|| {
                Arc::new(SubscriptionState {
                    broker: Arc::downgrade(&self.broker.inner),
                    options: options.clone(),
                    max_queued_bytes: inner.config.max_queued_bytes,
                    queue: Mutex::default(),
                    ready: Notify::new(),
                    room: Semaphore::new(inner.config.max_queued_bytes),
                })
            })
            .clone();
        if read(&topic_state.fan_out).len() != subscriptions.len() {
            *write(&topic_state.fan_out) = subscriptions.values().cloned().collect();
        }
        if state.options != options {
            tracing::warn!(
                topic = %topic,
                subscription = options.name.as_str(),
                "subscription exists with other options; keeping the options it was created with"
            );
        }
        Ok(Box::new(MemorySubscription {
            state,
            closed: self.closed.child_token(),
        }))
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.broker.inner.capabilities.clone()
    }
}

/// One consumer of a memory subscription.
pub struct MemorySubscription {
    state: Arc<SubscriptionState>,
    closed: CancellationToken,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn receive(&self) -> Result<Delivery> {
        loop {
            let ready = self.state.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if self.closed.is_cancelled() {
                return Err(Error::closed(BACKEND, "subscription"));
            }
            let (delivery, dead, next_deadline) = self.state.take_next();
            if !dead.is_empty() {
                self.state.dead_letter(dead).await?;
            }
            if let Some(delivery) = delivery {
                return Ok(delivery);
            }
            let expiry = async {
                match next_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ready => {}
                _ = expiry => {}
                _ = self.closed.cancelled() => {}
            }
        }
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Ack
// ---------------------------------------------------------------------------------------------

struct MemoryAcker {
    subscription: Arc<SubscriptionState>,
    tag: u64,
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<()> {
        self.subscription.settle(self.tag, true);
        Ok(())
    }

    async fn nack(&self) -> Result<()> {
        let dead = self.subscription.settle(self.tag, false);
        self.subscription.dead_letter(dead).await
    }
}

// ---------------------------------------------------------------------------------------------
// Locks: a panic while a lock is held cannot leave these structures half-updated in a way that
// matters more than losing the process, so poisoning is ignored rather than propagated.
// ---------------------------------------------------------------------------------------------

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
