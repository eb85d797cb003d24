#![doc = include_str!("../README.md")]
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
pub(crate) fn capabilities(config: &MemoryConfig) -> Capabilities {
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
