//! The autopatch pipeline as four processes, on Mosquitto and on the Pub/Sub emulator, and
//! `autopatch-demo` in one process on the in-memory backend. The producers publish in binary
//! mode on one run and structured mode on the other; consumers accept both.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bus::cloudevents::AttributesReader;
use bus::Topic;
use bus_examples::schema::{
    CrashDetail, PatchEvaluation, Verdict, CRASH_DETAIL_TOPIC, PATCH_EVALUATION_TYPE,
};
use bus_testkit::mosquitto::Mosquitto;
use common::{binary, BrokerEnv, Example};

const PROGRAMS: [&str; 3] = ["boflow1", "boflow2", "fmtcat"];

/// Reads evaluations until one per program arrived; each must say `fixed`. Returns each
/// program's trace id as the evaluation carried it.
async fn expect_three_fixed(
    evaluations: &bus::cloudevents::EventSubscription<PatchEvaluation>,
    name: &str,
) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let mut traces = BTreeMap::new();
    while seen.len() < PROGRAMS.len() {
        let evaluation = tokio::time::timeout(Duration::from_secs(120), evaluations.receive())
            .await
            .unwrap_or_else(|_| panic!("{}: evaluations missing, got {seen:?}", name))
            .expect("an evaluation event");
        assert_eq!(evaluation.event.ty(), PATCH_EVALUATION_TYPE);
        if let Some(context) = evaluation.trace_context() {
            traces.insert(
                evaluation.data.executable_name.clone(),
                context.trace_id().to_string(),
            );
        }
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
    traces
}

/// Runs the four services on `env` (plus `service_vars` for the services only) and checks
/// the evaluations they publish.
async fn four_services(env: BrokerEnv, producer_mode: &str, service_vars: &[(&str, &str)]) {
    // The test reads the published evaluations like any other consumer would.
    let bus = bus::connect(&env.config()).await.expect("test connects");
    let env = env.with(service_vars);
    let evaluations = common::observe_evaluations(&bus).await;
    let crashes = bus
        .subscriber
        .subscribe(
            &bus::Topic::new(CRASH_DETAIL_TOPIC).unwrap(),
            bus::SubscriptionOptions::new("test-observer").unwrap(),
        )
        .await
        .unwrap();

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

    let evaluation_traces = expect_three_fixed(&evaluations, env.name).await;
    // Across four processes, each evaluation continues the trace its crash report started.
    let mut crash_traces = BTreeMap::new();
    while crash_traces.len() < PROGRAMS.len() {
        let crash = tokio::time::timeout(Duration::from_secs(60), crashes.receive())
            .await
            .expect("the crash reports")
            .unwrap();
        let event = bus::cloudevents::decode_event(crash.message()).unwrap();
        let data: CrashDetail = bus::cloudevents::event_data(&event).unwrap();
        let context = crash
            .trace_context()
            .expect("a crash report carries a traceparent");
        crash_traces.insert(data.executable_name, context.trace_id().to_string());
        crash.ack().await.unwrap();
    }
    assert_eq!(evaluation_traces, crash_traces, "{}", env.name);
    crashes.close().await.unwrap();

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
    four_services(BrokerEnv::mosquitto(&broker), "binary", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_on_the_pubsub_emulator() {
    four_services(BrokerEnv::emulator(), "structured", &[]).await;
}

/// `bus provision pubsub-emulator/provision.toml`, what the emulator image runs at start, run
/// natively against the installed emulator (twice: it is idempotent), creates exactly what the
/// services need: they then run with provisioning off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_provisioning_creates_what_the_services_use() {
    let env = BrokerEnv::emulator();
    let plan =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pubsub-emulator/provision.toml");
    for run in ["creates", "finds existing"] {
        let mut command = std::process::Command::new(binary("bus"));
        bus_testkit::program::clear_bus_environment(&mut command);
        let output = command
            .args(["--backend", "gcp", "provision"])
            .arg(&plan)
            .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run bus provision");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "provision ({run}): {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("subscription patch-evaluation on autopatch/crash_detail (ack deadline 600 s): ready"),
            "{stdout}"
        );
    }
    four_services(env, "binary", &[("BUS_GCP__PROVISIONING", "false")]).await;
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

/// Mosquitto with the config compose.yaml ships (`deploy/mosquitto/`), run natively: anonymous
/// clients are refused, the pipeline runs with the credentials, and the ACL keeps the
/// services to their topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_mosquitto_config_runs_the_pipeline_with_credentials() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
    let dir = tempfile::tempdir().unwrap();
    let port = bus_testkit::process::free_port();
    let shipped = std::fs::read_to_string(deploy.join("mosquitto.conf")).unwrap();
    for line in [
        "allow_anonymous false",
        "max_queued_messages 1000000000",
        "persistence true",
    ] {
        assert!(
            shipped.lines().any(|l| l == line),
            "the shipped config sets {line}"
        );
    }
    let mut config = shipped
        .replace("listener 1883", &format!("listener {port} 127.0.0.1"))
        .replace("/mosquitto/config/", &format!("{}/", dir.path().display()))
        .replace("/mosquitto/data/", &format!("{}/", dir.path().display()));
    // As root Mosquitto would switch to the `mosquitto` user, which cannot use the temp dir.
    if running_as_root() {
        config.push_str("user root\n");
    }
    std::fs::write(dir.path().join("mosquitto.conf"), config).unwrap();
    std::fs::copy(deploy.join("acl"), dir.path().join("acl")).unwrap();
    let passwd = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(dir.path().join("passwd"))
        .args(["autopatch", "s3cret-for-test"])
        .status()
        .expect("mosquitto_passwd (apt-get install -y mosquitto)");
    assert!(passwd.success());
    let _broker = KillOnDrop(
        std::process::Command::new(
            bus_testkit::process::which("mosquitto").expect("mosquitto is installed"),
        )
        .arg("-c")
        .arg(dir.path().join("mosquitto.conf"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap(),
    );
    let url = format!("mqtt://127.0.0.1:{port}");
    let address = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(&address).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let anonymous = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "autopatch/crash_detail",
            "-m",
            "x",
            "-q",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        !anonymous.status.success(),
        "an anonymous client is refused"
    );

    let env = BrokerEnv {
        name: "mqtt (shipped config)",
        vars: vec![
            ("BUS_BACKEND".into(), "mqtt".into()),
            ("BUS_MQTT__URL".into(), url),
            ("BUS_MQTT__USERNAME".into(), "autopatch".into()),
            ("BUS_MQTT__PASSWORD".into(), "s3cret-for-test".into()),
        ],
    };
    let outside = bus::connect(&env.config()).await.unwrap();
    let denied = outside
        .publisher
        .publish(&Topic::new("other/topic").unwrap(), bus::Message::new("x"))
        .await
        .expect_err("the ACL keeps the services to their topics");
    assert_eq!(denied.kind(), bus::ErrorKind::PermissionDenied, "{denied}");
    outside.close().await.unwrap();

    four_services(env, "structured", &[]).await;
}

/// Stops a child process when the test ends, even on panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

/// A pipeline half-way through its move to Pub/Sub: fuzzing-service and cpg-generator still on
/// Mosquitto, llm-dispatch and patch-evaluation already on the emulator, and `bus bridge`
/// carrying crash_detail and cpg-scan-result across (binary-mode CloudEvents, whose attributes
/// change binding on the way). All three programs are evaluated, on Pub/Sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_pipeline_runs_across_the_bridge() {
    let broker = Mosquitto::start();
    let mqtt = BrokerEnv::mosquitto(&broker);
    let gcp = BrokerEnv::emulator();
    let bus = bus::connect(&gcp.config()).await.expect("test connects");
    let evaluations = common::observe_evaluations(&bus).await;

    let mut evaluator = Example::start(
        "patch-evaluation",
        &[],
        &gcp.with(&[("BUS_APP__EXPECT", "3")]),
    );
    let mut dispatch = Example::start("llm-dispatch", &[], &gcp);
    evaluator.expect_line("stdout", "ready");
    dispatch.expect_line("stdout", "ready");

    let mut both = mqtt.clone();
    both.vars
        .extend(gcp.vars.iter().filter(|(k, _)| k != "BUS_BACKEND").cloned());
    let mut bridge = Example::start(
        "bus",
        &[
            "bridge",
            "--from",
            "mqtt",
            "--to",
            "gcp",
            "--topic",
            "autopatch/crash_detail",
            "--topic",
            "autopatch/cpg-scan-result",
        ],
        &both,
    );
    bridge.expect_line("stdout", "bus bridge: ready");

    let producers = mqtt.with(&[("BUS_CLOUDEVENTS__MODE", "binary")]);
    let mut fuzzer = Example::start("fuzzing-service", &[], &producers);
    let mut scanner = Example::start("cpg-generator", &[], &producers);
    fuzzer.wait_success();
    scanner.wait_success();

    expect_three_fixed(&evaluations, "split").await;
    evaluator.wait_success();
    assert!(evaluator.transcript().contains("3 of 3 fixed"));
    dispatch.terminate();
    dispatch.wait_success();
    bridge.terminate();
    bridge.wait_success();
    assert!(
        bridge
            .transcript()
            .contains("bus bridge: stopped: 6 carried, 0 not sent back"),
        "{}",
        bridge.transcript()
    );
    evaluations.close().await.unwrap();
    bus.close().await.unwrap();
}
