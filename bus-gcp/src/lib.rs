//! The Google Cloud Pub/Sub backend of bus, over the official [google-cloud-pubsub] crate,
//! proven against Google's Pub/Sub emulator.
//!
//! ```no_run
//! use bus_core::{Backend, Message, Topic};
//! use bus_gcp::{GcpBackend, GcpConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> bus_core::Result<()> {
//! let config = GcpConfig { endpoint: Some("http://127.0.0.1:8085".into()), ..GcpConfig::new("autopatch") };
//! let backend = GcpBackend::connect(&config).await?;
//! backend.publisher().publish(&Topic::new("autopatch/crash_detail")?, Message::new("crash")).await?;
//! backend.close().await?;
//! # Ok(()) }
//! ```
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

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
