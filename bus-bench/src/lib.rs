//! **bus bench**: bus against the raw clients and the Python stack, side by side in one run,
//! on brokers it starts itself (as the tests do); the chaos soak; memory and loss scenarios.
//! The `bus` command line runs it (`bus bench ...`); [`cli`] has the subcommands.
//!
//! ```text
//! bus bench compare --backend mqtt|gcp|memory [--messages N] [--payload BYTES] [--json]
//! bus bench run --backend mqtt --client bus --messages 100000
//! bus bench backpressure          # memory: stalled consumer, 1,000,000 messages
//! bus bench memory-budget         # memory: RSS against memory.max_queued_bytes
//! bus bench loss-check            # Mosquitto: 100,000-message burst
//! bus bench backlog --backend mqtt|gcp  # broker and client RSS with 1,000,000 messages waiting
//! bus bench chart --input results.jsonl --output bench/throughput.svg
//! bus bench soak --backend mqtt|gcp|memory --minutes 10   # RELIABILITY.md
//! bus bench bridge                # bus bridge mqtt->gcp against each side alone
//! bus bench telemetry             # MQTT: the cost of spans, metrics and OTLP export
//! ```
//!
//! Every message carries its send time and a sequence number: the consumer side reports
//! end-to-end latency percentiles, and every message is accounted for (lost, duplicates).

mod backlog;
pub mod cli;
mod clients;
mod measure;
mod python;
mod report;
mod scenarios;
mod soak;
mod span_floor;
mod telemetry_cost;

pub use cli::{run, BenchCommand};
pub use telemetry_cost::TelemetryMode;
