//! Shared by the `quizflow up` tests: start the binary on a private data dir, wait for it.
#![allow(dead_code)] // each test binary uses a part

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills `quizflow up` (and so its private servers, via the next start's takeover or its
/// own shutdown) if a failing assertion unwinds past it: no process outlives the test.
pub struct Up(pub Child);

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.0.wait();
        }
    }
}

pub fn spawn_up(data_dir: &std::path::Path, port: u16, mock_port: u16) -> Up {
    spawn_up_with(data_dir, port, mock_port, &[])
}

/// As [`spawn_up`], with extra environment variables.
pub fn spawn_up_with(
    data_dir: &std::path::Path,
    port: u16,
    mock_port: u16,
    env: &[(&str, &str)],
) -> Up {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quizflow"));
    cmd.arg("up")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env("QUIZFLOW_DATA_DIR", data_dir)
        .env("QUIZFLOW_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("QUIZFLOW_MOCK_ADDR", format!("127.0.0.1:{mock_port}"))
        .env(
            "QUIZFLOW_MOCK_SMTP_ADDR",
            format!("127.0.0.1:{}", quizflow_testkit::free_port()),
        )
        .env(
            "QUIZFLOW_NATS_SERVER_BIN",
            quizflow_testkit::nats_server_binary(),
        )
        // A killed batcher's unacked messages come back after this (60 s by default).
        .env("QUIZFLOW_BATCHER_ACK_WAIT", "3s")
        .env("RUST_LOG", "info,poem=warn")
        .stdout(Stdio::null())
        .stderr(log_file(data_dir));
    cmd.envs(env.iter().copied());
    Up(cmd.spawn().expect("spawn quizflow up"))
}

/// `up`'s log (every start on this data dir, appended), shown when a test gives up on it.
fn log_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.with_extension("log")
}

fn log_file(data_dir: &std::path::Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(data_dir))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

pub async fn wait_ready(http: &reqwest::Client, base: &str, data_dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        if Instant::now() >= deadline {
            let tail = |path: std::path::PathBuf| {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(40);
                format!("--- {} ---\n{}", path.display(), lines[from..].join("\n"))
            };
            panic!(
                "quizflow up did not become ready; its logs end:\n{}\n{}\n{}",
                tail(log_path(data_dir)),
                tail(data_dir.join("nats/nats-server.log")),
                tail(data_dir.join("postgres/postgres.log")),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
