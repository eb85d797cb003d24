//! A program under test as a child process: what it prints is echoed to the test's output and
//! kept, line by line, for the test to wait on and assert about; it is killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a step (a line to appear, the program to exit) may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// One line a program printed, and on which stream.
#[derive(Debug, Clone)]
pub struct Line {
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The text.
    pub text: String,
}

/// A running program; killed when dropped.
#[derive(Debug)]
pub struct Program {
    name: String,
    child: Child,
    lines: mpsc::Receiver<Line>,
    seen: Arc<Mutex<Vec<Line>>>,
}

/// The environment variables that configure bus (`BUS_*`) or point at an emulator: a program
/// under test gets only those its test sets.
pub fn clear_bus_environment(command: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("BUS_") || key == "PUBSUB_EMULATOR_HOST" {
            command.env_remove(key);
        }
    }
}

impl Program {
    /// Starts `command` (stdin closed, stdout and stderr read), naming it `name` in output.
    pub fn spawn(name: &str, mut command: Command) -> Program {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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
        Program {
            name: name.to_string(),
            child,
            lines,
            seen,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
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

    /// The lines printed on `stream` so far.
    pub fn lines_of(&self, stream: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.stream == stream)
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
        self.child.kill().expect("kill the program");
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; panics if it does not within [`STEP_TIMEOUT`].
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the program") {
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

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python the interop tests run: `BUS_TEST_PYTHON`, or the workspace's `.venv` that
/// `scripts/test-all.sh` creates (with paho-mqtt 2.1, cloudevents and google-cloud-pubsub).
/// Panics saying how to get it if it cannot import `modules` (comma-separated).
pub fn test_python(modules: &str) -> std::path::PathBuf {
    let python = std::env::var_os("BUS_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
        });
    let ready = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ready,
        "the interop tests need {} able to import {modules}: run scripts/test-all.sh (it creates .venv), or python3 -m venv .venv && .venv/bin/pip install paho-mqtt==2.1.0 cloudevents google-cloud-pubsub, or point BUS_TEST_PYTHON at such a Python",
        python.display()
    );
    python
}
