//! The Python baselines: the scripts in `bench/peers/`, run with a virtualenv this program
//! creates (`.venv` at the workspace root, from `bench/peers/requirements.txt`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::measure::{BenchResult, Params};

/// The workspace root (where `bench/` and `.venv` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The virtualenv's Python, created and filled on first use.
pub fn python() -> Result<PathBuf, String> {
    let root = workspace_root();
    let python = root.join(".venv/bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import paho.mqtt, google.cloud.pubsub_v1"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    eprintln!(
        "bus bench: installing the Python baselines into .venv (bench/peers/requirements.txt)"
    );
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(root.join(".venv"))
            .status()
            .map_err(|e| format!("python3 -m venv .venv: {e}; install python3 and python3-venv"))?;
        if !made.success() {
            return Err("python3 -m venv .venv failed; install python3-venv".into());
        }
    }
    let installed = Command::new(root.join(".venv/bin/pip"))
        .args(["install", "-q", "-r"])
        .arg(root.join("bench/peers/requirements.txt"))
        .status()
        .map_err(|e| format!("pip install: {e}"))?;
    if !installed.success() || !ready(&python) {
        return Err("pip install -r bench/peers/requirements.txt failed (PyPI reachable?)".into());
    }
    Ok(python)
}

/// Runs one peer script and reads its JSON result.
fn run(
    script: &str,
    args: &[String],
    envs: &[(&str, String)],
) -> Result<serde_json::Value, String> {
    let output = Command::new(python()?)
        .arg(workspace_root().join("bench/peers").join(script))
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(|e| format!("{script}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{script} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("{script} printed {line:?}: {e}"))
}

fn result(backend: &str, variant: &str, params: &Params, json: serde_json::Value) -> BenchResult {
    let number = |key: &str| json[key].as_f64().unwrap_or(0.0);
    BenchResult {
        backend: backend.into(),
        client: "python".into(),
        variant: variant.into(),
        payload_bytes: params.payload,
        messages: params.messages,
        // The Python peers keep their own window (paho: 1,000).
        in_flight: 0,
        publish_msgs_per_s: number("publish_msgs_per_s"),
        e2e_msgs_per_s: number("e2e_msgs_per_s"),
        p50_us: number("p50_us") as u64,
        p99_us: number("p99_us") as u64,
        p999_us: number("p999_us") as u64,
        lost: number("lost") as usize,
        duplicates: number("duplicates") as usize,
        runs: 1,
        e2e_min_msgs_per_s: None,
        e2e_max_msgs_per_s: None,
    }
}

/// paho-mqtt against Mosquitto on `port`.
pub fn paho(port: u16, params: &Params) -> Result<BenchResult, String> {
    let args = [
        "--port".to_string(),
        port.to_string(),
        "--messages".into(),
        params.messages.to_string(),
        "--payload".into(),
        params.payload.to_string(),
        "--qos".into(),
        params.qos.to_string(),
        "--idle".into(),
        params.idle_timeout.as_secs().to_string(),
    ];
    let json = run("paho_bench.py", &args, &[])?;
    Ok(result(
        "mqtt",
        &format!("paho-mqtt 2.1 QoS {}", params.qos),
        params,
        json,
    ))
}

/// google-cloud-pubsub (Python) against the emulator at `host`.
pub fn pubsub(host: &str, params: &Params) -> Result<BenchResult, String> {
    let args = [
        "--project".to_string(),
        "bench".into(),
        "--messages".into(),
        params.messages.to_string(),
        "--payload".into(),
        params.payload.to_string(),
        "--idle".into(),
        params.idle_timeout.as_secs().to_string(),
    ];
    let json = run(
        "pubsub_bench.py",
        &args,
        &[("PUBSUB_EMULATOR_HOST", host.to_string())],
    )?;
    Ok(result("gcp", "google-cloud-pubsub (Python)", params, json))
}
