//! Settling deliveries. MQTT has an ack (PUBACK, sent only when the application acks) but no
//! nack and no ack deadline: on nack, or when a delivery is not settled within the ack deadline,
//! the message is first published to the subscription's own retry topic (only its consumers
//! read it) with `bus:attempt` increased — or, once the attempts reach the dead-letter policy's
//! maximum, to the dead-letter topic — and only after the broker confirmed that is the original
//! PUBACKed. A crash in between gives a duplicate, never a loss.

use std::sync::Weak;
use std::time::Duration;

use async_trait::async_trait;
use bus_core::{BatchAcker, Error, ErrorKind, Result};
use tokio::time::Instant;

use crate::connect::{lock, qos, Matched};
use crate::publisher::message_properties;
use crate::subscriber::{Consumer, InFlight, Received};
use crate::BACKEND;

/// A consumer settles its own deliveries, each by the tag it was delivered with: no acker per
/// delivery, and a batch's PUBACKs go out back to back without a future per delivery.
#[async_trait]
impl BatchAcker for Consumer {
    async fn settle(&self, tag: u64, ack: bool) -> Result<()> {
        if ack {
            self.ack(tag).await
        } else {
            self.redeliver(tag).await
        }
    }

    /// PUBACKs one after the other (they share the connection's queue, in order); nacks
    /// concurrently, as each waits for the broker to confirm its retry publish.
    async fn settle_all(&self, tags: &[u64], ack: bool) -> Vec<Result<()>> {
        if ack {
            let mut results = Vec::with_capacity(tags.len());
            for tag in tags {
                results.push(self.ack(*tag).await);
            }
            results
        } else {
            futures::future::join_all(tags.iter().map(|tag| self.redeliver(*tag))).await
        }
    }
}

impl Consumer {
    pub(crate) async fn ack(&self, tag: u64) -> Result<()> {
        let Some(entry) = lock(&self.in_flight).remove(&tag) else {
            return Ok(());
        };
        let result = self.puback(&entry.received).await;
        self.settled(entry.received.source);
        result
    }

    async fn puback(&self, received: &Received) -> Result<()> {
        let source = self.source(received.source);
        let connection = match &source {
            Some(source) => source.connection().await,
            None => None,
        };
        match connection {
            Some(connection) => connection.ack(&received.publish, received.epoch).await,
            None => Err(Error::new(
                ErrorKind::Closed,
                BACKEND,
                "the session this message came from was handed back; the broker will deliver it again",
            )),
        }
    }

    /// Redelivers through the retry topic (or dead-letters), then PUBACKs the original. On
    /// failure the delivery stays in flight and the deadline sweep tries again.
    pub(crate) async fn redeliver(&self, tag: u64) -> Result<()> {
        let Some(entry) = lock(&self.in_flight).remove(&tag) else {
            return Ok(());
        };
        let dead_letter = self
            .options
            .dead_letter
            .as_ref()
            .filter(|policy| entry.attempt >= policy.max_delivery_attempts);
        let published = match dead_letter {
            Some(policy) => {
                self.shared
                    .publisher
                    .publish_message(&policy.topic, &entry.message, &entry.id)
                    .await
            }
            None => self.publish_retry(&entry).await,
        };
        match published {
            Ok(()) => {
                if let Some(policy) = dead_letter {
                    bus_core::telemetry::dead_lettered(
                        BACKEND,
                        &self.key.topic,
                        self.options.name.as_str(),
                        &policy.topic,
                        entry.attempt,
                    );
                }
                let result = self.puback(&entry.received).await;
                self.settled(entry.received.source);
                result
            }
            Err(e) => {
                let deadline = Instant::now() + self.options.ack_deadline;
                lock(&self.in_flight).insert(tag, InFlight { deadline, ..entry });
                Err(e)
            }
        }
    }

    async fn publish_retry(&self, entry: &InFlight) -> Result<()> {
        let config = &self.shared.config;
        let deadline = Instant::now() + Duration::from_millis(config.publish_timeout_ms);
        let props = message_properties(&entry.message, &entry.id, Some(entry.attempt + 1));
        let confirmed = self
            .own
            .publish(
                &self.retry_topic,
                qos(config.qos),
                false,
                entry.message.payload.clone(),
                props,
                deadline,
            )
            .await?;
        if confirmed.matched == Matched::No {
            // Nobody holds the retry topic (the broker restarted and our own session has not
            // subscribed again yet): the broker dropped the copy, so keep the original.
            return Err(Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                format!(
                    "no consumer of subscription {} holds its retry topic yet; the redelivery is tried again",
                    self.key.name
                ),
            ));
        }
        Ok(())
    }
}

/// Redelivers deliveries whose ack deadline passed, until the consumer is gone.
pub(crate) async fn sweep_deadlines(consumer: Weak<Consumer>) {
    let period = match consumer.upgrade() {
        Some(c) => (c.options.ack_deadline / 4).min(Duration::from_millis(250)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        if consumer.lifecycle.is_closed() {
            return;
        }
        let now = Instant::now();
        let expired: Vec<u64> = lock(&consumer.in_flight)
            .iter()
            .filter(|(_, entry)| entry.deadline <= now)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in expired {
            if let Err(e) = consumer.redeliver(tag).await {
                tracing::warn!(error = %e, "redelivery after the ack deadline failed; retrying later");
            }
        }
    }
}
