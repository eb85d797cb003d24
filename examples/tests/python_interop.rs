//! The Python services' own libraries against our services, on Mosquitto: a CrashDetail made by
//! Python's `cloudevents` (`to_json`) and sent by paho-mqtt 2.1 is evaluated by
//! `patch-evaluation`, and the patch responses `llm-dispatch` publishes are read by paho and
//! parsed as the Python evaluator does (`json.loads(s).get("data", {})`) and by the
//! `cloudevents` library's `from_json`, with the same attributes and data.

mod common;

use std::time::Duration;

use bus_examples::schema::Verdict;
use bus_testkit::mosquitto::Mosquitto;
use common::{BrokerEnv, Example};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_detail_from_python_is_evaluated_on_mosquitto() {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker);
    let bus = bus::connect(&env.config()).await.expect("test connects");
    let evaluations = common::observe_evaluations(&bus).await;
    let mut evaluator = Example::start(
        "patch-evaluation",
        &[],
        &env.with(&[("BUS_APP__EXPECT", "1")]),
    );
    let mut dispatch = Example::start("llm-dispatch", &[], &env);
    evaluator.expect_line("stdout", "ready");
    dispatch.expect_line("stdout", "ready");

    let port = broker.port().to_string();
    let mut python = Example::python("send_crash_detail.py", &["127.0.0.1", &port, "boflow1"]);
    python.wait_success();
    let event_id = python
        .stdout_lines()
        .last()
        .cloned()
        .expect("python prints the id");
    evaluator.expect_line("stdout", "crash detail for boflow1 received");

    // The patch for boflow1 comes from our side of the pipeline.
    let sources = tempfile::tempdir().unwrap();
    std::fs::write(
        sources.path().join("boflow1.c"),
        include_str!("../samples/boflow1.c"),
    )
    .unwrap();
    let sources_dir = sources.path().to_string_lossy().into_owned();
    let mut scanner = Example::start(
        "cpg-generator",
        &[],
        &env.with(&[("BUS_APP__SOURCES_DIR", &sources_dir)]),
    );
    scanner.wait_success();

    let evaluation = tokio::time::timeout(Duration::from_secs(60), evaluations.receive())
        .await
        .expect("an evaluation arrives")
        .expect("an evaluation event");
    assert_eq!(evaluation.data.executable_name, "boflow1");
    assert_eq!(evaluation.data.verdict, Verdict::Fixed);
    assert_eq!(
        evaluation.data.crash_event_id, event_id,
        "the evaluation names the Python event"
    );
    evaluation.ack().await.unwrap();
    evaluator.wait_success();
    dispatch.terminate();
    dispatch.wait_success();
    evaluations.close().await.unwrap();
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_responses_are_read_by_paho_as_the_python_evaluator_does_on_mosquitto() {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker);
    let port = broker.port().to_string();
    let mut reader = Example::python("read_patch_responses.py", &["127.0.0.1", &port, "3"]);
    reader.expect_line("stdout", "subscribed");
    let mut dispatch = Example::start("llm-dispatch", &[], &env);
    dispatch.expect_line("stdout", "ready");
    let mut scanner = Example::start("cpg-generator", &[], &env);
    scanner.wait_success();
    reader.wait_success();

    let mut names = Vec::new();
    for line in reader.stdout_lines().iter().filter(|l| l.starts_with('{')) {
        let data: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(data["status"], "success", "{line}");
        assert_eq!(data["llm_name"], "offline-stub", "{line}");
        assert!(data["patched_lines"].as_u64().unwrap() > 5, "{line}");
        assert_eq!(data["specversion"], "1.0", "{line}");
        assert_eq!(data["type"], "autopatch.patchresponse", "{line}");
        assert_eq!(data["source"], "autopatch.llm-dispatch-service", "{line}");
        assert_eq!(data["subject"], data["executable_name"], "{line}");
        assert_eq!(data["id"].as_str().unwrap().len(), 36, "a UUID: {line}");
        assert_eq!(
            data["content_type"], "application/cloudevents+json",
            "the CloudEvents MQTT binding's content type property: {line}"
        );
        names.push(data["executable_name"].as_str().unwrap().to_string());
    }
    names.sort();
    assert_eq!(names, ["boflow1.c", "boflow2.c", "fmtcat.c"]);
    dispatch.terminate();
    dispatch.wait_success();
}

/// A scan result from a Python service carrying a W3C `traceparent` (as an MQTT 5 user property,
/// or as the CloudEvents extension inside the event over MQTT 3.1.1) is continued by
/// llm-dispatch: its patch response carries the same trace id and a span of its own.
async fn llm_dispatch_continues_a_python_trace(carried_as: &str) {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker);
    let bus = bus::connect(&env.config()).await.expect("test connects");
    let topic = bus::Topic::new(bus_examples::schema::PATCH_RESPONSE_TOPIC).unwrap();
    let observer = bus
        .subscriber
        .subscribe(
            &topic,
            bus::SubscriptionOptions::new("trace-observer").unwrap(),
        )
        .await
        .unwrap();
    let mut dispatch = Example::start("llm-dispatch", &[], &env);
    dispatch.expect_line("stdout", "ready");
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let port = broker.port().to_string();
    Example::python(
        "send_scan_result.py",
        &["127.0.0.1", &port, "boflow1.c", traceparent, carried_as],
    )
    .wait_success();
    let patch = tokio::time::timeout(Duration::from_secs(60), observer.receive())
        .await
        .expect("a patch response arrives")
        .unwrap();
    let context = patch
        .trace_context()
        .expect("the patch response carries a traceparent");
    assert_eq!(
        context.trace_id(),
        "0af7651916cd43dd8448eb211c80319c",
        "{carried_as}"
    );
    assert_ne!(
        context.span_id(),
        "b7ad6b7169203331",
        "llm-dispatch's own span"
    );
    assert!(context.sampled());
    patch.ack().await.unwrap();
    dispatch.terminate();
    dispatch.wait_success();
    observer.close().await.unwrap();
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_dispatch_continues_a_paho_traceparent_user_property_on_mosquitto() {
    llm_dispatch_continues_a_python_trace("property").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_dispatch_continues_a_cloudevents_traceparent_extension_on_mosquitto() {
    llm_dispatch_continues_a_python_trace("extension").await;
}
