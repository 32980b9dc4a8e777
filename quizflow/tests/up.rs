//! `quizflow up` end to end: private servers, API, batcher, workers and mock provider; a
//! campaign turning a submission into stored rows and sent messages (a welcome SMS at once
//! and a reminder 2 s later, each on time); a restart after
//! `kill -9` that keeps what was acknowledged; and a clean SIGTERM shutdown.

mod support;

use std::time::{Duration, Instant};
use support::{spawn_up, wait_ready};

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
        .json(&serde_json::json!({"score": 1, "respondent": {"phone": "+5511987654321", "name": "Ana"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);
    r.json().await.expect("json")
}

#[tokio::test]
async fn given_nothing_configured_when_up_then_leads_become_messages_it_survives_kill_9_and_stops_cleanly(
) {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let port = quizflow_testkit::free_port();
    let mock_port = quizflow_testkit::free_port();
    let mock = format!("http://127.0.0.1:{mock_port}");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // First run: serve, then kill -9 (children are left behind, orphaned).
    let mut up = spawn_up(&data, port, mock_port);
    wait_ready(&http, &base, &data).await;
    let first = post(&http, &base, "before-crash").await;
    assert_eq!(first["duplicate"], false);
    let token = std::fs::read_to_string(data.join("admin-token")).expect("admin token written");
    assert!(token.len() >= 32);
    up.0.kill().expect("kill -9");
    let _ = up.0.wait();

    // Second run on the same data dir takes over; that the acknowledged submission survived
    // (is stored) is checked below. (The duplicate marks are in memory and went with the old
    // nats-server, so a copy now answers `duplicate: false`, and is still stored once.)
    let mut up = spawn_up(&data, port, mock_port);
    wait_ready(&http, &base, &data).await;
    let again = post(&http, &base, "before-crash").await;
    assert_eq!(again["submission_id"], first["submission_id"]);
    assert_eq!(
        std::fs::read_to_string(data.join("admin-token")).expect("token"),
        token,
        "the token is kept"
    );

    // The whole pipeline: a campaign created over the API turns a matching submission into a
    // stored row, ledger rows and messages at the mock provider (batcher and workers run
    // inside `up`, every channel pointed at the bundled mock).
    let campaign = serde_json::json!({
        "name": "all up-test", "quiz_id": "up-test", "priority": "high",
        "match": {"all": [{"field": "score", "op": "gte", "value": 1}]},
        "actions": [{"channel": "webhook", "url": format!("{mock}/webhooks/up")},
                    {"channel": "sms", "template": "Olá {{ respondent.name }}"},
                    {"channel": "sms", "template": "Lembrete {{ respondent.name }}", "delay": "2s"}]
    });
    let created = http
        .post(format!("{base}/v1/campaigns"))
        .bearer_auth(&token)
        .json(&campaign)
        .send()
        .await
        .expect("create campaign");
    assert_eq!(created.status().as_u16(), 201);
    // Campaigns apply to submissions received after the change reached the batcher.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lead = post(&http, &base, "after-campaign").await;
    let id = lead["submission_id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http
            .get(format!("{base}/v1/submissions/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        if r.status().as_u16() == 200 {
            let body: serde_json::Value = r.json().await.expect("json");
            let d = body["deliveries"].as_array().cloned().unwrap_or_default();
            if d.len() == 3
                && d.iter()
                    // `up`'s mock reports delivery a moment after accepting.
                    .all(|d| {
                        (d["status"] == "sent" || d["status"] == "delivered") && d["attempts"] == 1
                    })
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "stored and sent in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let detail: serde_json::Value = http
        .get(format!("{base}/v1/submissions/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let reminder_due: chrono::DateTime<chrono::Utc> = detail["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .find(|d| d["channel"] == "sms" && d["step"] == 1)
        .and_then(|d| d["due_at"].as_str())
        .expect("the reminder's ledger row says when it was due")
        .parse()
        .expect("due_at");
    let sms: serde_json::Value = http
        .get(format!("{mock}/_mock/messages?channel=sms"))
        .send()
        .await
        .expect("mock")
        .json()
        .await
        .expect("json");
    let bodies: Vec<&str> = sms["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, ["Olá Ana", "Lembrete Ana"]);
    // On time: the reminder is due 2 s after the match (which follows the receipt within a
    // batch) and goes out at or after that, never before; the welcome goes at once. The
    // bounds leave room for a loaded CI machine: `quizflow bench schedules` measures lateness.
    let at = |i: usize| -> chrono::DateTime<chrono::Utc> {
        sms["messages"][i]["received_at"]
            .as_str()
            .expect("received_at")
            .parse()
            .expect("time")
    };
    let received: chrono::DateTime<chrono::Utc> = detail["received_at"]
        .as_str()
        .expect("received_at")
        .parse()
        .expect("time");
    let (welcome, reminder) = (at(0), at(1));
    let delay = (reminder_due - received).num_milliseconds();
    assert!(
        (2_000..3_000).contains(&delay),
        "reminder due {delay} ms after the lead arrived, asked 2 s"
    );
    let late = (reminder - reminder_due).num_milliseconds();
    assert!(
        (0..2_000).contains(&late),
        "reminder sent {late} ms after it was due"
    );
    assert!(
        (welcome - received).num_milliseconds() < 2_000,
        "the welcome went at once"
    );
    let hooks: serde_json::Value = http
        .get(format!("{mock}/_mock/messages?channel=webhook"))
        .send()
        .await
        .expect("mock")
        .json()
        .await
        .expect("json");
    assert!(hooks["messages"][0]["body"]
        .as_str()
        .is_some_and(|b| b.contains(&id)));
    // The submission accepted before the crash is stored too (redelivered to this run's
    // batcher if the killed one had it in hand).
    let before = first["submission_id"].as_str().expect("id");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http
            .get(format!("{base}/v1/submissions/{before}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pre-crash submission was stored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM stops everything, children included.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("sigterm");
    let deadline = Instant::now() + Duration::from_secs(30);
    while up.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "up did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        children_alive(&data),
        0,
        "nats-server and postgres were stopped"
    );
}
