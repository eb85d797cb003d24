//! How a subscription behaves: its name, ack deadline, ordering and dead-lettering.

use std::time::Duration;

use crate::{Capabilities, Error, Result, SubscriptionName, Topic};

/// The default ack deadline: Google Cloud Pub/Sub's default.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(10);

/// The default number of delivery attempts before dead-lettering: Pub/Sub's default.
pub const DEFAULT_MAX_DELIVERY_ATTEMPTS: u32 = 5;

/// Where messages go that failed too often.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterPolicy {
    /// The topic that receives them, with their payload, attributes and ordering key intact.
    pub topic: Topic,
    /// How many deliveries (including the first) a message gets before it is dead-lettered.
    pub max_delivery_attempts: u32,
}

/// Options of one subscription. Only the name is required.
///
/// ```
/// use std::time::Duration;
/// use bus_core::{SubscriptionOptions, Topic};
///
/// let options = SubscriptionOptions::new("patch-evaluation")?
///     .with_ack_deadline(Duration::from_secs(30))
///     .with_ordering(true)
///     .with_dead_letter(Topic::new("autopatch/dead-letter")?, 5);
/// assert_eq!(options.name.as_str(), "patch-evaluation");
/// # Ok::<(), bus_core::Error>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Consumers with the same name share messages; different names each get every message.
    pub name: SubscriptionName,
    /// A delivery not settled within this time is redelivered.
    pub ack_deadline: Duration,
    /// Deliver messages with the same ordering key in publish order (one at a time per key).
    pub ordered: bool,
    /// Dead-letter messages after too many attempts; `None` keeps redelivering them.
    pub dead_letter: Option<DeadLetterPolicy>,
}

impl SubscriptionOptions {
    /// Options for the subscription `name`, with the defaults: a 10 s ack deadline, no ordering,
    /// no dead-letter topic. Fails if the name is invalid.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        Ok(Self::for_name(SubscriptionName::new(name)?))
    }

    /// Options for an already validated name, with the defaults.
    pub fn for_name(name: SubscriptionName) -> Self {
        SubscriptionOptions {
            name,
            ack_deadline: DEFAULT_ACK_DEADLINE,
            ordered: false,
            dead_letter: None,
        }
    }

    /// Sets the ack deadline.
    pub fn with_ack_deadline(mut self, ack_deadline: Duration) -> Self {
        self.ack_deadline = ack_deadline;
        self
    }

    /// Turns per-key ordering on or off.
    pub fn with_ordering(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Sends messages to `topic` after `max_delivery_attempts` deliveries.
    pub fn with_dead_letter(mut self, topic: Topic, max_delivery_attempts: u32) -> Self {
        self.dead_letter = Some(DeadLetterPolicy {
            topic,
            max_delivery_attempts,
        });
        self
    }

    /// Checks the options against a backend's capabilities, naming the option and the allowed
    /// range when one is out of it.
    pub fn check(&self, backend: &'static str, caps: &Capabilities) -> Result<()> {
        let deadline = self.ack_deadline;
        if deadline < caps.min_ack_deadline || deadline > caps.max_ack_deadline {
            return Err(Error::invalid_argument(
                backend,
                format!(
                    "ack_deadline {deadline:?} is outside the {backend} backend's range {:?}..={:?}",
                    caps.min_ack_deadline, caps.max_ack_deadline
                ),
            ));
        }
        if self.ordered && !caps.ordering {
            return Err(Error::new(
                crate::ErrorKind::Unsupported,
                backend,
                "ordered delivery is not supported by this backend",
            ));
        }
        if let Some(policy) = &self.dead_letter {
            if !caps.dead_letter {
                return Err(Error::new(
                    crate::ErrorKind::Unsupported,
                    backend,
                    "dead-letter topics are not supported by this backend",
                ));
            }
            if policy.max_delivery_attempts < caps.min_delivery_attempts {
                return Err(Error::invalid_argument(
                    backend,
                    format!(
                        "max_delivery_attempts {} is below the {backend} backend's minimum of {}",
                        policy.max_delivery_attempts, caps.min_delivery_attempts
                    ),
                ));
            }
        }
        Ok(())
    }
}
