//! compose.yaml (and its dev override) is valid for Compose, checked with `docker-compose
//! config`, which needs no Docker engine.

use std::path::Path;
use std::process::Command;

fn validate(files: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Compose reads deploy/mqtt.env, which users copy from the example; validate in a copy
    // so the check works on a clean clone.
    let copy = tempfile::tempdir().unwrap();
    for file in ["compose.yaml", "compose.dev.yaml"] {
        std::fs::copy(root.join(file), copy.path().join(file)).unwrap();
    }
    // Build contexts and mounted files must exist: link them.
    for dir in ["pubsub-emulator", "examples"] {
        std::os::unix::fs::symlink(root.join(dir), copy.path().join(dir)).unwrap();
    }
    std::fs::create_dir_all(copy.path().join("deploy")).unwrap();
    std::os::unix::fs::symlink(
        root.join("deploy/mosquitto"),
        copy.path().join("deploy/mosquitto"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        root.join("deploy/prometheus.yml"),
        copy.path().join("deploy/prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(
        root.join("deploy/mqtt.env.example"),
        copy.path().join("deploy/mqtt.env"),
    )
    .unwrap();
    let mut command = Command::new("docker-compose");
    for file in files {
        command.args(["-f", file]);
    }
    let output = command
        .args(["config"])
        .current_dir(copy.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("docker-compose is needed to validate compose.yaml ({e}): apt-get install -y docker-compose")
        });
    let config = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "docker-compose config {files:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for service in [
        "mosquitto:",
        "pubsub-emulator:",
        "patch-evaluation:",
        "llm-dispatch:",
        "cpg-generator:",
        "fuzzing-service:",
        "autopatch-docker-network:",
        "eclipse-mosquitto:2.0.20",
        "BUS_TELEMETRY__PROMETHEUS",
        "9464",
    ] {
        assert!(config.contains(service), "{files:?} defines {service}");
    }
}

#[test]
fn compose_yaml_is_valid() {
    validate(&["compose.yaml"]);
}

#[test]
fn the_dev_override_is_valid() {
    validate(&["compose.yaml", "compose.dev.yaml"]);
}
