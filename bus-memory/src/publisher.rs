//! Publishing: a message is stored in every subscription of its topic, or in none.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bus_core::backend::PublishGate;
use bus_core::{Capabilities, Message, Publisher, Result, Topic};

use crate::subscriber::SubscriptionState;
use crate::{read, MemoryBackend, BACKEND, PER_MESSAGE_OVERHEAD};

/// A message as every subscription of its topic holds it (one copy, shared). Its topic is the
/// subscription's: a delivery takes it from there.
pub(crate) struct StoredMessage {
    pub id: Arc<str>,
    pub message: Message,
    /// What it is charged against a subscription's `max_queued_bytes`.
    pub weight: u32,
}

/// Publishes to a [`MemoryBackend`].
#[derive(Debug)]
pub struct MemoryPublisher {
    broker: MemoryBackend,
    gate: PublishGate,
}

impl MemoryPublisher {
    pub(crate) fn new(broker: MemoryBackend) -> Self {
        MemoryPublisher {
            broker,
            gate: PublishGate::default(),
        }
    }
}

impl MemoryBackend {
    /// Stores `message` in every subscription of `topic`, waiting for room in each: the batch
    /// path for one message, without its vectors (this is the hot path of one-by-one publishing).
    pub(crate) async fn publish_message(&self, topic: &Topic, message: Message) -> Result<String> {
        let inner = &self.inner;
        inner.capabilities.check_message(BACKEND, &message)?;
        let subscriptions = read(&self.topic(topic).fan_out).clone();
        let number = inner.next_message_id.fetch_add(1, Ordering::Relaxed);
        let mut digits = itoa::Buffer::new();
        let id = digits.format(number);
        if subscriptions.is_empty() {
            return Ok(id.to_string());
        }
        let weight = message_weight(&message);
        if !try_reserve_all(&subscriptions, weight) {
            // Boxed apart: the future of a publish that finds room stays small.
            Box::pin(reserve_all(&subscriptions, weight, inner.publish_timeout())).await?;
        }
        let stored = Arc::new(StoredMessage {
            id: Arc::from(id),
            message: shared(message),
            weight,
        });
        for subscription in subscriptions.iter() {
            subscription.enqueue(std::slice::from_ref(&stored));
        }
        Ok(id.to_string())
    }

    /// Stores each of `messages` in every subscription of `topic` (or in none), in order:
    /// room is reserved per message, and the messages go into each subscription's queue under
    /// one lock per batch.
    pub(crate) async fn publish_messages(
        &self,
        topic: &Topic,
        messages: Vec<Message>,
    ) -> Vec<Result<String>> {
        let inner = &self.inner;
        let subscriptions = read(&self.topic(topic).fan_out).clone();
        let mut results = Vec::with_capacity(messages.len());
        let mut reserved: Vec<Arc<StoredMessage>> = Vec::with_capacity(messages.len());
        let mut digits = itoa::Buffer::new();
        for message in messages {
            if let Err(e) = inner.capabilities.check_message(BACKEND, &message) {
                results.push(Err(e));
                continue;
            }
            let number = inner.next_message_id.fetch_add(1, Ordering::Relaxed);
            let id = digits.format(number);
            if subscriptions.is_empty() {
                results.push(Ok(id.to_string()));
                continue;
            }
            let weight = message_weight(&message);
            if !try_reserve_all(&subscriptions, weight) {
                // Full somewhere: what is reserved goes in first (its consumers may be what
                // makes room), then this message waits for room.
                store(&subscriptions, &mut reserved);
                if let Err(e) = reserve_all(&subscriptions, weight, inner.publish_timeout()).await {
                    results.push(Err(e));
                    continue;
                }
            }
            results.push(Ok(id.to_string()));
            reserved.push(Arc::new(StoredMessage {
                id: Arc::from(id),
                message: shared(message),
                weight,
            }));
        }
        store(&subscriptions, &mut reserved);
        results
    }
}

/// Reserves `weight` bytes in every subscription if each has the room now, else in none.
fn try_reserve_all(subscriptions: &[Arc<SubscriptionState>], weight: u32) -> bool {
    for (reserved, subscription) in subscriptions.iter().enumerate() {
        if !subscription.try_reserve(weight) {
            for subscription in &subscriptions[..reserved] {
                subscription.release(weight);
            }
            return false;
        }
    }
    true
}

/// Reserves `weight` bytes in every subscription, waiting for room, so that a message is
/// stored in all subscriptions or none.
async fn reserve_all(
    subscriptions: &[Arc<SubscriptionState>],
    weight: u32,
    timeout: Option<std::time::Duration>,
) -> Result<()> {
    for (reserved, subscription) in subscriptions.iter().enumerate() {
        if let Err(e) = subscription.reserve(weight, timeout).await {
            for subscription in &subscriptions[..reserved] {
                subscription.release(weight);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Puts `messages` (room reserved) into every subscription, and empties it.
fn store(subscriptions: &[Arc<SubscriptionState>], messages: &mut Vec<Arc<StoredMessage>>) {
    if messages.is_empty() {
        return;
    }
    for subscription in subscriptions {
        subscription.enqueue(messages);
    }
    messages.clear();
}

/// `message` with its payload ready to be shared. A payload made from a `Vec` allocates its
/// shared form on its first clone; cloning here makes the publisher pay for that, not the
/// consumer, whose clone for each delivery is then only a count.
fn shared(message: Message) -> Message {
    let _shared = message.payload.clone();
    message
}

fn message_weight(message: &Message) -> u32 {
    // check_message bounded the size by max_message_bytes; saturate rather than wrap for
    // absurd configs.
    u32::try_from(message.encoded_len() + PER_MESSAGE_OVERHEAD).unwrap_or(u32::MAX)
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn publish(&self, topic: &Topic, message: Message) -> Result<String> {
        let _publishing = self.gate.enter(BACKEND)?;
        self.broker.publish_message(topic, message).await
    }

    /// One lock per subscription for the whole batch.
    async fn publish_batch(&self, topic: &Topic, messages: Vec<Message>) -> Vec<Result<String>> {
        let count = messages.len();
        self.gate
            .batch(BACKEND, count, || {
                self.broker.publish_messages(topic, messages)
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
        self.broker.inner.capabilities.clone()
    }
}
