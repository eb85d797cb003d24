//! CloudEvents 1.0 on the bus, with the official SDK (`cloudevents-sdk`).
//!
//! Two modes put an [`Event`] into a [`Message`]:
//! - **structured**: the payload is the event in the JSON event format (what Python's
//!   `cloudevents.conversion.to_json` writes), with `content-type: application/cloudevents+json`;
//!   any consumer that reads JSON sees `specversion`, `id`, ..., `data`.
//! - **binary**: the payload is the event's data alone; the context attributes travel as message
//!   attributes with a prefix (`ce-` in the Pub/Sub binding, none in the MQTT 5 binding, whose
//!   user properties carry the attribute names as they are) and `datacontenttype` as the
//!   `content-type` attribute.
//!
//! A consumer accepts both: [`decode_event`] reads binary mode when the attributes carry a
//! `specversion` (bare, `ce-` or `ce_` prefixed) and structured mode otherwise.
//!
//! ```
//! # async fn example(publisher: &dyn bus_core::Publisher, subscriber: &dyn bus_core::Subscriber)
//! # -> bus_core::Result<()> {
//! use bus_core::cloudevents::{
//!     EventBuilder, EventBuilderV10, EventFormat, EventSubscription, PublishEvent,
//! };
//! use bus_core::{SubscriptionOptions, Topic};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct CrashDetail { executable_name: String }
//!
//! let topic = Topic::new("autopatch/crash_detail")?;
//! let crashes = EventSubscription::<CrashDetail>::new(
//!     subscriber.subscribe(&topic, SubscriptionOptions::new("patch-evaluation")?).await?,
//! );
//! let event = EventBuilderV10::new()
//!     .id("8b4c0e6e-2f7e-4a47-9a4e-0d8f2b0c3a11")
//!     .source("autopatch.fuzzing-service")
//!     .ty("autopatch.crashdetail")
//!     .data("application/json", serde_json::json!({"executable_name": "boflow1"}))
//!     .build()
//!     .expect("a complete event");
//! publisher.publish_event(&topic, &event, &EventFormat::structured()).await?;
//! let crash = crashes.receive().await?;
//! assert_eq!(crash.data.executable_name, "boflow1");
//! crash.ack().await?;
//! # Ok(()) }
//! ```

use std::marker::PhantomData;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use cloudevents::{AttributesReader, Data, Event, EventBuilder, EventBuilderV10};

use crate::typed::CONTENT_TYPE_ATTRIBUTE;
use crate::{
    printable, Delivery, Error, ErrorKind, Message, Publisher, Result, Subscription, Topic, CORE,
};

/// The content type of a structured-mode message.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The attribute prefix of the CloudEvents Pub/Sub binding (binary mode).
pub const PUBSUB_PREFIX: &str = "ce-";

/// The attribute prefix of the CloudEvents MQTT 5 binding: none, user properties are named
/// after the attributes.
pub const MQTT_PREFIX: &str = "";

/// How events are put into messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum EventMode {
    /// The whole event as JSON in the payload (the default; what the Python services send).
    #[default]
    Structured,
    /// Data in the payload, context attributes as message attributes.
    Binary,
}

/// An event encoding: the mode and, for binary mode, the attribute prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    /// Structured or binary.
    pub mode: EventMode,
    /// The prefix of context attributes in binary mode, e.g. [`PUBSUB_PREFIX`].
    pub prefix: String,
}

impl EventFormat {
    /// Structured mode.
    pub fn structured() -> Self {
        EventFormat {
            mode: EventMode::Structured,
            prefix: PUBSUB_PREFIX.to_string(),
        }
    }

    /// Binary mode with the given attribute prefix.
    pub fn binary(prefix: impl Into<String>) -> Self {
        EventFormat {
            mode: EventMode::Binary,
            prefix: prefix.into(),
        }
    }
}

/// Publishing events for every [`Publisher`].
#[async_trait]
pub trait PublishEvent: Publisher {
    /// Encodes `event` in `format` and publishes it.
    async fn publish_event(
        &self,
        topic: &Topic,
        event: &Event,
        format: &EventFormat,
    ) -> Result<String> {
        self.publish(topic, event_message(event, format)?).await
    }
}

impl<P: Publisher + ?Sized> PublishEvent for P {}

/// The message for `event` in `format`.
pub fn event_message(event: &Event, format: &EventFormat) -> Result<Message> {
    match format.mode {
        EventMode::Structured => {
            let payload = serde_json::to_vec(event).map_err(|e| {
                Error::invalid_argument(CORE, "the event cannot be serialised as JSON")
                    .with_source(e)
            })?;
            Ok(Message::new(payload)
                .with_attribute(CONTENT_TYPE_ATTRIBUTE, STRUCTURED_CONTENT_TYPE))
        }
        EventMode::Binary => {
            let payload = match event.data() {
                None => Vec::new(),
                Some(Data::Binary(bytes)) => bytes.clone(),
                Some(Data::String(text)) => text.clone().into_bytes(),
                Some(Data::Json(value)) => serde_json::to_vec(value).map_err(|e| {
                    Error::invalid_argument(CORE, "the event's data cannot be serialised")
                        .with_source(e)
                })?,
            };
            let mut message = Message::new(payload);
            for (name, value) in event.iter() {
                let value = value.to_string();
                if name == "datacontenttype" {
                    message = message.with_attribute(CONTENT_TYPE_ATTRIBUTE, value);
                } else {
                    message = message.with_attribute(format!("{}{name}", format.prefix), value);
                }
            }
            Ok(message)
        }
    }
}

/// The binary-mode prefix a message's attributes use, if they carry an event.
fn binary_prefix(message_attributes: &crate::Attributes) -> Option<&'static str> {
    ["ce-", "ce_", ""]
        .into_iter()
        .find(|prefix| message_attributes.contains_key(&format!("{prefix}specversion")))
}

/// A [`ErrorKind::Decode`] error; `why` may quote the message, so it is made printable.
fn undecodable(why: impl AsRef<str>) -> Error {
    Error::new(ErrorKind::Decode, CORE, printable(why.as_ref()))
}

/// Decodes the event in a message, in either mode. A message that is not a CloudEvent is an
/// [`ErrorKind::Decode`] error.
pub fn decode_event(message: &Message) -> Result<Event> {
    match binary_prefix(&message.attributes) {
        Some(prefix) => decode_binary(message, prefix),
        None => serde_json::from_slice::<Event>(&message.payload)
            .map_err(|e| undecodable(format!("not a structured-mode CloudEvent: {e}"))),
    }
}

fn decode_binary(message: &Message, prefix: &str) -> Result<Event> {
    let attribute = |name: &str| message.attributes.get(&format!("{prefix}{name}"));
    if attribute("specversion").map(String::as_str) != Some("1.0") {
        return Err(undecodable(format!(
            "binary-mode CloudEvent with specversion {:?}; only 1.0 is supported",
            attribute("specversion")
        )));
    }
    let mut builder = EventBuilderV10::new();
    for (key, value) in &message.attributes {
        let Some(name) = key.strip_prefix(prefix) else {
            continue;
        };
        builder = match name {
            "specversion" => builder,
            "id" => builder.id(value.clone()),
            "source" => builder.source(value.clone()),
            "type" => builder.ty(value.clone()),
            "subject" => builder.subject(value.clone()),
            "time" => builder.time(value.clone()),
            "dataschema" => builder.extension("dataschema", value.clone()),
            // With no prefix every attribute would look like an extension; only names the
            // spec allows (lower-case letters and digits) are taken as ones.
            _ if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) =>
            {
                builder.extension(name, value.clone())
            }
            _ => builder,
        };
    }
    let content_type = message.attributes.get(CONTENT_TYPE_ATTRIBUTE).cloned();
    if !message.payload.is_empty() || content_type.is_some() {
        let is_json = content_type
            .as_deref()
            .map(|t| {
                let essence = t.split(';').next().unwrap_or("").trim();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false);
        let data = match serde_json::from_slice::<serde_json::Value>(&message.payload) {
            Ok(value) if is_json => Data::Json(value),
            _ => Data::Binary(message.payload.to_vec()),
        };
        builder = match content_type {
            Some(content_type) => builder.data(content_type, data),
            None => builder.data("application/octet-stream", data),
        };
    }
    builder
        .build()
        .map_err(|e| undecodable(format!("not a valid binary-mode CloudEvent: {e}")))
}

/// An event and its data decoded as `T`, with the delivery still to be settled.
#[non_exhaustive]
#[derive(Debug)]
pub struct TypedEvent<T> {
    /// The event (context attributes and raw data).
    pub event: Event,
    /// The event's data, decoded.
    pub data: T,
    /// The delivery it came from.
    pub delivery: Delivery,
}

/// CloudEvents' distributed-tracing extension (`traceparent`, `tracestate`) of `event`.
fn event_trace_context(event: &Event) -> Option<crate::telemetry::TraceContext> {
    let traceparent = event.extension("traceparent")?.to_string();
    let tracestate = event.extension("tracestate").map(|v| v.to_string());
    crate::telemetry::TraceContext::parse(&traceparent, tracestate.as_deref())
}

impl<T> TypedEvent<T> {
    /// The trace context the event travelled with: the message's (see
    /// [`Delivery::trace_context`]), else the event's distributed-tracing extension.
    pub fn trace_context(&self) -> Option<crate::telemetry::TraceContext> {
        self.delivery
            .trace_context()
            .or_else(|| event_trace_context(&self.event))
    }

    /// Acks the delivery.
    pub async fn ack(self) -> Result<()> {
        self.delivery.ack().await
    }

    /// Nacks the delivery.
    pub async fn nack(self) -> Result<()> {
        self.delivery.nack().await
    }
}

/// Decodes `data` (JSON, a JSON string, or bytes holding JSON) as `T`; what does not decode is
/// an [`ErrorKind::Decode`] error.
pub fn event_data<T: DeserializeOwned>(event: &Event) -> Result<T> {
    let decoded = match event.data() {
        Some(Data::Json(value)) => T::deserialize(value),
        Some(Data::String(text)) => serde_json::from_str(text),
        Some(Data::Binary(bytes)) => serde_json::from_slice(bytes),
        None => return Err(undecodable("the event has no data")),
    };
    decoded.map_err(|e| {
        undecodable(format!(
            "data is not a valid {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// Decodes a delivery as an event with data `T`. On failure the error is
/// [`ErrorKind::Decode`] and carries the delivery.
pub fn decode_typed_event<T: DeserializeOwned>(delivery: Delivery) -> Result<TypedEvent<T>> {
    let decoded = decode_event(delivery.message()).and_then(|event| {
        let data = event_data::<T>(&event)?;
        Ok((event, data))
    });
    match decoded {
        Ok((event, data)) => {
            // CloudEvents' distributed-tracing extension, when the message itself carried no
            // trace context (a structured-mode event from a plain client).
            if delivery.trace_context().is_none() {
                if let Some(context) = event_trace_context(&event) {
                    crate::telemetry::continue_trace(delivery.span(), &context);
                }
            }
            Ok(TypedEvent {
                event,
                data,
                delivery,
            })
        }
        Err(reason) => {
            crate::telemetry::decode_failed(delivery.topic());
            let message = format!(
                "message {} on {} is not the expected CloudEvent: {}",
                printable(delivery.id()),
                delivery.topic(),
                reason.message()
            );
            Err(Error::new(ErrorKind::Decode, CORE, message).with_delivery(delivery))
        }
    }
}

/// A [`Subscription`] whose messages are decoded as CloudEvents with data `T`, in either mode.
pub struct EventSubscription<T> {
    inner: Box<dyn Subscription>,
    _type: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for EventSubscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSubscription")
            .field("inner", &self.inner)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: DeserializeOwned> EventSubscription<T> {
    /// Wraps a subscription.
    pub fn new(inner: Box<dyn Subscription>) -> Self {
        EventSubscription {
            inner,
            _type: PhantomData,
        }
    }

    /// The next event. One that does not decode is an [`ErrorKind::Decode`] error carrying the
    /// delivery; the next call goes on with the next message.
    pub async fn receive(&self) -> Result<TypedEvent<T>> {
        decode_typed_event(self.inner.receive().await?)
    }

    /// Closes the underlying subscription.
    pub async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    /// The underlying byte-level subscription.
    pub fn inner(&self) -> &dyn Subscription {
        &*self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash_event() -> Event {
        EventBuilderV10::new()
            .id("5c2f1a9e-0000-4000-8000-000000000001")
            .source("autopatch.fuzzing-service")
            .ty("autopatch.crashdetail")
            .subject("boflow1")
            .time("2025-04-30T00:00:00Z")
            .extension("traceparent", "00-abc-def-01")
            .data(
                "application/json",
                serde_json::json!({
                    "executable_name": "boflow1",
                    "crash_detail_base64": "QUFBQQ==",
                    "is_input_from_file": false
                }),
            )
            .build()
            .expect("event")
    }

    #[test]
    fn structured_mode_is_the_json_event_format() {
        let message = event_message(&crash_event(), &EventFormat::structured()).unwrap();
        assert_eq!(
            message.attributes[CONTENT_TYPE_ATTRIBUTE],
            STRUCTURED_CONTENT_TYPE
        );
        let json: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "autopatch.crashdetail");
        assert_eq!(json["subject"], "boflow1");
        assert_eq!(json["time"], "2025-04-30T00:00:00Z");
        assert_eq!(json["data"]["crash_detail_base64"], "QUFBQQ==");
        assert_eq!(decode_event(&message).unwrap(), crash_event());
    }

    #[test]
    fn binary_mode_round_trips_with_every_prefix() {
        for prefix in [PUBSUB_PREFIX, MQTT_PREFIX, "ce_"] {
            let message = event_message(&crash_event(), &EventFormat::binary(prefix)).unwrap();
            assert_eq!(
                message.attributes[&format!("{prefix}id")],
                crash_event().id()
            );
            assert_eq!(
                message.attributes[CONTENT_TYPE_ATTRIBUTE],
                "application/json"
            );
            let data: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            assert_eq!(data["executable_name"], "boflow1");
            assert_eq!(decode_event(&message).unwrap(), crash_event(), "{prefix:?}");
        }
    }

    #[test]
    fn python_structured_json_decodes() {
        // What Python's `cloudevents.conversion.to_json` writes for a dict payload.
        let python = br#"{"specversion": "1.0", "id": "7f0c", "source": "autopatch.fuzzing-service", "type": "autopatch.crashdetail", "subject": "boflow1", "time": "2025-04-30T00:00:00Z", "data": {"executable_name": "boflow1", "crash_detail_base64": "QUFBQQ==", "is_input_from_file": false}}"#;
        let event = decode_event(&Message::new(python.to_vec())).unwrap();
        assert_eq!(event.ty(), "autopatch.crashdetail");
        #[derive(Deserialize)]
        struct Crash {
            executable_name: String,
            is_input_from_file: bool,
        }
        let crash: Crash = event_data(&event).unwrap();
        assert_eq!(crash.executable_name, "boflow1");
        assert!(!crash.is_input_from_file);
    }

    #[test]
    fn junk_is_a_decode_error() {
        assert!(decode_event(&Message::new("Hello")).is_err());
        let wrong_version = Message::new("{}").with_attribute("ce-specversion", "0.3");
        let err = decode_event(&wrong_version).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(err.message().contains("0.3"), "{err}");
    }
}
