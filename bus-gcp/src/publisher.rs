//! Publishing: one batching client per topic, sharing the backend's connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bus_core::backend::{fail_each, only_result, PublishGate};
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

/// One message on its way: sent to the batching client, its result not in yet.
struct Sending {
    message: PubSubMessage,
    ordering_key: Option<String>,
    result: google_cloud_pubsub::publisher::PublishFuture,
}

impl GcpPublisher {
    /// Publishes `messages` to `topic`: all are handed to the topic's batching client at once
    /// (in order, so one ordering key keeps its order), then each result is awaited, and a
    /// message whose publish failed for a passing reason is sent again.
    async fn publish_messages(&self, topic: &Topic, messages: Vec<Message>) -> Vec<Result<String>> {
        let inner = &self.backend.inner;
        let path = match self.backend.ensure_topic(topic).await {
            Ok(path) => path,
            Err(e) => return fail_each(&e, messages.len()),
        };
        let publisher = self.topic_publisher(&path);
        let sending: Vec<Result<Sending>> = messages
            .into_iter()
            .map(|message| {
                inner.capabilities.check_message(BACKEND, &message)?;
                let ordering_key = message.ordering_key;
                let mut pubsub = PubSubMessage::new()
                    .set_data(message.payload)
                    .set_attributes(message.attributes);
                if let Some(key) = &ordering_key {
                    pubsub = pubsub.set_ordering_key(key.clone());
                }
                let result = publisher.publish(pubsub.clone());
                Ok(Sending {
                    message: pubsub,
                    ordering_key,
                    result,
                })
            })
            .collect();
        let limit = Duration::from_millis(inner.config.publish_timeout_ms);
        let give_up = tokio::time::Instant::now() + limit;
        let mut results = Vec::with_capacity(sending.len());
        for sending in sending {
            results.push(match sending {
                Ok(sending) => {
                    self.confirm(topic, &path, &publisher, sending, give_up, limit)
                        .await
                }
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Waits for the message id of `sending`. A transport failure mid-publish (a cut
    /// connection, the emulator restarting) is retried here until gcp.publish_timeout_ms: the
    /// crate does not retry publishes, which are not idempotent. A retry may publish the
    /// message twice (at-least-once).
    async fn confirm(
        &self,
        topic: &Topic,
        path: &str,
        publisher: &PubSubPublisher,
        sending: Sending,
        give_up: tokio::time::Instant,
        limit: Duration,
    ) -> Result<String> {
        let Sending {
            message,
            ordering_key,
            mut result,
        } = sending;
        let mut pause = Duration::from_millis(50);
        loop {
            let error = match tokio::time::timeout_at(give_up, result).await {
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
            result = publisher.publish(message.clone());
        }
    }
}

#[async_trait]
impl Publisher for GcpPublisher {
    async fn publish(&self, topic: &Topic, message: Message) -> Result<String> {
        let _publishing = self.gate.enter(BACKEND)?;
        self.backend
            .inner
            .capabilities
            .check_message(BACKEND, &message)?;
        only_result(self.publish_messages(topic, vec![message]).await)
    }

    /// Every message goes to the topic's batching client before the first result is awaited,
    /// so the batch leaves in as few publish requests as the client's limits allow.
    async fn publish_batch(&self, topic: &Topic, messages: Vec<Message>) -> Vec<Result<String>> {
        let count = messages.len();
        self.gate
            .batch(BACKEND, count, || self.publish_messages(topic, messages))
            .await
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
