//! An in-process bus broker: the embedded default backend, with the whole bus contract.
//!
//! - **Fan-out and load sharing.** Each subscription name on a topic has its own queue; every
//!   queue gets every message published after the subscription was created. Consumers that
//!   subscribe with the same name take turns on that queue.
//! - **Durability** for the life of the process: a subscription and its messages stay when its
//!   last consumer closes, and the next consumer gets them.
//! - **At-least-once.** A delivery stays *in flight* until it is acked. A nack, or no ack within
//!   the ack deadline, puts it back with its attempt number increased; once the attempts reach
//!   the dead-letter policy's maximum the message is published to the dead-letter topic.
//! - **Ordering.** On a subscription with [`SubscriptionOptions::ordered`], a message with an
//!   ordering key is not handed out while an earlier message with that key is still in flight.
//! - **Bounded memory.** Each subscription holds at most
//!   [`MemoryConfig::max_queued_bytes`] of unacked messages (each message counted as its size
//!   plus [`PER_MESSAGE_OVERHEAD`]), messages waiting for the dead-letter topic included. A publisher waits for room rather than memory growing;
//!   after [`MemoryConfig::publish_timeout_ms`] it gets a retryable
//!   [`ErrorKind::Timeout`] error. A full subscription holds back the publishers of its topic,
//!   never the consumers of other subscriptions.
//! - Publishing returns once every subscription of the topic holds the message. A topic with no
//!   subscriptions discards what is published to it, as Pub/Sub does.
//!
//! ```
//! use bus_core::{Backend, Message, SubscriptionOptions, Topic};
//! use bus_memory::{MemoryBackend, MemoryConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> bus_core::Result<()> {
//! let broker = MemoryBackend::connect(&MemoryConfig::default()).await?;
//! let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
//! let topic = Topic::new("python/mqtt")?;
//! let subscription = subscriber.subscribe(&topic, SubscriptionOptions::new("consume")?).await?;
//!
//! publisher.publish(&topic, Message::new("Hello")).await?;
//! let delivery = subscription.receive().await?;
//! assert_eq!(delivery.payload().as_ref(), b"Hello");
//! assert_eq!(delivery.attempt(), 1);
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod acks;
mod config;
mod connect;
mod publisher;
mod subscriber;

use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bus_core::Capabilities;

pub use config::MemoryConfig;
pub use connect::MemoryBackend;
pub use publisher::MemoryPublisher;
pub use subscriber::{MemorySubscriber, MemorySubscription};

/// The backend's name, as reported in errors.
pub const BACKEND: &str = "memory";

/// Bytes each queued message is charged on top of its own size, for the bookkeeping around it,
/// so that floods of tiny messages are bounded too. Measured (`bus-bench memory-budget`): a
/// queued message costs the process about 208-224 bytes besides its payload and attributes.
pub const PER_MESSAGE_OVERHEAD: usize = 224;

/// What the in-memory backend supports with `config`: the whole contract.
pub fn capabilities(config: &MemoryConfig) -> Capabilities {
    let mut caps = Capabilities::none();
    caps.fan_out = true;
    caps.competing_consumers = true;
    caps.durable = true;
    caps.prompt_handover = true;
    caps.nack = true;
    caps.ack_deadline = true;
    caps.min_ack_deadline = Duration::from_millis(1);
    caps.max_ack_deadline = Duration::from_secs(600);
    caps.ordering = true;
    caps.dead_letter = true;
    caps.max_message_bytes = config.max_message_bytes;
    caps
}

// Locks: a panic while a lock is held cannot leave these structures half-updated in a way that
// matters more than losing the process, so poisoning is ignored rather than propagated.

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
