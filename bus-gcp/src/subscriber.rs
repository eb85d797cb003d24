//! Subscribing: one subscriber client (its own connection) per consumer, with
//! [`GcpConfig::streams`](crate::GcpConfig::streams) streaming pulls feeding one queue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus_core::backend::Lifecycle;
use bus_core::{
    Capabilities, Delivery, Error, Message, Result, Subscriber, Subscription, SubscriptionOptions,
    Topic,
};
use google_cloud_pubsub::client::Subscriber as PubSubSubscriber;
use google_cloud_pubsub::model::Message as PubSubMessage;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{ShutdownBehavior, ShutdownToken};
use tokio::sync::mpsc;

use crate::acks::GcpAcker;
use crate::connect::AttemptCounts;
use crate::errors::map_error;
use crate::{lock, GcpBackend, BACKEND};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// While a consumer receives nothing, checks every few seconds that Pub/Sub answers (a cheap
/// admin call) and warns when it does not, every 30 s at most, until it answers again: the
/// client itself retries a lost stream silently.
async fn watch_reachability(
    backend: GcpBackend,
    path: String,
    last_message: Arc<AtomicU64>,
    closed: tokio_util::sync::CancellationToken,
) {
    const CHECK_EVERY: Duration = Duration::from_secs(5);
    const WARN_EVERY: Duration = Duration::from_secs(30);
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        if now_ms().saturating_sub(last_message.load(Ordering::Relaxed))
            < CHECK_EVERY.as_millis() as u64
        {
            continue;
        }
        let check = backend
            .inner
            .subscription_admin
            .get_subscription()
            .set_subscription(path.clone())
            .send();
        let reachable = match tokio::time::timeout(Duration::from_secs(3), check).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                map_error(&e, "checking the subscription").kind()
                    != bus_core::ErrorKind::Unavailable
            }
            Err(_) => false,
        };
        let now = tokio::time::Instant::now();
        match (reachable, unreachable_since) {
            (true, Some(since)) => {
                tracing::warn!(subscription = %path, endpoint = %backend.inner.endpoint.url(), down_for = ?now.duration_since(since), "Pub/Sub answers again; the consumer receives again");
                unreachable_since = None;
                last_warning = None;
            }
            (true, None) => {}
            (false, since) => {
                let since = *unreachable_since.get_or_insert(since.unwrap_or(now));
                if last_warning.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
                    tracing::warn!(subscription = %path, endpoint = %backend.inner.endpoint.url(), down_for = ?now.duration_since(since), "cannot reach Pub/Sub; the consumer keeps trying");
                    last_warning = Some(now);
                }
            }
        }
    }
}

/// When this many message ids are being counted on one subscription, the counts start over
/// (attempt numbers begin again at 1) rather than grow without bound.
const MAX_TRACKED_ATTEMPTS: usize = 100_000;

/// Creates (when provisioning) and attaches to Pub/Sub subscriptions.
pub struct GcpSubscriber {
    backend: GcpBackend,
    lifecycle: Lifecycle,
}

impl std::fmt::Debug for GcpSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpSubscriber")
            .field("backend", &self.backend)
            .field("closed", &self.lifecycle.is_closed())
            .finish()
    }
}

impl GcpSubscriber {
    pub(crate) fn new(backend: GcpBackend) -> Self {
        GcpSubscriber {
            backend,
            lifecycle: Lifecycle::new(),
        }
    }
}

type Pulled = std::result::Result<(PubSubMessage, Handler), Error>;

#[async_trait]
impl Subscriber for GcpSubscriber {
    async fn subscribe(
        &self,
        topic: &Topic,
        options: SubscriptionOptions,
    ) -> Result<Box<dyn Subscription>> {
        let inner = &self.backend.inner;
        let lifecycle = self
            .lifecycle
            .admit(BACKEND, &inner.capabilities, &options)?;
        let path = self.backend.ensure_subscription(topic, &options).await?;
        let closed = lifecycle.token().clone();
        // Small: the client already buffers up to the flow-control limit, and whatever waits
        // here when the consumer closes has to be nacked.
        let (tx, rx) = mpsc::channel::<Pulled>(16);
        // The client extends a held message's lease in steps of `extension` for up to
        // `max_lease`; the server redelivers once the last extension runs out. Together they
        // make the subscription's ack deadline (Pub/Sub's minimum step is 10 s).
        let extension = options
            .ack_deadline
            .clamp(Duration::from_secs(10), Duration::from_secs(60));
        let max_lease = options.ack_deadline.saturating_sub(extension);
        let client = self.backend.subscriber_client().await?;
        let mut shutdowns = Vec::new();
        let mut pumps = Vec::new();
        // The client retries a lost stream for ever without a word: say so while it does.
        let last_message = Arc::new(AtomicU64::new(now_ms()));
        pumps.push(tokio::spawn(watch_reachability(
            self.backend.clone(),
            path.clone(),
            last_message.clone(),
            closed.clone(),
        )));
        for _ in 0..inner.config.streams {
            let mut stream = client
                .subscribe(path.clone())
                .set_max_outstanding_messages(inner.config.max_outstanding_messages)
                .set_max_outstanding_bytes(inner.config.max_outstanding_bytes)
                .set_max_lease_extension(extension)
                .set_max_lease(max_lease)
                .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
                .build();
            shutdowns.push(stream.shutdown_token());
            let (tx, closed, path) = (tx.clone(), closed.clone(), path.clone());
            let last_message = last_message.clone();
            // The pump owns the stream: when it ends, the stream is dropped, which ends the
            // RPC and then nacks whatever the client still holds.
            pumps.push(tokio::spawn(async move {
                loop {
                    // A slot first, then a message: a message taken off the stream is never
                    // dropped half-way because the consumer closed.
                    let slot = tokio::select! {
                        _ = closed.cancelled() => break,
                        slot = tx.reserve() => slot,
                    };
                    let Ok(slot) = slot else { break };
                    let next = tokio::select! {
                        _ = closed.cancelled() => break,
                        next = stream.next() => next,
                    };
                    let item = match next {
                        None => break,
                        Some(Ok(pair)) => {
                            last_message.store(now_ms(), Ordering::Relaxed);
                            Ok(pair)
                        }
                        Some(Err(e)) => Err(map_error(&e, &format!("receiving from {path}"))),
                    };
                    let failed = item.is_err();
                    slot.send(item);
                    if failed {
                        break;
                    }
                }
            }));
        }
        Ok(Box::new(GcpSubscription {
            client: Mutex::new(Some(client)),
            topic: topic.clone(),
            attempts: self.backend.attempt_counter(&path),
            incoming: tokio::sync::Mutex::new(rx),
            deferred_error: Mutex::default(),
            pumps: Mutex::new(pumps),
            shutdowns,
            lifecycle,
        }))
    }

    /// Creates the subscription with the admin API (when provisioning), or checks that it
    /// exists; no stream is opened.
    async fn create_subscription(&self, topic: &Topic, options: SubscriptionOptions) -> Result<()> {
        self.lifecycle.check_open(BACKEND, "subscriber")?;
        options.check(BACKEND, &self.backend.inner.capabilities)?;
        self.backend.ensure_subscription(topic, &options).await?;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.lifecycle.close();
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.backend.inner.capabilities.clone()
    }
}

/// One consumer of a Pub/Sub subscription (one or more streaming pulls).
pub struct GcpSubscription {
    /// Dropped on close, which closes the consumer's connection.
    client: Mutex<Option<PubSubSubscriber>>,
    topic: Topic,
    attempts: AttemptCounts,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Pulled>>,
    /// A stream's error that ended a batch, for the next call.
    deferred_error: Mutex<Option<Error>>,
    /// The tasks that own the streams and move their messages into `incoming`.
    pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shutdowns: Vec<ShutdownToken>,
    lifecycle: Lifecycle,
}

impl std::fmt::Debug for GcpSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpSubscription")
            .field("topic", &self.topic)
            .field("closed", &self.lifecycle.is_closed())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Subscription for GcpSubscription {
    async fn receive(&self) -> Result<Delivery> {
        if let Some(e) = lock(&self.deferred_error).take() {
            return Err(e);
        }
        let pulled = self
            .lifecycle
            .until_closed(BACKEND, async {
                let mut incoming = self.incoming.lock().await;
                incoming
                    .recv()
                    .await
                    .ok_or_else(|| Error::closed(BACKEND, "subscription"))
            })
            .await?;
        Ok(self.deliver(pulled?))
    }

    /// Takes what the streams pulled, up to `max`, under one lock.
    async fn receive_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        if let Some(e) = lock(&self.deferred_error).take() {
            return Err(e);
        }
        self.lifecycle
            .until_closed(BACKEND, async {
                let mut incoming = self.incoming.lock().await;
                match tokio::time::timeout(wait, incoming.recv()).await {
                    Ok(Some(first)) => batch.push(self.deliver(first?)),
                    Ok(None) => return Err(Error::closed(BACKEND, "subscription")),
                    Err(_) => return Ok(()),
                }
                // A stream's error ends the batch; it is the error of the next call.
                while batch.len() < max {
                    match incoming.try_recv() {
                        Ok(Ok(next)) => batch.push(self.deliver(next)),
                        Ok(Err(e)) => {
                            *lock(&self.deferred_error) = Some(e);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                Ok(())
            })
            .await?;
        Ok(batch)
    }

    async fn close(&self) -> Result<()> {
        self.close_consumer().await
    }
}

impl GcpSubscription {
    /// A delivery of a message the streams pulled.
    fn deliver(&self, (message, handler): (PubSubMessage, Handler)) -> Delivery {
        let id = message.message_id.clone();
        let counted = {
            let mut attempts = lock(&self.attempts);
            if attempts.len() >= MAX_TRACKED_ATTEMPTS && !attempts.contains_key(&id) {
                attempts.clear();
            }
            let count = attempts.entry(id.clone()).or_insert(0);
            *count += 1;
            *count
        };
        let attempt = handler
            .delivery_attempt()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(counted);
        let bus_message = Message {
            payload: message.data,
            attributes: message.attributes.into_iter().collect::<BTreeMap<_, _>>(),
            ordering_key: Some(message.ordering_key).filter(|key| !key.is_empty()),
        };
        Delivery::new(
            bus_message,
            id.clone(),
            attempt,
            self.topic.clone(),
            Box::new(GcpAcker::new(handler, self.attempts.clone(), id)),
        )
    }

    /// Ends the streams, then nacks what this consumer held.
    async fn close_consumer(&self) -> Result<()> {
        // End the streams first, so the server sends nothing more to this consumer; only then
        // nack what it held (messages pulled but not handed out, and deliveries not settled).
        // Nacked while a stream is still open, a message can be sent straight back to it and
        // then wait out its ack deadline on a stream nobody reads.
        self.lifecycle.close();
        let pumps = std::mem::take(&mut *lock(&self.pumps));
        for pump in pumps {
            let _ = pump.await;
        }
        {
            // Pulled but never handed out: dropping a handler nacks it, and that nack must be
            // sent before the streams' shutdown completes, or it waits out its ack deadline.
            let mut incoming = self.incoming.lock().await;
            incoming.close();
            while let Ok(pulled) = incoming.try_recv() {
                drop(pulled);
            }
        }
        // Dropping a stream starts its shutdown: pending acks are sent and everything still
        // under lease is nacked. Wait for those calls, within reason.
        let shutdowns = self.shutdowns.iter().map(|token| token.shutdown());
        if tokio::time::timeout(
            Duration::from_secs(10),
            futures::future::join_all(shutdowns),
        )
        .await
        .is_err()
        {
            tracing::warn!(topic = %self.topic, "the streams did not shut down within 10 s; messages they held wait out their ack deadline");
        }
        lock(&self.client).take();
        Ok(())
    }
}

impl Drop for GcpSubscription {
    fn drop(&mut self) {
        self.lifecycle.close();
    }
}
