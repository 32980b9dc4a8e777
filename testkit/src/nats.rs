use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The nats-server binary tests use: `QUIZFLOW_NATS_SERVER_BIN`, else the one the test script
/// installs under `.tools/`, else `nats-server` on `PATH` (which must be >= 2.10).
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("QUIZFLOW_NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let local = root.join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A private JetStream server for one test.
pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> Self {
        let mut s = Self {
            port: crate::free_port(),
            store: tempfile::tempdir().expect("temp store"),
            child: None,
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(nats_server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (run scripts/dev.sh test, or set QUIZFLOW_NATS_SERVER_BIN)");
        self.child = Some(child);
        assert!(
            crate::wait_for_port(&format!("127.0.0.1:{}", self.port), Duration::from_secs(10)),
            "nats-server did not come up on port {}",
            self.port
        );
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
