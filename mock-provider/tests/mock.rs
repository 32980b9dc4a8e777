//! The mock provider over real HTTP: every request shape, magic recipients, faults.

use poem::listener::{Acceptor, Listener, TcpListener};
use quizflow_mock_provider::{self as mock, MockState};
use serde_json::{json, Value};

async fn start() -> (String, tokio::sync::oneshot::Sender<()>) {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let addr = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mock::serve(acceptor, MockState::default(), async move {
        let _ = rx.await;
    }));
    (format!("http://{addr}"), tx)
}

#[tokio::test]
async fn given_each_provider_shape_then_messages_are_recorded_and_filterable() {
    let (base, _stop) = start().await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/2010-04-01/Accounts/AC1/Messages.json"))
        .header("I-Twilio-Idempotency-Token", "job-1")
        .form(&[
            ("To", "+5511987654321"),
            ("From", "+15550000000"),
            ("Body", "Olá Ana"),
        ])
        .send()
        .await
        .expect("twilio");
    assert_eq!(r.status().as_u16(), 201);
    let r = http
        .post(format!("{base}/v21.0/123/messages"))
        .json(&json!({"messaging_product": "whatsapp", "to": "+5511900000000", "type": "text", "text": {"body": "oi"}}))
        .send()
        .await
        .expect("whatsapp");
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .post(format!("{base}/message/sendText/inst"))
        .json(&json!({"number": "+5511911111111", "text": "evo"}))
        .send()
        .await
        .expect("evolution");
    assert_eq!(r.status().as_u16(), 201);
    let r = http
        .post(format!("{base}/emails"))
        .header("Idempotency-Key", "job-2")
        .json(&json!({"from": "a@q.io", "to": ["ana@example.com"], "subject": "Seu resultado", "html": "<p>72</p>"}))
        .send()
        .await
        .expect("resend");
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .post(format!("{base}/webhooks/crm"))
        .json(&json!({"lead": 1}))
        .send()
        .await
        .expect("webhook");
    assert_eq!(r.status().as_u16(), 204);

    let all: Value = http
        .get(format!("{base}/_mock/messages"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(all["messages"].as_array().map(Vec::len), Some(5));
    let sms: Value = http
        .get(format!(
            "{base}/_mock/messages?channel=sms&to=%2B5511987654321"
        ))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(sms["messages"][0]["body"], "Olá Ana");
    assert_eq!(sms["messages"][0]["idempotency_key"], "job-1");
    let email: Value = http
        .get(format!("{base}/_mock/messages?channel=email"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(email["messages"][0]["subject"], "Seu resultado");

    let cleared = http
        .delete(format!("{base}/_mock/messages"))
        .send()
        .await
        .expect("clear");
    assert_eq!(cleared.status().as_u16(), 204);
    let all: Value = http
        .get(format!("{base}/_mock/messages"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(all["messages"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn given_magic_recipients_then_permanent_errors_and_nothing_accepted() {
    let (base, _stop) = start().await;
    let http = reqwest::Client::new();
    for (to, code) in [
        (mock::INVALID_NUMBER, 21211),
        (mock::NOT_SMS_CAPABLE, 21614),
    ] {
        let r = http
            .post(format!("{base}/2010-04-01/Accounts/AC1/Messages.json"))
            .form(&[("To", to), ("Body", "x")])
            .send()
            .await
            .expect("twilio");
        assert_eq!(r.status().as_u16(), 400);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["code"], code);
    }
    let r = http
        .post(format!("{base}/emails"))
        .json(&json!({"to": mock::BOUNCE_EMAIL, "subject": "s", "html": "h"}))
        .send()
        .await
        .expect("resend");
    assert_eq!(r.status().as_u16(), 422);
    let accepted: Value = http
        .get(format!("{base}/_mock/messages"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(accepted["messages"].as_array().map(Vec::len), Some(0));
    let requests: Value = http
        .get(format!("{base}/_mock/requests"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(requests["requests"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn given_an_injected_fault_then_it_is_answered_with_retry_after_and_cleared_by_rate_0() {
    let (base, _stop) = start().await;
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{base}/_mock/faults"))
        .json(&json!({"channel": "webhook", "status": 429, "rate": 1.0, "retry_after_s": 2}))
        .send()
        .await
        .expect("fault");
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .post(format!("{base}/webhooks/x"))
        .json(&json!({}))
        .send()
        .await
        .expect("webhook");
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    http.put(format!("{base}/_mock/faults"))
        .json(&json!({"channel": "webhook", "rate": 0}))
        .send()
        .await
        .expect("clear");
    let r = http
        .post(format!("{base}/webhooks/x"))
        .json(&json!({}))
        .send()
        .await
        .expect("webhook");
    assert_eq!(r.status().as_u16(), 204);
    let requests: Value = http
        .get(format!("{base}/_mock/requests"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let statuses: Vec<u64> = requests["requests"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(statuses, [429, 200]);
    let bad = http
        .put(format!("{base}/_mock/faults"))
        .json(&json!({"channel": "fax", "rate": 0.5}))
        .send()
        .await
        .expect("bad");
    assert_eq!(bad.status().as_u16(), 400);
}
