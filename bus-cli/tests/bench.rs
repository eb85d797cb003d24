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

/// The JSON objects among `out`'s lines.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
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
    let lines = json_lines(&out);
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
    let lines = json_lines(&out);
    assert_eq!(lines[0]["lost"], 0, "shipped config: {}", lines[0]);
    assert_eq!(lines[0]["delivered"], 5000);
    // Mosquitto's default limit drops what does not fit its queue: the check can see loss.
    assert!(
        lines[1]["lost"].as_u64().unwrap() > 0,
        "default limit: {}",
        lines[1]
    );
}

#[test]
fn compare_at_several_windows_reports_each_clients_best_and_same_window_ratios() {
    let out = bench(&[
        "compare",
        "--backend",
        "memory",
        "--messages",
        "5000",
        "--payload",
        "16",
        "--runs",
        "1",
        "--windows",
        "8,64",
    ]);
    // Both clients at both windows, ratios only between equal windows, then the best of each.
    for window in ["8", "64"] {
        let pattern = format!("end to end at {window} in flight");
        assert!(out.contains(&pattern), "{pattern} missing:\n{out}");
    }
    assert!(
        out.contains("best window of each client"),
        "no best-window section:\n{out}"
    );
    assert!(
        out.contains("at its best / raw"),
        "no best-window ratio:\n{out}"
    );
    assert!(
        out.contains("publish at 64 in flight"),
        "no per-round publish ratio:\n{out}"
    );
}

#[test]
fn compare_on_pubsub_with_streams_runs_raw_with_one_stream_and_with_as_many_as_bus() {
    let out = bench(&[
        "compare",
        "--backend",
        "gcp",
        "--messages",
        "1000",
        "--streams",
        "2",
        "--runs",
        "1",
        "--no-python",
        "--json",
    ]);
    let lines = json_lines(&out);
    // A build with `--features mimalloc` (as `--all-features` makes) labels each variant.
    let variants: Vec<_> = lines
        .iter()
        .map(|l| {
            l["variant"]
                .as_str()
                .unwrap()
                .trim_end_matches(" [mimalloc]")
        })
        .collect();
    assert_eq!(
        variants,
        [
            "bus-gcp, 2 stream(s)",
            "bus-gcp, 1 stream(s)",
            "google-cloud-pubsub, 1 stream(s)",
            "google-cloud-pubsub, 2 stream(s)",
        ]
    );
    for line in &lines {
        assert_eq!(line["lost"], 0, "{line}");
        assert_eq!(line["messages"], 1000, "{line}");
    }
}

#[test]
fn compare_with_batches_runs_the_one_by_one_clients_at_their_own_window() {
    let out = bench(&[
        "compare",
        "--backend",
        "memory",
        "--messages",
        "4096",
        "--payload",
        "16",
        "--runs",
        "1",
        "--windows",
        "64",
        "--batch",
        "16",
        "--json",
    ]);
    let lines = json_lines(&out);
    let window = |client: &str| {
        lines
            .iter()
            .find(|l| l["client"] == client)
            .unwrap_or_else(|| panic!("no {client} line:\n{out}"))["in_flight"]
            .as_u64()
    };
    // 64 one by one for bus and raw; the batch client: 4 tasks of 16.
    assert_eq!(window("bus"), Some(64), "{out}");
    assert_eq!(window("raw"), Some(64), "{out}");
    assert_eq!(window("bus-batch"), Some(64), "{out}");
    for line in &lines {
        assert_eq!(line["lost"], 0, "{line}");
        assert_eq!(line["duplicates"], 0, "{line}");
    }
}

#[test]
fn fan_out_counts_every_copy_of_every_message() {
    let out = bench(&[
        "run",
        "--backend",
        "memory",
        "--messages",
        "3000",
        "--payload",
        "16",
        "--subscriptions",
        "4",
        "--json",
    ]);
    let line: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON line");
    assert_eq!(line["lost"], 0, "{line}");
    assert_eq!(line["duplicates"], 0, "{line}");
    assert!(
        line["variant"]
            .as_str()
            .unwrap()
            .contains("fan-out to 4 subscriptions"),
        "{line}"
    );
}

#[test]
fn the_raw_mqtt_client_that_acks_after_processing_receives_every_message_once() {
    // Its event loop runs apart from the consumer: in one task, an ack (a request the event
    // loop must be polled to send) waited on itself once 1,024 were queued.
    let out = bench(&[
        "run",
        "--backend",
        "mqtt",
        "--client",
        "raw-acked",
        "--messages",
        "5000",
        "--publishers",
        "256",
        "--json",
    ]);
    let line: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON object");
    assert_eq!(line["client"], "raw-acked", "{line}");
    assert_eq!(line["messages"], 5000, "{line}");
    assert_eq!(line["lost"], 0, "{line}");
    assert_eq!(line["duplicates"], 0, "{line}");
}

#[test]
fn a_backlog_on_mosquitto_is_held_measured_and_drained_without_a_loss() {
    let out = bench(&[
        "backlog",
        "--backend",
        "mqtt",
        "--messages",
        "5000",
        "--json",
    ]);
    let line: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON object");
    assert_eq!(line["lost"], 0, "{line}");
    assert_eq!(line["messages"], 5000);
    // 5,000 messages of 1 KiB are in the broker's memory while nobody consumes.
    let before = line["broker_rss_before_mib"].as_f64().unwrap();
    let holding = line["broker_rss_backlog_mib"].as_f64().unwrap();
    assert!(holding > before + 4.0, "{line}");
}

#[test]
fn the_scaling_chart_draws_a_line_per_backend_and_client_from_run_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for payload in ["16", "1024"] {
        for client in ["bus", "raw"] {
            lines += &bench(&[
                "run",
                "--backend",
                "memory",
                "--client",
                client,
                "--messages",
                "2000",
                "--payload",
                payload,
                "--json",
            ]);
        }
    }
    let input = dir.path().join("scaling.jsonl");
    std::fs::write(&input, &lines).unwrap();
    let output = dir.path().join("scaling.svg");
    bench(&[
        "chart",
        "--kind",
        "scaling",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(&output).unwrap();
    for text in [
        "memory bus",
        "memory raw",
        "p99 latency by payload",
        "16 B",
        "1 KiB",
    ] {
        assert!(svg.contains(text), "{text} missing from the chart");
    }
    // Two panels, one line per backend and client in each, each with its legend key.
    let lines = svg
        .lines()
        .filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\""))
        .count();
    assert_eq!(lines, 2 * 2 * 2, "{svg}");
}

/// `bench` with its arguments written as one line.
fn bench_line(args: &str) -> String {
    bench(&args.split_whitespace().collect::<Vec<_>>())
}

#[test]
fn publish_only_on_pubsub_measures_publishes_and_reports_no_end_to_end_figure() {
    let out = bench_line(
        "compare --backend gcp --messages 1000 --streams 1 --publish-only --runs 1 --no-python --json",
    );
    let lines = json_lines(&out);
    let clients: Vec<_> = lines
        .iter()
        .map(|l| l["client"].as_str().unwrap())
        .collect();
    assert_eq!(clients, ["bus", "raw"], "{out}");
    for line in &lines {
        assert!(line["publish_msgs_per_s"].as_f64().unwrap() > 0.0, "{line}");
        assert_eq!(line["e2e_msgs_per_s"].as_f64(), Some(0.0), "{line}");
        assert_eq!(line["lost"], 0, "{line}");
    }
    let table = bench_line(
        "compare --backend gcp --messages 500 --streams 1 --publish-only --runs 1 --no-python",
    );
    assert!(table.contains("publish at 1024 in flight"), "{table}");
    assert!(!table.contains("end to end at"), "{table}");
}

#[test]
fn publish_only_is_refused_off_pubsub_with_the_flag_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_bus"))
        .args(["bench", "run", "--backend", "mqtt", "--client", "bus"])
        .args(["--messages", "10", "--publish-only"])
        .output()
        .expect("run bus bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--publish-only is for --backend gcp only"),
        "{stderr}"
    );
}

#[test]
fn spans_prints_the_cpu_per_message_of_each_way_of_recording_and_exports_to_the_sink() {
    let out = bench_line("spans --messages 2000 --rounds 1");
    for mode in [
        "tracing, recorded",
        "sdk, recorded",
        "tracing, OTLP",
        "sdk, OTLP",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(mode) && l.contains("median"))
            .unwrap_or_else(|| panic!("no median for {mode}: {out}"));
        let micros: f64 = line
            .split_whitespace()
            .skip_while(|w| *w != "median")
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no figure in {line:?}"));
        assert!(micros >= 0.0, "{line}");
    }
    let requests: u64 = out
        .split("the OTLP sink took ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sink count: {out}"));
    assert!(requests > 0, "the exporting modes sent nothing: {out}");
}
