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
//!   that is down never blocks or slows publishing. `OTEL_TRACES_SAMPLER` /
//!   `OTEL_TRACES_SAMPLER_ARG` (e.g. `parentbased_traceidratio` and `0.01`) set the share of
//!   new traces bus records ([`set_trace_ratio`]); a message of a trace not sampled costs no
//!   span at all;
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
pub use setup::{init, span_layer, trace_ratio_from_env, BusSampler, Telemetry};

#[cfg(feature = "otel")]
mod setup {
    use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::trace::{
        SamplingDecision, SamplingResult, SdkTracer, SdkTracerProvider, ShouldSample,
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::registry::LookupSpan;
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

    /// The share of new traces the standard variables ask for: `OTEL_TRACES_SAMPLER` =
    /// `always_off` or `parentbased_always_off` gives 0, `traceidratio` or
    /// `parentbased_traceidratio` gives `OTEL_TRACES_SAMPLER_ARG` (1.0 when it is missing or
    /// not a number in 0..=1, as the SDK reads it), anything else 1.0.
    pub fn trace_ratio_from_env() -> f64 {
        let sampler = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        match sampler.trim() {
            "always_off" | "parentbased_always_off" => 0.0,
            "traceidratio" | "parentbased_traceidratio" => std::env::var("OTEL_TRACES_SAMPLER_ARG")
                .ok()
                .and_then(|arg| arg.trim().parse::<f64>().ok())
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .unwrap_or(1.0),
            _ => 1.0,
        }
    }

    /// The OpenTelemetry sampler [`init`] installs, to go with bus's own sampling
    /// ([`set_trace_ratio`](super::set_trace_ratio)): a span with a parent follows the
    /// parent's decision; a root span bus made (it has `messaging.system`) is recorded, because
    /// bus made it only for a trace it decided to record; any other root span (the
    /// application's own) is decided by `inner`.
    #[derive(Debug, Clone)]
    pub struct BusSampler {
        inner: Box<dyn ShouldSample>,
    }

    impl BusSampler {
        /// Decides the application's root spans with `inner`.
        pub fn new(inner: impl ShouldSample + 'static) -> BusSampler {
            BusSampler {
                inner: Box::new(inner),
            }
        }

        /// Decides the application's root spans as the standard `OTEL_TRACES_SAMPLER`
        /// variables say (the SDK's default: every one).
        pub fn from_env() -> BusSampler {
            BusSampler {
                inner: opentelemetry_sdk::trace::Config::default().sampler,
            }
        }
    }

    impl ShouldSample for BusSampler {
        fn should_sample(
            &self,
            parent_context: Option<&opentelemetry::Context>,
            trace_id: TraceId,
            name: &str,
            span_kind: &SpanKind,
            attributes: &[KeyValue],
            links: &[Link],
        ) -> SamplingResult {
            let decision = match parent_context.filter(|cx| cx.has_active_span()) {
                Some(parent) if parent.span().span_context().is_sampled() => {
                    SamplingDecision::RecordAndSample
                }
                Some(_) => SamplingDecision::Drop,
                None if attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "messaging.system") =>
                {
                    SamplingDecision::RecordAndSample
                }
                None => {
                    return self.inner.should_sample(
                        parent_context,
                        trace_id,
                        name,
                        span_kind,
                        attributes,
                        links,
                    )
                }
            };
            SamplingResult {
                decision,
                attributes: Vec::new(),
                trace_state: parent_context
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            }
        }
    }

    /// The spans layer as [`init`] installs it, for an application that builds its own
    /// `tracing` subscriber. To OpenTelemetry (`tracing-opentelemetry`) go bus's spans and the
    /// application's, not the transports' (HTTP/2, gRPC), with only what the messaging
    /// conventions ask for per span (no source locations, thread names or busy/idle timings:
    /// each costs attributes or work on every poll). The markers of unsampled traces
    /// ([`UNSAMPLED_TARGET`](super::UNSAMPLED_TARGET)) are kept out of it but still made (a
    /// layer that records nothing asks for them): a publish inside one must see it.
    pub fn span_layer<S>(tracer: SdkTracer) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let markers = tracing_subscriber::layer::Identity::new().with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(super::UNSAMPLED_TARGET, tracing::Level::INFO),
        );
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(EnvFilter::new(
                "info,bus::unsampled=off,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off,rumqttc=off,google_cloud_gax_internal=off,google_cloud_pubsub=off",
            ));
        otel.and_then(markers)
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
        super::set_trace_ratio(trace_ratio_from_env());
        let mut provider = SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_sampler(BusSampler::from_env());
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
        let _ = tracing_subscriber::registry()
            .with(log)
            .with(span_layer(tracer))
            .try_init();
        Ok(Telemetry { provider })
    }
}
