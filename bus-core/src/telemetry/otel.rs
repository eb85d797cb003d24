//! Trace context between `tracing` spans and the wire, through `tracing-opentelemetry` (feature
//! `otel`). Everything here is a no-op unless the application installed its layer.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TraceContext;
use crate::Attributes;

/// Writes `span`'s context into `attributes`, when it has a valid one.
pub(crate) fn inject(span: &tracing::Span, attributes: &mut Attributes) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return;
    }
    let traceparent = format!(
        "00-{:032x}-{:016x}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags()
    );
    let state = sc.trace_state().header();
    TraceContext::from_parts(traceparent, (!state.is_empty()).then_some(state))
        .write_to(attributes);
}

fn span_context(context: &TraceContext) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(context.trace_id()).ok()?;
    let span_id = SpanId::from_hex(context.span_id()).ok()?;
    let state = context
        .tracestate()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(context.flags()),
        true,
        state,
    ))
}

/// Makes `context` the parent of `span` (before the span is first entered).
pub(crate) fn continue_trace(span: &tracing::Span, context: &TraceContext) {
    if let Some(sc) = span_context(context) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// Links `span` to `context` (a further parent, e.g. the second message of a join).
pub(crate) fn link(span: &tracing::Span, context: &TraceContext) {
    if let Some(sc) = span_context(context) {
        span.add_link(sc);
    }
}
