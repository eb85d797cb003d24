//! The bus contract suite and helpers for running it against real brokers.
//!
//! Every backend is held to one standard: [`contract`] holds one public async function per
//! scenario, each taking a [`Target`] (a connected [`Backend`]). A backend's test file runs all
//! of them with one line, one `#[tokio::test]` per scenario, so the test output lists every
//! scenario:
//!
//! ```ignore
//! async fn target() -> bus_testkit::Target {
//!     bus_testkit::Target::new(MyBackend::connect(&MyConfig::default()).await.unwrap())
//! }
//!
//! bus_testkit::contract_suite!(target());
//! ```
//!
//! Scenarios that need a capability the backend does not declare are skipped *visibly*: the
//! skip and its reason are written to the test's stderr (not captured by the test harness).
#![deny(missing_docs)]

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{Backend, Capabilities};

pub mod contract;
pub mod emulator;
pub mod fault_proxy;
pub mod faults;
pub mod mosquitto;
pub mod process;
pub mod program;
pub mod prometheus;

/// Shows the library's logs in test output (captured per test, like `println!`), filtered by
/// `RUST_LOG` (default `warn`). Call it first in a test; later calls do nothing.
pub fn logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// What the contract suite runs against: a connected backend, and how long a scenario waits
/// for one expected delivery.
#[derive(Debug, Clone)]
pub struct Target {
    backend: Arc<dyn Backend>,
    receive_timeout: Duration,
}

impl Target {
    /// The suite against `backend`, waiting [`contract::RECEIVE_TIMEOUT`] for a delivery.
    pub fn new(backend: impl Backend + 'static) -> Target {
        Target::shared(Arc::new(backend))
    }

    /// Like [`Target::new`], for a backend that is already shared (the facade's).
    pub fn shared(backend: Arc<dyn Backend>) -> Target {
        Target {
            backend,
            receive_timeout: contract::RECEIVE_TIMEOUT,
        }
    }

    /// Waits up to `limit` for one expected delivery: for a backend whose redeliveries can
    /// take longer (say so in its docs).
    pub fn with_receive_timeout(mut self, limit: Duration) -> Target {
        self.receive_timeout = limit;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The backend's name, for reports.
    pub fn name(&self) -> &'static str {
        self.backend.name()
    }

    /// What the backend declares it supports; scenarios are chosen from this.
    pub fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// How long a scenario waits for one expected delivery.
    pub fn receive_timeout(&self) -> Duration {
        self.receive_timeout
    }
}

/// The result of a scenario that did not fail (failures panic, as test assertions do).
#[non_exhaustive]
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

/// Expands to one `#[tokio::test]` per contract scenario. `$target` is an expression that
/// evaluates to a future of [`Target`]; it is evaluated once per test.
#[macro_export]
macro_rules! contract_suite {
    ($target:expr) => {
        $crate::contract_suite!(@scenarios $target;
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
            typed_decode_error_keeps_delivery,
            batch_round_trip,
            batch_partial_failure,
            batch_keeps_order,
            batch_settles_only_what_was_asked,
            batch_receive_waits_and_closes
        );
    };
    (@scenarios $target:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                $crate::logging();
                let target: $crate::Target = $target.await;
                $crate::contract::$scenario(&target)
                    .await
                    .report(stringify!($scenario), target.name());
            }
        )*
    };
}
