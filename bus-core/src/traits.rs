//! The three roles every backend implements: [`Publisher`], [`Subscriber`] and
//! [`Subscription`]. They are object safe; conveniences live in [`SubscriberExt`] and
//! [`SubscriptionExt`].

use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, Stream};

use crate::{Capabilities, Delivery, Message, Result, SubscriptionOptions, Topic};

/// Publishes messages to topics.
///
/// `publish` returns once the broker has confirmed the message; `flush` and `close` wait for
/// every publish in flight. After `close`, every call returns an
/// [`ErrorKind::Closed`](crate::ErrorKind::Closed) error.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Publisher: Send + Sync + std::fmt::Debug {
    /// Publishes one message and returns the id the backend assigned to it.
    async fn publish(&self, topic: &Topic, message: Message) -> Result<String>;

    /// Publishes several messages to `topic` in one call and returns one result per message,
    /// in the same order: the id the backend assigned, or why that message was not published.
    /// A message that fails does not stop the others. Messages are sent in the order given, so
    /// those with one ordering key reach an ordered subscription in that order.
    ///
    /// The default publishes one message after the other; backends override it where the
    /// transport does better (see each backend's docs).
    ///
    /// ```
    /// # async fn example(publisher: &dyn bus_core::Publisher) -> bus_core::Result<()> {
    /// use bus_core::{Message, Topic};
    ///
    /// let topic = Topic::new("builds")?;
    /// let batch = (0..3).map(|n| Message::new(format!("build {n}"))).collect();
    /// for result in publisher.publish_batch(&topic, batch).await {
    ///     match result {
    ///         Ok(id) => println!("published {id}"),
    ///         Err(e) => eprintln!("not published: {e}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    async fn publish_batch(&self, topic: &Topic, messages: Vec<Message>) -> Vec<Result<String>> {
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            results.push(self.publish(topic, message).await);
        }
        results
    }

    /// Waits until every publish started before this call is confirmed or failed.
    async fn flush(&self) -> Result<()>;

    /// Flushes, then releases the connection. Idempotent.
    async fn close(&self) -> Result<()>;

    /// What the backend supports and its limits.
    fn capabilities(&self) -> Capabilities;
}

/// Creates (or attaches to) subscriptions.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Subscriber: Send + Sync + std::fmt::Debug {
    /// Attaches a consumer to the subscription `options.name` on `topic`, creating the
    /// subscription if it does not exist yet (where the backend may). From its creation on, the
    /// subscription keeps every message published to `topic` until it is acked.
    async fn subscribe(
        &self,
        topic: &Topic,
        options: SubscriptionOptions,
    ) -> Result<Box<dyn Subscription>>;

    /// Makes sure the subscription `options.name` on `topic` exists, without attaching a
    /// consumer: from now on it keeps every message published to `topic`, for consumers that
    /// attach later. Services call it at start-up so that nothing published before their first
    /// `subscribe` is missed. Creating what exists is not an error.
    ///
    /// The default attaches a consumer and closes it again; a backend that can create a
    /// subscription without a consumer overrides it.
    async fn create_subscription(&self, topic: &Topic, options: SubscriptionOptions) -> Result<()> {
        self.subscribe(topic, options).await?.close().await
    }

    /// Closes every subscription made by this subscriber. Idempotent.
    async fn close(&self) -> Result<()>;

    /// What the backend supports and its limits.
    fn capabilities(&self) -> Capabilities;
}

/// One consumer attached to a subscription.
///
/// `receive` and `close` take `&self`, so one task can close a subscription while another is
/// blocked in `receive`; the blocked call then returns an
/// [`ErrorKind::Closed`](crate::ErrorKind::Closed) error promptly. Closing detaches the
/// consumer; the subscription itself (and its messages) stays for the next consumer.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Subscription: Send + Sync + std::fmt::Debug {
    /// Waits for the next delivery.
    ///
    /// Cancel safe: dropping the future before it completes (a `select!` with a shutdown
    /// signal, a timeout) loses no message.
    async fn receive(&self) -> Result<Delivery>;

    /// Waits at most `wait` for a first delivery, then adds those that are ready at once, up
    /// to `max` in all. An empty batch means nothing came within `wait`. Deliveries of an
    /// ordered subscription come in order. Each delivery is settled on its own, or all of
    /// them with [`ack_all`](crate::ack_all) / [`nack_all`](crate::nack_all).
    ///
    /// The default builds on [`receive`](Subscription::receive); backends override it to take
    /// a batch in one step.
    ///
    /// ```
    /// # async fn example(subscription: &dyn bus_core::Subscription) -> bus_core::Result<()> {
    /// use std::time::Duration;
    ///
    /// let batch = subscription.receive_batch(100, Duration::from_secs(1)).await?;
    /// for delivery in &batch {
    ///     println!("{:?}", delivery.payload());
    /// }
    /// for result in bus_core::ack_all(batch).await {
    ///     result?;
    /// }
    /// # Ok(()) }
    /// ```
    async fn receive_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        match tokio::time::timeout(wait, self.receive()).await {
            Ok(first) => batch.push(first?),
            Err(_) => return Ok(batch),
        }
        // `receive` is cancel safe: a call that is not ready at once is dropped unharmed. An
        // error ends the batch; the next call reports it.
        while batch.len() < max {
            match self.receive().now_or_never() {
                Some(Ok(delivery)) => batch.push(delivery),
                Some(Err(_)) | None => break,
            }
        }
        Ok(batch)
    }

    /// Detaches this consumer. Deliveries already received can still be acked or nacked.
    /// Idempotent.
    async fn close(&self) -> Result<()>;
}

/// Conveniences for every [`Subscriber`].
#[async_trait]
pub trait SubscriberExt: Subscriber {
    /// Subscribes with default options for the subscription `name`.
    async fn subscribe_named(&self, topic: &Topic, name: &str) -> Result<Box<dyn Subscription>> {
        self.subscribe(topic, SubscriptionOptions::new(name)?).await
    }
}

impl<S: Subscriber + ?Sized> SubscriberExt for S {}

/// Conveniences for every [`Subscription`].
pub trait SubscriptionExt: Subscription {
    /// The deliveries as a [`Stream`], which ends when the subscription is closed.
    ///
    /// ```
    /// # async fn example(subscription: &dyn bus_core::Subscription) -> bus_core::Result<()> {
    /// use bus_core::SubscriptionExt;
    /// use futures::StreamExt;
    ///
    /// let mut deliveries = std::pin::pin!(subscription.deliveries());
    /// while let Some(delivery) = deliveries.next().await {
    ///     let delivery = delivery?;
    ///     println!("{:?}", delivery.payload());
    ///     delivery.ack().await?;
    /// }
    /// # Ok(()) }
    /// ```
    fn deliveries(&self) -> impl Stream<Item = Result<Delivery>> + Send + '_ {
        futures::stream::unfold(self, |subscription| async move {
            match subscription.receive().await {
                Err(e) if e.kind() == crate::ErrorKind::Closed => None,
                item => Some((item, subscription)),
            }
        })
    }
}

impl<S: Subscription + ?Sized> SubscriptionExt for S {}

// Boxed and shared handles are what the facade and the contract suite hold: they publish,
// subscribe and receive like what they point to. Their async methods hand back the boxed future
// of what they point to instead of boxing it once more (one allocation less per call and
// handle on the hot path), so they are written out rather than made by `async_trait`.

/// The future an object-safe async method returns.
type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

macro_rules! forward_publisher {
    ($handle:ident) => {
        impl<P: Publisher + ?Sized> Publisher for $handle<P> {
            fn publish<'a, 'b, 'c>(
                &'a self,
                topic: &'b Topic,
                message: Message,
            ) -> Boxed<'c, Result<String>>
            where
                'a: 'c,
                'b: 'c,
                Self: 'c,
            {
                (**self).publish(topic, message)
            }
            fn publish_batch<'a, 'b, 'c>(
                &'a self,
                topic: &'b Topic,
                messages: Vec<Message>,
            ) -> Boxed<'c, Vec<Result<String>>>
            where
                'a: 'c,
                'b: 'c,
                Self: 'c,
            {
                (**self).publish_batch(topic, messages)
            }
            fn flush<'a, 'c>(&'a self) -> Boxed<'c, Result<()>>
            where
                'a: 'c,
                Self: 'c,
            {
                (**self).flush()
            }
            fn close<'a, 'c>(&'a self) -> Boxed<'c, Result<()>>
            where
                'a: 'c,
                Self: 'c,
            {
                (**self).close()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
        }
    };
}

macro_rules! forward_subscription {
    ($handle:ident) => {
        impl<S: Subscription + ?Sized> Subscription for $handle<S> {
            fn receive<'a, 'c>(&'a self) -> Boxed<'c, Result<Delivery>>
            where
                'a: 'c,
                Self: 'c,
            {
                (**self).receive()
            }
            fn receive_batch<'a, 'c>(
                &'a self,
                max: usize,
                wait: Duration,
            ) -> Boxed<'c, Result<Vec<Delivery>>>
            where
                'a: 'c,
                Self: 'c,
            {
                (**self).receive_batch(max, wait)
            }
            fn close<'a, 'c>(&'a self) -> Boxed<'c, Result<()>>
            where
                'a: 'c,
                Self: 'c,
            {
                (**self).close()
            }
        }
    };
}

macro_rules! forward_subscriber {
    ($handle:ident) => {
        impl<S: Subscriber + ?Sized> Subscriber for $handle<S> {
            fn subscribe<'a, 'b, 'c>(
                &'a self,
                topic: &'b Topic,
                options: SubscriptionOptions,
            ) -> Boxed<'c, Result<Box<dyn Subscription>>>
            where
                'a: 'c,
                'b: 'c,
                Self: 'c,
            {
                (**self).subscribe(topic, options)
            }
            fn create_subscription<'a, 'b, 'c>(
                &'a self,
                topic: &'b Topic,
                options: SubscriptionOptions,
            ) -> Boxed<'c, Result<()>>
            where
                'a: 'c,
                'b: 'c,
                Self: 'c,
            {
                (**self).create_subscription(topic, options)
            }
            fn close<'a, 'c>(&'a self) -> Boxed<'c, Result<()>>
            where
                'a: 'c,
                Self: 'c,
            {
                (**self).close()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
        }
    };
}

use std::sync::Arc;

forward_publisher!(Box);
forward_publisher!(Arc);
forward_subscription!(Box);
forward_subscription!(Arc);
forward_subscriber!(Box);
forward_subscriber!(Arc);
