//! Publishing: one batching client per topic, sharing the backend's connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus_core::backend::{fail_each, PublishGate};
use bus_core::{Capabilities, Error, ErrorKind, Message, Publisher, Result, Topic};
use google_cloud_pubsub::client::Publisher as PubSubPublisher;
use google_cloud_pubsub::model::Message as PubSubMessage;

use crate::errors::map_error;
use crate::{lock, GcpBackend, BACKEND};

/// Publishes to Pub/Sub topics (one batching client per topic, sharing one connection).
pub struct GcpPublisher {
    backend: GcpBackend,
    /// The batching client of each topic published to, made (and the topic ensured) on the
    /// first publish, so that later publishes neither format its path nor look it up twice.
    /// Shared by the publishes in flight (one reference count each, where a cloned client
    /// would count its channel's and its own).
    topics: Mutex<HashMap<Topic, Arc<TopicClient>, foldhash::fast::RandomState>>,
    gate: PublishGate,
}

/// A topic's Pub/Sub path and its batching client.
struct TopicClient {
    path: Arc<str>,
    publisher: PubSubPublisher,
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
            topics: Mutex::default(),
            gate: PublishGate::default(),
        }
    }

    /// The batching client for `topic`: the one made before, or a new one once the topic is
    /// ensured (created, when provisioning).
    async fn topic_client(&self, topic: &Topic) -> Result<Arc<TopicClient>> {
        if let Some(client) = lock(&self.topics).get(topic) {
            return Ok(client.clone());
        }
        let path = self.backend.ensure_topic(topic).await?;
        let delay = Duration::from_millis(self.backend.inner.config.publish_batch_delay_ms);
        let made = Arc::new(TopicClient {
            publisher: self
                .backend
                .inner
                .base_publisher
                .publisher(path.as_str())
                .set_delay_threshold(delay)
                .build(),
            path: path.into(),
        });
        // A publish racing this one may have made one first: every publish uses that one.
        Ok(lock(&self.topics)
            .entry(topic.clone())
            .or_insert(made)
            .clone())
    }

    async fn flush_all(&self) {
        let publishers: Vec<_> = lock(&self.topics)
            .values()
            .map(|client| client.publisher.clone())
            .collect();
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

/// Hands `message` to the topic's batching client (the copy kept for a retry stays here).
fn send(publisher: &PubSubPublisher, message: Message) -> Sending {
    let ordering_key = message.ordering_key;
    let mut pubsub = PubSubMessage::new()
        .set_data(message.payload)
        .set_attributes(message.attributes);
    if let Some(key) = &ordering_key {
        pubsub = pubsub.set_ordering_key(key.clone());
    }
    let result = publisher.publish(pubsub.clone());
    Sending {
        message: pubsub,
        ordering_key,
        result,
    }
}

impl GcpPublisher {
    /// When a publish started now gives up: `gcp.publish_timeout_ms` from now.
    fn deadline(&self) -> (tokio::time::Instant, Duration) {
        let limit = Duration::from_millis(self.backend.inner.config.publish_timeout_ms);
        (tokio::time::Instant::now() + limit, limit)
    }

    /// Publishes `messages` to `topic`: all are handed to the topic's batching client at once
    /// (in order, so one ordering key keeps its order), then each result is awaited, and a
    /// message whose publish failed for a passing reason is sent again.
    async fn publish_messages(&self, topic: &Topic, messages: Vec<Message>) -> Vec<Result<String>> {
        let inner = &self.backend.inner;
        let client = match self.topic_client(topic).await {
            Ok(client) => client,
            Err(e) => return fail_each(&e, messages.len()),
        };
        let sending: Vec<Result<Sending>> = messages
            .into_iter()
            .map(|message| {
                inner.capabilities.check_message(BACKEND, &message)?;
                Ok(send(&client.publisher, message))
            })
            .collect();
        let (give_up, limit) = self.deadline();
        let mut results = Vec::with_capacity(sending.len());
        for sending in sending {
            results.push(match sending {
                Ok(sending) => self.confirm(topic, &client, sending, give_up, limit).await,
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
        client: &TopicClient,
        sending: Sending,
        give_up: tokio::time::Instant,
        limit: Duration,
    ) -> Result<String> {
        let Sending {
            message,
            ordering_key,
            mut result,
        } = sending;
        let (path, publisher) = (&*client.path, &client.publisher);
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
        // The batch path for one message, without its vectors.
        let client = self.topic_client(topic).await?;
        let sending = send(&client.publisher, message);
        let (give_up, limit) = self.deadline();
        self.confirm(topic, &client, sending, give_up, limit).await
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
