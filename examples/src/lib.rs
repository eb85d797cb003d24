//! Example programs for **bus**, configured only through `bus.toml` and `BUS_*` variables, so
//! each runs unchanged on the in-memory broker, Mosquitto or Pub/Sub:
//!
//! - `publish` / `consume`: the seed's two scripts, ported.
//! - the autopatch pipeline: `fuzzing-service`, `cpg-generator`, `llm-dispatch` and
//!   `patch-evaluation`, one process each, exchanging CloudEvents (see [`schema`]);
//! - `autopatch-demo`: all four in one process.
#![deny(missing_docs)]

pub mod analysis;
pub mod pipeline;
pub mod runtime;
pub mod schema;
pub mod store;
pub mod waterfall;

/// The seed's demo topic.
pub const DEMO_TOPIC: &str = "python/mqtt";

/// Where `consume` answers `Hello`.
pub const REPLY_TOPIC: &str = "test";
