//! Running the example binaries as processes against real brokers, and reading what they print.
#![allow(dead_code)] // Each test binary uses part of this.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_testkit::emulator::PubSubEmulator;
use bus_testkit::mosquitto::Mosquitto;

/// How long a step of an example may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);

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
        let vars: HashMap<_, _> = self.vars.iter().cloned().collect();
        let mut figment = figment::Figment::new();
        for (key, value) in &vars {
            if let Some(path) = key.strip_prefix("BUS_") {
                let path = path.to_ascii_lowercase().replace("__", ".");
                figment = figment.merge(figment::providers::Serialized::default(&path, value));
            }
        }
        if let Some(host) = vars.get("PUBSUB_EMULATOR_HOST") {
            figment = figment.merge(figment::providers::Serialized::default(
                "gcp.endpoint",
                format!("http://{host}"),
            ));
        }
        figment = figment.merge(figment::providers::Serialized::default(
            "mqtt.client_id",
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        ));
        bus::Config::from_figment(figment).expect("test config")
    }
}

/// One line an example printed, and on which stream.
#[derive(Debug, Clone)]
pub struct Line {
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The text.
    pub text: String,
}

/// An example binary running as a child process; killed when dropped.
pub struct Example {
    name: String,
    child: Child,
    lines: mpsc::Receiver<Line>,
    /// Everything read so far, for failure messages and assertions.
    pub seen: Arc<Mutex<Vec<Line>>>,
}

/// The Python with paho-mqtt 2.1 and cloudevents: `BUS_TEST_PYTHON`, or the workspace's
/// `.venv` that the test script creates. Panics saying how to get it.
pub fn python() -> PathBuf {
    let python = std::env::var_os("BUS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let ready = Command::new(&python)
        .args(["-c", "import paho.mqtt, cloudevents.conversion"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ready,
        "the Python interop tests need {} with paho-mqtt 2.1 and cloudevents: run scripts/test-all.sh (it creates .venv), or python3 -m venv .venv && .venv/bin/pip install paho-mqtt==2.1.0 cloudevents, or point BUS_TEST_PYTHON at such a Python",
        python.display()
    );
    python
}

/// The path of an example binary built by Cargo for this test.
pub fn binary(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_consume"));
    dir.with_file_name(name)
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
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("BUS_") || key == "PUBSUB_EMULATOR_HOST" {
                command.env_remove(key);
            }
        }
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
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (stream, reader) in [
            ("stdout", Box::new(stdout) as Box<dyn std::io::Read + Send>),
            ("stderr", Box::new(stderr)),
        ] {
            let (tx, seen, name) = (tx.clone(), seen.clone(), name.to_string());
            std::thread::spawn(move || {
                for text in BufReader::new(reader).lines().map_while(Result::ok) {
                    eprintln!("[{name} {stream}] {text}");
                    let line = Line { stream, text };
                    seen.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Example {
            name: name.to_string(),
            child,
            lines,
            seen,
        }
    }

    /// Waits for a line containing `needle` on `stream`; panics with everything printed so
    /// far if it does not come within [`STEP_TIMEOUT`].
    pub fn expect_line(&self, stream: &str, needle: &str) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.stream == stream && line.text.contains(needle) => {
                    return line.text
                }
                Ok(_) => continue,
                Err(_) => panic!(
                    "{} did not print {needle:?} on {stream} within {STEP_TIMEOUT:?}; it printed:\n{}",
                    self.name,
                    self.transcript()
                ),
            }
        }
    }

    /// Everything printed so far.
    pub fn transcript(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|l| format!("[{}] {}\n", l.stream, l.text))
            .collect()
    }

    /// The lines printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.stream == "stdout")
            .map(|l| l.text.clone())
            .collect()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.name);
    }

    /// Sends SIGKILL: the process dies at once, without closing anything.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill the example");
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; panics if it does not within [`STEP_TIMEOUT`].
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for example") {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                while self.lines.try_recv().is_ok() {}
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {STEP_TIMEOUT:?}; it printed:\n{}",
                    self.name,
                    self.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a successful exit.
    pub fn wait_success(&mut self) {
        let status = self.wait();
        assert!(
            status.success(),
            "{} exited with {status}; it printed:\n{}",
            self.name,
            self.transcript()
        );
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
