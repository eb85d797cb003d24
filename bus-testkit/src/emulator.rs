//! Starts Google's Pub/Sub emulator for a test binary on a free port, waits until it answers,
//! and stops it when the tests end (even after a panic).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::WatchedProcess;
use crate::process::{free_port, which};

/// Where the Debian/Ubuntu `google-cloud-cli-pubsub-emulator` package puts the emulator.
pub const DEFAULT_EMULATOR: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// How to get the emulator, repeated in every "not found" failure.
pub const EMULATOR_HINT: &str = "install Google's Pub/Sub emulator (Java 17+): `apt-get install -y google-cloud-cli-pubsub-emulator` from Google's Cloud SDK apt repository, or `gcloud components install pubsub-emulator`; or set PUBSUB_EMULATOR_BIN to its `cloud-pubsub-emulator` script, or PUBSUB_EMULATOR_HOST=HOST:PORT to use a running emulator";

/// A Pub/Sub emulator process owned by the test binary.
#[derive(Debug)]
pub struct PubSubEmulator {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    process: WatchedProcess,
}

/// Finds the emulator: `PUBSUB_EMULATOR_BIN`, the gcloud SDK root (`CLOUDSDK_ROOT_DIR`), the
/// Debian package's path, then the SDK root that `gcloud` on PATH belongs to.
pub fn find_emulator() -> Option<PathBuf> {
    let relative = "platform/pubsub-emulator/bin/cloud-pubsub-emulator";
    let mut candidates = Vec::new();
    if let Some(bin) = std::env::var_os("PUBSUB_EMULATOR_BIN") {
        candidates.push(PathBuf::from(bin));
    }
    if let Some(root) = std::env::var_os("CLOUDSDK_ROOT_DIR") {
        candidates.push(PathBuf::from(root).join(relative));
    }
    candidates.push(PathBuf::from(DEFAULT_EMULATOR));
    if let Some(gcloud) = which("gcloud") {
        let resolved = std::fs::canonicalize(&gcloud).unwrap_or(gcloud);
        // .../google-cloud-sdk/bin/gcloud -> .../google-cloud-sdk
        if let Some(root) = resolved.parent().and_then(|bin| bin.parent()) {
            candidates.push(root.join(relative));
        }
    }
    candidates.into_iter().find(|path| path.is_file())
}

impl PubSubEmulator {
    /// Starts the emulator on a free port; panics with [`EMULATOR_HINT`] if it is not installed,
    /// or with its log if it does not answer within 60 s.
    pub fn start() -> PubSubEmulator {
        let binary = find_emulator()
            .unwrap_or_else(|| panic!("Google's Pub/Sub emulator was not found: {EMULATOR_HINT}"));
        let emulator = PubSubEmulator {
            binary,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir for the emulator"),
            process: WatchedProcess::new(),
        };
        emulator.launch();
        emulator
    }

    /// The emulator of this test binary, started on first use and shared by its tests.
    pub fn shared() -> &'static PubSubEmulator {
        static EMULATOR: OnceLock<PubSubEmulator> = OnceLock::new();
        EMULATOR.get_or_init(PubSubEmulator::start)
    }

    /// `127.0.0.1:PORT`, the form of `PUBSUB_EMULATOR_HOST`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id of the emulator's launcher while it runs; the JVM is one of its
    /// descendants.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The emulator's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
    }

    fn launch(&self) {
        let command = format!(
            "'{}' --host=127.0.0.1 --port={}",
            self.binary.display(),
            self.port
        );
        self.process
            .start(&command, &self.dir.path().join("emulator.log"));
        self.process.wait_until(
            Duration::from_secs(60),
            || answers(self.port),
            || {
                format!(
                    "the Pub/Sub emulator did not answer on port {}; its log:\n{}",
                    self.port,
                    self.log()
                )
            },
        );
    }
}

/// Whether an HTTP GET / on the port answers `Ok`, as the emulator does once it serves.
fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") && response.trim_end().ends_with("Ok")
}
