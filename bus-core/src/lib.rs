//! The bus contract: what every backend implements and every service programs against.
//!
//! - [`Topic`] and [`SubscriptionName`]: portable, validated names.
//! - [`Message`] to publish, [`Delivery`] received, settled with [`Delivery::ack`] or
//!   [`Delivery::nack`].
//! - [`Publisher`], [`Subscriber`] and [`Subscription`]: small object-safe async traits;
//!   conveniences in [`SubscriberExt`], [`SubscriptionExt`] and [`PublishJson`].
//! - [`Backend`]: what every backend crate's entry type implements (`XxxBackend::connect`).
//! - [`Capabilities`]: what a backend supports, declared rather than hidden.
//! - [`Error`]: one error type with an [`ErrorKind`], a retryable flag and the backend's name.
//! - [`telemetry`]: spans, W3C trace context and metrics for every backend.
//! - [`typed`]: serde JSON payloads whose decode failures keep the delivery.
//! - `mock` (feature `mock`): mockall mocks of the traits for unit tests.
//!
//! Delivery is at-least-once: a message is delivered until a consumer acks it, so handlers
//! should be idempotent (the [`Delivery::id`] is stable across redeliveries).
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod backend;
mod capabilities;
#[cfg(feature = "cloudevents")]
pub mod cloudevents;
pub mod config;
mod error;
mod message;
mod names;
mod options;
pub mod telemetry;
mod traits;
pub mod typed;

#[cfg(feature = "mock")]
pub mod mock;

pub use backend::Backend;
pub use capabilities::Capabilities;
pub use error::{printable, Error, ErrorKind, Result, CORE};
pub use message::{
    ack_all, nack_all, Acker, Attributes, BatchAcker, Delivery, DeliveryHandle, Message,
};
pub use names::{SubscriptionName, Topic, MAX_NAME_LEN};
pub use options::{
    DeadLetterPolicy, SubscriptionOptions, DEFAULT_ACK_DEADLINE, DEFAULT_MAX_DELIVERY_ATTEMPTS,
};
pub use traits::{Publisher, Subscriber, SubscriberExt, Subscription, SubscriptionExt};
pub use typed::{JsonSubscription, PublishJson, Typed};

pub use async_trait::async_trait;
pub use bytes::Bytes;
