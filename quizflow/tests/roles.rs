//! Roles running alone serve their own `/metrics`, `/healthz` and `/readyz` on
//! `QUIZFLOW_METRICS_ADDR`: `quizflow batcher` shows a stored lead in its counters and the
//! consumer depths, `quizflow workers` its circuits.

use quizflow_core::{parse_submission, IdempotencyKey, QuizId, SubmissionEnvelope, SubmissionId};
use quizflow_testkit::{NatsServer, TestDb};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Role(Child);

impl Drop for Role {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn role(args: &[&str], nats: &str, db: &str, metrics_port: u16) -> Role {
    Role(
        Command::new(env!("CARGO_BIN_EXE_quizflow"))
            .args(args)
            .env("NATS_URL", nats)
            .env("DATABASE_URL", db)
            .env("QUIZFLOW_HASH_KEY", "roles-test-hash-key-0123456789")
            .env("QUIZFLOW_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn role"),
    )
}

/// Waits until the role's `/metrics` contains every one of `want` (whole lines).
async fn wait_metrics(http: &reqwest::Client, port: u16, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            let text = r.text().await.unwrap_or_default();
            if want.iter().all(|w| text.lines().any(|l| l == *w)) {
                return text;
            }
            assert!(Instant::now() < deadline, "missing {want:?} in:\n{text}");
        }
        assert!(Instant::now() < deadline, "no /metrics on {port}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn given_roles_alone_then_each_serves_metrics_health_and_readiness() {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    let http = reqwest::Client::new();
    let (bport, wport) = (quizflow_testkit::free_port(), quizflow_testkit::free_port());
    let _batcher = role(&["batcher"], &nats.url(), &db.url, bport);
    let _workers = role(
        &[
            "workers",
            "--channels",
            "sms",
            "--mock-provider",
            "http://127.0.0.1:9",
        ],
        &nats.url(),
        &db.url,
        wport,
    );
    wait_metrics(
        &http,
        bport,
        &["quizflow_batcher_submissions_stored_total 0"],
    )
    .await;
    for port in [bport, wport] {
        let health = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status().as_u16(), 200);
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(ready.status().as_u16(), 200);
    }

    // A lead straight into the stream: the batcher's counters move.
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let quiz = QuizId::parse("roles").expect("quiz");
    let key = IdempotencyKey::parse("one").expect("key");
    let env = SubmissionEnvelope::new(
        SubmissionId::from_key(&quiz, &key),
        quiz,
        chrono::Utc::now(),
        Some(key),
        parse_submission(&serde_json::json!({"score": 1})).expect("valid"),
    );
    quizflow_nats::publish_submission(&js, &env)
        .await
        .expect("publish");
    wait_metrics(
        &http,
        bport,
        &[
            "quizflow_batcher_submissions_stored_total 1",
            "quizflow_consumer_pending_messages{consumer=\"batcher\",stream=\"SUBMISSIONS\"} 0",
            "quizflow_stream_messages{stream=\"SUBMISSIONS\"} 1",
        ],
    )
    .await;
    wait_metrics(
        &http,
        wport,
        &["quizflow_circuit_breaker_state{channel=\"sms\",provider=\"twilio\",sender=\"twilio/+15550000000\"} 0"],
    )
    .await;
}
