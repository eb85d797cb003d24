//! The autopatch pipeline as four processes, on Mosquitto and on the Pub/Sub emulator, and
//! `autopatch-demo` in one process on the in-memory backend. The producers publish in binary
//! mode on one run and structured mode on the other; consumers accept both.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bus::cloudevents::{AttributesReader, EventSubscription};
use bus::{SubscriptionOptions, Topic};
use bus_examples::schema::{
    PatchEvaluation, Verdict, PATCH_EVALUATION_TOPIC, PATCH_EVALUATION_TYPE,
};
use bus_testkit::mosquitto::Mosquitto;
use common::{BrokerEnv, Example};

const PROGRAMS: [&str; 3] = ["boflow1", "boflow2", "fmtcat"];

async fn four_services(env: BrokerEnv, producer_mode: &str) {
    // The test reads the published evaluations like any other consumer would.
    let bus = bus::connect(&env.config()).await.expect("test connects");
    let evaluations = EventSubscription::<PatchEvaluation>::new(
        bus.subscriber
            .subscribe(
                &Topic::new(PATCH_EVALUATION_TOPIC).unwrap(),
                SubscriptionOptions::new("test-observer").unwrap(),
            )
            .await
            .expect("subscribe to evaluations"),
    );

    let mut evaluator = Example::start(
        "patch-evaluation",
        &[],
        &env.with(&[("BUS_APP__EXPECT", "3")]),
    );
    let mut dispatch = Example::start("llm-dispatch", &[], &env);
    evaluator.expect_line("stdout", "ready");
    dispatch.expect_line("stdout", "ready");
    let producers_env = env.with(&[("BUS_CLOUDEVENTS__MODE", producer_mode)]);
    let mut fuzzer = Example::start("fuzzing-service", &[], &producers_env);
    let mut scanner = Example::start("cpg-generator", &[], &producers_env);
    fuzzer.wait_success();
    scanner.wait_success();

    let mut seen = BTreeMap::new();
    while seen.len() < PROGRAMS.len() {
        let evaluation = tokio::time::timeout(Duration::from_secs(120), evaluations.receive())
            .await
            .unwrap_or_else(|_| panic!("{}: evaluations missing, got {seen:?}", env.name))
            .expect("an evaluation event");
        assert_eq!(evaluation.event.ty(), PATCH_EVALUATION_TYPE);
        seen.insert(
            evaluation.data.executable_name.clone(),
            evaluation.data.clone(),
        );
        evaluation.ack().await.unwrap();
    }
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        PROGRAMS
    );
    for evaluation in seen.values() {
        assert_eq!(evaluation.verdict, Verdict::Fixed, "{evaluation:?}");
        assert_eq!(evaluation.llm_name, "offline-stub");
    }

    // patch-evaluation stops by itself after the three it expects, with its summary.
    evaluator.wait_success();
    assert!(
        evaluator.transcript().contains("3 of 3 fixed"),
        "{}: summary",
        env.name
    );
    dispatch.terminate();
    dispatch.wait_success();
    assert!(dispatch
        .transcript()
        .contains("llm-dispatch: stopped after 3 patches"));
    evaluations.close().await.unwrap();
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_on_mosquitto() {
    let broker = Mosquitto::start();
    four_services(BrokerEnv::mosquitto(&broker), "binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_on_the_pubsub_emulator() {
    four_services(BrokerEnv::emulator(), "structured").await;
}

#[test]
fn the_demo_runs_the_pipeline_in_memory() {
    let mut demo = Example::start("autopatch-demo", &[], &BrokerEnv::memory());
    demo.wait_success();
    let out = demo.stdout_lines().join("\n");
    for program in PROGRAMS {
        assert!(
            out.lines()
                .any(|l| l.starts_with(program) && l.contains("fixed")),
            "summary row for {program}:\n{out}"
        );
    }
    assert!(out.contains("3 of 3 fixed"), "{out}");
}
