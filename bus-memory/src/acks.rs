//! Settling deliveries: ack frees the message's room; nack (or an expired ack deadline) puts it
//! back in front of the queue with its attempt counted, or, once it used the dead-letter
//! policy's attempts, hands it to the subscription's dead-letter task, which publishes it to the
//! dead-letter topic (waiting for room there as any publisher does) and only then frees its room.
//! `receive` and `nack` never wait for the dead-letter topic.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bus_core::{Acker, Result};

use crate::subscriber::{Queue, Queued, SubscriptionState};
use crate::{lock, MemoryBackend, BACKEND};

/// Settles one delivery.
pub(crate) struct MemoryAcker {
    subscription: Arc<SubscriptionState>,
    tag: u64,
}

impl MemoryAcker {
    pub(crate) fn new(subscription: Arc<SubscriptionState>, tag: u64) -> Self {
        MemoryAcker { subscription, tag }
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<()> {
        self.subscription.settle(self.tag, true);
        Ok(())
    }

    async fn nack(&self) -> Result<()> {
        self.subscription.settle(self.tag, false);
        Ok(())
    }
}

impl SubscriptionState {
    fn settle(self: &Arc<Self>, tag: u64, ack: bool) {
        let mut queue = lock(&self.queue);
        // A delivery that already expired (or was settled) is no longer in flight: nothing to do.
        let Some(in_flight) = queue.take_in_flight(tag) else {
            return;
        };
        if ack {
            self.release_key(&mut queue, &in_flight.queued);
            drop(queue);
            self.release(in_flight.queued.message.weight);
        } else {
            self.retry_or_dead_letter(&mut queue, in_flight.queued);
        }
    }

    /// A delivery failed (nack or expired): queue it again in front, or hand it to the
    /// dead-letter task when it has used its attempts.
    pub(crate) fn retry_or_dead_letter(self: &Arc<Self>, queue: &mut Queue, queued: Queued) {
        let exhausted = self
            .options
            .dead_letter
            .as_ref()
            .is_some_and(|policy| queued.deliveries >= policy.max_delivery_attempts);
        if exhausted {
            self.release_key(queue, &queued);
            lock(&self.dead).push_back(queued);
            self.start_dead_lettering();
        } else {
            // In front: for an ordered key it is still the key's head, so order is kept.
            queue.ready.push_front(queued);
            self.ready.notify_one();
        }
    }

    /// A keyed message left the subscription: let the next message with its key go.
    pub(crate) fn release_key(&self, queue: &mut Queue, settled: &Queued) {
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

    fn start_dead_lettering(self: &Arc<Self>) {
        if !self.dead_letter_running.swap(true, Ordering::AcqRel) {
            tokio::spawn(dead_letter(self.clone()));
        }
    }
}

/// Publishes the subscription's exhausted messages to its dead-letter topic, one at a time,
/// until none is left; one that cannot be published yet (the dead-letter topic's
/// subscriptions are full) is tried again. Its room here is freed once it is there.
async fn dead_letter(state: Arc<SubscriptionState>) {
    let Some(policy) = state.options.dead_letter.clone() else {
        return;
    };
    let mut pause = Duration::from_millis(50);
    loop {
        let next = lock(&state.dead).pop_front();
        let Some(queued) = next else {
            state.dead_letter_running.store(false, Ordering::Release);
            // A message handed over after the check and before the flag was cleared.
            if lock(&state.dead).is_empty()
                || state.dead_letter_running.swap(true, Ordering::AcqRel)
            {
                return;
            }
            continue;
        };
        let Some(inner) = state.broker.upgrade() else {
            return;
        };
        let broker = MemoryBackend { inner };
        match broker
            .publish_message(&policy.topic, queued.message.message.clone())
            .await
        {
            Ok(_) => {
                bus_core::telemetry::dead_lettered(
                    BACKEND,
                    &queued.message.topic,
                    state.options.name.as_str(),
                    &policy.topic,
                    queued.deliveries,
                );
                state.release(queued.message.weight);
                pause = Duration::from_millis(50);
            }
            Err(e) => {
                tracing::warn!(
                    backend = BACKEND,
                    subscription = state.options.name.as_str(),
                    dead_letter_topic = %policy.topic,
                    error = %e,
                    "dead-lettering is held up; the message waits and is tried again"
                );
                lock(&state.dead).push_front(queued);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}
