//! Publishing: a message is stored in every subscription of its topic, or in none.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bus_core::backend::PublishGate;
use bus_core::{Capabilities, Message, Publisher, Result, Topic};

use crate::{read, MemoryBackend, BACKEND, PER_MESSAGE_OVERHEAD};

/// A message as every subscription of its topic holds it (one copy, shared).
pub(crate) struct StoredMessage {
    pub id: Arc<str>,
    pub topic: Topic,
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
    /// Stores `message` in every subscription of `topic`, waiting for room in each.
    pub(crate) async fn publish_message(&self, topic: &Topic, message: Message) -> Result<String> {
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
                    subscription.release(weight);
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
