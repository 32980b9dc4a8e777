//! The dashboard at `/`, driven in headless Chromium against `quizflow up`: without a token it
//! shows its layout and asks for one; with the token it shows live figures, and after a burst
//! of leads the figures have moved to exactly what was sent. A screenshot is written under the
//! test's target directory (never into the repository).

mod support;

use quizflow_testkit::chromium::{dump_dom, headless, text_by_id};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{spawn_up, wait_ready};

fn number(dom: &str, id: &str) -> i64 {
    let t = text_by_id(dom, id);
    t.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("#{id} is {t:?}, not a number"))
}

/// The delivery count the page shows for one channel and status.
fn delivery_cell(dom: &str, channel: &str, status: &str) -> i64 {
    let row_at = dom
        .find(&format!("data-channel=\"{channel}\"><td>{channel}</td>"))
        .unwrap_or_else(|| panic!("no deliveries row for {channel}"));
    let row = &dom[row_at..];
    let row = &row[..row.find("</tr>").expect("row end")];
    let cell_at = row
        .find(&format!("data-status=\"{status}\">"))
        .expect("status cell");
    let rest = &row[cell_at..];
    let open = rest.find('>').expect("tag end") + 1;
    let close = rest[open..].find('<').expect("text end");
    rest[open..open + close]
        .replace(',', "")
        .parse()
        .expect("count")
}

#[tokio::test]
async fn given_up_when_leads_arrive_then_the_dashboard_shows_them_live() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let port = quizflow_testkit::free_port();
    let mock_port = quizflow_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let _up = spawn_up(&data, port, mock_port);
    wait_ready(&http, &base, &data).await;
    let token = std::fs::read_to_string(data.join("admin-token")).expect("admin token");

    // No token: the layout, and a form asking for it; no figures.
    let login = dump_dom(&format!("{base}/"));
    assert!(login.contains("<form id=\"login\" class=\"\">"), "{login}");
    assert!(login.contains("Where leads wait"));
    assert_eq!(text_by_id(&login, "accepted-total"), "–");

    let created = http
        .post(format!("{base}/v1/campaigns"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "name": "dashboard", "quiz_id": "dash", "match": {},
            "actions": [{"channel": "sms", "template": "Oi {{ respondent.name }}"}]
        }))
        .send()
        .await
        .expect("campaign");
    assert_eq!(created.status().as_u16(), 201);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let page = format!("{base}/#token={token}");
    let before = dump_dom(&page);
    assert!(
        text_by_id(&before, "status").starts_with("live"),
        "{before}"
    );
    let accepted_before = number(&before, "accepted-total");
    let stored_before = number(&before, "stored-total");
    // Accepted by the provider: `sent`, or `delivered` once `up`'s mock reported it.
    let sent_before =
        delivery_cell(&before, "sms", "sent") + delivery_cell(&before, "sms", "delivered");

    const BURST: i64 = 30;
    for i in 0..BURST {
        let r = http
            .post(format!("{base}/v1/quizzes/dash/submissions"))
            .header("Idempotency-Key", format!("dash-{i}"))
            .json(&serde_json::json!({"score": 5, "respondent": {"phone": format!("+55119800{i:05}"), "name": "Ana"}}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 202);
    }
    // Wait for the pipeline (not for the page): all stored and sent.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s: serde_json::Value = http
            .get(format!("{base}/v1/stats"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        // The API's own counts reach the stats within its flush interval (2 s): wait for them
        // too, since the mock's receipts can finish the deliveries sooner than that.
        let sms = &s["deliveries"]["sms"];
        if sms["sent"].as_i64().unwrap_or(0) + sms["delivered"].as_i64().unwrap_or(0)
            == sent_before + BURST
            && s["submissions"]["accepted"].as_i64() == Some(accepted_before + BURST)
            && s["submissions"]["stored"].as_i64() == Some(stored_before + BURST)
        {
            break;
        }
        assert!(Instant::now() < deadline, "burst not delivered: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let after = dump_dom(&page);
    assert_eq!(number(&after, "accepted-total"), accepted_before + BURST);
    assert_eq!(number(&after, "stored-total"), stored_before + BURST);
    assert_eq!(
        delivery_cell(&after, "sms", "sent") + delivery_cell(&after, "sms", "delivered"),
        sent_before + BURST
    );
    assert_eq!(delivery_cell(&after, "sms", "queued"), 0);
    assert!(after.contains("SUBMISSIONS / batcher"), "consumers listed");
    assert!(
        after.contains("<td class=\"closed\">closed</td>"),
        "circuits shown: {after}"
    );
    assert!(!after.contains("+5511980"), "no phone number on the page");

    // A screenshot for people, kept out of the repository.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().expect("profile");
    let status = headless(profile.path())
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&page)
        .output()
        .expect("screenshot");
    assert!(status.status.success());
    assert!(std::fs::metadata(&shot)
        .map(|m| m.len() > 10_000)
        .unwrap_or(false));
}
