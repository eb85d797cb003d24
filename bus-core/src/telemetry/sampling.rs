//! Which traces bus records. A trace is decided once, where it starts — a publish made outside
//! any span, or a delivery that carries no trace context — and that decision travels with the
//! message in the sampled flag of its `traceparent`; everything downstream follows it. A message
//! of a trace that is not sampled gets no OpenTelemetry span at all: on its way it carries a
//! `traceparent` with the flag off, and its consumer's span is a marker under
//! [`UNSAMPLED_TARGET`] that exporters leave out. That makes sampling save the span
//! bookkeeping, not just the export (the SDK's own samplers decide only after a span's data
//! exists).
//!
//! `bus::telemetry::init` sets the ratio from the standard `OTEL_TRACES_SAMPLER` /
//! `OTEL_TRACES_SAMPLER_ARG`; an application that installs its own OpenTelemetry pipeline calls
//! [`set_trace_ratio`] and filters [`UNSAMPLED_TARGET`] out of its layer.

use std::sync::atomic::{AtomicU64, Ordering};

/// The `tracing` target of the span a delivery of an unsampled trace runs in: no exporter
/// should see it (it only tells a publish made inside it that the trace is not sampled).
pub const UNSAMPLED_TARGET: &str = "bus::unsampled";

/// The ratio as `f64` bits; 1.0 (every trace) until set.
static RATIO_BITS: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

/// Sets the share of new traces bus records, from 0.0 (none) to 1.0 (every one, the default).
/// Values outside are clamped; NaN counts as 1.0. Traces that arrive with a message keep the
/// decision their producer made.
pub fn set_trace_ratio(ratio: f64) {
    let ratio = if ratio.is_nan() {
        1.0
    } else {
        ratio.clamp(0.0, 1.0)
    };
    RATIO_BITS.store(ratio.to_bits(), Ordering::Relaxed);
}

/// The share of new traces bus records (see [`set_trace_ratio`]).
pub fn trace_ratio() -> f64 {
    f64::from_bits(RATIO_BITS.load(Ordering::Relaxed))
}

/// Whether a trace that starts here is recorded.
pub(crate) fn sample_root() -> bool {
    let ratio = trace_ratio();
    ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio)
}

/// A fresh context of an unsampled trace, for a message whose trace bus does not record.
#[cfg(feature = "otel")]
pub(crate) fn unsampled_context() -> super::TraceContext {
    super::TraceContext::from_parts(
        format!(
            "00-{:032x}-{:016x}-00",
            fastrand::u128(1..),
            fastrand::u64(1..)
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_clamped_and_nan_means_every_trace() {
        for (set, read) in [(0.25, 0.25), (-1.0, 0.0), (7.0, 1.0), (f64::NAN, 1.0)] {
            set_trace_ratio(set);
            assert_eq!(trace_ratio(), read);
        }
        set_trace_ratio(0.0);
        assert!((0..1000).all(|_| !sample_root()));
        set_trace_ratio(1.0);
        assert!((0..1000).all(|_| sample_root()));
    }

    #[cfg(feature = "otel")]
    #[test]
    fn an_unsampled_context_is_well_formed_and_not_sampled() {
        let context = unsampled_context();
        let parsed =
            super::super::TraceContext::parse(context.traceparent(), None).expect("well-formed");
        assert!(!parsed.sampled());
        assert_ne!(
            unsampled_context().trace_id(),
            context.trace_id(),
            "each unsampled trace gets its own id"
        );
    }
}
