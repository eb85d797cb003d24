//! What a backend can do, declared rather than hidden.

use std::time::Duration;

use crate::{Error, ErrorKind, Message, Result};

/// What a backend supports and the limits it enforces. The contract suite reads it to choose
/// which scenarios to run; the README shows it as a table.
///
/// Limits are checked by [`Capabilities::check_message`] before anything is sent, so an
/// oversize message is a clear error, never a silent truncation.
///
/// Backends opt in: they start from [`Capabilities::none`] and switch on what they support, so a
/// capability added later is off for every backend until it says otherwise.
///
/// ```
/// use bus_core::Capabilities;
///
/// let mut caps = Capabilities::none();
/// caps.fan_out = true;
/// caps.durable = true;
/// assert!(!caps.nack, "what a backend does not switch on stays off");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Every subscription name receives every message.
    pub fan_out: bool,
    /// Consumers sharing a subscription name split its messages.
    pub competing_consumers: bool,
    /// Messages published while no consumer is attached are kept for the subscription.
    pub durable: bool,
    /// A consumer that attaches to a subscription after another one went away (closed,
    /// dropped, crashed or cut off) receives, within the ack deadline, what the departed one
    /// held and what was published since. A backend without it loses nothing, but such
    /// messages can wait for a time it cannot bound.
    pub prompt_handover: bool,
    /// [`Delivery::nack`](crate::Delivery::nack) causes a redelivery.
    pub nack: bool,
    /// A delivery that is not settled within the ack deadline is redelivered.
    pub ack_deadline: bool,
    /// The shortest ack deadline the backend accepts.
    pub min_ack_deadline: Duration,
    /// The longest ack deadline the backend accepts.
    pub max_ack_deadline: Duration,
    /// Messages with the same ordering key arrive in publish order (on subscriptions that ask
    /// for it with [`SubscriptionOptions::ordered`](crate::SubscriptionOptions::ordered)).
    pub ordering: bool,
    /// Messages that failed `max_delivery_attempts` times go to a dead-letter topic.
    pub dead_letter: bool,
    /// The smallest `max_delivery_attempts` the backend accepts (Pub/Sub: 5).
    pub min_delivery_attempts: u32,
    /// Largest message, payload plus attributes and ordering key, in bytes.
    pub max_message_bytes: usize,
    /// Most attributes on one message.
    pub max_attributes: usize,
    /// Longest attribute key, in bytes.
    pub max_attribute_key_bytes: usize,
    /// Longest attribute value, in bytes.
    pub max_attribute_value_bytes: usize,
    /// Longest ordering key, in bytes.
    pub max_ordering_key_bytes: usize,
}

impl Capabilities {
    /// Checks a message against the limits, returning [`ErrorKind::PayloadTooLarge`] or
    /// [`ErrorKind::InvalidArgument`] with the limit named.
    ///
    /// ```
    /// use bus_core::{Capabilities, ErrorKind, Message};
    ///
    /// let mut caps = Capabilities::none();
    /// caps.max_message_bytes = 4;
    /// let err = caps.check_message("memory", &Message::new("too long")).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    /// ```
    pub fn check_message(&self, backend: &'static str, message: &Message) -> Result<()> {
        let size = message.encoded_len();
        if size > self.max_message_bytes {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                backend,
                format!(
                    "message is {size} bytes (payload {} + attributes and ordering key); the {backend} backend accepts at most {} bytes",
                    message.payload.len(),
                    self.max_message_bytes
                ),
            ));
        }
        let count = message.attributes.len();
        if count > self.max_attributes {
            return Err(Error::invalid_argument(
                backend,
                format!(
                    "message has {count} attributes; the {backend} backend accepts at most {}",
                    self.max_attributes
                ),
            ));
        }
        for (key, value) in &message.attributes {
            if key.is_empty() {
                return Err(Error::invalid_argument(
                    backend,
                    "attribute keys must not be empty",
                ));
            }
            if key.len() > self.max_attribute_key_bytes {
                return Err(Error::invalid_argument(
                    backend,
                    format!(
                        "attribute key {key:?} is {} bytes; at most {} are allowed",
                        key.len(),
                        self.max_attribute_key_bytes
                    ),
                ));
            }
            if value.len() > self.max_attribute_value_bytes {
                return Err(Error::invalid_argument(
                    backend,
                    format!(
                        "value of attribute {key:?} is {} bytes; at most {} are allowed",
                        value.len(),
                        self.max_attribute_value_bytes
                    ),
                ));
            }
        }
        if let Some(key) = &message.ordering_key {
            if key.is_empty() {
                return Err(Error::invalid_argument(
                    backend,
                    "the ordering key must not be empty; use None for no key",
                ));
            }
            if key.len() > self.max_ordering_key_bytes {
                return Err(Error::invalid_argument(
                    backend,
                    format!(
                        "ordering key is {} bytes; at most {} are allowed",
                        key.len(),
                        self.max_ordering_key_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// No optional behaviour at all, any ack deadline accepted (none is enforced), and the
    /// portable limits of Google Cloud Pub/Sub (10 MiB, 100 attributes, 256-byte keys,
    /// 1024-byte values and ordering keys), which a backend tightens or loosens to its own.
    pub fn none() -> Self {
        Capabilities {
            fan_out: false,
            competing_consumers: false,
            durable: false,
            prompt_handover: false,
            nack: false,
            ack_deadline: false,
            min_ack_deadline: Duration::ZERO,
            max_ack_deadline: Duration::MAX,
            ordering: false,
            dead_letter: false,
            min_delivery_attempts: 1,
            max_message_bytes: 10 * 1024 * 1024,
            max_attributes: 100,
            max_attribute_key_bytes: 256,
            max_attribute_value_bytes: 1024,
            max_ordering_key_bytes: 1024,
        }
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::none()
    }
}
