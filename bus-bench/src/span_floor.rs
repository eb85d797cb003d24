//! `bus bench spans`: the CPU that recording one message's spans costs, with no broker in the
//! way. Each message makes the three spans bus makes for it (`send` with its trace context
//! written out, `process` continuing that context, `settle` inside it), two ways:
//!
//! - `tracing`: `tracing` spans recorded by `tracing-opentelemetry` into the OpenTelemetry SDK,
//!   through the layer `bus::telemetry::init` installs — how bus records today;
//! - `sdk`: the same spans made straight through the OpenTelemetry SDK, with no `tracing` in
//!   between — the floor any recording path pays, however it is written.
//!
//! each with no exporter (spans recorded and dropped, as `bench telemetry`'s `on`) and with a
//! batch exporter sending OTLP/HTTP to a local sink (as its `otlp`). The figure is the
//! process's CPU time per message: every thread's, the exporter's included, the sink's not.

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::measure::median_and_spread;
use crate::telemetry_cost::{cpu_seconds_without_sink, Sink};

const TOPIC: &str = "bench/spans";
const SUBSCRIPTION: &str = "bench-spans";
const BODY_SIZE: i64 = 1024;

/// How the spans are made and where they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    TracingRecorded,
    SdkRecorded,
    TracingExported,
    SdkExported,
}

const MODES: [Mode; 4] = [
    Mode::TracingRecorded,
    Mode::SdkRecorded,
    Mode::TracingExported,
    Mode::SdkExported,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::TracingRecorded => "tracing, recorded",
            Mode::SdkRecorded => "sdk, recorded",
            Mode::TracingExported => "tracing, OTLP",
            Mode::SdkExported => "sdk, OTLP",
        }
    }

    fn exported(self) -> bool {
        matches!(self, Mode::TracingExported | Mode::SdkExported)
    }
}

fn provider(mode: Mode, sink: &Sink) -> Result<SdkTracerProvider, String> {
    let mut builder = SdkTracerProvider::builder();
    if mode.exported() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("http://{}/v1/traces", sink.address))
            .build()
            .map_err(|e| e.to_string())?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// The `traceparent` of `context`, as bus writes it into a message.
fn traceparent(context: &SpanContext) -> String {
    format!(
        "00-{:032x}-{:016x}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags()
    )
}

/// The remote context a consumer reads back from `traceparent`.
fn remote(traceparent: &str) -> Context {
    let mut parts = traceparent.split('-').skip(1);
    let trace_id = parts.next().and_then(|t| TraceId::from_hex(t).ok());
    let span_id = parts.next().and_then(|s| SpanId::from_hex(s).ok());
    match (trace_id, span_id) {
        (Some(trace_id), Some(span_id)) => {
            Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ))
        }
        _ => Context::new(),
    }
}

/// One message's spans through the OpenTelemetry SDK alone.
fn sdk_message(tracer: &opentelemetry_sdk::trace::SdkTracer, seq: usize) {
    let mut send = tracer
        .span_builder(format!("send {TOPIC}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "mqtt"),
            KeyValue::new("messaging.destination.name", TOPIC),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.operation.name", "publish"),
            KeyValue::new("messaging.message.body.size", BODY_SIZE),
        ])
        .start(tracer);
    let carried = traceparent(send.span_context());
    let id = format!("{seq:032x}");
    send.set_attribute(KeyValue::new("messaging.message.id", id.clone()));
    send.end();

    let parent = remote(&carried);
    let process = tracer
        .span_builder(format!("process {TOPIC}"))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "mqtt"),
            KeyValue::new("messaging.destination.name", TOPIC),
            KeyValue::new("messaging.destination.subscription.name", SUBSCRIPTION),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.message.id", id),
            KeyValue::new("messaging.message.body.size", BODY_SIZE),
            KeyValue::new("messaging.delivery.attempt", 1_i64),
        ])
        .start_with_context(tracer, &parent);
    let processing = parent.with_span(process);
    let mut settle = tracer
        .span_builder(format!("ack {SUBSCRIPTION}"))
        .with_attributes([
            KeyValue::new("messaging.system", "mqtt"),
            KeyValue::new("messaging.destination.subscription.name", SUBSCRIPTION),
            KeyValue::new("messaging.operation.type", "settle"),
            KeyValue::new("messaging.operation.name", "ack"),
        ])
        .start_with_context(tracer, &processing);
    settle.end();
    processing.span().end();
}

/// One message's spans as bus makes them: `tracing` spans with the fields of
/// `bus_core::telemetry`'s layer, recorded by `tracing-opentelemetry`.
fn tracing_message(seq: usize, send_name: &str, process_name: &str, ack_name: &str) {
    let send = tracing::info_span!(
        target: "bus",
        "send",
        otel.name = send_name,
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "mqtt",
        messaging.destination.name = TOPIC,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.message.body.size = BODY_SIZE,
        messaging.batch.message_count = tracing::field::Empty,
        messaging.message.id = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    let carried = traceparent(send.context().span().span_context());
    let id = format!("{seq:032x}");
    send.in_scope(|| {});
    send.record("messaging.message.id", id.as_str());
    drop(send);

    let process = tracing::info_span!(
        target: "bus",
        parent: None,
        "process",
        otel.name = process_name,
        otel.kind = "consumer",
        messaging.system = "mqtt",
        messaging.destination.name = TOPIC,
        messaging.destination.subscription.name = SUBSCRIPTION,
        messaging.operation.type = "process",
        messaging.message.id = id.as_str(),
        messaging.message.body.size = BODY_SIZE,
        messaging.delivery.attempt = 1,
    );
    let _ = process.set_parent(remote(&carried));
    let settle = tracing::info_span!(
        target: "bus",
        parent: &process,
        "settle",
        otel.name = ack_name,
        otel.status_code = tracing::field::Empty,
        messaging.system = "mqtt",
        messaging.destination.subscription.name = SUBSCRIPTION,
        messaging.operation.type = "settle",
        messaging.operation.name = "ack",
        error.type = tracing::field::Empty,
    );
    settle.in_scope(|| {});
}

/// One run: `messages` messages in `mode`, then a flush; the process's CPU seconds per message.
fn run(mode: Mode, messages: usize, sink: &Sink) -> Result<f64, String> {
    let provider = provider(mode, sink)?;
    let tracer = provider.tracer("bus");
    let before = cpu_seconds_without_sink()?;
    match mode {
        Mode::SdkRecorded | Mode::SdkExported => {
            for seq in 0..messages {
                sdk_message(&tracer, seq);
            }
        }
        Mode::TracingRecorded | Mode::TracingExported => {
            let subscriber =
                tracing_subscriber::registry().with(bus::telemetry::span_layer(tracer.clone()));
            let (send, process, ack) = (
                format!("send {TOPIC}"),
                format!("process {TOPIC}"),
                format!("ack {SUBSCRIPTION}"),
            );
            tracing::subscriber::with_default(subscriber, || {
                for seq in 0..messages {
                    tracing_message(seq, &send, &process, &ack);
                }
            });
        }
    }
    provider.force_flush().map_err(|e| e.to_string())?;
    let after = cpu_seconds_without_sink()?;
    provider.shutdown().map_err(|e| e.to_string())?;
    Ok((after - before) / messages as f64)
}

/// `rounds` rounds of the four modes in a rotating order; prints each run, then the medians
/// in microseconds of CPU per message.
pub fn rounds(rounds: usize, messages: usize) -> Result<(), String> {
    let sink = Sink::start()?;
    // Warm-up: the allocator's arenas, the sink's connection.
    for mode in MODES {
        run(mode, (messages / 10).max(1), &sink)?;
    }
    let mut per_mode: [Vec<f64>; MODES.len()] = Default::default();
    for round in 0..rounds.max(1) {
        for step in 0..MODES.len() {
            let which = (round + step) % MODES.len();
            let bytes_before = sink.bytes();
            let micros = run(MODES[which], messages, &sink)? * 1e6;
            let exported = (sink.bytes() - bytes_before) as f64 / messages as f64;
            println!(
                "round {}: {:<18} {micros:>6.2} us of CPU per message, {exported:>4.0} bytes of OTLP per message",
                round + 1,
                MODES[which].name()
            );
            per_mode[which].push(micros);
        }
    }
    println!();
    for (mode, values) in MODES.iter().zip(per_mode) {
        let (median, low, high) = median_and_spread(values);
        println!(
            "{:<18} median {median:.2} us of CPU per message (min {low:.2}, max {high:.2})",
            mode.name()
        );
    }
    println!(
        "{} rounds of {messages} messages, three spans each (send, process, settle); CPU of the process's threads, the exporter's included, the sink's left out; the OTLP sink took {} requests, {} bytes",
        rounds.max(1),
        sink.requests(),
        sink.bytes()
    );
    Ok(())
}
