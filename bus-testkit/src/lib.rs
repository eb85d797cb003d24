//! The bus contract suite and helpers for running it against real brokers.
//!
//! Every backend is held to one standard: [`contract`] holds one public async function per
//! scenario, each taking a [`BackendFactory`]. A backend's test file runs all of them with one
//! line, one `#[tokio::test]` per scenario, so the test output lists every scenario:
//!
//! ```ignore
//! use std::sync::Arc;
//! use bus_testkit::BackendFactory;
//!
//! async fn factory() -> Arc<dyn BackendFactory> {
//!     Arc::new(MyBackendFactory::start().await)
//! }
//!
//! bus_testkit::contract_suite!(factory());
//! ```
//!
//! Scenarios that need a capability the backend does not declare are skipped *visibly*: the
//! skip and its reason are written to the test's stderr (not captured by the test harness).
#![deny(missing_docs)]

use std::io::Write;

use std::time::Duration;

use async_trait::async_trait;
use bus_core::{Capabilities, Publisher, Result, Subscriber};

pub mod contract;
pub mod emulator;
pub mod fault_proxy;
pub mod faults;
pub mod mosquitto;
pub mod process;

/// How the contract suite reaches a backend. Publishers and subscribers made by one factory
/// must reach the same broker.
#[async_trait]
pub trait BackendFactory: Send + Sync {
    /// The backend's name, for reports (`memory`, `mqtt`, `gcp`).
    fn name(&self) -> &'static str;

    /// What the backend declares it supports; scenarios are chosen from this.
    fn capabilities(&self) -> Capabilities;

    /// A new publisher.
    async fn publisher(&self) -> Result<Box<dyn Publisher>>;

    /// A new subscriber.
    async fn subscriber(&self) -> Result<Box<dyn Subscriber>>;

    /// How long a scenario waits for one expected delivery. A backend whose redeliveries can
    /// take longer (say so in its docs) raises it.
    fn receive_timeout(&self) -> Duration {
        contract::RECEIVE_TIMEOUT
    }
}

/// The result of a scenario that did not fail (failures panic, as test assertions do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check of the scenario ran and held.
    Passed,
    /// The scenario did not run because the backend lacks what it checks.
    Skipped(String),
}

impl Outcome {
    /// Writes a skip to stderr directly (bypassing the test harness's capture) so that it shows
    /// in the test output.
    pub fn report(&self, scenario: &str, backend: &str) {
        if let Outcome::Skipped(reason) = self {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED contract scenario `{scenario}` on backend `{backend}`: {reason}"
            );
        }
    }
}

/// Expands to one `#[tokio::test]` per contract scenario. `$factory` is an expression that
/// evaluates to a future of `Arc<dyn BackendFactory>`; it is evaluated once per test.
#[macro_export]
macro_rules! contract_suite {
    ($factory:expr) => {
        $crate::contract_suite!(@scenarios $factory;
            round_trip,
            durable_backlog,
            fan_out,
            competing_consumers,
            dropped_consumer_hands_messages_on,
            nack_redelivers,
            nack_stays_on_its_subscription,
            ack_deadline_redelivers,
            dead_letter_after_max_attempts,
            ordering_per_key,
            concurrent_publishers,
            topic_isolation,
            resubscribe_in_batches,
            publisher_close_flushes,
            operations_after_close_fail,
            close_unblocks_receive,
            bad_input_rejected,
            typed_decode_error_keeps_delivery
        );
    };
    (@scenarios $factory:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let factory: ::std::sync::Arc<dyn $crate::BackendFactory> = $factory.await;
                $crate::contract::$scenario(&*factory)
                    .await
                    .report(stringify!($scenario), factory.name());
            }
        )*
    };
}
