#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod acks;
mod admin;
mod config;
mod connect;
mod errors;
pub mod names;
mod publisher;
mod subscriber;

use std::time::Duration;

use bus_core::Capabilities;

pub use config::{GcpConfig, EMULATOR_HOST_VAR};
pub use connect::GcpBackend;
pub use publisher::GcpPublisher;
pub use subscriber::{GcpSubscriber, GcpSubscription};

/// The backend's name, as reported in errors.
pub const BACKEND: &str = "gcp";

/// What Pub/Sub supports. Google's emulator lacks prompt hand-over: it keeps streaming to the
/// connection of a consumer that went away (see the crate docs), so a consumer that attaches
/// after it can wait a long time for what the departed one held or was sent.
pub(crate) fn capabilities(emulator: bool) -> Capabilities {
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

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
