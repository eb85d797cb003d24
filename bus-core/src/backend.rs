//! One shape for every backend: the [`Backend`] trait each backend crate's entry type
//! implements, and the plumbing every backend needs around its own transport, written once.
//!
//! Every backend crate is entered the same way: a plain serde config type (`MemoryConfig`,
//! `MqttConfig`, `GcpConfig`) and `XxxBackend::connect(&config).await`, which returns a type
//! implementing [`Backend`]: publishers, subscribers and capabilities from there.
//!
//! - [`PublishGate`]: a publisher's closed state and the publishes in flight, so that `publish`
//!   after `close` fails with [`ErrorKind::Closed`](crate::ErrorKind::Closed) and `flush`/`close` wait for what is under way.
//! - [`Lifecycle`]: the closed state of a subscriber and of each of its subscriptions (closing a
//!   subscriber closes them all), the subscribe preamble ([`Lifecycle::admit`]) and
//!   [`Lifecycle::until_closed`], which ends a blocked `receive` promptly on close.
//!
//! ```
//! use bus_core::backend::PublishGate;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let gate = PublishGate::default();
//! {
//!     let _publishing = gate.enter("memory").expect("open");
//!     // ... send the message; `close` waits until this guard is dropped
//! }
//! gate.close().await;
//! assert!(gate.enter("memory").is_err());
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Capabilities, Error, Publisher, Result, Subscriber, SubscriptionOptions};

/// A connected backend: hands out publishers and subscribers that share its connections.
///
/// ```
/// # async fn example(backend: &dyn bus_core::Backend) -> bus_core::Result<()> {
/// use bus_core::{Message, Topic};
///
/// let publisher = backend.publisher();
/// println!("{} accepts messages up to {} bytes", backend.name(), backend.capabilities().max_message_bytes);
/// publisher.publish(&Topic::new("python/mqtt")?, Message::new("Hello")).await?;
/// backend.close().await
/// # }
/// ```
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// The backend's name, as in its errors (`memory`, `mqtt`, `gcp`).
    fn name(&self) -> &'static str;

    /// The `messaging.system` of its spans, after OpenTelemetry's conventions (`mqtt`,
    /// `gcp_pubsub`, `memory`); the backend's name unless it says otherwise.
    fn messaging_system(&self) -> &'static str {
        self.name()
    }

    /// What the backend supports and its limits.
    fn capabilities(&self) -> Capabilities;

    /// A publisher.
    fn publisher(&self) -> Box<dyn Publisher>;

    /// A subscriber.
    fn subscriber(&self) -> Box<dyn Subscriber>;

    /// Makes sure `topic` exists, for a backend where topics are resources (Pub/Sub); on the
    /// others a topic is just a name and this does nothing. Creating what exists is not an
    /// error.
    async fn create_topic(&self, _topic: &crate::Topic) -> Result<()> {
        Ok(())
    }

    /// Releases the backend's shared connections (after what is in flight). Publishers and
    /// subscribers made from it fail with [`ErrorKind::Closed`](crate::ErrorKind::Closed) or
    /// keep working, as each backend documents; close them first.
    async fn close(&self) -> Result<()>;
}

/// A publisher's closed flag and its count of publishes in flight.
#[derive(Debug, Default)]
pub struct PublishGate {
    closed: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// One publish in flight; [`PublishGate::flush`] and [`PublishGate::close`] wait for it to drop.
#[derive(Debug)]
pub struct Publishing<'a>(&'a PublishGate);

impl PublishGate {
    /// Starts a publish, or fails with [`ErrorKind::Closed`](crate::ErrorKind::Closed) once the publisher is closed.
    pub fn enter(&self, backend: &'static str) -> Result<Publishing<'_>> {
        // Counted before the check: a close that starts now waits for this publish.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let publishing = Publishing(self);
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(backend, "publisher"));
        }
        Ok(publishing)
    }

    /// Runs the batch publish that `publish` makes inside the gate, or fails every one of its
    /// `count` messages with [`ErrorKind::Closed`](crate::ErrorKind::Closed) once the publisher
    /// is closed.
    pub async fn batch<T, F>(
        &self,
        backend: &'static str,
        count: usize,
        publish: impl FnOnce() -> F,
    ) -> Vec<Result<T>>
    where
        F: Future<Output = Vec<Result<T>>>,
    {
        match self.enter(backend) {
            Ok(_publishing) => publish().await,
            Err(e) => fail_each(&e, count),
        }
    }

    /// Waits until no publish is in flight.
    pub async fn flush(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Refuses new publishes and waits for those in flight. Returns whether this call closed
    /// the gate (false when it was closed already), so the caller releases its connection once.
    pub async fn close(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::AcqRel);
        self.flush().await;
        first
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The same failure for every one of `count` messages of a batch (a closed publisher, a topic
/// that could not be made ready): one error each, with the kind, retryable flag and message of
/// `error`.
pub fn fail_each<T>(error: &Error, count: usize) -> Vec<Result<T>> {
    (0..count)
        .map(|_| {
            Err(Error::new(error.kind(), error.backend(), error.message())
                .with_retryable(error.is_retryable()))
        })
        .collect()
}

/// The result of a one-message batch: a single publish made through a backend's batch path.
pub fn only_result<T>(mut results: Vec<Result<T>>) -> Result<T> {
    match (results.pop(), results.is_empty()) {
        (Some(result), true) => result,
        _ => Err(Error::new(
            crate::ErrorKind::Internal,
            crate::CORE,
            "a one-message batch did not return exactly one result",
        )),
    }
}

/// The closed state of a subscriber, or of one subscription made by it (a child: closing the
/// subscriber closes the subscription too).
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    closed: CancellationToken,
}

impl Lifecycle {
    /// An open lifecycle.
    pub fn new() -> Self {
        Self::default()
    }

    /// The subscribe preamble: fails with [`ErrorKind::Closed`](crate::ErrorKind::Closed) if this subscriber is closed,
    /// checks `options` against the backend's capabilities, and returns the lifecycle of the
    /// new subscription.
    pub fn admit(
        &self,
        backend: &'static str,
        capabilities: &Capabilities,
        options: &SubscriptionOptions,
    ) -> Result<Lifecycle> {
        self.check_open(backend, "subscriber")?;
        options.check(backend, capabilities)?;
        Ok(Lifecycle {
            closed: self.closed.child_token(),
        })
    }

    /// Fails with [`ErrorKind::Closed`](crate::ErrorKind::Closed) naming `what` once closed.
    pub fn check_open(&self, backend: &'static str, what: &str) -> Result<()> {
        if self.is_closed() {
            return Err(Error::closed(backend, what));
        }
        Ok(())
    }

    /// Closes this lifecycle and its children. Idempotent.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Whether [`close`](Self::close) was called (on this lifecycle or its parent).
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Completes when closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Runs `operation` (a subscription's receive) unless or until this lifecycle is closed, in
    /// which case it returns an [`ErrorKind::Closed`](crate::ErrorKind::Closed) error naming the subscription.
    pub async fn until_closed<T>(
        &self,
        backend: &'static str,
        operation: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.check_open(backend, "subscription")?;
        tokio::select! {
            biased;
            _ = self.closed.cancelled() => Err(Error::closed(backend, "subscription")),
            result = operation => result,
        }
    }

    /// The token behind this lifecycle, for backends that hand it to their own tasks.
    pub fn token(&self) -> &CancellationToken {
        &self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::sync::Arc;
    use std::time::Duration;

    fn caps() -> Capabilities {
        Capabilities::none()
    }

    #[tokio::test]
    async fn close_waits_for_publishes_in_flight() {
        let gate = Arc::new(PublishGate::default());
        let publishing = gate.enter("test").unwrap();
        let closing = tokio::spawn({
            let gate = gate.clone();
            async move { gate.close().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!closing.is_finished(), "close waits for the publish");
        assert_eq!(
            gate.enter("test").unwrap_err().kind(),
            ErrorKind::Closed,
            "no new publish once closing"
        );
        drop(publishing);
        assert!(
            closing.await.unwrap(),
            "the first close reports it closed the gate"
        );
        assert!(!gate.close().await, "a second close is a no-op");
    }

    #[tokio::test]
    async fn closing_a_subscriber_ends_a_blocked_receive() {
        let subscriber = Lifecycle::new();
        let subscription = subscriber
            .admit("test", &caps(), &SubscriptionOptions::new("s").unwrap())
            .unwrap();
        let receive = tokio::spawn({
            let subscription = subscription.clone();
            async move {
                subscription
                    .until_closed("test", std::future::pending::<Result<()>>())
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        subscriber.close();
        let err = receive.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
        assert!(subscriber
            .admit("test", &caps(), &SubscriptionOptions::new("s").unwrap())
            .is_err());
    }
}
