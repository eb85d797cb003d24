//! Running `bus` as a process against real brokers, with exactly the environment a test gives.
#![allow(dead_code)] // Each test binary uses part of this.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bus_testkit::emulator::PubSubEmulator;
use bus_testkit::mosquitto::Mosquitto;
use bus_testkit::program::{clear_bus_environment, Program};

/// How long one `bus` command may run before the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The environment of `bus` commands: `BUS_*` variables (and the emulator's host).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// The variables.
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// MQTT on `broker`.
    pub fn mosquitto(broker: &Mosquitto) -> Env {
        Env::default().with(&[("BUS_BACKEND", "mqtt"), ("BUS_MQTT__URL", &broker.url())])
    }

    /// The shared emulator, in a project of its own, with provisioning off (as against real
    /// Pub/Sub: what a command needs is provisioned first).
    pub fn emulator() -> Env {
        Env::emulator_at(&PubSubEmulator::shared().host_port())
    }

    /// An emulator reached at `host_port` (a fault proxy, say), in a project of its own.
    pub fn emulator_at(host_port: &str) -> Env {
        let project = format!("cli-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Env::default().with(&[
            ("BUS_BACKEND", "gcp"),
            ("BUS_GCP__PROJECT", &project),
            ("BUS_GCP__PROVISIONING", "false"),
            ("BUS_GCP__ENDPOINT", &format!("http://{host_port}")),
            // For Google's own clients (the interop tests).
            ("PUBSUB_EMULATOR_HOST", host_port),
        ])
    }

    /// The same variables with `extra` on top.
    pub fn with(&self, extra: &[(&str, &str)]) -> Env {
        let mut env = self.clone();
        for (key, value) in extra {
            env.vars.retain(|(k, _)| k != key);
            env.vars.push((key.to_string(), value.to_string()));
        }
        env
    }

    /// One variable's value.
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key} is not set"))
    }

    /// The config the test itself uses, on the same broker (with a client id of its own).
    pub fn config(&self) -> bus::Config {
        let client_id = format!("test-{}", uuid::Uuid::new_v4().simple());
        bus::Config::from_env_vars(self.with(&[("BUS_MQTT__CLIENT_ID", &client_id)]).vars)
            .expect("test config")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bus"));
        clear_bus_environment(&mut command);
        command
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            // No bus.toml of the developer's is picked up.
            .current_dir(std::env::temp_dir());
        command
    }

    /// Runs `bus args...` to its end, with `stdin`.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Ran {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bus");
        let mut input = child.stdin.take().expect("piped stdin");
        let stdin = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        });
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output = match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(output) => output.expect("bus ran"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("bus {args:?} did not finish within {COMMAND_TIMEOUT:?}")
            }
        };
        let _ = writer.join();
        let ran = Ran {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: output.status.code(),
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        eprintln!(
            "bus {:?} -> {:?}\n{}{}",
            ran.args,
            ran.code,
            ran.stdout_text(),
            ran.stderr
        );
        ran
    }

    /// Runs `bus args...` to its end, stdin empty.
    pub fn run(&self, args: &[&str]) -> Ran {
        self.run_with_stdin(args, b"")
    }

    /// Runs `bus args...` and expects success.
    pub fn ok(&self, args: &[&str]) -> Ran {
        let ran = self.run(args);
        ran.assert_code(0);
        ran
    }

    /// Starts `bus args...` in the background (a bridge, say).
    pub fn start(&self, name: &str, args: &[&str]) -> Program {
        Program::spawn(name, self.command(args))
    }

    /// Writes `text` to a fresh temporary file and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "bus-cli-test-{}-{name}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, text).expect("write a test file");
        path
    }
}

/// A finished `bus` command.
#[derive(Debug)]
pub struct Ran {
    /// The arguments.
    pub args: Vec<String>,
    /// The exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// Standard output, as bytes.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: String,
}

impl Ran {
    /// Standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard output's lines.
    pub fn lines(&self) -> Vec<String> {
        self.stdout_text().lines().map(str::to_string).collect()
    }

    /// Standard output's lines as JSON objects.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
            })
            .collect()
    }

    /// Checks the exit code.
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "bus {:?} exited with {:?}:\n{}{}",
            self.args,
            self.code,
            self.stdout_text(),
            self.stderr
        );
    }

    /// Checks a failure: `code`, and one line on stderr, `bus: ...`, containing each of
    /// `needles`; never a panic or a backtrace.
    pub fn assert_one_line_error(&self, code: i32, needles: &[&str]) {
        self.assert_code(code);
        let lines: Vec<_> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one line on stderr for {:?}: {}",
            self.args,
            self.stderr
        );
        assert!(lines[0].starts_with("bus: "), "{}", lines[0]);
        for needle in needles {
            assert!(
                lines[0].contains(needle),
                "{needle:?} in the error of {:?}: {}",
                self.args,
                lines[0]
            );
        }
        for forbidden in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(!self.stderr.contains(forbidden), "{}", self.stderr);
        }
    }
}

/// Waits until `check` holds, for at most `limit`.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Python with the libraries these tests use (see [`bus_testkit::program::test_python`]).
pub fn python() -> PathBuf {
    bus_testkit::program::test_python("paho.mqtt, google.cloud.pubsub_v1")
}

/// Runs a Python program with `env`'s variables; returns its stdout, panicking on failure.
pub fn run_python(env: &Env, code: &str, args: &[&str]) -> String {
    let mut command = Command::new(python());
    clear_bus_environment(&mut command);
    let output = command
        .arg("-c")
        .arg(code)
        .args(args)
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "python failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
