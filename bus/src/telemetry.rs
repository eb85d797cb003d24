//! Telemetry: what every backend records ([`bus_core::telemetry`], re-exported here), the
//! `[telemetry]` config section, and with the `otel` feature [`init`], which sets a service up
//! the way operators expect:
//!
//! - logs on stderr, text or JSON lines (`telemetry.log = "json"`, `BUS_TELEMETRY__LOG=json`
//!   or `BUS_LOG=json`), filtered by `RUST_LOG` (default `warn,rumqttc=error`);
//! - OpenTelemetry spans, exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and configured by the standard `OTEL_*`
//!   variables; without an endpoint spans are still made, so trace context still travels from
//!   message to message, but nothing is exported. Export runs on its own thread: an endpoint
//!   that is down never blocks or slows publishing;
//! - metrics in Prometheus text format on `telemetry.prometheus` (e.g. `"127.0.0.1:9464"`,
//!   path `/metrics`).
//!
//! Library users who set up `tracing` and `metrics` themselves need none of this: the spans
//! and metrics go to whatever subscriber and recorder they installed.
//!
//! ```no_run
//! # #[cfg(feature = "otel")]
//! # async fn example() -> bus::Result<()> {
//! let config = bus::Config::load_as("patch-evaluation")?;
//! let _telemetry = bus::telemetry::init("patch-evaluation", &config.telemetry)?;
//! let bus = bus::connect(&config).await?;
//! # Ok(())
//! # }
//! ```

pub use bus_core::telemetry::*;

use serde::{Deserialize, Serialize};

/// `[telemetry]` in bus.toml, or `BUS_TELEMETRY__*` variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log line format on stderr: `text` (default) or `json`.
    pub log: LogFormat,
    /// Serve metrics in Prometheus text format on this address (`/metrics`); unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<std::net::SocketAddr>,
}

/// How [`init`] writes log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(feature = "otel")]
pub use setup::{init, Telemetry};

#[cfg(feature = "otel")]
mod setup {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    use super::{LogFormat, TelemetryConfig};
    use crate::{Error, Result, CORE};

    /// What [`init`] installed; dropping it flushes the spans not exported yet.
    #[derive(Debug)]
    pub struct Telemetry {
        provider: SdkTracerProvider,
    }

    impl Drop for Telemetry {
        fn drop(&mut self) {
            let _ = self
                .provider
                .shutdown_with_timeout(std::time::Duration::from_secs(2));
        }
    }

    fn otlp_endpoint_set() -> bool {
        [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()))
    }

    /// Installs logging, OpenTelemetry tracing and (if configured) the Prometheus endpoint for
    /// the service `service` (its `service.name` unless `OTEL_SERVICE_NAME` says otherwise).
    /// Call it once, inside the Tokio runtime and before [`connect`](crate::connect).
    pub fn init(service: &str, config: &TelemetryConfig) -> Result<Telemetry> {
        if let Some(address) = config.prometheus {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(address)
                .install()
                .map_err(|e| {
                    Error::config(
                        CORE,
                        format!(
                            "telemetry.prometheus = \"{address}\" (BUS_TELEMETRY__PROMETHEUS): cannot serve metrics there: {e}; choose a free address, or leave it unset"
                        ),
                    )
                })?;
        }

        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(service.to_string());
        }
        let mut provider = SdkTracerProvider::builder().with_resource(resource.build());
        if otlp_endpoint_set() {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| {
                    Error::config(
                        CORE,
                        format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot export spans: {e}"),
                    )
                })?;
            provider = provider.with_batch_exporter(exporter);
        }
        let provider = provider.build();
        let tracer = provider.tracer("bus");

        let json = config.log == LogFormat::Json
            || std::env::var("BUS_LOG").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
        // rumqttc's own warnings repeat bus-mqtt's (connection lost, reconnecting).
        let log_filter = || {
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,rumqttc=error"))
        };
        let log = if json {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_filter(log_filter())
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(log_filter())
                .boxed()
        };
        // Spans of bus and of the application; the transports' own (HTTP/2, gRPC) are noise.
        // Per span, only what the messaging conventions ask for: no source locations, thread
        // names or busy/idle timings (each costs attributes or work on every poll).
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(
            EnvFilter::new(
                "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off,rumqttc=off,google_cloud_gax_internal=off,google_cloud_pubsub=off",
            ),
        );
        let _ = tracing_subscriber::registry()
            .with(log)
            .with(spans)
            .try_init();
        Ok(Telemetry { provider })
    }
}
