//! Senders and providers (contract §3.3), batcher → workers → mock provider: WhatsApp Cloud
//! templates with their parameters rendered per lead, Evolution free text beside them,
//! failover to a second SMS account while the first is down, and per-sender rate limits
//! holding across two workers processes.

mod common;

use common::*;
use quizflow_workers::provider::{Provider, Sender};
use serde_json::{json, Value};
use std::time::Duration;

fn twilio(base: &str, account: &str, from: &str, rank: usize) -> Sender {
    Sender {
        provider: Provider::Twilio {
            base: base.into(),
            account_sid: account.into(),
            auth_token: "mock".into(),
            from: from.into(),
            status_callback: None,
        },
        rank,
    }
}

async fn messages(env: &Env, channel: &str) -> Vec<Value> {
    env.mock_get(&format!("/_mock/messages?channel={channel}"))
        .await["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn given_whatsapp_template_actions_then_cloud_sends_them_rendered_and_evolution_the_free_text(
) {
    let mut env = Env::start().await;
    env.campaign(json!([
        {"channel": "whatsapp", "whatsapp_template": {"name": "event_reminder", "language": "pt_BR",
            "body": ["{{ respondent.name }}", "{{ score }} pontos"], "header_image": "https://cdn.example/{{ quiz_id }}.png"}},
        {"channel": "whatsapp", "whatsapp_template": {"name": "quizflow_missing", "language": "pt_BR", "body": ["{{ respondent.name }}"]}},
        {"channel": "whatsapp", "whatsapp_template": {"name": "event_reminder", "language": "pt_BR", "body": ["{{ metadata.nope }}"]}},
        {"channel": "whatsapp", "template": "Oi {{ respondent.name }}"}
    ]))
    .await;
    let base = env.mock.clone();
    // Evolution first in the list: free text goes there; templates only to Cloud.
    let s = env.settings(|s| {
        s.providers.whatsapp = vec![
            Sender {
                provider: Provider::Evolution {
                    base: base.clone(),
                    instance: "vendas".into(),
                    api_key: "k".into(),
                },
                rank: 0,
            },
            Sender {
                provider: Provider::WhatsappCloud {
                    base: base.clone(),
                    version: "v21.0".into(),
                    phone_number_id: "1055".into(),
                    token: "t".into(),
                },
                rank: 1,
            },
        ];
    });
    env.workers(s);
    let id = env
        .submit("t1", json!({"phone": PHONE, "name": "Ana"}))
        .await;
    wait_until("every action settled", Duration::from_secs(30), || async {
        let rows = env.deliveries(id).await;
        rows.len() == 4
            && rows
                .iter()
                .all(|(_, s, _, _)| s != "queued" && s != "sending")
    })
    .await;
    let mut statuses: Vec<String> = env
        .deliveries(id)
        .await
        .into_iter()
        .map(|(_, s, _, _)| s)
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["dead", "sent", "sent", "skipped"]);
    let sent = messages(&env, "whatsapp").await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    let template = sent
        .iter()
        .find(|m| m["template"].is_object())
        .expect("a template message");
    assert_eq!(template["sender"], "1055");
    assert_eq!(
        template["template"],
        json!({"name": "event_reminder", "language": "pt_BR", "body": ["Ana", "72 pontos"],
            "header_image": "https://cdn.example/promo.png"})
    );
    let text = sent
        .iter()
        .find(|m| m["template"].is_null())
        .expect("free text");
    assert_eq!(
        (&text["sender"], &text["body"]),
        (&json!("vendas"), &json!("Oi Ana"))
    );
    // The unapproved template: permanent at once, with the provider's reason.
    let reason = dead_reason(&env).await;
    assert!(reason.contains("132001"), "{reason}");
    assert!(reason.contains("does not exist"), "{reason}");
    let requests = env.mock_get("/_mock/requests").await["requests"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(requests, 3, "the empty render was never sent");
}

async fn dead_reason(env: &Env) -> String {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct R {
        #[diesel(sql_type = diesel::sql_types::Text)]
        reason: String,
    }
    let mut conn = AsyncPgConnection::establish(&env.db.url).await.expect("db");
    let rows: Vec<R> = diesel::sql_query("SELECT reason FROM dead_letters")
        .load(&mut conn)
        .await
        .expect("dead letters");
    rows.into_iter().map(|r| r.reason).collect()
}

#[tokio::test]
async fn given_the_first_sms_account_down_then_the_second_sends_each_job_once() {
    const LEADS: usize = 40;
    let mut env = Env::start().await;
    env.campaign(json!([{"channel": "sms", "template": "Oi {{ respondent.name }}"}]))
        .await;
    env.fault(json!({"channel": "sms", "sender": "ACfirst", "status": 503, "rate": 1.0}))
        .await;
    let base = env.mock.clone();
    let s = env.settings(|s| {
        s.providers.sms = vec![
            twilio(&base, "ACfirst", "+15550000001", 0),
            twilio(&base, "ACsecond", "+15550000002", 1),
        ];
        // Production's breaker: five failures, ten seconds.
        s.retry_schedule = vec![Duration::from_secs(1); 5];
    });
    env.workers(s);
    let mut ids = Vec::new();
    for i in 0..LEADS {
        let phone = format!("+55119{i:08}");
        ids.push(env.submit(&format!("f{i}"), json!({"phone": phone})).await);
    }
    wait_until("every lead sent", Duration::from_secs(60), || async {
        messages(&env, "sms").await.len() >= LEADS
    })
    .await;
    let sent = messages(&env, "sms").await;
    let mut to: Vec<&str> = sent.iter().filter_map(|m| m["to"].as_str()).collect();
    to.sort_unstable();
    to.dedup();
    assert_eq!((sent.len(), to.len()), (LEADS, LEADS), "each job once");
    assert!(sent.iter().all(|m| m["account"] == "ACsecond"));
    let requests = env.mock_get("/_mock/requests").await["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let refused = requests.iter().filter(|r| r["status"] == 503).count();
    assert!(
        (5..LEADS).contains(&refused),
        "the breaker stopped the calls to the first account ({refused})"
    );
    // Each attempt names the sender it went through.
    let rows = env.deliveries(ids[0]).await;
    let last = rows[0].3.as_array().and_then(|h| h.last()).cloned();
    assert_eq!(
        last.as_ref().map(|e| (&e["outcome"], &e["sender"])),
        Some((&json!("sent"), &json!("twilio/+15550000002")))
    );
}

#[tokio::test]
async fn given_four_senders_and_two_workers_processes_then_no_sender_exceeds_its_rate() {
    const LEADS: usize = 240;
    const RATE: u32 = 10;
    let mut env = Env::start().await;
    env.campaign(json!([{"channel": "sms", "template": "Oi"}]))
        .await;
    let base = env.mock.clone();
    let from: Vec<String> = (1..=4).map(|i| format!("+1555000000{i}")).collect();
    for _ in 0..2 {
        let s = env.settings(|s| {
            s.providers.sms = from.iter().map(|f| twilio(&base, "AC1", f, 0)).collect();
            s.rate_per_sec = RATE;
        });
        env.workers(s);
    }
    wait_until(
        "both processes share the limits",
        Duration::from_secs(15),
        || async {
            env.registries.iter().all(|r| {
                r.gather()
                    .iter()
                    .find(|f| f.name() == "quizflow_worker_members")
                    .is_some_and(|f| {
                        f.get_metric()
                            .iter()
                            .any(|m| m.get_gauge().get_value() == 2.0)
                    })
            })
        },
    )
    .await;
    for i in 0..LEADS {
        let phone = format!("+55119{i:08}");
        env.submit(&format!("r{i}"), json!({"phone": phone})).await;
    }
    wait_until("every lead sent", Duration::from_secs(120), || async {
        messages(&env, "sms").await.len() >= LEADS
    })
    .await;
    let senders = env.mock_get("/_mock/senders").await["senders"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        senders.len(),
        4,
        "recipients spread over every sender: {senders:?}"
    );
    let total: u64 = senders.iter().filter_map(|s| s["messages"].as_u64()).sum();
    assert_eq!(total, LEADS as u64, "each job once");
    for s in &senders {
        let busiest = s["busiest_second"].as_u64().unwrap_or(u64::MAX);
        assert!(busiest <= u64::from(RATE), "{s}");
    }
}
