//! bus's own trace sampling, on the in-memory backend with the layer and sampler that
//! `bus::telemetry::init` installs: a trace bus does not sample makes no span anywhere and
//! stays unsampled downstream; a sampled trace that arrives is followed whatever the ratio;
//! the roots bus records are kept by the OpenTelemetry sampler. (A file of its own: the ratio,
//! like the subscriber, is process-wide.)
#![cfg(feature = "otel")]

use std::time::Duration;

use bus::telemetry::{
    set_trace_ratio, span_layer, BusSampler, TraceContext, TRACEPARENT, UNSAMPLED_TARGET,
};
use bus::{Backend as _, Config, Delivery, Message, SubscriptionOptions, Topic};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn traceparent(delivery: &Delivery) -> TraceContext {
    let value = delivery
        .attributes()
        .get(TRACEPARENT)
        .expect("every message carries a traceparent");
    TraceContext::parse(value, None).expect("well-formed")
}

/// Handles `delivery` as a service would: inside its span, publishes to `next`, then acks.
async fn handle(bus: &bus::Bus, delivery: Delivery, next: &Topic) {
    let span = delivery.span().clone();
    async {
        bus.publisher
            .publish(next, Message::new("downstream"))
            .await
            .unwrap();
        delivery.ack().await.unwrap();
    }
    .instrument(span)
    .await;
}

async fn receive(subscription: &dyn bus::Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), subscription.receive())
        .await
        .expect("delivered in time")
        .expect("delivered")
}

// One test: the ratio, the subscriber and the provider are process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_traces_make_no_spans_and_sampled_ones_are_followed() {
    let exporter = InMemorySpanExporter::default();
    // The application's own root spans are never sampled here: only what bus decides shows.
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_sampler(BusSampler::new(Sampler::AlwaysOff))
        .build();
    tracing_subscriber::registry()
        .with(span_layer(provider.tracer("test")))
        .init();
    let config = Config::default();
    let bus = bus::connect(&config).await.unwrap();
    // A plain client of the same broker: no telemetry layer, nothing added to its messages.
    let plain = bus::memory::MemoryBackend::connect(&config.memory)
        .await
        .unwrap()
        .publisher();
    let (first, second) = (Topic::new("first").unwrap(), Topic::new("second").unwrap());
    let options = || SubscriptionOptions::new("worker").unwrap();
    let first_sub = bus.subscriber.subscribe(&first, options()).await.unwrap();
    let second_sub = bus.subscriber.subscribe(&second, options()).await.unwrap();

    // Ratio 0: a trace that starts at a publish is not sampled. The message says so, its
    // delivery runs in the marker span, and a publish inside that span stays unsampled.
    set_trace_ratio(0.0);
    bus.publisher
        .publish(&first, Message::new("unsampled"))
        .await
        .unwrap();
    let delivery = receive(&*first_sub).await;
    assert!(!traceparent(&delivery).sampled());
    assert_eq!(
        delivery.span().metadata().map(|m| m.target()),
        Some(UNSAMPLED_TARGET)
    );
    handle(&bus, delivery, &second).await;
    let downstream = receive(&*second_sub).await;
    assert!(!traceparent(&downstream).sampled());
    downstream.ack().await.unwrap();
    // A message without trace context (a plain client's) starts an unsampled trace too.
    plain.publish(&first, Message::new("plain")).await.unwrap();
    let delivery = receive(&*first_sub).await;
    assert_eq!(
        delivery.span().metadata().map(|m| m.target()),
        Some(UNSAMPLED_TARGET)
    );
    delivery.ack().await.unwrap();
    provider.force_flush().unwrap();
    assert_eq!(
        exporter.get_finished_spans().unwrap().len(),
        0,
        "no span for an unsampled trace"
    );

    // Still ratio 0: a sampled trace that arrives with a message is followed, through the
    // consumer's span and the publish it makes.
    let upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    plain
        .publish(
            &first,
            Message::new("sampled").with_attribute(TRACEPARENT, upstream),
        )
        .await
        .unwrap();
    let delivery = receive(&*first_sub).await;
    handle(&bus, delivery, &second).await;
    let downstream = receive(&*second_sub).await;
    let carried = traceparent(&downstream);
    assert!(carried.sampled());
    assert_eq!(carried.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    downstream.ack().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    for name in [
        "process first",
        "send second",
        "ack worker",
        "process second",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(spans
        .iter()
        .all(|s| s.span_context.trace_id().to_string() == "4bf92f3577b34da6a3ce929d0e0e4736"));
    exporter.reset();

    // Ratio 1: every trace bus starts is recorded, although the inner sampler drops every
    // root: the application's own root span is dropped, bus's `send` root is kept.
    set_trace_ratio(1.0);
    tracing::info_span!("application job").in_scope(|| {});
    bus.publisher
        .publish(&first, Message::new("recorded"))
        .await
        .unwrap();
    let delivery = receive(&*first_sub).await;
    assert!(traceparent(&delivery).sampled());
    delivery.ack().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    assert!(names.contains(&"send first"), "{names:?}");
    assert!(names.contains(&"process first"), "{names:?}");
    assert!(!names.contains(&"application job"), "{names:?}");
    bus.close().await.unwrap();
}
