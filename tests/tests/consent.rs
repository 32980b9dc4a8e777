//! Consent and opt-out through the public routes and the mock (contract §3.2): a signed SAIR
//! reply suppresses, START lifts it; provider opt-outs (21610, 131050), a complaint and the
//! one-click unsubscribe suppress; a message scheduled before the opt-out is not sent; quiet
//! hours defer to the window's opening; the suppression routes and their audit trail.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;
mod world;

use common::{count, wait_until};
use quizflow_mock_provider::{COMPLAINT_EMAIL, OPTED_OUT};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use world::{world, world_with, FINAL};

#[tokio::test]
async fn a_sair_reply_suppresses_every_later_campaign_and_start_lifts_it() {
    let w = world().await;
    let phone = "+5511987650001";
    let first = w
        .campaign(json!({"name": "Welcome", "quiz_id": "q1", "match": {},
            "actions": [{"channel": "sms", "template": "Oi"}]}))
        .await;
    let id = w.submit("q1", json!({"phone": phone})).await;
    assert_eq!(w.status(&id, "sms", FINAL).await["status"], "sent");
    w.deactivate(&first).await;

    // The person answers SAIR (accents, case and spaces do not matter: "  Saír ").
    w.reply("sms", phone, "  Saír ", None).await;
    let entries = w.suppressions("channel=sms").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["reason"], "opt_out_keyword");
    assert_eq!(entries[0]["scope"], "all");
    assert_eq!(entries[0]["source"], "inbound:twilio");
    assert!(
        !entries[0].to_string().contains("98765"),
        "no contact in the list"
    );

    // A new campaign: matched, suppressed, the provider never called.
    w.campaign(json!({"name": "Promo", "quiz_id": "q1", "match": {},
        "actions": [{"channel": "sms", "template": "Promo"}]}))
        .await;
    let before = w.calls("sms", phone).await;
    let id = w.submit("q1", json!({"phone": phone})).await;
    let d = w.status(&id, "sms", FINAL).await;
    assert_eq!(d["status"], "suppressed", "{d}");
    assert!(
        d["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("opt_out_keyword"),
        "{d}"
    );
    assert_eq!(w.calls("sms", phone).await, before);

    // Stats and the audit log say why.
    wait_until("stats count it", Duration::from_secs(20), || async {
        let stats = w.api.admin_get("/v1/stats").await;
        stats["deliveries"]["sms"]["suppressed"] == 1
            && stats["suppressions"]["opt_out_keyword"] == 1
    })
    .await;
    let audit = w.api.admin_get("/v1/audit").await;
    assert!(
        audit.to_string().contains("suppression.add")
            && audit.to_string().contains("opt_out_keyword"),
        "{audit}"
    );

    // START lifts it: the next lead is sent.
    w.reply("sms", phone, "start", None).await;
    assert!(w.suppressions("channel=sms").await.is_empty());
    let id = w.submit("q1", json!({"phone": phone})).await;
    assert_eq!(w.status(&id, "sms", FINAL).await["status"], "sent");
    assert_eq!(w.calls("sms", phone).await, before + 1);
}

#[tokio::test]
async fn provider_opt_outs_suppress_the_contact_and_the_next_campaign_never_calls() {
    let w = world().await;
    let c = w
        .campaign(json!({"name": "Both", "quiz_id": "q2", "match": {},
            "actions": [{"channel": "sms", "template": "Oi"}, {"channel": "whatsapp", "template": "Oi"}]}))
        .await;
    let id = w.submit("q2", json!({"phone": OPTED_OUT})).await;
    let all = w.deliveries(&id, FINAL, 2).await;
    for d in &all {
        assert_eq!(d["status"], "suppressed", "{d}");
        assert_eq!(d["attempts"], 1, "one call, no retry, no dead letter: {d}");
    }
    for (channel, code) in [("sms", "21610"), ("whatsapp", "131050")] {
        let e = w.suppressions(&format!("channel={channel}")).await;
        assert_eq!(e.len(), 1, "{channel}: {e:?}");
        assert_eq!(e[0]["reason"], "provider_opt_out");
        assert!(all
            .iter()
            .any(|d| d["last_error"].as_str().unwrap_or_default().contains(code)));
    }
    assert_eq!(
        count(&w.api.db.url, "SELECT count(*) AS n FROM dead_letters").await,
        0
    );
    w.deactivate(&c).await;
    w.campaign(json!({"name": "Again", "quiz_id": "q2", "match": {},
        "actions": [{"channel": "sms", "template": "Again"}]}))
        .await;
    let id = w.submit("q2", json!({"phone": OPTED_OUT})).await;
    assert_eq!(w.status(&id, "sms", FINAL).await["status"], "suppressed");
    assert_eq!(
        w.calls("sms", OPTED_OUT).await,
        1,
        "the provider was asked once"
    );
}

#[tokio::test]
async fn whatsapp_replies_arrive_as_wa_ids_and_suppress_the_normalised_number() {
    let w = world().await;
    // WhatsApp reports an older Brazilian account without its ninth digit.
    w.reply("whatsapp", "+551187650002", "PARAR", None).await;
    w.campaign(json!({"name": "Wa", "quiz_id": "q3", "match": {},
        "actions": [{"channel": "whatsapp", "template": "Oi"}, {"channel": "sms", "template": "Oi"}]}))
        .await;
    let id = w.submit("q3", json!({"phone": "+5511987650002"})).await;
    let all = w.deliveries(&id, FINAL, 2).await;
    let of = |c: &str| all.iter().find(|d| d["channel"] == c).expect("delivery")["status"].clone();
    assert_eq!(of("whatsapp"), "suppressed");
    // A WhatsApp opt-out is WhatsApp's: the SMS still goes.
    assert_eq!(of("sms"), "sent");
    // A reply through Twilio's WhatsApp sender (`whatsapp:+…`) lifts it.
    w.reply("whatsapp", "+5511987650002", "VOLTAR", Some("twilio"))
        .await;
    assert!(w.suppressions("channel=whatsapp").await.is_empty());
}

#[tokio::test]
async fn a_complaint_and_the_one_click_unsubscribe_stop_marketing_but_not_transactional_mail() {
    let w = world().await;
    let marketing = w
        .campaign(json!({"name": "News", "quiz_id": "q4", "match": {},
            "actions": [{"channel": "email", "subject": "News",
                "template": "<p>Oi {{ respondent.name }}</p><p><a href=\"{{ unsubscribe_url() }}\">sair</a></p>"}]}))
        .await;
    let id = w
        .submit("q4", json!({"email": "Ana@Example.com", "name": "Ana"}))
        .await;
    assert_eq!(w.status(&id, "email", FINAL).await["status"], "sent");
    let mail = w
        .http
        .get(format!("{}/_mock/messages?channel=email", w.mock))
        .send()
        .await
        .expect("messages")
        .json::<Value>()
        .await
        .expect("json")["messages"][0]
        .clone();
    let link = mail["headers"]["List-Unsubscribe"]
        .as_str()
        .expect("List-Unsubscribe")
        .trim_matches(['<', '>'])
        .to_owned();
    assert_eq!(
        mail["headers"]["List-Unsubscribe-Post"],
        "List-Unsubscribe=One-Click"
    );
    assert!(link.starts_with(&w.api.url("/v1/unsubscribe/")), "{link}");
    assert!(
        !link.to_lowercase().contains("ana"),
        "no contact in the URL"
    );
    assert!(mail["body"].as_str().unwrap_or_default().contains(&link));
    assert_eq!(
        mail["text"].as_str().unwrap_or_default().lines().next(),
        Some("Oi Ana"),
        "{mail}"
    );

    // The page asks; only the POST (RFC 8058's one-click) unsubscribes.
    let page = w.http.get(&link).send().await.expect("page");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page
        .text()
        .await
        .expect("html")
        .contains("<form method=\"post\""));
    assert!(w.suppressions("channel=email").await.is_empty());
    let r = w
        .http
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("one-click");
    assert_eq!(r.status().as_u16(), 200);
    let e = w.suppressions("channel=email").await;
    assert_eq!(
        (e.len(), &e[0]["reason"], &e[0]["scope"]),
        (1, &json!("unsubscribe_link"), &json!("marketing"))
    );
    let tampered = format!("{}x", link);
    assert_eq!(
        w.http
            .post(&tampered)
            .send()
            .await
            .expect("post")
            .status()
            .as_u16(),
        404
    );

    // Marketing stops; a transactional message (a ticket) still goes.
    w.deactivate(&marketing).await;
    w.campaign(json!({"name": "News 2", "quiz_id": "q4", "match": {},
        "actions": [{"channel": "email", "subject": "More", "template": "<p>More</p>"}]}))
        .await;
    w.campaign(
        json!({"name": "Ticket", "quiz_id": "q4", "match": {}, "purpose": "transactional",
        "actions": [{"channel": "email", "subject": "Ticket", "template": "<p>Your ticket</p>"}]}),
    )
    .await;
    let id = w.submit("q4", json!({"email": "ana@example.com"})).await;
    let all = w.deliveries(&id, FINAL, 2).await;
    let mut statuses: Vec<&str> = all.iter().filter_map(|d| d["status"].as_str()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["sent", "suppressed"], "{all:?}");

    // A complaint (reported by the provider after accepting the mail) suppresses marketing.
    let id = w.submit("q4", json!({"email": COMPLAINT_EMAIL})).await;
    w.deliveries(&id, FINAL, 2).await;
    wait_until(
        "the complaint is on the list",
        Duration::from_secs(20),
        || async { w.suppressions("channel=email&reason=complaint").await.len() == 1 },
    )
    .await;
    let id = w.submit("q4", json!({"email": COMPLAINT_EMAIL})).await;
    let all = w.deliveries(&id, FINAL, 2).await;
    let mut statuses: Vec<&str> = all.iter().filter_map(|d| d["status"].as_str()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["sent", "suppressed"], "{all:?}");
}

#[tokio::test]
async fn a_message_that_renders_empty_is_skipped_never_sent() {
    let w = world().await;
    w.campaign(json!({"name": "Maybe", "quiz_id": "q8", "match": {},
        "actions": [{"channel": "sms", "template": "{% if metadata.vip %}Oi VIP{% endif %}  "}]}))
        .await;
    let phone = "+5511987650008";
    let id = w.submit("q8", json!({"phone": phone})).await;
    let d = w.status(&id, "sms", FINAL).await;
    assert_eq!(d["status"], "skipped", "{d}");
    assert_eq!(d["last_error"], "skipped: empty_render");
    assert_eq!(w.calls("sms", phone).await, 0);
}

#[tokio::test]
async fn a_message_scheduled_before_the_opt_out_is_not_sent() {
    let w = world().await;
    let phone = "+5511987650003";
    w.campaign(json!({"name": "Reminder", "quiz_id": "q5", "match": {},
        "actions": [{"channel": "sms", "template": "Tomorrow!", "delay": "3s"}]}))
        .await;
    let id = w.submit("q5", json!({"phone": phone})).await;
    assert_eq!(
        w.status(&id, "sms", &["scheduled"]).await["status"],
        "scheduled"
    );
    w.reply("sms", phone, "STOP", None).await;
    let d = w.status(&id, "sms", FINAL).await;
    assert_eq!(d["status"], "suppressed", "{d}");
    assert_eq!(w.calls("sms", phone).await, 0);
}

#[tokio::test]
async fn the_suppression_routes_add_list_and_delete_by_contact_and_refuse_bad_input() {
    let w = world().await;
    let add = |body: Value| {
        w.api
            .admin(Method::POST, "/v1/suppressions")
            .json(&body)
            .send()
    };
    let r = add(json!({"channel": "sms", "contact": "+55 11 98765-0004"}))
        .await
        .expect("add");
    assert_eq!(r.status().as_u16(), 201);
    let r = add(json!({"channel": "email", "contact": "x@example.com", "purpose": "marketing", "reason": "complaint"}))
        .await
        .expect("add");
    assert_eq!(r.status().as_u16(), 201);
    for bad in [
        json!({"channel": "fax", "contact": "+5511987650004"}),
        json!({"channel": "sms", "contact": "not a phone"}),
        json!({"channel": "sms", "contact": "+5511987650004", "reason": "whim"}),
        json!({"channel": "sms", "contact": "+5511987650004", "purpose": "some"}),
        json!({"channel": "sms", "contact": "+5511987650004", "extra": 1}),
    ] {
        let r = add(bad.clone()).await.expect("add");
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    // Found by the contact however it is written; the list shows only hashes.
    let found = w.suppressions("channel=sms&contact=%2B5511987650004").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["reason"], "admin");
    assert_eq!(w.suppressions("").await.len(), 2);
    let r = w
        .api
        .admin(
            Method::DELETE,
            "/v1/suppressions?channel=sms&contact=%2B5511987650004",
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 204);
    let r = w
        .api
        .admin(
            Method::DELETE,
            "/v1/suppressions?channel=sms&contact=%2B5511987650004",
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 404);
    // Admin routes need the token.
    let r = w
        .http
        .get(w.api.url("/v1/suppressions"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    let audit = w.api.admin_get("/v1/audit").await.to_string();
    assert!(audit.contains("suppression.delete") && audit.contains("suppression.add"));
    assert!(!audit.contains("98765"), "no contact in the audit log");
}

#[tokio::test]
async fn quiet_hours_defer_to_the_windows_next_opening_spread_at_the_providers_rate() {
    let w = world().await;
    // A window that opened two hours ago and closed an hour ago, in UTC: the next opening is
    // tomorrow at `from`.
    let now = chrono::Utc::now();
    let from = (now - chrono::Duration::hours(2))
        .format("%H:%M")
        .to_string();
    let to = (now - chrono::Duration::hours(1))
        .format("%H:%M")
        .to_string();
    w.campaign(json!({"name": "Daytime", "quiz_id": "q6", "match": {},
        "send_window": {"from": from, "to": to, "timezone": "UTC"},
        "actions": [{"channel": "sms", "template": "Oi"}]}))
        .await;
    let mut due = Vec::new();
    for n in 0..5 {
        let id = w
            .submit("q6", json!({"phone": format!("+55119876510{n:02}")}))
            .await;
        let d = w.status(&id, "sms", &["scheduled"]).await;
        let at: chrono::DateTime<chrono::Utc> =
            d["due_at"].as_str().expect("due_at").parse().expect("time");
        due.push(at);
    }
    let opening = (now - chrono::Duration::hours(2) + chrono::Duration::days(1))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    due.sort();
    assert!(
        due[0].format("%Y-%m-%dT%H:%M").to_string() == opening,
        "{due:?} vs {opening}"
    );
    // Not all due in the same second: one after another at the provider's rate (50/s).
    for pair in due.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::milliseconds(20),
            "{due:?}"
        );
    }
    // The respondent's zone wins: the same window read in Tokyo.
    let id = w
        .submit(
            "q6",
            json!({"phone": "+5511987651099", "timezone": "Asia/Tokyo"}),
        )
        .await;
    let d = w.status(&id, "sms", &["scheduled", "sent"]).await;
    let tokyo = chrono_tz::Asia::Tokyo;
    use chrono::TimeZone;
    let local_now = now.with_timezone(&tokyo).naive_local().time();
    let (f, t) = (
        chrono::NaiveTime::parse_from_str(&from, "%H:%M").expect("from"),
        chrono::NaiveTime::parse_from_str(&to, "%H:%M").expect("to"),
    );
    let inside = if f < t {
        f <= local_now && local_now < t
    } else {
        local_now >= f || local_now < t
    };
    if inside {
        assert_eq!(d["status"], "sent", "{d}");
    } else {
        let at: chrono::DateTime<chrono::Utc> =
            d["due_at"].as_str().expect("due_at").parse().expect("time");
        let local = tokyo.from_utc_datetime(&at.naive_utc());
        assert_eq!(local.format("%H:%M").to_string(), from, "{d}");
    }
}

#[tokio::test]
async fn a_frequency_cap_across_campaigns_ends_extra_messages_capped_but_not_transactional_ones() {
    let w = world_with(|s| {
        s.frequency_caps = vec![(quizflow_core::Channel::Sms, "2/24h".parse().expect("cap"))]
    })
    .await;
    for name in ["A", "B", "C"] {
        w.campaign(json!({"name": name, "quiz_id": "q7", "match": {},
            "actions": [{"channel": "sms", "template": name}]}))
            .await;
    }
    w.campaign(
        json!({"name": "Ticket", "quiz_id": "q7", "match": {}, "purpose": "transactional",
        "actions": [{"channel": "sms", "template": "Your ticket"}]}),
    )
    .await;
    let phone = "+5511987650007";
    let id = w.submit("q7", json!({"phone": phone})).await;
    let all = w.deliveries(&id, FINAL, 4).await;
    let n = |s: &str| all.iter().filter(|d| d["status"] == s).count();
    assert_eq!(
        (n("sent"), n("capped")),
        (3, 1),
        "two marketing + the ticket: {all:?}"
    );
    let capped = all
        .iter()
        .find(|d| d["status"] == "capped")
        .expect("capped");
    assert!(capped["last_error"]
        .as_str()
        .unwrap_or_default()
        .contains("frequency cap"));
    // The rolling window still holds the two: a later lead's marketing messages are capped.
    let id = w.submit("q7", json!({"phone": phone})).await;
    let all = w.deliveries(&id, FINAL, 4).await;
    let n = |s: &str| all.iter().filter(|d| d["status"] == s).count();
    assert_eq!((n("sent"), n("capped")), (1, 3), "{all:?}");
    assert_eq!(w.calls("sms", phone).await, 4);
}
