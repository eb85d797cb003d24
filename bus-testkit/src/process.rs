//! Broker processes owned by a test binary: started behind a watchdog that kills them when the
//! test process is gone (even after a panic or SIGKILL), stopped gracefully on demand; and
//! finding programs and free ports for them.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A process started by [`WatchedProcess::start`].
#[derive(Debug, Default)]
pub struct WatchedProcess {
    pid: Mutex<Option<u32>>,
}

impl WatchedProcess {
    /// A handle with no process yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `command` (a shell command line) with stdout and stderr appended to `log`, behind a
    /// watchdog shell that kills it once this test process has exited.
    pub fn start(&self, command: &str, log: &Path) {
        let script = format!(
            "{command} >>'{log}' 2>&1 & p=$!; echo $p; \
             while kill -0 {parent} 2>/dev/null && kill -0 $p 2>/dev/null; do sleep 0.5; done; \
             kill $p 2>/dev/null",
            log = log.display(),
            parent = std::process::id(),
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh to start `{command}`: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the child's pid");
        let pid: u32 = line.trim().parse().expect("the child's pid");
        *self.pid.lock().expect("pid lock") = Some(pid);
        // Reap the watchdog in the background.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
    }

    /// The process id of the command (its shell, for a command line that runs others), if it
    /// was started and not stopped.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.lock().expect("pid lock")
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.pid
            .lock()
            .expect("pid lock")
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// SIGTERM (a graceful stop), then SIGKILL after 10 s; returns once the process is gone.
    pub fn stop(&self) {
        let Some(pid) = self.pid.lock().expect("pid lock").take() else {
            return;
        };
        let alive = || Path::new(&format!("/proc/{pid}")).exists();
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }

    /// SIGKILL, returning once the process is gone.
    pub fn kill(&self) {
        let Some(pid) = self.pid.lock().expect("pid lock").take() else {
            return;
        };
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls `ready` every 50 ms until it is true; panics with `describe()` if the process
    /// exits or `timeout` passes first.
    pub fn wait_until(
        &self,
        timeout: Duration,
        ready: impl Fn() -> bool,
        describe: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + timeout;
        while !ready() {
            if Instant::now() > deadline || !self.is_running() {
                panic!("{}", describe());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WatchedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// The full path of `program` on `PATH` (or in /usr/sbin, where Debian puts mosquitto).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
