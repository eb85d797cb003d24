//! One trace per program, from the fuzzer's crash report to patch-evaluation's verdict, on every
//! backend: the four services run in this process (with an in-memory span exporter) against
//! the in-memory broker, a real Mosquitto and the Pub/Sub emulator. What travels on the wire is
//! read back by observer subscriptions, and the exported spans are checked against it.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use bus::{Delivery, SubscriptionOptions};
use bus_examples::analysis::{load_sources, OfflineStubLlm};
use bus_examples::pipeline::{
    cpg_generator, fuzzing_service, JoinSettings, LlmDispatch, PatchEvaluator,
};
use bus_examples::schema::*;
use bus_examples::store::JoinStore;
use bus_examples::waterfall::{svg, Bar};
use bus_testkit::mosquitto::Mosquitto;
use common::BrokerEnv;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The process-wide span exporter (tests filter its spans by trace id).
fn exporter() -> &'static InMemorySpanExporter {
    static INSTALLED: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    &INSTALLED
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
                .init();
            (exporter, provider)
        })
        .0
}

fn spans_of(trace_id: &str) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id)
        .collect()
}

/// Reads every message on `topic` (through its own subscription `observer`) until one per
/// program arrived: program → the trace id the message carried.
async fn traces_on(observer: &dyn bus::Subscription, programs: usize) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    while seen.len() < programs {
        let delivery: Delivery = tokio::time::timeout(Duration::from_secs(60), observer.receive())
            .await
            .unwrap_or_else(|_| panic!("missing messages; have {seen:?}"))
            .unwrap();
        let event = bus::cloudevents::decode_event(delivery.message()).unwrap();
        let data: serde_json::Value = bus::cloudevents::event_data(&event).unwrap();
        let name = data["executable_name"].as_str().unwrap().to_string();
        let context = delivery
            .trace_context()
            .unwrap_or_else(|| panic!("{name}: no traceparent on the wire"));
        seen.insert(
            program_name(&name).to_string(),
            context.trace_id().to_string(),
        );
        delivery.ack().await.unwrap();
    }
    seen
}

async fn one_trace_per_program(env: BrokerEnv) {
    exporter();
    let bus = bus::connect(&env.config()).await.expect("test connects");
    let (publisher, subscriber) = (&*bus.publisher, &*bus.subscriber);
    let mut observers = Vec::new();
    for name in [
        CRASH_DETAIL_TOPIC,
        SCAN_RESULT_TOPIC,
        PATCH_RESPONSE_TOPIC,
        PATCH_EVALUATION_TOPIC,
    ] {
        let options = SubscriptionOptions::new("trace-observer").unwrap();
        observers.push(subscriber.subscribe(&topic(name), options).await.unwrap());
    }
    let sources = load_sources(None).unwrap();
    let format = env.config().event_format();
    let store = JoinStore::open(std::path::Path::new(":memory:")).unwrap();
    let evaluator = PatchEvaluator::subscribe(subscriber).await.unwrap();
    let dispatch = LlmDispatch::subscribe(subscriber).await.unwrap();
    let stop = CancellationToken::new();
    let settings = JoinSettings {
        expect: Some(sources.len()),
        orphan_timeout: Duration::from_secs(600),
    };
    let evaluate = async {
        let evaluated = evaluator
            .run(
                publisher,
                &format,
                &store,
                settings,
                CancellationToken::new(),
            )
            .await;
        stop.cancel();
        evaluated
    };
    let produce = async {
        fuzzing_service(publisher, &format, &sources).await?;
        cpg_generator(publisher, &format, &sources).await
    };
    let (evaluated, answered, produced) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(
            evaluate,
            dispatch.run(publisher, &format, &sources, &OfflineStubLlm, stop.clone()),
            produce
        )
    })
    .await
    .expect("the pipeline runs");
    evaluated.unwrap();
    answered.unwrap();
    produced.unwrap();

    let crashes = traces_on(&*observers[0], sources.len()).await;
    let scans = traces_on(&*observers[1], sources.len()).await;
    let patches = traces_on(&*observers[2], sources.len()).await;
    let evaluations = traces_on(&*observers[3], sources.len()).await;
    for (program, crash_trace) in &crashes {
        let scan_trace = &scans[program];
        assert_ne!(
            crash_trace, scan_trace,
            "{program}: two reports, two traces"
        );
        assert_eq!(
            &patches[program], scan_trace,
            "{program}: llm-dispatch continues the scan's trace"
        );
        assert_eq!(
            &evaluations[program], crash_trace,
            "{program}: the evaluation continues the crash's trace"
        );

        let spans = spans_of(crash_trace);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        for expected in [
            format!("send {CRASH_DETAIL_TOPIC}"),
            format!("process {CRASH_DETAIL_TOPIC}"),
            "evaluate".to_string(),
            format!("send {PATCH_EVALUATION_TOPIC}"),
        ] {
            assert!(
                names.contains(&expected.as_str()),
                "{program} ({}): no {expected:?} in {names:?}",
                env.name
            );
        }
        let send = spans
            .iter()
            .find(|s| s.name == format!("send {CRASH_DETAIL_TOPIC}"))
            .unwrap();
        assert_eq!(send.span_kind, SpanKind::Producer);
        let process = spans
            .iter()
            .find(|s| s.name == format!("process {CRASH_DETAIL_TOPIC}"))
            .unwrap();
        assert_eq!(process.span_kind, SpanKind::Consumer);
        assert_eq!(
            process.parent_span_id,
            send.span_context.span_id(),
            "process is the send's child"
        );
        let system = match env.name {
            "gcp" => "gcp_pubsub",
            other => other,
        };
        assert_eq!(
            attribute(process, "messaging.system").as_deref(),
            Some(system)
        );
        assert_eq!(
            attribute(process, "messaging.destination.name").as_deref(),
            Some(CRASH_DETAIL_TOPIC)
        );
        assert_eq!(
            attribute(process, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert!(attribute(process, "messaging.message.id").is_some());
        // The evaluation links the patch's trace: the join's second parent.
        let evaluate = spans.iter().find(|s| s.name == "evaluate").unwrap();
        assert!(
            evaluate
                .links
                .iter()
                .any(|link| link.span_context.trace_id().to_string() == *scan_trace),
            "{program}: the evaluation links the scan's trace"
        );
    }
    // The README's picture: the first program's two traces, as the services see them.
    let (program, crash_trace) = crashes.iter().next().unwrap();
    let picture = waterfall(program, crash_trace, &scans[program]);
    for expected in [
        "[fuzzing-service] send autopatch/crash_detail",
        "[llm-dispatch] process autopatch/cpg-scan-result",
        "[patch-evaluation] evaluate",
        "[patch-evaluation] send autopatch/patch_evaluation",
    ] {
        assert!(picture.contains(expected), "{expected}:\n{picture}");
    }
    if env.name == "mqtt" && std::env::var_os("BUS_WRITE_DOCS").is_some() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/trace-waterfall.svg");
        std::fs::write(&path, picture).unwrap();
    }
    for observer in observers {
        observer.close().await.unwrap();
    }
    bus.close().await.unwrap();
}

/// Which service made a span: a consumer's span names its subscription (the service's name),
/// a producer's is known by the topic it sends to.
fn service_of(span: &SpanData) -> Option<&'static str> {
    let subscription = attribute(span, "messaging.destination.subscription.name");
    let topic = attribute(span, "messaging.destination.name");
    Some(match (subscription.as_deref(), topic.as_deref()) {
        (Some("trace-observer"), _) => return None,
        (Some("patch-evaluation"), _) => "patch-evaluation",
        (Some("llm-dispatch"), _) => "llm-dispatch",
        (None, Some(CRASH_DETAIL_TOPIC)) => "fuzzing-service",
        (None, Some(SCAN_RESULT_TOPIC)) => "cpg-generator",
        (None, Some(PATCH_RESPONSE_TOPIC)) => "llm-dispatch",
        (None, Some(PATCH_EVALUATION_TOPIC)) | (None, None) => "patch-evaluation",
        _ => return None,
    })
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The waterfall of `program`'s crash trace and of the scan trace its evaluation links.
fn waterfall(program: &str, crash_trace: &str, scan_trace: &str) -> String {
    let mut bars = Vec::new();
    for (section, trace) in [crash_trace, scan_trace].into_iter().enumerate() {
        let mut spans = spans_of(trace);
        spans.sort_by_key(|s| s.start_time);
        let parents: std::collections::HashMap<_, _> = spans
            .iter()
            .map(|s| (s.span_context.span_id(), s.parent_span_id))
            .collect();
        // A settle span of an observer's delivery belongs to the observer too.
        let shown: Vec<&SpanData> = spans
            .iter()
            .filter(|s| {
                let owner = if s.name.starts_with("ack ") || s.name.starts_with("nack ") {
                    spans
                        .iter()
                        .find(|p| p.span_context.span_id() == s.parent_span_id)
                } else {
                    Some(*s)
                };
                owner.and_then(service_of).is_some()
            })
            .collect();
        for span in shown {
            let mut depth = 0;
            let mut parent = span.parent_span_id;
            while let Some(next) = parents.get(&parent) {
                depth += 1;
                parent = *next;
            }
            let owner = spans
                .iter()
                .find(|p| {
                    p.span_context.span_id() == span.parent_span_id && span.name.contains("ack ")
                })
                .unwrap_or(span);
            let service = service_of(owner).unwrap_or("?");
            bars.push(Bar {
                label: format!("[{service}] {}", span.name),
                start: span.start_time,
                end: span.end_time,
                depth,
                section,
            });
        }
    }
    svg(
        &format!("One program ({program}) through the pipeline: two traces, joined by a link"),
        &[
            "trace 1: the crash report (fuzzing-service → patch-evaluation); the evaluation continues it",
            "trace 2: the scan result (cpg-generator → llm-dispatch → patch-evaluation), linked by the evaluation",
        ],
        &bars,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_crash_to_evaluation_in_memory() {
    one_trace_per_program(BrokerEnv::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_crash_to_evaluation_on_mosquitto() {
    let broker = Mosquitto::start();
    one_trace_per_program(BrokerEnv::mosquitto(&broker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_crash_to_evaluation_on_the_pubsub_emulator() {
    one_trace_per_program(BrokerEnv::emulator()).await;
}
