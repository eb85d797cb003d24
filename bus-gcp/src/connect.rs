//! Connecting: the clients (admin, publisher, one subscriber client per consumer), all pointed
//! at the same endpoint, and a reachability check that fails in seconds rather than after the
//! crate's ~50 s of retries.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus_core::{
    Backend, Capabilities, Error, ErrorKind, Publisher, Result, Subscriber, SubscriptionOptions,
    Topic,
};
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_pubsub::client::{
    BasePublisher, Subscriber as PubSubSubscriber, SubscriptionAdmin, TopicAdmin,
};

use crate::config::Endpoint;
use crate::errors::{is_code, map_error};
use crate::{capabilities, lock, names, GcpConfig, GcpPublisher, GcpSubscriber, BACKEND};

/// Points a client builder at the endpoint, with anonymous credentials for an emulator. (The
/// clients' builders are different types with the same methods.)
macro_rules! configure {
    ($builder:expr, $endpoint:expr) => {{
        let mut builder = $builder;
        let endpoint: &Endpoint = $endpoint;
        if let Some(url) = &endpoint.configured {
            builder = builder.with_endpoint(url.clone());
            if endpoint.emulator {
                builder = builder.with_credentials(
                    google_cloud_auth::credentials::anonymous::Builder::new().build(),
                );
            }
        }
        builder
    }};
}

/// A connection to Pub/Sub (or the emulator) shared by publishers and subscribers.
#[derive(Clone)]
pub struct GcpBackend {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for GcpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpBackend")
            .field("project", &self.inner.config.project)
            .field("endpoint", &self.inner.endpoint.url())
            .field("emulator", &self.inner.endpoint.emulator)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub config: GcpConfig,
    pub endpoint: Endpoint,
    pub provisioning: bool,
    pub capabilities: Capabilities,
    pub topic_admin: TopicAdmin,
    pub subscription_admin: SubscriptionAdmin,
    pub base_publisher: BasePublisher,
    /// Topics known to exist (created or seen) in this process.
    pub known_topics: Mutex<HashSet<String>>,
    /// Deliveries per message id, per subscription, for attempt numbers (see the crate docs).
    attempts: Mutex<HashMap<String, AttemptCounts>>,
}

/// Deliveries so far per message id, on one subscription.
pub(crate) type AttemptCounts = Arc<Mutex<HashMap<String, u32>>>;

impl GcpBackend {
    /// Builds the clients and checks, within `gcp.connect_timeout_ms`, that the endpoint
    /// answers; an unreachable endpoint is an `Unavailable` error in seconds.
    pub async fn connect(config: &GcpConfig) -> Result<Self> {
        config.validate()?;
        let endpoint = config.resolve_endpoint()?;
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let build_error = |client: &str, e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::Config,
                BACKEND,
                format!(
                    "cannot create the Pub/Sub {client} client for {}: {e}; {}",
                    endpoint.url(),
                    endpoint.hint()
                ),
            )
        };
        let topic_admin = configure!(TopicAdmin::builder(), &endpoint)
            .with_retry_policy(Aip194Strict.with_time_limit(timeout))
            .with_attempt_timeout(timeout)
            .build()
            .await
            .map_err(|e| build_error("topic admin", &e))?;
        let subscription_admin = configure!(SubscriptionAdmin::builder(), &endpoint)
            .with_retry_policy(Aip194Strict.with_time_limit(timeout))
            .with_attempt_timeout(timeout)
            .build()
            .await
            .map_err(|e| build_error("subscription admin", &e))?;
        let base_publisher = configure!(BasePublisher::builder(), &endpoint)
            .with_retry_policy(
                Aip194Strict.with_time_limit(Duration::from_millis(config.publish_timeout_ms)),
            )
            .build()
            .await
            .map_err(|e| build_error("publisher", &e))?;

        let backend = GcpBackend {
            inner: Arc::new(Inner {
                provisioning: config.provisioning.unwrap_or(endpoint.emulator),
                capabilities: capabilities(endpoint.emulator),
                config: config.clone(),
                endpoint,
                topic_admin,
                subscription_admin,
                base_publisher,
                known_topics: Mutex::default(),
                attempts: Mutex::default(),
            }),
        };
        backend.check_reachable(timeout).await?;
        Ok(backend)
    }

    /// Whether this connection goes to an emulator.
    pub fn is_emulator(&self) -> bool {
        self.inner.endpoint.emulator
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
                    "no Pub/Sub answered at {} within {timeout:?}{detail}; {}",
                    self.inner.endpoint.url(),
                    self.inner.endpoint.hint()
                ),
            )
        };
        match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
            Err(_) => Err(unreachable(String::new())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_code(&e, Code::NotFound) => Ok(()),
            Ok(Err(e)) => {
                let mapped = map_error(&e, "checking the connection");
                match mapped.kind() {
                    ErrorKind::Unavailable => Err(unreachable(format!(" ({})", mapped.message()))),
                    ErrorKind::Unauthenticated | ErrorKind::PermissionDenied => Err(Error::new(
                        mapped.kind(),
                        BACKEND,
                        format!("{}; {}", mapped.message(), self.inner.endpoint.hint()),
                    )),
                    _ => Err(mapped),
                }
            }
        }
    }

    /// A subscriber client (and so a connection) of its own for one consumer, so that one
    /// consumer's streams and acks never queue behind another's.
    pub(crate) async fn subscriber_client(&self) -> Result<PubSubSubscriber> {
        configure!(PubSubSubscriber::builder(), &self.inner.endpoint)
            .build()
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    BACKEND,
                    format!(
                        "cannot create the Pub/Sub subscriber client for {}: {e}; {}",
                        self.inner.endpoint.url(),
                        self.inner.endpoint.hint()
                    ),
                )
            })
    }

    pub(crate) fn attempt_counter(&self, subscription_path: &str) -> AttemptCounts {
        lock(&self.inner.attempts)
            .entry(subscription_path.to_string())
            .or_default()
            .clone()
    }
}

#[async_trait]
impl Backend for GcpBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn messaging_system(&self) -> &'static str {
        "gcp_pubsub"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities.clone()
    }

    /// A publisher on this connection.
    fn publisher(&self) -> Box<dyn Publisher> {
        Box::new(GcpPublisher::new(self.clone()))
    }

    /// A subscriber on this connection.
    fn subscriber(&self) -> Box<dyn Subscriber> {
        Box::new(GcpSubscriber::new(self.clone()))
    }

    /// Creates the topic with the admin API, whatever `gcp.provisioning` says (it is what
    /// `bus provision` calls).
    async fn create_topic(&self, topic: &Topic) -> Result<()> {
        self.create_topic_now(topic).await.map(|_| ())
    }

    /// The clients close when the last publisher and subscriber made from this backend are
    /// gone; there is nothing to release before.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
