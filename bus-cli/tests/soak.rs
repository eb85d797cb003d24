//! The chaos soak, one minute per backend: every message reaches every subscription while the
//! broker restarts, connections are cut and consumer processes are killed (`bus bench soak`;
//! the 10-minute figures are in RELIABILITY.md).

use std::process::Command;

fn soak(backend: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_bus"))
        .args([
            "bench",
            "soak",
            "--backend",
            backend,
            "--minutes",
            "1",
            "--fault-every",
            "5",
            "--json",
        ])
        .output()
        .expect("run bus bench soak");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bus bench soak --backend {backend} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("soak {backend}: {stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    let published = report["published"].as_u64().unwrap();
    assert!(published > 1_000, "the workload ran: {report}");
    for subscription in report["subscriptions"].as_array().unwrap() {
        assert_eq!(subscription["lost"], 0, "{report}");
        assert_eq!(
            subscription["received"].as_u64(),
            Some(published),
            "{report}"
        );
    }
    report
}

fn faults(report: &serde_json::Value, kinds: &[&str]) -> u64 {
    kinds
        .iter()
        .map(|kind| report["faults"][kind].as_u64().unwrap())
        .sum()
}

#[test]
fn the_mqtt_soak_loses_nothing_under_restarts_cuts_and_kills() {
    let report = soak("mqtt");
    assert!(
        faults(
            &report,
            &[
                "broker_restarts",
                "connection_cuts",
                "consumer_kills",
                "consumer_stops"
            ]
        ) >= 5,
        "{report}"
    );
}

#[test]
fn the_memory_soak_loses_nothing_when_consumers_die() {
    let report = soak("memory");
    assert!(
        faults(&report, &["consumer_kills", "consumer_stops"]) >= 5,
        "{report}"
    );
}

#[test]
fn the_pubsub_emulator_soak_loses_nothing_under_cuts_and_kills() {
    let report = soak("gcp");
    assert!(
        faults(
            &report,
            &["connection_cuts", "consumer_kills", "consumer_stops"]
        ) >= 5,
        "{report}"
    );
}
