//! W3C trace context (`traceparent`, `tracestate`) as it travels in message attributes.

use std::fmt;

use crate::Attributes;

/// The attribute carrying the W3C `traceparent` (MQTT 5 user property, Pub/Sub and memory
/// attribute).
pub const TRACEPARENT: &str = "traceparent";
/// The attribute carrying the W3C `tracestate`, when the trace has one.
pub const TRACESTATE: &str = "tracestate";
/// Where Google's Pub/Sub client libraries put the `traceparent`; read on receive.
pub const GOOGLE_TRACEPARENT: &str = "googclient_traceparent";
/// CloudEvents' distributed-tracing extension in binary mode with the `ce-`/`ce_` prefixes
/// (without a prefix it is [`TRACEPARENT`] itself).
const CLOUDEVENTS_TRACEPARENTS: [&str; 2] = ["ce-traceparent", "ce_traceparent"];

/// A W3C trace context taken from a message: which trace and which span a message was
/// published in. Only well-formed values are kept (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all
/// zero); anything else is treated as no context, so the consumer starts a new trace.
///
/// ```
/// use bus_core::telemetry::TraceContext;
///
/// let cx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)
///     .expect("well-formed");
/// assert_eq!(cx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(cx.span_id(), "00f067aa0ba902b7");
/// assert!(cx.sampled());
/// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None).is_none());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// A context from a span's parts as the OpenTelemetry SDK prints them (lowercase hex of
    /// the right lengths), without parsing them again.
    #[cfg(feature = "otel")]
    pub(crate) fn from_parts(traceparent: String, tracestate: Option<String>) -> TraceContext {
        TraceContext {
            traceparent,
            tracestate,
        }
    }

    /// Parses a `traceparent` (and keeps a `tracestate` of printable ASCII up to 512 bytes).
    /// Later versions than `00` are read by their first four fields, as W3C asks.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let text = traceparent.trim();
        let head = text.get(..55)?;
        let rest = &text[55..];
        let mut fields = head.split('-');
        let (version, trace_id, span_id, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let valid = hex(version, 2)
            && version != "ff"
            && (rest.is_empty() || (version != "00" && rest.starts_with('-')))
            && hex(trace_id, 32)
            && trace_id.bytes().any(|b| b != b'0')
            && hex(span_id, 16)
            && span_id.bytes().any(|b| b != b'0')
            && hex(flags, 2);
        if !valid {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| {
                !s.is_empty() && s.len() <= 512 && s.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(str::to_string);
        Some(TraceContext {
            traceparent: format!("00-{trace_id}-{span_id}-{flags}"),
            tracestate,
        })
    }

    /// The context a message carries: `traceparent`, else Google's clients'
    /// `googclient_traceparent`, else CloudEvents' binary-mode extension. A malformed value is
    /// skipped (logged at debug level).
    pub fn from_attributes(attributes: &Attributes) -> Option<TraceContext> {
        let tracestate = attributes.get(TRACESTATE).map(String::as_str);
        std::iter::once(TRACEPARENT)
            .chain(std::iter::once(GOOGLE_TRACEPARENT))
            .chain(CLOUDEVENTS_TRACEPARENTS)
            .filter_map(|key| attributes.get(key).map(|value| (key, value)))
            .find_map(|(key, value)| {
                let parsed = TraceContext::parse(value, tracestate);
                if parsed.is_none() {
                    tracing::debug!(
                        attribute = key,
                        value = %crate::printable(value),
                        "ignoring a malformed trace context; the consumer starts a new trace"
                    );
                }
                parsed
            })
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The 16 hex digits of the parent span's id.
    pub fn span_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        u8::from_str_radix(&self.traceparent[53..55], 16).unwrap_or(0)
    }

    /// Whether the producer sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags() & 1 == 1
    }

    /// The `traceparent` header value (version 00).
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` header value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// Writes this context into `attributes` as `traceparent` (and `tracestate`).
    pub fn write_to(&self, attributes: &mut Attributes) {
        attributes.insert(TRACEPARENT.to_string(), self.traceparent.clone());
        match &self.tracestate {
            Some(state) => attributes.insert(TRACESTATE.to_string(), state.clone()),
            None => attributes.remove(TRACESTATE),
        };
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent)
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn malformed_values_are_no_context() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn later_versions_are_read_by_their_first_fields() {
        let cx = TraceContext::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
            None,
        )
        .unwrap();
        assert_eq!(cx.traceparent(), GOOD);
    }

    #[test]
    fn attributes_are_read_in_order_and_bad_ones_skipped() {
        let mut attributes = Attributes::new();
        attributes.insert(TRACEPARENT.into(), "garbage".into());
        attributes.insert(GOOGLE_TRACEPARENT.into(), GOOD.into());
        attributes.insert(TRACESTATE.into(), "congo=t61rcWkgMzE".into());
        let cx = TraceContext::from_attributes(&attributes).unwrap();
        assert_eq!(cx.traceparent(), GOOD);
        assert_eq!(cx.tracestate(), Some("congo=t61rcWkgMzE"));
        let mut written = Attributes::new();
        cx.write_to(&mut written);
        assert_eq!(written[TRACEPARENT], GOOD);
        assert!(TraceContext::from_attributes(&Attributes::new()).is_none());
    }
}
