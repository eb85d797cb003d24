//! Publishing: one batching client per topic, sharing the backend's connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bus_core::backend::PublishGate;
use bus_core::{Capabilities, Error, ErrorKind, Message, Publisher, Result, Topic};
use google_cloud_pubsub::client::Publisher as PubSubPublisher;
use google_cloud_pubsub::model::Message as PubSubMessage;

use crate::errors::map_error;
use crate::{lock, GcpBackend, BACKEND};

/// Publishes to Pub/Sub topics (one batching client per topic, sharing one connection).
pub struct GcpPublisher {
    backend: GcpBackend,
    publishers: Mutex<HashMap<String, PubSubPublisher>>,
    gate: PublishGate,
}

impl std::fmt::Debug for GcpPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpPublisher")
            .field("backend", &self.backend)
            .field("closed", &self.gate.is_closed())
            .finish()
    }
}

impl GcpPublisher {
    pub(crate) fn new(backend: GcpBackend) -> Self {
        GcpPublisher {
            backend,
            publishers: Mutex::default(),
            gate: PublishGate::default(),
        }
    }

    fn topic_publisher(&self, path: &str) -> PubSubPublisher {
        lock(&self.publishers)
            .entry(path.to_string())
            .or_insert_with(|| {
                let delay = Duration::from_millis(self.backend.inner.config.publish_batch_delay_ms);
                self.backend
                    .inner
                    .base_publisher
                    .publisher(path)
                    .set_delay_threshold(delay)
                    .build()
            })
            .clone()
    }

    async fn flush_all(&self) {
        let publishers: Vec<_> = lock(&self.publishers).values().cloned().collect();
        for publisher in publishers {
            publisher.flush().await;
        }
    }
}

#[async_trait]
impl Publisher for GcpPublisher {
    async fn publish(&self, topic: &Topic, message: Message) -> Result<String> {
        let _publishing = self.gate.enter(BACKEND)?;
        let inner = &self.backend.inner;
        inner.capabilities.check_message(BACKEND, &message)?;
        let path = self.backend.ensure_topic(topic).await?;
        let publisher = self.topic_publisher(&path);
        let ordering_key = message.ordering_key.clone();
        let mut pubsub = PubSubMessage::new()
            .set_data(message.payload)
            .set_attributes(message.attributes);
        if let Some(key) = &ordering_key {
            pubsub = pubsub.set_ordering_key(key.clone());
        }
        // A transport failure mid-publish (a cut connection, the emulator restarting) is
        // retried here until gcp.publish_timeout_ms: the crate does not retry publishes, which
        // are not idempotent. A retry may publish the message twice (at-least-once).
        let limit = Duration::from_millis(inner.config.publish_timeout_ms);
        let give_up = tokio::time::Instant::now() + limit;
        let mut pause = Duration::from_millis(50);
        loop {
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            let result = tokio::time::timeout(left, publisher.publish(pubsub.clone())).await;
            let error = match result {
                Ok(Ok(id)) => return Ok(id),
                Ok(Err(google_cloud_pubsub::error::PublishError::Rpc(e))) => {
                    map_error(&e, &format!("publishing to {topic} ({path})"))
                }
                Ok(Err(e)) => Error::new(
                    ErrorKind::Unavailable,
                    BACKEND,
                    format!("publishing to {topic}: {e}"),
                ),
                Err(_) => Error::new(
                    ErrorKind::Timeout,
                    BACKEND,
                    format!(
                        "publishing to {topic}: no message id within {limit:?} (gcp.publish_timeout_ms)"
                    ),
                ),
            };
            if let Some(key) = &ordering_key {
                // The client pauses a key after a failure; resume it to retry or go on.
                publisher.resume_publish(key.clone());
            }
            let retry = error.is_retryable()
                && error.kind() != ErrorKind::Timeout
                && tokio::time::Instant::now() + pause < give_up;
            if !retry {
                return Err(error);
            }
            tracing::warn!(%topic, error = %error, ?pause, "publish failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn flush(&self) -> Result<()> {
        self.gate.flush().await;
        self.flush_all().await;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.gate.close().await;
        self.flush_all().await;
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.backend.inner.capabilities.clone()
    }
}
