//! Subscribing: each subscription name on a topic has its own queue, shared by its consumers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bus_core::backend::Lifecycle;
use bus_core::{
    Capabilities, Delivery, Error, ErrorKind, Result, Subscriber, Subscription,
    SubscriptionOptions, Topic,
};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::connect::BrokerInner;
use crate::publisher::StoredMessage;
use crate::{lock, read, write, MemoryBackend, BACKEND};

/// Creates subscriptions on a [`MemoryBackend`].
#[derive(Debug)]
pub struct MemorySubscriber {
    broker: MemoryBackend,
    lifecycle: Lifecycle,
}

impl MemorySubscriber {
    pub(crate) fn new(broker: MemoryBackend) -> Self {
        MemorySubscriber {
            broker,
            lifecycle: Lifecycle::new(),
        }
    }
}

/// A message waiting in a subscription, with the number of times it was delivered so far.
pub(crate) struct Queued {
    pub message: Arc<StoredMessage>,
    pub deliveries: u32,
}

/// A message handed to a consumer and not settled yet.
pub(crate) struct InFlight {
    pub queued: Queued,
    pub deadline: Instant,
}

/// One named subscription: its queue, shared by all of its consumers.
pub(crate) struct SubscriptionState {
    /// Weak: the broker owns its subscriptions, not the other way round.
    pub broker: Weak<BrokerInner>,
    /// Itself, for the dead-letter task it starts while settling through `&self`.
    pub this: Weak<SubscriptionState>,
    /// The topic, a copy of its own: deliveries count their references to it here, apart from
    /// the publishers' (a shared count would pass between the cores with every message).
    pub topic: Topic,
    pub options: SubscriptionOptions,
    pub queue: Mutex<Queue>,
    /// Signalled when a message becomes ready.
    pub ready: Notify,
    /// Room left, in bytes (see [`PER_MESSAGE_OVERHEAD`](crate::PER_MESSAGE_OVERHEAD)).
    room: Semaphore,
    max_queued_bytes: usize,
    /// Messages that used their attempts, waiting to be published to the dead-letter topic by
    /// a task of their own (never by `receive` or `nack`).
    pub dead: Mutex<VecDeque<Queued>>,
    pub dead_letter_running: AtomicBool,
}

#[derive(Default)]
pub(crate) struct Queue {
    /// Messages that may be handed out now, in order.
    pub ready: VecDeque<Queued>,
    /// Ordered subscriptions: for each ordering key with a message ready or in flight, the
    /// later messages with that key, waiting their turn.
    pub waiting_by_key: HashMap<String, VecDeque<Queued>>,
    /// Deliveries not yet settled, in delivery-tag order from tag `first_tag`; settled ones
    /// leave a `None` until the front is trimmed. Every delivery gets the same ack deadline, so
    /// the front is always the first to expire (and a ring needs no allocation per message).
    pub in_flight: VecDeque<Option<InFlight>>,
    pub first_tag: u64,
}

impl Queue {
    /// Takes the delivery with `tag` out of flight, if it still is, and trims settled entries
    /// off the front.
    pub fn take_in_flight(&mut self, tag: u64) -> Option<InFlight> {
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
    fn new(broker: &MemoryBackend, topic: &Topic, options: SubscriptionOptions) -> Arc<Self> {
        let max_queued_bytes = broker.inner.config.max_queued_bytes;
        // A name that is a topic already passes again; the fallback only keeps this infallible.
        let topic = Topic::new(topic.as_str()).unwrap_or_else(|_| topic.clone());
        Arc::new_cyclic(|this| SubscriptionState {
            broker: Arc::downgrade(&broker.inner),
            this: this.clone(),
            topic,
            options,
            queue: Mutex::default(),
            ready: Notify::new(),
            room: Semaphore::new(max_queued_bytes),
            max_queued_bytes,
            dead: Mutex::default(),
            dead_letter_running: AtomicBool::new(false),
        })
    }

    /// Waits for `weight` bytes of room, for at most `timeout`.
    pub async fn reserve(&self, weight: u32, timeout: Option<Duration>) -> Result<()> {
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

    /// Gives `weight` bytes of room back.
    pub fn release(&self, weight: u32) {
        self.release_bytes(weight as usize);
    }

    /// Gives `bytes` of room back.
    pub fn release_bytes(&self, bytes: usize) {
        self.room.add_permits(bytes);
    }

    /// Reserves `weight` bytes if the room is there now.
    pub fn try_reserve(&self, weight: u32) -> bool {
        match self.room.try_acquire_many(weight) {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Queues `messages` (their room reserved), in order, under one lock.
    pub fn enqueue(&self, messages: &[Arc<StoredMessage>]) {
        {
            let mut queue = lock(&self.queue);
            for message in messages {
                let queued = Queued {
                    message: message.clone(),
                    deliveries: 0,
                };
                match self.ordering_key(&queued) {
                    Some(key) => match queue.waiting_by_key.get_mut(key) {
                        Some(waiting) => waiting.push_back(queued),
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
        }
        // One waiting consumer wakes; each one that takes a message wakes the next while more
        // are ready (see `take`).
        self.ready.notify_one();
    }

    /// The key that orders this message on this subscription, if any.
    pub fn ordering_key<'a>(&self, queued: &'a Queued) -> Option<&'a str> {
        if self.options.ordered {
            queued.message.message.ordering_key.as_deref()
        } else {
            None
        }
    }

    /// Hands up to `max` ready messages to `deliver`, after moving expired deliveries back.
    /// Returns how many it handed out and when the next in-flight message expires.
    fn take(
        self: &Arc<Self>,
        max: usize,
        mut deliver: impl FnMut(Delivery),
    ) -> (usize, Option<Instant>) {
        let now = Instant::now();
        let mut queue = lock(&self.queue);
        while queue
            .in_flight
            .front()
            .and_then(Option::as_ref)
            .is_some_and(|front| front.deadline <= now)
        {
            let front = queue.first_tag;
            if let Some(expired) = queue.take_in_flight(front) {
                self.retry_or_dead_letter(&mut queue, expired.queued);
            }
        }
        let deadline = now + self.options.ack_deadline;
        let mut took = 0;
        while took < max {
            let Some(mut queued) = queue.ready.pop_front() else {
                break;
            };
            queued.deliveries += 1;
            let tag = queue.first_tag + queue.in_flight.len() as u64;
            deliver(Delivery::tagged(
                queued.message.message.clone(),
                queued.message.id.clone(),
                queued.deliveries,
                self.topic.clone(),
                self.clone(),
                tag,
            ));
            queue
                .in_flight
                .push_back(Some(InFlight { queued, deadline }));
            took += 1;
        }
        let more_ready = took > 0 && !queue.ready.is_empty();
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
        (took, next_deadline)
    }

    /// Waits until up to `max` deliveries can be taken (at least one), or forever, and hands
    /// them to `deliver`. Callers try [`take`](Self::take) first: when messages are ready (the
    /// busy case) they are taken without registering for a wake-up, which costs two more lock
    /// round trips.
    async fn take_waiting(self: &Arc<Self>, max: usize, mut deliver: impl FnMut(Delivery)) {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let (took, next_deadline) = self.take(max, &mut deliver);
            if took > 0 {
                return;
            }
            match next_deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = ready => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => ready.await,
            }
        }
    }
}

#[async_trait]
impl Subscriber for MemorySubscriber {
    async fn subscribe(
        &self,
        topic: &Topic,
        options: SubscriptionOptions,
    ) -> Result<Box<dyn Subscription>> {
        let inner = &self.broker.inner;
        let lifecycle = self
            .lifecycle
            .admit(BACKEND, &inner.capabilities, &options)?;
        let topic_state = self.broker.topic(topic);
        let mut subscriptions = write(&topic_state.subscriptions);
        let state = subscriptions
            .entry(options.name.as_str().to_string())
            .or_insert_with(|| SubscriptionState::new(&self.broker, topic, options.clone()))
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
        Ok(Box::new(MemorySubscription { state, lifecycle }))
    }

    async fn close(&self) -> Result<()> {
        self.lifecycle.close();
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.broker.inner.capabilities.clone()
    }
}

/// One consumer of a memory subscription.
pub struct MemorySubscription {
    state: Arc<SubscriptionState>,
    lifecycle: Lifecycle,
}

impl std::fmt::Debug for MemorySubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySubscription")
            .field("subscription", &self.state.options.name)
            .field("closed", &self.lifecycle.is_closed())
            .finish()
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn receive(&self) -> Result<Delivery> {
        self.lifecycle.check_open(BACKEND, "subscription")?;
        let mut one = None;
        if self.state.take(1, |d| one = Some(d)).0 == 0 {
            // Waiting needs a wake-up, a timer and the close signal: boxed apart, so that the
            // future of a receive that finds a message ready stays small (moving it into its
            // box showed in profiles).
            Box::pin(self.lifecycle.until_closed(BACKEND, async {
                self.state.take_waiting(1, |d| one = Some(d)).await;
                Ok(())
            }))
            .await?;
        }
        one.ok_or_else(|| Error::new(ErrorKind::Internal, BACKEND, "woke without a delivery"))
    }

    /// Takes the batch under one lock.
    async fn receive_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        self.lifecycle.check_open(BACKEND, "subscription")?;
        if self.state.take(max, |d| batch.push(d)).0 > 0 {
            return Ok(batch);
        }
        self.lifecycle
            .until_closed(BACKEND, async {
                let taking = self.state.take_waiting(max, |d| batch.push(d));
                let _ = tokio::time::timeout(wait, taking).await;
                Ok(())
            })
            .await?;
        Ok(batch)
    }

    async fn close(&self) -> Result<()> {
        self.lifecycle.close();
        Ok(())
    }
}
