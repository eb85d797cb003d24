//! Running the example binaries as processes against real brokers, and reading what they print.
#![allow(dead_code)] // Each test binary uses part of this.

use std::path::PathBuf;
use std::process::Command;

use bus_testkit::emulator::PubSubEmulator;
use bus_testkit::mosquitto::Mosquitto;
#[allow(unused_imports)] // Used by some of the test binaries.
pub use bus_testkit::program::STEP_TIMEOUT;
use bus_testkit::program::{clear_bus_environment, Program};

/// The `BUS_*` environment that points an example at one broker.
#[derive(Debug, Clone)]
pub struct BrokerEnv {
    /// Backend name for messages.
    pub name: &'static str,
    /// Variables for the child processes.
    pub vars: Vec<(String, String)>,
}

impl BrokerEnv {
    /// A fresh Mosquitto for this test.
    pub fn mosquitto(broker: &Mosquitto) -> BrokerEnv {
        BrokerEnv {
            name: "mqtt",
            vars: vec![
                ("BUS_BACKEND".into(), "mqtt".into()),
                ("BUS_MQTT__URL".into(), broker.url()),
            ],
        }
    }

    /// The shared emulator, with a project of its own (so topics and subscriptions are new).
    pub fn emulator() -> BrokerEnv {
        let project = format!(
            "examples-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        BrokerEnv {
            name: "gcp",
            vars: vec![
                ("BUS_BACKEND".into(), "gcp".into()),
                ("BUS_GCP__PROJECT".into(), project),
                (
                    "PUBSUB_EMULATOR_HOST".into(),
                    PubSubEmulator::shared().host_port(),
                ),
            ],
        }
    }

    /// The in-memory backend.
    pub fn memory() -> BrokerEnv {
        BrokerEnv {
            name: "memory",
            vars: vec![("BUS_BACKEND".into(), "memory".into())],
        }
    }

    /// The same variables plus `extra`.
    pub fn with(&self, extra: &[(&str, &str)]) -> BrokerEnv {
        let mut env = self.clone();
        env.vars
            .extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// A bus config for the test process itself, on the same broker.
    pub fn config(&self) -> bus::Config {
        let mut vars = self.vars.clone();
        if let Some((_, host)) = vars.iter().find(|(k, _)| k == "PUBSUB_EMULATOR_HOST") {
            vars.push(("BUS_GCP__ENDPOINT".into(), format!("http://{host}")));
        }
        vars.push((
            "BUS_MQTT__CLIENT_ID".into(),
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        ));
        bus::Config::from_env_vars(vars).expect("test config")
    }
}

/// An example binary (or Python script) running as a child process; killed when dropped.
pub struct Example(Program);

impl std::ops::Deref for Example {
    type Target = Program;
    fn deref(&self) -> &Program {
        &self.0
    }
}

impl std::ops::DerefMut for Example {
    fn deref_mut(&mut self) -> &mut Program {
        &mut self.0
    }
}

/// The Python with the libraries these tests use (see [`bus_testkit::program::test_python`]).
pub fn python() -> PathBuf {
    bus_testkit::program::test_python("paho.mqtt, cloudevents.conversion")
}

/// The path of a binary built by Cargo for this test: the examples, and `bus` (built by
/// `cargo test --workspace`, or `cargo build -p bus-cli`).
pub fn binary(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_consume"));
    let path = dir.with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run the workspace's tests (cargo test --workspace) or cargo build -p bus-cli",
        path.display()
    );
    path
}

impl Example {
    /// Starts `name` with `args` in the environment `env` (and no other `BUS_*` variables).
    pub fn start(name: &str, args: &[&str], env: &BrokerEnv) -> Example {
        let mut command = Command::new(binary(name));
        command.args(args);
        Example::spawn(name, command, env)
    }

    /// Runs one of `examples/python/` with the test virtualenv's Python.
    pub fn python(script: &str, args: &[&str]) -> Example {
        let mut command = Command::new(python());
        command
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("python")
                    .join(script),
            )
            .args(args);
        Example::spawn(
            script,
            command,
            &BrokerEnv {
                name: "python",
                vars: Vec::new(),
            },
        )
    }

    fn spawn(name: &str, mut command: Command, env: &BrokerEnv) -> Example {
        clear_bus_environment(&mut command);
        command.envs(env.vars.iter().map(|(k, v)| (k, v)));
        // patch-evaluation keeps its join state in a file: a fresh one per start, unless the
        // test names one (to restart on the same state).
        if !env.vars.iter().any(|(k, _)| k == "BUS_APP__STATE_FILE") {
            let state = std::env::temp_dir().join(format!(
                "bus-test-{name}-{}.sqlite3",
                uuid::Uuid::new_v4().simple()
            ));
            command.env("BUS_APP__STATE_FILE", state);
        }
        Example(Program::spawn(name, command))
    }

    /// The lines printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines_of("stdout")
    }
}

/// Subscribes the test itself to the published evaluations, as `test-observer`.
pub async fn observe_evaluations(
    bus: &bus::Bus,
) -> bus::cloudevents::EventSubscription<bus_examples::schema::PatchEvaluation> {
    let topic = bus::Topic::new(bus_examples::schema::PATCH_EVALUATION_TOPIC).unwrap();
    let options = bus::SubscriptionOptions::new("test-observer").unwrap();
    bus::cloudevents::EventSubscription::new(
        bus.subscriber
            .subscribe(&topic, options)
            .await
            .expect("subscribe to evaluations"),
    )
}
