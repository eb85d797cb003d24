//! The Google Cloud Pub/Sub backend of bus, over the official [google-cloud-pubsub] crate,
//! proven against Google's Pub/Sub emulator.
//!
//! # How the contract maps to Pub/Sub
//!
//! - **Names.** Portable topics become Pub/Sub topic IDs by a reversible encoding (`/` →
//!   `+s`, `%` → `+p`, short IDs padded with `+z`); a subscription `name` on a topic is the
//!   Pub/Sub subscription `<name>++<encoded topic>` (see [`names`]). A name that cannot map (too
//!   long once encoded) is an `InvalidArgument` error.
//! - **Provisioning.** With [`GcpConfig::provisioning`] on (the default with an emulator),
//!   missing topics and subscriptions are created with the subscription options (ack deadline,
//!   message ordering, dead-letter topic and maximum delivery attempts); creating what exists is
//!   not an error. Off (the default against real Pub/Sub), a missing subscription is a
//!   `NotFound` error naming it, and so is publishing to a missing topic.
//! - **Publish** waits for the server's message id; the client batches messages published
//!   concurrently; `flush`/`close` wait for everything in flight. Limits (10 MB, 100
//!   attributes, 256-byte keys, 1024-byte values and ordering keys) are checked before sending.
//!   After a failed publish with an ordering key, the key is resumed so later messages go on.
//! - **Receive** uses streaming pull ([`GcpConfig::streams`] per consumer), with flow control
//!   ([`GcpConfig::max_outstanding_messages`], [`GcpConfig::max_outstanding_bytes`]). The client
//!   extends the ack deadline while the application holds a message, for at most the
//!   subscription's `ack_deadline`; after that the message is redelivered. A nack is an
//!   immediate redelivery.
//! - **Attempts.** Pub/Sub reports the delivery attempt only on subscriptions with a
//!   dead-letter policy; elsewhere bus-gcp counts deliveries of a message id within the process
//!   (a redelivery to another process starts again at 1).
//! - **Errors.** gRPC and auth failures map to `Unauthenticated`, `PermissionDenied`,
//!   `NotFound`, `InvalidArgument`, `Unavailable` (retryable) and so on.
//!
//! # The emulator
//!
//! Set `PUBSUB_EMULATOR_HOST=HOST:PORT` (or `gcp.endpoint = "http://HOST:PORT"`): bus-gcp then
//! uses a plain-text connection with anonymous credentials (the crate itself ignores that
//! variable). The emulator passes the contract suite, dead-lettering included, except where it
//! differs from Pub/Sub (measured against cloud-pubsub-emulator 0.8.20, the one in the Cloud SDK):
//!
//! - **Phantom streams.** The emulator ends a streaming pull only when the client half-closes
//!   it. google-cloud-pubsub ends its streams by cancelling them, and a lost connection is a
//!   cancel too, so the stream of every consumer that went away (closed, dropped, crashed or
//!   cut off) stays registered: the emulator keeps taking the subscription's messages for it
//!   (up to 100 every 50 ms) and sending them nowhere. Each comes back when its ack deadline
//!   (the stream's, at least 10 s) expires, and is often taken by the same phantom again, so
//!   while any consumer is attached a taken message arrives late, usually after 10 s but
//!   sometimes after minutes; with none attached the phantom takes everything published.
//!   Nothing is lost. Phantoms end when their subscription is deleted or the emulator stops.
//!   The capabilities say so (`prompt_handover` is false on an emulator), and
//!   `tests/emulator.rs` shows it. Pub/Sub itself ends a stream its client cancels (not
//!   tested here: CI has no Google Cloud project).
//! - **No flow control.** The emulator ignores `max_outstanding_messages` and `_bytes`; it
//!   sends each stream up to 100 messages every 50 ms (about 2,000 messages/s, which is why
//!   [`GcpConfig::streams`] helps there). bus-gcp still reads one batch at a time, so a slow
//!   consumer's memory stays bounded, but what waits unread on the connection expires and
//!   is sent again.
//!
//! Create subscriptions before publishing to them ([`Subscriber::create_subscription`], or
//! `pubsub-emulator/bootstrap.sh`) rather than by attaching and closing a consumer, which
//! leaves a phantom behind.
//!
//! # Real Google Cloud
//!
//! 1. Credentials: Application Default Credentials — `gcloud auth application-default login`
//!    on a workstation, the attached service account on GCE/GKE/Cloud Run, or
//!    `GOOGLE_APPLICATION_CREDENTIALS=/path/key.json`.
//! 2. Provisioning is off by default: create topics and subscriptions with Terraform or
//!    `gcloud pubsub topics create` / `gcloud pubsub subscriptions create` using the IDs above,
//!    or set `gcp.provisioning = true`.
//! 3. IAM roles: publishers need `roles/pubsub.publisher` on their topics; consumers
//!    `roles/pubsub.subscriber` on their subscriptions; provisioning needs `roles/pubsub.editor`.
//!    Dead-lettering also needs the Pub/Sub service agent
//!    (`service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com`) to have
//!    `roles/pubsub.publisher` on the dead-letter topic and `roles/pubsub.subscriber` on the
//!    source subscription.
//!
//! [google-cloud-pubsub]: https://crates.io/crates/google-cloud-pubsub
#![deny(missing_docs)]

mod config;
pub mod names;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus_core::{
    Acker, Capabilities, Delivery, Error, ErrorKind, Message, Publisher, Result, Subscriber,
    Subscription, SubscriptionOptions, Topic,
};
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_pubsub::client::{
    BasePublisher, Publisher as PubSubPublisher, Subscriber as PubSubSubscriber, SubscriptionAdmin,
    TopicAdmin,
};
use google_cloud_pubsub::model::{DeadLetterPolicy, Message as PubSubMessage};
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{ShutdownBehavior, ShutdownToken};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::{GcpConfig, EMULATOR_HOST_VAR};

/// The backend's name, as reported in errors.
pub const BACKEND: &str = "gcp";

/// What Pub/Sub supports. Google's emulator lacks prompt hand-over: it keeps streaming to the
/// connection of a consumer that went away (see the crate docs), so a consumer that attaches
/// after it can wait a long time for what the departed one held or was sent.
pub fn capabilities(emulator: bool) -> Capabilities {
    let mut caps = Capabilities::none();
    caps.fan_out = true;
    caps.competing_consumers = true;
    caps.durable = true;
    caps.prompt_handover = !emulator;
    caps.nack = true;
    caps.ack_deadline = true;
    caps.min_ack_deadline = Duration::from_secs(10);
    caps.max_ack_deadline = Duration::from_secs(600);
    caps.ordering = true;
    caps.dead_letter = true;
    caps.min_delivery_attempts = 5;
    // 10 MB per request, with room for the request's own framing.
    caps.max_message_bytes = 10_000_000 - 64 * 1024;
    caps.max_attributes = 100;
    caps.max_attribute_key_bytes = 256;
    caps.max_attribute_value_bytes = 1024;
    caps.max_ordering_key_bytes = 1024;
    caps
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Maps a google-cloud error to a bus error; `what` says what was being done.
fn map_error(error: &google_cloud_pubsub::Error, what: &str) -> Error {
    let (kind, retryable) = match error.status().map(|s| s.code) {
        Some(Code::NotFound) => (ErrorKind::NotFound, false),
        Some(Code::AlreadyExists) => (ErrorKind::InvalidArgument, false),
        Some(Code::PermissionDenied) => (ErrorKind::PermissionDenied, false),
        Some(Code::Unauthenticated) => (ErrorKind::Unauthenticated, false),
        Some(Code::InvalidArgument) | Some(Code::FailedPrecondition) | Some(Code::OutOfRange) => {
            (ErrorKind::InvalidArgument, false)
        }
        Some(Code::Unavailable) | Some(Code::Aborted) | Some(Code::ResourceExhausted) => {
            (ErrorKind::Unavailable, true)
        }
        Some(Code::DeadlineExceeded) => (ErrorKind::Timeout, true),
        Some(Code::Unimplemented) => (ErrorKind::Unsupported, false),
        Some(_) => (ErrorKind::Internal, false),
        None if error.is_authentication() => (ErrorKind::Unauthenticated, false),
        None if error.is_timeout() || error.is_exhausted() => (ErrorKind::Unavailable, true),
        None if error.is_connect() || error.is_io() || error.is_transport() => {
            (ErrorKind::Unavailable, true)
        }
        None => (ErrorKind::Internal, false),
    };
    let message = match error.status() {
        Some(status) => format!("{what}: {:?}: {}", status.code, status.message),
        None => format!("{what}: {error}"),
    };
    Error::new(kind, BACKEND, message).with_retryable(retryable)
}

fn is_code(error: &google_cloud_pubsub::Error, code: Code) -> bool {
    error.status().is_some_and(|s| s.code == code)
}

// ---------------------------------------------------------------------------------------------
// Connect
// ---------------------------------------------------------------------------------------------

/// A connection to Pub/Sub (or the emulator) shared by publishers and subscribers.
#[derive(Clone)]
pub struct GcpBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: GcpConfig,
    endpoint: String,
    emulator: bool,
    provisioning: bool,
    capabilities: Capabilities,
    topic_admin: TopicAdmin,
    subscription_admin: SubscriptionAdmin,
    base_publisher: BasePublisher,
    /// The endpoint and whether it is an emulator, as configured (None: Google's default).
    resolved: Option<(String, bool)>,
    /// Topics known to exist (created or seen) in this process.
    known_topics: Mutex<HashSet<String>>,
    /// Deliveries per message id, per subscription, for attempt numbers (see crate docs).
    attempts: Mutex<HashMap<String, AttemptCounts>>,
}

/// Deliveries so far per message id, on one subscription.
type AttemptCounts = Arc<Mutex<HashMap<String, u32>>>;

/// Forget attempt counts beyond this many unacked message ids per subscription.
const MAX_TRACKED_ATTEMPTS: usize = 100_000;

impl GcpBackend {
    /// Builds the clients and checks, within `gcp.connect_timeout_ms`, that the endpoint
    /// answers; an unreachable endpoint is an `Unavailable` error in seconds.
    pub async fn connect(config: &GcpConfig) -> Result<Self> {
        config.validate()?;
        let resolved = config.resolve_endpoint()?;
        let emulator = resolved.as_ref().is_some_and(|(_, emulator)| *emulator);
        let endpoint = resolved
            .as_ref()
            .map(|(endpoint, _)| endpoint.clone())
            .unwrap_or_else(|| "https://pubsub.googleapis.com".to_string());
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let build_error = |client: &str, e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::Config,
                BACKEND,
                format!("cannot create the Pub/Sub {client} client for {endpoint}: {e}"),
            )
        };
        let anonymous = || google_cloud_auth::credentials::anonymous::Builder::new().build();

        // Every client gets the same endpoint and, for an emulator, anonymous credentials.
        macro_rules! configure {
            ($builder:expr) => {{
                let mut builder = $builder;
                if let Some((endpoint, emulator)) = &resolved {
                    builder = builder.with_endpoint(endpoint.clone());
                    if *emulator {
                        builder = builder.with_credentials(anonymous());
                    }
                }
                builder
            }};
        }
        let topic_admin = configure!(TopicAdmin::builder())
            .with_retry_policy(Aip194Strict.with_time_limit(timeout))
            .with_attempt_timeout(timeout)
            .build()
            .await
            .map_err(|e| build_error("topic admin", &e))?;
        let subscription_admin = configure!(SubscriptionAdmin::builder())
            .with_retry_policy(Aip194Strict.with_time_limit(timeout))
            .with_attempt_timeout(timeout)
            .build()
            .await
            .map_err(|e| build_error("subscription admin", &e))?;
        let base_publisher = configure!(BasePublisher::builder())
            .with_retry_policy(
                Aip194Strict.with_time_limit(Duration::from_millis(config.publish_timeout_ms)),
            )
            .build()
            .await
            .map_err(|e| build_error("publisher", &e))?;

        let backend = GcpBackend {
            inner: Arc::new(Inner {
                provisioning: config.provisioning.unwrap_or(emulator),
                capabilities: capabilities(emulator),
                config: config.clone(),
                endpoint,
                emulator,
                topic_admin,
                subscription_admin,
                base_publisher,
                resolved,
                known_topics: Mutex::default(),
                attempts: Mutex::default(),
            }),
        };
        backend.check_reachable(timeout).await?;
        Ok(backend)
    }

    /// A publisher on this connection.
    pub fn publisher(&self) -> GcpPublisher {
        GcpPublisher {
            backend: self.clone(),
            publishers: Mutex::default(),
            closed: AtomicBool::new(false),
            in_flight: tokio::sync::RwLock::new(()),
        }
    }

    /// A subscriber on this connection.
    pub fn subscriber(&self) -> GcpSubscriber {
        GcpSubscriber {
            backend: self.clone(),
            closed: CancellationToken::new(),
        }
    }

    /// Whether this connection goes to an emulator.
    pub fn is_emulator(&self) -> bool {
        self.inner.emulator
    }

    /// What this connection supports.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.capabilities.clone()
    }

    /// `projects/P/topics/ID` of a topic.
    pub fn topic_path(&self, topic: &Topic) -> Result<String> {
        Ok(format!(
            "projects/{}/topics/{}",
            self.inner.config.project,
            names::topic_id(topic)?
        ))
    }

    /// `projects/P/subscriptions/ID` of a subscription name on a topic.
    pub fn subscription_path(
        &self,
        options: &SubscriptionOptions,
        topic: &Topic,
    ) -> Result<String> {
        Ok(format!(
            "projects/{}/subscriptions/{}",
            self.inner.config.project,
            names::subscription_id(&options.name, topic)?
        ))
    }

    async fn check_reachable(&self, timeout: Duration) -> Result<()> {
        let probe = format!(
            "projects/{}/topics/bus-connect-probe",
            self.inner.config.project
        );
        let call = self.inner.topic_admin.get_topic().set_topic(probe).send();
        let unreachable = |detail: String| {
            Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                format!(
                    "no Pub/Sub answered at {} within {timeout:?}{detail}; is the emulator running (PUBSUB_EMULATOR_HOST) or gcp.endpoint right?",
                    self.inner.endpoint
                ),
            )
        };
        match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
            Err(_) => Err(unreachable(String::new())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_code(&e, Code::NotFound) => Ok(()),
            Ok(Err(e)) => {
                let mapped = map_error(&e, "checking the connection");
                if mapped.kind() == ErrorKind::Unavailable {
                    Err(unreachable(format!(" ({})", mapped.message())))
                } else {
                    Err(mapped)
                }
            }
        }
    }

    /// Makes sure the topic exists: created when provisioning, else assumed (a publish to a
    /// missing topic fails with `NotFound`).
    async fn ensure_topic(&self, topic: &Topic) -> Result<String> {
        let path = self.topic_path(topic)?;
        if !self.inner.provisioning || crate::lock(&self.inner.known_topics).contains(&path) {
            return Ok(path);
        }
        match self
            .inner
            .topic_admin
            .create_topic()
            .set_name(path.clone())
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if is_code(&e, Code::AlreadyExists) => {}
            Err(e) => return Err(map_error(&e, &format!("creating topic {path} for {topic}"))),
        }
        crate::lock(&self.inner.known_topics).insert(path.clone());
        Ok(path)
    }

    /// Makes sure the subscription exists, created with the options when provisioning.
    async fn ensure_subscription(
        &self,
        topic: &Topic,
        options: &SubscriptionOptions,
    ) -> Result<String> {
        let topic_path = self.ensure_topic(topic).await?;
        let path = self.subscription_path(options, topic)?;
        let admin = &self.inner.subscription_admin;
        if !self.inner.provisioning {
            return match admin.get_subscription().set_subscription(path.clone()).send().await {
                Ok(_) => Ok(path),
                Err(e) if is_code(&e, Code::NotFound) => Err(Error::new(
                    ErrorKind::NotFound,
                    BACKEND,
                    format!(
                        "subscription {} on {topic} (Pub/Sub {path}) does not exist and gcp.provisioning is off; create it (gcloud pubsub subscriptions create {} --topic {}) or set gcp.provisioning = true",
                        options.name,
                        names::subscription_id(&options.name, topic)?,
                        names::topic_id(topic)?
                    ),
                )),
                Err(e) => Err(map_error(&e, &format!("looking up subscription {path}"))),
            };
        }
        let deadline_secs = options.ack_deadline.as_secs_f64().ceil().clamp(10.0, 600.0) as i32;
        let mut create = admin
            .create_subscription()
            .set_name(path.clone())
            .set_topic(topic_path)
            .set_ack_deadline_seconds(deadline_secs)
            .set_enable_message_ordering(options.ordered);
        if let Some(policy) = &options.dead_letter {
            let dead_letter_topic = self.ensure_topic(&policy.topic).await?;
            create = create.set_dead_letter_policy(
                DeadLetterPolicy::new()
                    .set_dead_letter_topic(dead_letter_topic)
                    .set_max_delivery_attempts(policy.max_delivery_attempts as i32),
            );
        }
        match create.send().await {
            Ok(_) => Ok(path),
            Err(e) if is_code(&e, Code::AlreadyExists) => Ok(path),
            Err(e) => Err(map_error(&e, &format!("creating subscription {path}"))),
        }
    }

    /// A subscriber client (and so a connection) of its own for one consumer, so that one
    /// consumer's streams and acks never queue behind another's.
    async fn subscriber_client(&self) -> Result<PubSubSubscriber> {
        let mut builder = PubSubSubscriber::builder();
        if let Some((endpoint, emulator)) = &self.inner.resolved {
            builder = builder.with_endpoint(endpoint.clone());
            if *emulator {
                builder = builder.with_credentials(
                    google_cloud_auth::credentials::anonymous::Builder::new().build(),
                );
            }
        }
        builder.build().await.map_err(|e| {
            Error::new(
                ErrorKind::Config,
                BACKEND,
                format!(
                    "cannot create the Pub/Sub subscriber client for {}: {e}",
                    self.inner.endpoint
                ),
            )
        })
    }

    fn attempt_counter(&self, subscription_path: &str) -> AttemptCounts {
        crate::lock(&self.inner.attempts)
            .entry(subscription_path.to_string())
            .or_default()
            .clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Publish
// ---------------------------------------------------------------------------------------------

/// Publishes to Pub/Sub topics (one batching client per topic, sharing one connection).
pub struct GcpPublisher {
    backend: GcpBackend,
    publishers: Mutex<HashMap<String, PubSubPublisher>>,
    closed: AtomicBool,
    /// Publishes hold it shared; flush and close take it exclusively to wait for them.
    in_flight: tokio::sync::RwLock<()>,
}

impl GcpPublisher {
    fn topic_publisher(&self, path: &str) -> PubSubPublisher {
        crate::lock(&self.publishers)
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
        let publishers: Vec<_> = crate::lock(&self.publishers).values().cloned().collect();
        for publisher in publishers {
            publisher.flush().await;
        }
    }
}

#[async_trait]
impl Publisher for GcpPublisher {
    async fn publish(&self, topic: &Topic, message: Message) -> Result<String> {
        let _in_flight = self.in_flight.read().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BACKEND, "publisher"));
        }
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
        drop(self.in_flight.write().await);
        self.flush_all().await;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        drop(self.in_flight.write().await);
        self.flush_all().await;
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }
}

// ---------------------------------------------------------------------------------------------
// Subscribe
// ---------------------------------------------------------------------------------------------

/// Creates (when provisioning) and attaches to Pub/Sub subscriptions.
pub struct GcpSubscriber {
    backend: GcpBackend,
    closed: CancellationToken,
}

type Pulled = std::result::Result<(PubSubMessage, Handler), Error>;

#[async_trait]
impl Subscriber for GcpSubscriber {
    async fn subscribe(
        &self,
        topic: &Topic,
        options: SubscriptionOptions,
    ) -> Result<Box<dyn Subscription>> {
        if self.closed.is_cancelled() {
            return Err(Error::closed(BACKEND, "subscriber"));
        }
        let inner = &self.backend.inner;
        options.check(BACKEND, &inner.capabilities)?;
        let path = self.backend.ensure_subscription(topic, &options).await?;
        let closed = self.closed.child_token();
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
                        Some(Ok(pair)) => Ok(pair),
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
            pumps: Mutex::new(pumps),
            shutdowns,
            closed,
        }))
    }

    /// Creates the subscription with the admin API (when provisioning), or checks that it
    /// exists; no stream is opened.
    async fn create_subscription(&self, topic: &Topic, options: SubscriptionOptions) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(Error::closed(BACKEND, "subscriber"));
        }
        options.check(BACKEND, &self.backend.inner.capabilities)?;
        self.backend.ensure_subscription(topic, &options).await?;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }
}

/// One consumer of a Pub/Sub subscription (one or more streaming pulls).
pub struct GcpSubscription {
    /// Dropped on close, which closes the consumer's connection.
    client: Mutex<Option<PubSubSubscriber>>,
    topic: Topic,
    attempts: AttemptCounts,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Pulled>>,
    /// The tasks that own the streams and move their messages into `incoming`.
    pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shutdowns: Vec<ShutdownToken>,
    closed: CancellationToken,
}

#[async_trait]
impl Subscription for GcpSubscription {
    async fn receive(&self) -> Result<Delivery> {
        let mut incoming = tokio::select! {
            _ = self.closed.cancelled() => return Err(Error::closed(BACKEND, "subscription")),
            incoming = self.incoming.lock() => incoming,
        };
        let pulled = tokio::select! {
            _ = self.closed.cancelled() => return Err(Error::closed(BACKEND, "subscription")),
            pulled = incoming.recv() => pulled,
        };
        let (message, handler) = match pulled {
            Some(pulled) => pulled?,
            None => return Err(Error::closed(BACKEND, "subscription")),
        };
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
        Ok(Delivery::new(
            bus_message,
            id.clone(),
            attempt,
            self.topic.clone(),
            Box::new(GcpAcker {
                handler: Mutex::new(Some(handler)),
                attempts: self.attempts.clone(),
                id,
            }),
        ))
    }

    async fn close(&self) -> Result<()> {
        // End the streams first, so the server sends nothing more to this consumer; only then
        // nack what it held (messages pulled but not handed out, and deliveries not settled).
        // Nacked while a stream is still open, a message can be sent straight back to it and
        // then wait out its ack deadline on a stream nobody reads.
        self.closed.cancel();
        let pumps = std::mem::take(&mut *lock(&self.pumps));
        for pump in pumps {
            let _ = pump.await;
        }
        // Dropping a stream starts its shutdown: pending acks are sent and everything still
        // under lease is nacked. Wait for those calls, within reason.
        let shutdowns = self.shutdowns.iter().map(|token| token.shutdown());
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            futures::future::join_all(shutdowns),
        )
        .await;
        lock(&self.client).take();
        Ok(())
    }
}

impl Drop for GcpSubscription {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// Ack
// ---------------------------------------------------------------------------------------------

struct GcpAcker {
    handler: Mutex<Option<Handler>>,
    attempts: AttemptCounts,
    id: String,
}

#[async_trait]
impl Acker for GcpAcker {
    async fn ack(&self) -> Result<()> {
        if let Some(handler) = lock(&self.handler).take() {
            handler.ack();
            lock(&self.attempts).remove(&self.id);
        }
        Ok(())
    }

    async fn nack(&self) -> Result<()> {
        if let Some(handler) = lock(&self.handler).take() {
            handler.nack();
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
