//! What the telemetry layer records, on the in-memory backend: spans (with the redelivery
//! event), metrics for every outcome (rendered by the Prometheus recorder), and trace context
//! that a malformed `traceparent` cannot break.
#![cfg(feature = "otel")]

use std::time::Duration;

use bus::{Config, Message, SubscriptionOptions, Topic};
use bus_testkit::prometheus::sample;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

// One test: the subscriber and the recorder are process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_redeliveries_dead_letters_and_decode_errors_are_recorded() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();

    let bus = bus::connect(&Config::default()).await.unwrap();
    let topic = Topic::new("jobs").unwrap();
    let dead = Topic::new("jobs-dead").unwrap();
    let options = SubscriptionOptions::new("worker")
        .unwrap()
        .with_dead_letter(dead.clone(), 2);
    let worker = bus.subscriber.subscribe(&topic, options).await.unwrap();
    let graveyard = bus
        .subscriber
        .subscribe(&dead, SubscriptionOptions::new("graveyard").unwrap())
        .await
        .unwrap();

    // A malformed traceparent: delivered as any message, in a new trace.
    bus.publisher
        .publish(
            &topic,
            Message::new("{\"n\": 1}").with_attribute("traceparent", "00-garbage"),
        )
        .await
        .unwrap();
    let first = worker.receive().await.unwrap();
    assert_eq!(first.attempt(), 1);
    first.nack().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), worker.receive())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.attempt(), 2);
    second.nack().await.unwrap();
    let buried = tokio::time::timeout(Duration::from_secs(10), graveyard.receive())
        .await
        .unwrap()
        .unwrap();
    buried.ack().await.unwrap();

    // A payload that is not the expected JSON.
    bus.publisher
        .publish(&topic, Message::new("not json"))
        .await
        .unwrap();
    let typed = bus::JsonSubscription::<serde_json::Value>::new(worker);
    let mut error = typed.receive().await.expect_err("not JSON");
    assert_eq!(error.kind(), bus::ErrorKind::Decode);
    error.take_delivery().unwrap().ack().await.unwrap();

    // A batch: one `send` span carries all three messages, each processed in its own span.
    let batches = Topic::new("batches").unwrap();
    let batcher = bus
        .subscriber
        .subscribe(&batches, SubscriptionOptions::new("batcher").unwrap())
        .await
        .unwrap();
    let batch = (0..3).map(|n| Message::new(format!("{n}"))).collect();
    for result in bus.publisher.publish_batch(&batches, batch).await {
        result.unwrap();
    }
    let received = batcher
        .receive_batch(10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(received.len(), 3);
    for result in bus::ack_all(received).await {
        result.unwrap();
    }

    let text = metrics.render();
    for (metric, labels, value) in [
        ("bus_messages_published_total", r#"outcome="ok""#, 3.0),
        ("bus_messages_acked_total", r#"subscription="batcher""#, 3.0),
        ("bus_messages_in_flight", r#"subscription="batcher""#, 0.0),
    ] {
        assert_eq!(
            sample(&text, metric, &[r#"topic="batches""#, labels]),
            Some(value),
            "{metric}:\n{text}"
        );
    }
    let worker_labels = [
        r#"subscription="worker""#,
        r#"topic="jobs""#,
        r#"system="memory""#,
    ];
    for (metric, value) in [
        ("bus_messages_delivered_total", 3.0),
        ("bus_messages_redelivered_total", 1.0),
        ("bus_messages_nacked_total", 2.0),
        ("bus_messages_acked_total", 1.0),
        ("bus_messages_in_flight", 0.0),
        ("bus_messages_dead_lettered_total", 1.0),
    ] {
        assert_eq!(
            sample(&text, metric, &worker_labels),
            Some(value),
            "{metric}:\n{text}"
        );
    }
    assert_eq!(
        sample(&text, "bus_decode_errors_total", &[r#"topic="jobs""#]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "bus_messages_published_total",
            &[r#"topic="jobs""#, r#"outcome="ok""#]
        ),
        Some(2.0),
        "{text}"
    );

    let spans = exporter.get_finished_spans().unwrap();
    let process: Vec<_> = spans.iter().filter(|s| s.name == "process jobs").collect();
    assert_eq!(
        process.len(),
        3,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    // The malformed traceparent was not continued: a root span in a trace of its own.
    assert!(
        process.iter().all(
            |s| s.parent_span_id == opentelemetry::trace::SpanId::INVALID
                || spans
                    .iter()
                    .any(|p| p.span_context.span_id() == s.parent_span_id)
        ),
        "no remote parent from a malformed traceparent"
    );
    assert!(
        process
            .iter()
            .any(|s| s.events.iter().any(|e| e.name == "redelivery")),
        "the second delivery has a redelivery event"
    );
    let nacks = spans.iter().filter(|s| s.name == "nack worker").count();
    assert_eq!(nacks, 2);
    let sends: Vec<_> = spans.iter().filter(|s| s.name == "send batches").collect();
    assert_eq!(sends.len(), 1, "one span for the batch");
    assert!(
        sends[0].attributes.iter().any(
            |kv| kv.key.as_str() == "messaging.batch.message_count" && kv.value.as_str() == "3"
        ),
        "{:?}",
        sends[0].attributes
    );
    let processed: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "process batches")
        .collect();
    assert_eq!(processed.len(), 3);
    for span in processed {
        assert_eq!(
            span.parent_span_id,
            sends[0].span_context.span_id(),
            "each message continues the batch's trace"
        );
    }
    bus.close().await.unwrap();
}
