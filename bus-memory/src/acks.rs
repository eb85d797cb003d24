//! Settling deliveries: ack frees the message's room; nack (or an expired ack deadline) puts it
//! back in front of the queue with its attempt counted, or, once it used the dead-letter
//! policy's attempts, hands it to the subscription's dead-letter task, which publishes it to the
//! dead-letter topic (waiting for room there as any publisher does) and only then frees its room.
//! `receive` and `nack` never wait for the dead-letter topic.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bus_core::{BatchAcker, Result};

use crate::subscriber::{Queue, Queued, SubscriptionState};
use crate::{lock, MemoryBackend, BACKEND};

/// Every delivery of a subscription is settled through the subscription itself, by its tag: a
/// batch takes the queue lock once and gives its room back in one step.
#[async_trait]
impl BatchAcker for SubscriptionState {
    async fn settle(&self, tag: u64, ack: bool) -> Result<()> {
        let acked = self.settle_tag(&mut lock(&self.queue), tag, ack);
        if let Some(acked) = acked {
            self.release(acked.message.weight);
        }
        Ok(())
    }

    async fn settle_all(&self, tags: &[u64], ack: bool) -> Vec<Result<()>> {
        let mut acked: Vec<Queued> = Vec::with_capacity(if ack { tags.len() } else { 0 });
        {
            let mut queue = lock(&self.queue);
            acked.extend(
                tags.iter()
                    .filter_map(|tag| self.settle_tag(&mut queue, *tag, ack)),
            );
        }
        let freed = acked
            .iter()
            .map(|queued| queued.message.weight as usize)
            .sum();
        if freed > 0 {
            self.release_bytes(freed);
        }
        tags.iter().map(|_| Ok(())).collect()
    }
}

impl SubscriptionState {
    /// Settles the delivery `tag` and returns the message it acked, for the caller to free its
    /// room and drop it once the lock is released: freeing can wait for the allocator, and
    /// publishers wait for this lock.
    fn settle_tag(&self, queue: &mut Queue, tag: u64, ack: bool) -> Option<Queued> {
        // A delivery that already expired (or was settled) is no longer in flight: nothing to do.
        let in_flight = queue.take_in_flight(tag)?;
        if ack {
            self.release_key(queue, &in_flight.queued);
            Some(in_flight.queued)
        } else {
            self.retry_or_dead_letter(queue, in_flight.queued);
            None
        }
    }

    /// A delivery failed (nack or expired): queue it again in front, or hand it to the
    /// dead-letter task when it has used its attempts.
    pub(crate) fn retry_or_dead_letter(&self, queue: &mut Queue, queued: Queued) {
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

    fn start_dead_lettering(&self) {
        // The subscription is alive while it settles, so the upgrade succeeds.
        if let Some(state) = self.this.upgrade() {
            if !self.dead_letter_running.swap(true, Ordering::AcqRel) {
                tokio::spawn(dead_letter(state));
            }
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
                    &state.topic,
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
