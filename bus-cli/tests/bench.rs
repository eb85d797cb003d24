//! The harness itself, on small runs: JSON lines with the promised fields and every message
//! accounted for, and the Mosquitto burst check (the shipped config loses nothing).

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_bus"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run bus bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bus bench {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn compare_on_memory_prints_one_json_line_per_client() {
    let out = bench(&[
        "compare",
        "--backend",
        "memory",
        "--messages",
        "20000",
        "--payload",
        "16",
        "--runs",
        "1",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let clients: Vec<_> = lines
        .iter()
        .map(|l| l["client"].as_str().unwrap())
        .collect();
    assert_eq!(clients, ["bus", "raw"]);
    for line in &lines {
        for key in [
            "backend",
            "client",
            "payload_bytes",
            "messages",
            "publish_msgs_per_s",
            "e2e_msgs_per_s",
            "p50_us",
            "p99_us",
            "lost",
            "duplicates",
        ] {
            assert!(line.get(key).is_some(), "{key} in {line}");
        }
        assert_eq!(line["messages"], 20000);
        assert_eq!(line["lost"], 0, "{line}");
        assert!(line["e2e_msgs_per_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn a_burst_to_a_stalled_consumer_loses_nothing_with_the_shipped_mosquitto_config() {
    let out = bench(&["loss-check", "--messages", "5000", "--json"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines[0]["lost"], 0, "shipped config: {}", lines[0]);
    assert_eq!(lines[0]["delivered"], 5000);
    // Mosquitto's default limit drops what does not fit its queue: the check can see loss.
    assert!(
        lines[1]["lost"].as_u64().unwrap() > 0,
        "default limit: {}",
        lines[1]
    );
}
