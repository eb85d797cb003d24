//! [mockall] mocks of the bus traits, for unit-testing your own services without a broker.
//!
//! Tests that claim a *backend* works must run against the real broker (see `bus-testkit`);
//! these mocks are for code that merely *uses* a publisher or a subscription.
//!
//! ```
//! use bus_core::mock::{MockAcker, MockPublisher, MockSubscription};
//! use bus_core::{Delivery, Message, Publisher, Subscription, Topic};
//!
//! /// The service under test: answers every `Hello` with `HI` on topic `test`.
//! async fn answer_one(input: &dyn Subscription, output: &dyn Publisher) -> bus_core::Result<()> {
//!     let delivery = input.receive().await?;
//!     if delivery.payload().as_ref() == b"Hello" {
//!         output.publish(&Topic::new("test")?, Message::new("HI")).await?;
//!     }
//!     delivery.ack().await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut acker = MockAcker::new();
//! acker.expect_ack().times(1).returning(|| Ok(()));
//! let delivery = Delivery::new(
//!     Message::new("Hello"), "id-1", 1, Topic::new("python/mqtt").unwrap(), Box::new(acker),
//! );
//! let mut input = MockSubscription::new();
//! input.expect_receive().return_once(move || Ok(delivery));
//!
//! let mut output = MockPublisher::new();
//! output
//!     .expect_publish()
//!     .withf(|topic, message| topic.as_str() == "test" && message.payload.as_ref() == b"HI")
//!     .times(1)
//!     .returning(|_, _| Ok("published-1".to_string()));
//!
//! answer_one(&input, &output).await.unwrap();
//! # }
//! ```

pub use crate::message::{MockAcker, MockBatchAcker};
pub use crate::traits::{MockPublisher, MockSubscriber, MockSubscription};
