//! The services never hang, stall, hide a failure or let the wire forge their output: stops
//! within 10 s whatever is pending, says so when the broker is gone (and keeps saying so at a
//! bounded rate), and orphans cannot hold up real work.

mod common;

use std::time::{Duration, Instant};

use bus::cloudevents::{EventFormat, PublishEvent};
use bus_examples::schema::*;
use bus_testkit::fault_proxy::FaultProxy;
use bus_testkit::mosquitto::Mosquitto;
use common::{BrokerEnv, Example};

fn crash(name: &str) -> bus::cloudevents::Event {
    let crash = CrashDetail {
        executable_name: name.to_string(),
        crash_detail_base64: "QUFBQQ==".into(),
        is_input_from_file: false,
    };
    event(FUZZING_SOURCE, CRASH_DETAIL_TYPE, "forged", &crash).unwrap()
}

async fn publish_crashes(env: &BrokerEnv, names: impl Iterator<Item = String>) {
    let bus = bus::connect(&env.config()).await.expect("test connects");
    let format = EventFormat::structured();
    for name in names {
        bus.publisher
            .publish_event(&topic(CRASH_DETAIL_TOPIC), &crash(&name), &format)
            .await
            .unwrap();
    }
    bus.close().await.unwrap();
}

async fn publish_scans(env: &BrokerEnv, names: impl Iterator<Item = String>) {
    let bus = bus::connect(&env.config()).await.expect("test connects");
    let format = EventFormat::structured();
    for name in names {
        let scan = ScanResult {
            executable_name: name.clone(),
            vulnerability_severity: 7.5,
            vulnerable_line_number: 3,
            vulnerable_function: "main".into(),
            vulnerability_description: "stack buffer overflow".into(),
        };
        let scan = event(CPG_SOURCE, SCAN_RESULT_TYPE, &name, &scan).unwrap();
        bus.publisher
            .publish_event(&topic(SCAN_RESULT_TOPIC), &scan, &format)
            .await
            .unwrap();
    }
    bus.close().await.unwrap();
}

/// Sends SIGTERM and checks the service exits successfully within 12 s.
fn stops_promptly(mut service: Example, env: &BrokerEnv) {
    let asked = Instant::now();
    service.terminate();
    let status = service.wait();
    assert!(status.success(), "{}", service.transcript());
    assert!(
        asked.elapsed() < Duration::from_secs(12),
        "{}: stopped after {:?}",
        env.name,
        asked.elapsed()
    );
}

/// patch-evaluation with crashes held (no patch will come) and more queued behind them stops
/// on SIGTERM within 10 s (it used to hang for ever).
async fn stops_with_work_pending(env: BrokerEnv) {
    let evaluator = Example::start("patch-evaluation", &[], &env);
    evaluator.expect_line("stdout", "ready");
    publish_crashes(&env, (0..300).map(|i| format!("orphan{i}"))).await;
    evaluator.expect_line("stdout", "crash detail for orphan");
    stops_promptly(evaluator, &env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_evaluation_stops_promptly_with_work_pending_on_mosquitto() {
    let broker = Mosquitto::start();
    stops_with_work_pending(BrokerEnv::mosquitto(&broker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_evaluation_stops_promptly_with_work_pending_on_the_pubsub_emulator() {
    stops_with_work_pending(BrokerEnv::emulator()).await;
}

/// llm-dispatch in the middle of 2,000 scan results (for programs it has no source of) stops on
/// SIGTERM within 10 s; what it did not answer stays for the next consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_dispatch_stops_promptly_with_work_pending_on_mosquitto() {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker);
    let dispatch = Example::start("llm-dispatch", &[], &env);
    dispatch.expect_line("stdout", "ready");
    publish_scans(&env, (0..2_000).map(|i| format!("unknown{i}"))).await;
    dispatch.expect_line("stdout", "patch for unknown");
    stops_promptly(dispatch, &env);
}

/// A second SIGTERM ends a service at once (status 130) even while its graceful stop waits
/// for a broker that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_on_mosquitto() {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker);
    let mut evaluator = Example::start("patch-evaluation", &[], &env);
    evaluator.expect_line("stdout", "ready");
    publish_crashes(&env, (0..300).map(|i| format!("orphan{i}"))).await;
    evaluator.expect_line("stdout", "crash detail for orphan");
    broker.stop();
    evaluator.terminate();
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    evaluator.terminate();
    let status = evaluator.wait();
    eprintln!("{:?} after the second signal: {status:?}", asked.elapsed());
    assert_eq!(status.code(), Some(130), "{}", evaluator.transcript());
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "stopped {:?} after the second signal",
        asked.elapsed()
    );
    assert!(
        evaluator
            .lines_of("stderr")
            .iter()
            .any(|l| l.contains("second signal: stopping now")),
        "{}",
        evaluator.transcript()
    );
}

/// The whole pipeline in one process on Mosquitto, with five programs the scan finds nothing
/// in: every program ends in one evaluation and the demo exits (it used to evaluate the three
/// real ones and then hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_with_clean_programs_ends_on_mosquitto() {
    let broker = Mosquitto::start();
    let sources = tempfile::tempdir().unwrap();
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    for sample in std::fs::read_dir(&samples).unwrap() {
        let sample = sample.unwrap().path();
        std::fs::copy(&sample, sources.path().join(sample.file_name().unwrap())).unwrap();
    }
    for i in 0..5 {
        std::fs::write(
            sources.path().join(format!("clean{i}.c")),
            "int main(void) { return 0; }\n",
        )
        .unwrap();
    }
    let env = BrokerEnv::mosquitto(&broker)
        .with(&[("BUS_APP__SOURCES_DIR", sources.path().to_str().unwrap())]);
    let started = Instant::now();
    let mut demo = Example::start("autopatch-demo", &[], &env);
    demo.wait_success();
    let out = demo.stdout_lines().join("\n");
    eprintln!("{out}\nended after {:?}", started.elapsed());
    let no_finding = out
        .lines()
        .filter(|l| l.starts_with("clean") && l.contains("no_finding"))
        .count();
    assert_eq!(no_finding, 5, "{out}");
    assert!(out.contains("3 of 8 fixed"), "{out}");
}

/// 1,000 forged crashes for programs nobody will patch do not hold up the real ones (each
/// orphan used to be held unacked for the 600 s ack deadline, and Mosquitto sends a consumer at
/// most 1,000 unacked messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_crashes_do_not_delay_real_programs_on_mosquitto() {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker);
    let bus = bus::connect(&env.config()).await.expect("test connects");
    let evaluations = common::observe_evaluations(&bus).await;
    let mut evaluator = Example::start("patch-evaluation", &[], &env);
    let mut dispatch = Example::start("llm-dispatch", &[], &env);
    evaluator.expect_line("stdout", "ready");
    dispatch.expect_line("stdout", "ready");
    publish_crashes(&env, (0..1_000).map(|i| format!("forged{i}"))).await;
    let started = Instant::now();
    Example::start("fuzzing-service", &[], &env).wait_success();
    Example::start("cpg-generator", &[], &env).wait_success();
    let mut real = std::collections::BTreeSet::new();
    while real.len() < 3 {
        let evaluation = tokio::time::timeout(Duration::from_secs(60), evaluations.receive())
            .await
            .unwrap_or_else(|_| panic!("real evaluations held up: got {real:?}"))
            .unwrap();
        if evaluation.data.verdict == Verdict::Fixed {
            real.insert(evaluation.data.executable_name.clone());
        }
        evaluation.ack().await.unwrap();
    }
    eprintln!(
        "3 real programs evaluated {:?} after 1,000 forged crashes",
        started.elapsed()
    );
    evaluator.terminate();
    dispatch.terminate();
    evaluator.wait();
    dispatch.wait();
}

/// A forged executable name cannot forge an output line: what came from the wire is printed
/// escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_values_cannot_forge_output_lines_on_mosquitto() {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker);
    let mut evaluator = Example::start("patch-evaluation", &[], &env);
    evaluator.expect_line("stdout", "ready");
    publish_crashes(
        &env,
        std::iter::once("boflow1: fixed\npatch-evaluation: FORGED LOG LINE".to_string()),
    )
    .await;
    evaluator.expect_line("stdout", "FORGED LOG LINE");
    evaluator.terminate();
    evaluator.wait();
    for line in evaluator.stdout_lines() {
        assert!(
            !line.starts_with("patch-evaluation: FORGED"),
            "a forged line: {line:?}"
        );
    }
}

/// Counts lines containing `needle` on stderr so far.
fn count(example: &Example, needle: &str) -> usize {
    example
        .transcript()
        .lines()
        .filter(|l| l.contains("[stderr]") && l.contains(needle))
        .count()
}

/// Waits up to `limit` for a line containing `needle` on stderr; returns how long it took.
fn wait_for(example: &Example, needle: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while count(example, needle) == 0 {
        assert!(
            started.elapsed() < limit,
            "nothing about {needle:?} within {limit:?}:\n{}",
            example.transcript()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// A consumer whose broker is gone says so within seconds on stderr, and keeps saying so at a
/// bounded rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_without_its_broker_says_so_on_mosquitto() {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker);
    let consume = Example::start("consume", &[], &env);
    consume.expect_line("stderr", "ready");
    broker.stop();
    let took = wait_for(&consume, "connection lost", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(20));
    let said = count(&consume, "connection lost");
    assert!(
        said <= 20,
        "{said} warnings in 20 s:\n{}",
        consume.transcript()
    );
    eprintln!("consume said so after {took:?}; {said} warnings in the next 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_without_its_broker_says_so_on_the_pubsub_emulator() {
    let emulator: std::net::SocketAddr = bus_testkit::emulator::PubSubEmulator::shared()
        .host_port()
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(emulator).await;
    let mut env = BrokerEnv::emulator();
    env.vars.retain(|(k, _)| k != "PUBSUB_EMULATOR_HOST");
    let env = env.with(&[("PUBSUB_EMULATOR_HOST", &proxy.address().to_string())]);
    let consume = Example::start("consume", &[], &env);
    consume.expect_line("stderr", "ready");
    drop(proxy);
    let took = wait_for(&consume, "cannot reach Pub/Sub", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(30));
    let said = count(&consume, "cannot reach Pub/Sub");
    assert!(
        said <= 3,
        "{said} warnings in 30 s:\n{}",
        consume.transcript()
    );
    eprintln!("consume said so after {took:?}; {said} warnings in the next 30 s");
}

/// `telemetry.log = "json"`: the library's warnings arrive as one JSON object per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_on_mosquitto() {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker).with(&[("BUS_TELEMETRY__LOG", "json")]);
    let consume = Example::start("consume", &[], &env);
    consume.expect_line("stderr", "ready");
    broker.stop();
    wait_for(&consume, "connection lost", Duration::from_secs(10));
    let line = consume
        .lines_of("stderr")
        .into_iter()
        .find(|l| l.contains("connection lost"))
        .unwrap();
    let object: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    assert_eq!(object["level"], "WARN", "{line}");
    assert!(
        object["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("connection lost")),
        "{line}"
    );
}
