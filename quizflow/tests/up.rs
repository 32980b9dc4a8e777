//! `quizflow up` end to end: private servers, API and batcher, a campaign matching a
//! submission into stored rows, a restart after `kill -9` that keeps what was acknowledged,
//! and a clean SIGTERM shutdown.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn_up(data_dir: &std::path::Path, port: u16) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quizflow"));
    cmd.arg("up")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env("QUIZFLOW_DATA_DIR", data_dir)
        .env("QUIZFLOW_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "QUIZFLOW_MOCK_ADDR",
            format!("127.0.0.1:{}", quizflow_testkit::free_port()),
        )
        .env(
            "QUIZFLOW_NATS_SERVER_BIN",
            quizflow_testkit::nats_server_binary(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().expect("spawn quizflow up")
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "quizflow up did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn children_alive(data_dir: &std::path::Path) -> usize {
    let needle = data_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(&needle))
        .count()
}

async fn post(http: &reqwest::Client, base: &str, key: &str) -> serde_json::Value {
    let r = http
        .post(format!("{base}/v1/quizzes/up-test/submissions"))
        .header("Idempotency-Key", key)
        .json(&serde_json::json!({"score": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);
    r.json().await.expect("json")
}

#[tokio::test]
async fn given_nothing_configured_when_up_then_it_serves_stops_cleanly_and_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let port = quizflow_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // First run: serve, then kill -9 (children are left behind, orphaned).
    let mut up = spawn_up(&data, port);
    wait_ready(&http, &base).await;
    let first = post(&http, &base, "before-crash").await;
    assert_eq!(first["duplicate"], false);
    let token = std::fs::read_to_string(data.join("admin-token")).expect("admin token written");
    assert!(token.len() >= 32);
    up.kill().expect("kill -9");
    let _ = up.wait();

    // Second run on the same data dir takes over, and the acknowledged submission is still
    // in the stream (JetStream answers "duplicate" for the same id).
    let mut up = spawn_up(&data, port);
    wait_ready(&http, &base).await;
    let again = post(&http, &base, "before-crash").await;
    assert_eq!(again["submission_id"], first["submission_id"]);
    assert_eq!(
        again["duplicate"], true,
        "the acknowledged message survived the crash"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("admin-token")).expect("token"),
        token,
        "the token is kept"
    );

    // SIGTERM stops everything, children included.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("sigterm");
    let deadline = Instant::now() + Duration::from_secs(30);
    while up.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "up did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        children_alive(&data),
        0,
        "nats-server and postgres were stopped"
    );
}
