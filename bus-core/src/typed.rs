//! Typed messages: serde JSON on top of bytes, with the content type in an attribute.
//!
//! A payload that does not decode is returned as an [`ErrorKind::Decode`] error that still
//! carries the delivery ([`Error::take_delivery`]), so the caller decides whether to nack it,
//! ack it or dead-letter it; the subscription keeps going.
//!
//! ```
//! # async fn example(publisher: &dyn bus_core::Publisher, subscriber: &dyn bus_core::Subscriber)
//! # -> bus_core::Result<()> {
//! use bus_core::{ErrorKind, JsonSubscription, PublishJson, SubscriptionOptions, Topic};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct CrashDetail { executable_name: String }
//!
//! let topic = Topic::new("autopatch/crash_detail")?;
//! let crashes = JsonSubscription::<CrashDetail>::new(
//!     subscriber.subscribe(&topic, SubscriptionOptions::new("patch-evaluation")?).await?,
//! );
//! publisher.publish_json(&topic, &CrashDetail { executable_name: "boflow1".into() }).await?;
//! match crashes.receive().await {
//!     Ok(crash) => {
//!         println!("crash in {}", crash.value.executable_name);
//!         crash.ack().await?;
//!     }
//!     Err(mut e) if e.kind() == ErrorKind::Decode => {
//!         // Not a CrashDetail: settle it so it does not come back forever.
//!         if let Some(delivery) = e.take_delivery() {
//!             delivery.ack().await?;
//!         }
//!     }
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

use std::marker::PhantomData;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{
    printable, Delivery, Error, ErrorKind, Message, Publisher, Result, Subscription, Topic, CORE,
};

/// The attribute that carries a typed message's content type.
pub const CONTENT_TYPE_ATTRIBUTE: &str = "content-type";

/// The content type of JSON payloads.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Publishing serde values as JSON, for every [`Publisher`].
#[async_trait]
pub trait PublishJson: Publisher {
    /// Serialises `value` as JSON and publishes it with `content-type: application/json`.
    async fn publish_json<T: Serialize + Sync + ?Sized>(
        &self,
        topic: &Topic,
        value: &T,
    ) -> Result<String> {
        self.publish(topic, json_message(value)?).await
    }
}

impl<P: Publisher + ?Sized> PublishJson for P {}

/// A JSON message for `value`, with its content-type attribute set; add attributes or an
/// ordering key before publishing it.
pub fn json_message<T: Serialize + ?Sized>(value: &T) -> Result<Message> {
    let payload = serde_json::to_vec(value).map_err(|e| {
        Error::invalid_argument(CORE, "value cannot be serialised as JSON").with_source(e)
    })?;
    Ok(Message::new(payload).with_attribute(CONTENT_TYPE_ATTRIBUTE, JSON_CONTENT_TYPE))
}

/// A decoded message together with its delivery, which still has to be settled.
#[non_exhaustive]
#[derive(Debug)]
pub struct Typed<T> {
    /// The decoded payload.
    pub value: T,
    /// The delivery it came from (attributes, id, attempt).
    pub delivery: Delivery,
}

impl<T> Typed<T> {
    /// Acks the delivery.
    pub async fn ack(self) -> Result<()> {
        self.delivery.ack().await
    }

    /// Nacks the delivery.
    pub async fn nack(self) -> Result<()> {
        self.delivery.nack().await
    }
}

/// Decodes a delivery's JSON payload. On failure the error is [`ErrorKind::Decode`] and carries
/// the delivery.
pub fn decode_json<T: DeserializeOwned>(delivery: Delivery) -> Result<Typed<T>> {
    if let Some(content_type) = delivery.attributes().get(CONTENT_TYPE_ATTRIBUTE) {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !(essence == JSON_CONTENT_TYPE || essence.ends_with("+json")) {
            let message = format!(
                "message {} has content-type \"{}\", expected {JSON_CONTENT_TYPE}",
                printable(delivery.id()),
                printable(content_type)
            );
            crate::telemetry::decode_failed(delivery.topic());
            return Err(Error::new(ErrorKind::Decode, CORE, message).with_delivery(delivery));
        }
    }
    match serde_json::from_slice(delivery.payload()) {
        Ok(value) => Ok(Typed { value, delivery }),
        Err(e) => {
            crate::telemetry::decode_failed(delivery.topic());
            // serde's complaint quotes the payload: keep it printable and short.
            let message = format!(
                "message {} on {} is not a valid {}: {}",
                printable(delivery.id()),
                delivery.topic(),
                std::any::type_name::<T>(),
                printable(&e.to_string())
            );
            Err(Error::new(ErrorKind::Decode, CORE, message).with_delivery(delivery))
        }
    }
}

/// A [`Subscription`] whose payloads are decoded from JSON into `T`.
pub struct JsonSubscription<T> {
    inner: Box<dyn Subscription>,
    _type: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for JsonSubscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonSubscription")
            .field("inner", &self.inner)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: DeserializeOwned> JsonSubscription<T> {
    /// Wraps a subscription.
    pub fn new(inner: Box<dyn Subscription>) -> Self {
        JsonSubscription {
            inner,
            _type: PhantomData,
        }
    }

    /// The next message, decoded. A payload that does not decode is an [`ErrorKind::Decode`]
    /// error carrying the delivery; the next call goes on with the next message.
    pub async fn receive(&self) -> Result<Typed<T>> {
        decode_json(self.inner.receive().await?)
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
