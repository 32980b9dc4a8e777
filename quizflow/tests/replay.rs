//! `quizflow replay` against a running `quizflow up`: a campaign created after a few thousand
//! leads arrived is replayed over them — each matching lead gets exactly one message — and a
//! second run sends nothing.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{spawn_up_with, wait_ready};

const LEADS: usize = 2_000;

async fn stats(http: &reqwest::Client, base: &str, token: &str) -> serde_json::Value {
    http.get(format!("{base}/v1/stats"))
        .bearer_auth(token)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json")
}

/// Runs `quizflow replay` on `up`'s data dir (it finds the servers there) and returns its
/// JSON summary and its stderr (the progress lines: stderr is not a terminal here).
fn replay(data: &std::path::Path, args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quizflow"))
        .arg("replay")
        .args(args)
        .arg("--json")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env("QUIZFLOW_DATA_DIR", data)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run replay");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {stderr}");
    let summary = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {stderr}"));
    (summary, stderr)
}

async fn sms_by_recipient(http: &reqwest::Client, mock: &str) -> HashMap<String, usize> {
    let body: serde_json::Value = http
        .get(format!("{mock}/_mock/messages?channel=sms"))
        .send()
        .await
        .expect("mock")
        .json()
        .await
        .expect("json");
    let mut by = HashMap::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        *by.entry(m["to"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    by
}

#[tokio::test]
async fn given_history_on_up_when_a_new_campaign_is_replayed_then_each_lead_gets_one_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let port = quizflow_testkit::free_port();
    let mock_port = quizflow_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mock = format!("http://127.0.0.1:{mock_port}");
    let http = reqwest::Client::new();
    // The provider's own rate limit is not what this test is about: 1,000 messages per campaign
    // at the default 50/s would be 20 s of waiting each.
    let _up = spawn_up_with(
        &data,
        port,
        mock_port,
        &[("QUIZFLOW_PROVIDER_RATE_PER_SEC", "1000")],
    );
    wait_ready(&http, &base, &data).await;
    let token = std::fs::read_to_string(data.join("admin-token")).expect("admin token");

    // History: a few thousand leads, no campaign yet; half of them answered "b".
    let posts = futures::stream::iter(0..LEADS).map(|i| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http
                .post(format!("{base}/v1/quizzes/launch/submissions"))
                .header("Idempotency-Key", format!("lead-{i}"))
                .json(&serde_json::json!({
                    "respondent": {"phone": format!("+55119{i:08}")},
                    "answers": [{"question": "q1", "value": if i % 2 == 0 { "b" } else { "a" }}],
                }))
                .send()
                .await
                .expect("post");
            assert_eq!(r.status().as_u16(), 202);
        }
    });
    use futures::StreamExt;
    posts.buffer_unordered(32).collect::<Vec<()>>().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats(&http, &base, &token).await["submissions"]["stored"].as_i64() != Some(LEADS as i64)
    {
        assert!(Instant::now() < deadline, "leads not stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The campaign comes afterwards: live matching leaves history alone.
    let created = http
        .post(format!("{base}/v1/campaigns"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "name": "launch follow-up", "quiz_id": "launch",
            "match": {"all": [{"field": "answers.q1", "op": "eq", "value": "b"}]},
            "actions": [{"channel": "sms", "template": "Obrigado!"}]
        }))
        .send()
        .await
        .expect("campaign");
    assert_eq!(created.status().as_u16(), 201);

    let (dry, _) = replay(&data, &["--from", "1", "--dry-run"]);
    assert_eq!(dry["jobs_created"], LEADS / 2);
    let (first, progress) = replay(&data, &["--from", "1", "--rate", "0"]);
    assert_eq!(first["scanned"], LEADS);
    assert_eq!(first["matched"], LEADS / 2);
    assert_eq!(first["jobs_created"], LEADS / 2);
    assert_eq!(first["already_existed"], 0);
    // The API packs concurrent leads into one message: count submissions, not messages.
    assert!(
        progress.contains("replay: read 2000 submissions") && progress.contains("(100%)"),
        "progress lines on a non-terminal: {progress}"
    );
    let checkpoint = first["checkpoint"].as_str().expect("a checkpoint");
    assert!(
        progress.contains(&format!("checkpoint --from {checkpoint}")),
        "{progress}"
    );

    // Each matching lead gets exactly one message.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let sent = sms_accepted(&stats(&http, &base, &token).await);
        if sent == (LEADS / 2) as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "sent {sent} of {}", LEADS / 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let by = sms_by_recipient(&http, &mock).await;
    assert_eq!(by.len(), LEADS / 2);
    assert!(by.values().all(|&n| n == 1), "one message per lead");
    assert!(by.keys().all(|to| {
        let n: usize = to[6..].parse().unwrap_or(1);
        n.is_multiple_of(2)
    }));

    // A second run: nothing new, nothing sent.
    let (second, _) = replay(&data, &["--from", "1", "--rate", "0"]);
    assert_eq!(second["jobs_created"], 0);
    assert_eq!(second["already_existed"], LEADS / 2);
    assert_eq!(second["republished"], 0);
    let s = stats(&http, &base, &token).await;
    assert_eq!(sms_accepted(&s), (LEADS / 2) as i64);
    assert_eq!(s["deliveries"]["sms"]["queued"].as_i64().unwrap_or(0), 0);
    assert_eq!(sms_by_recipient(&http, &mock).await.len(), LEADS / 2);

    // kill -9 in the middle of a replay, then resume from the last checkpoint it printed: the
    // other half of the leads get exactly one message each, none is lost.
    let created = http
        .post(format!("{base}/v1/campaigns"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "name": "second chance", "quiz_id": "launch",
            "match": {"all": [{"field": "answers.q1", "op": "eq", "value": "a"}]},
            "actions": [{"channel": "sms", "template": "Segunda chance"}]
        }))
        .send()
        .await
        .expect("campaign");
    assert_eq!(created.status().as_u16(), 201);
    let mut child = Command::new(env!("CARGO_BIN_EXE_quizflow"))
        .args(["replay", "--from", "1", "--rate", "200/s", "--batch", "100"])
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env("QUIZFLOW_DATA_DIR", &data)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn replay");
    let checkpoint = {
        use std::io::BufRead;
        let stderr = child.stderr.take().expect("stderr");
        let mut found = None;
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.expect("line");
            if let Some(cp) = line.split("checkpoint --from ").nth(1) {
                found = Some(cp.trim().to_owned());
                break;
            }
        }
        found.expect("a progress line with a checkpoint")
    };
    child.kill().expect("kill -9");
    let _ = child.wait();
    let cp: u64 = checkpoint.parse().expect("a sequence");
    assert!(cp > 1 && cp <= LEADS as u64, "stopped midway: {cp}");
    let (resumed, _) = replay(&data, &["--from", &checkpoint, "--rate", "0"]);
    assert!(resumed["completed"].as_bool().unwrap_or(false));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let sent = sms_accepted(&stats(&http, &base, &token).await);
        if sent == LEADS as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "sent {sent} of {LEADS}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let by = sms_by_recipient(&http, &mock).await;
    assert_eq!(
        by.len(),
        LEADS,
        "every lead reached once by one of the two campaigns"
    );
    assert!(by.values().all(|&n| n == 1), "no message twice");
}

/// SMS the provider accepted: `sent`, or `delivered` once `up`'s mock has reported them.
fn sms_accepted(stats: &serde_json::Value) -> i64 {
    let sms = &stats["deliveries"]["sms"];
    sms["sent"].as_i64().unwrap_or(0) + sms["delivered"].as_i64().unwrap_or(0)
}
