//! Telemetry written once for every backend: spans named and attributed after OpenTelemetry's
//! messaging conventions, W3C trace context on the wire, and metrics.
//!
//! [`Instrumented`] wraps any [`Backend`](crate::Backend); the facade's `bus::connect` always does. Through it:
//!
//! - **Spans** (`tracing`, target `bus`): `send {topic}` (kind producer) around each publish,
//!   and for each delivery a `process {topic}` span (kind consumer) that lives until the
//!   delivery is settled, with `ack`/`nack` (operation type `settle`) inside it. Attributes:
//!   `messaging.system` ([`Backend::messaging_system`](crate::Backend::messaging_system)), `messaging.destination.name`,
//!   `messaging.destination.subscription.name`, `messaging.operation.type`,
//!   `messaging.message.id`, `messaging.message.body.size`, `messaging.delivery.attempt`, and
//!   `error.type` on failure. Redeliveries (attempt > 1) and dead-lettering are events.
//! - **Trace context** (feature `otel`, with `tracing-opentelemetry` installed by the
//!   application): a publish writes the `traceparent` (and `tracestate`) of its span into the
//!   message's attributes — MQTT 5 user properties, Pub/Sub and memory attributes — and a
//!   delivery's span continues the context it carries ([`TraceContext::from_attributes`]:
//!   `traceparent`, Google's `googclient_traceparent`, CloudEvents' extension). A message
//!   without one, or with a malformed one, starts a new trace. Without the feature, attributes
//!   pass through untouched.
//! - **Sampling**: a trace is decided where it starts ([`set_trace_ratio`], every trace
//!   unless set) and the decision travels in `traceparent`; a message of an unsampled trace
//!   gets no OpenTelemetry span (see [`set_trace_ratio`] and [`UNSAMPLED_TARGET`]).
//! - **Metrics** (the [`metrics`] facade: nothing is recorded unless the application installs
//!   a recorder, e.g. a Prometheus exporter, *before* connecting): see the `*_TOTAL` and other
//!   name constants below; labels `system`, `topic`, `subscription`, `outcome`.
//!
//! A handler continues the trace by running inside the delivery's span:
//!
//! ```
//! use bus_core::{Delivery, Publisher, Message, Topic, Result};
//! use tracing::Instrument;
//!
//! async fn handle(delivery: Delivery, publisher: &dyn Publisher) -> Result<()> {
//!     let span = delivery.span().clone();
//!     async move {
//!         // A publish in here carries this delivery's trace on.
//!         publisher.publish(&Topic::new("autopatch/patch_response")?, Message::new("patched")).await?;
//!         delivery.ack().await
//!     }
//!     .instrument(span)
//!     .await
//! }
//! ```

mod context;
mod instrumented;
#[cfg(feature = "otel")]
mod otel;
mod sampling;

pub use context::{TraceContext, GOOGLE_TRACEPARENT, TRACEPARENT, TRACESTATE};
pub use instrumented::Instrumented;
pub(crate) use instrumented::Settlement;
pub use sampling::{set_trace_ratio, trace_ratio, UNSAMPLED_TARGET};

/// Counter: publishes, labelled `outcome` = `ok` | `error`.
pub const PUBLISHED_TOTAL: &str = "bus_messages_published_total";
/// Histogram: seconds from `publish` to the broker's confirmation (or failure).
pub const PUBLISH_DURATION_SECONDS: &str = "bus_publish_duration_seconds";
/// Counter: deliveries handed to a consumer (first deliveries and redeliveries).
pub const DELIVERED_TOTAL: &str = "bus_messages_delivered_total";
/// Counter: deliveries with attempt > 1.
pub const REDELIVERED_TOTAL: &str = "bus_messages_redelivered_total";
/// Counter: acks.
pub const ACKED_TOTAL: &str = "bus_messages_acked_total";
/// Counter: nacks.
pub const NACKED_TOTAL: &str = "bus_messages_nacked_total";
/// Gauge: deliveries handed out and not settled yet.
pub const IN_FLIGHT: &str = "bus_messages_in_flight";
/// Counter: messages moved to a dead-letter topic after their last attempt, where bus moves
/// them (memory, MQTT); Pub/Sub dead-letters on the server, which reports it in its own
/// subscription metrics.
pub const DEAD_LETTERED_TOTAL: &str = "bus_messages_dead_lettered_total";
/// Counter: deliveries whose payload did not decode (JSON or CloudEvents).
pub const DECODE_ERRORS_TOTAL: &str = "bus_decode_errors_total";

/// Records that a backend moved a message of `subscription` on `topic` to its dead-letter
/// topic after `attempts` deliveries: an event in the current span and a count. Backends call
/// it where they dead-letter.
pub fn dead_lettered(
    system: &'static str,
    topic: &crate::Topic,
    subscription: &str,
    dead_letter_topic: &crate::Topic,
    attempts: u32,
) {
    tracing::info!(
        target: "bus",
        system,
        %topic,
        subscription,
        dead_letter_topic = %dead_letter_topic,
        attempts,
        "dead-lettered"
    );
    metrics::counter!(
        DEAD_LETTERED_TOTAL,
        "system" => system,
        "topic" => topic.to_string(),
        "subscription" => subscription.to_string()
    )
    .increment(1);
}

/// Counts a delivery whose payload did not decode (called by [`typed`](crate::typed) and
/// CloudEvents decoding).
pub(crate) fn decode_failed(topic: &crate::Topic) {
    metrics::counter!(DECODE_ERRORS_TOTAL, "topic" => topic.to_string()).increment(1);
}

/// Makes the trace `context` the parent of `span` (a span not entered yet), e.g. for a
/// CloudEvent whose trace context travels inside the event. Without the `otel` feature, or
/// without `tracing-opentelemetry` installed, it does nothing.
pub fn continue_trace(span: &tracing::Span, context: &TraceContext) {
    #[cfg(feature = "otel")]
    otel::continue_trace(span, context);
    #[cfg(not(feature = "otel"))]
    let _ = (span, context);
}

/// Links `span` to the trace `context`: for work with several parents (a join of two messages,
/// a batch), the first parent is the span's parent and the others are links. Without the
/// `otel` feature, or without `tracing-opentelemetry` installed, it does nothing.
pub fn link(span: &tracing::Span, context: &TraceContext) {
    #[cfg(feature = "otel")]
    otel::link(span, context);
    #[cfg(not(feature = "otel"))]
    let _ = (span, context);
}
