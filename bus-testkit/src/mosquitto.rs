//! Starts a real Mosquitto for a test binary: its own config in a temp dir, a free port on
//! 127.0.0.1, persistence in that dir. It can be stopped and restarted on the same port and data
//! dir (for fault tests), and it dies with the test process, even after a panic.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{free_port, which, WatchedProcess};

/// How to install Mosquitto, repeated in every "not found" failure.
pub const INSTALL_HINT: &str =
    "install it with `apt-get install -y mosquitto mosquitto-clients` (Debian/Ubuntu), or point the suite at a running broker with BUS_TEST_MQTT_URL=mqtt://HOST:PORT";

/// The variable naming the broker binary the tests start (default: `mosquitto` on `PATH`).
/// `scripts/test-all.sh` runs every MQTT test binary once per broker it names.
pub const BROKER_VAR: &str = "BUS_TEST_MOSQUITTO";

/// The broker binary the tests start: [`BROKER_VAR`] if set, else `mosquitto` on `PATH`.
pub fn broker_binary() -> PathBuf {
    match std::env::var_os(BROKER_VAR) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "{BROKER_VAR}={} is not a file; build the brokers with ../shared/brokers/build-mosquitto.sh",
                path.display()
            );
            path
        }
        None => which("mosquitto")
            .unwrap_or_else(|| panic!("the `mosquitto` broker is not installed: {INSTALL_HINT}")),
    }
}

/// The version of the broker the tests start, e.g. `(2, 0, 11)`, read from `mosquitto -h`.
pub fn broker_version() -> (u32, u32, u32) {
    static VERSION: OnceLock<(u32, u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let output = std::process::Command::new(broker_binary())
            .arg("-h")
            .output()
            .expect("run mosquitto -h");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let version = text
            .split_whitespace()
            .skip_while(|word| *word != "version")
            .nth(1)
            .unwrap_or_else(|| panic!("no version in `mosquitto -h`: {text}"));
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        )
    })
}

/// A Mosquitto process owned by the test binary.
#[derive(Debug)]
pub struct Mosquitto {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    process: WatchedProcess,
}

impl Mosquitto {
    /// The broker of this test binary, started on first use and shared by its tests.
    pub fn shared() -> &'static Mosquitto {
        static BROKER: OnceLock<Mosquitto> = OnceLock::new();
        BROKER.get_or_init(Mosquitto::start)
    }

    /// Writes the config and starts the broker; panics with [`INSTALL_HINT`] if `mosquitto`
    /// is not installed, or with the broker's log if it does not come up.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|_| String::new())
    }

    /// Like [`Mosquitto::start`], with extra config lines, made from the data dir (for
    /// password files, ACLs and certificates written there).
    pub fn start_with(extra_config: impl FnOnce(&Path) -> String) -> Mosquitto {
        let binary = broker_binary();
        let dir = tempfile::tempdir().expect("temp dir for mosquitto");
        let port = free_port();
        let extra = extra_config(dir.path());
        let listener = if extra.contains("listener ") {
            String::new()
        } else {
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n")
        };
        // Run as root, Mosquitto switches to the `mosquitto` user, which cannot write to our
        // temp dir: persistence and the log would silently fail. Keep the current user.
        let user = if running_as_root() { "user root\n" } else { "" };
        let config = format!(
            "# Written by bus-testkit for one test binary.\n\
             {user}\
             {listener}\
             persistence true\n\
             persistence_location {data}/\n\
             # Saved on shutdown and every second: a SIGKILL loses at most the last second.\n\
             autosave_interval 1\n\
             # Mosquitto silently drops QoS 1 messages beyond max_queued_messages (default 1000)\n\
             # for a subscriber that falls behind: a bound no backlog reaches. Not 0 (no limit):\n\
             # with 0, Mosquitto 2.0 drops the connection of a client whose publish it refuses.\n\
             max_queued_messages 1000000000\n\
             max_queued_bytes 0\n\
             # Advertised as MQTT 5 receive-maximum; the default of 20 throttles publishers.\n\
             max_inflight_messages 0\n\
             log_dest file {data}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             {extra}\n",
            data = dir.path().display(),
            extra = extra.replace("{port}", &port.to_string()),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("write mosquitto.conf");
        let broker = Mosquitto {
            binary,
            port,
            dir,
            process: WatchedProcess::new(),
        };
        broker.launch();
        broker
    }

    /// The broker's process id while it runs (e.g. to read its memory in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The data dir (config, persistence, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        read("mosquitto.conf.stderr") + &read("mosquitto.log")
    }

    /// Graceful stop (SIGTERM: Mosquitto saves its persistence file), waiting until it exited.
    pub fn stop(&self) {
        self.process.stop();
    }

    /// Starts the broker again on the same port with the same data dir.
    pub fn restart(&self) {
        self.stop();
        self.launch();
    }

    /// Kills the broker with SIGKILL (no chance to save), waiting until it is gone.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Starts a stopped or killed broker again on the same port with the same data dir.
    pub fn start_again(&self) {
        self.launch();
    }

    fn launch(&self) {
        let config = self.dir.path().join("mosquitto.conf");
        let command = format!("'{}' -c '{}'", self.binary.display(), config.display());
        self.process
            .start(&command, &self.dir.path().join("mosquitto.conf.stderr"));
        self.process.wait_until(
            Duration::from_secs(10),
            || TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            || {
                format!(
                    "mosquitto did not start on port {}; its log:\n{}",
                    self.port,
                    self.log()
                )
            },
        );
    }

    /// Appends to the broker's config (takes effect on the next [`restart`](Self::restart)).
    pub fn append_config(&self, lines: &str) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("mosquitto.conf"))
            .expect("open mosquitto.conf");
        writeln!(file, "{lines}").expect("append to mosquitto.conf");
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
