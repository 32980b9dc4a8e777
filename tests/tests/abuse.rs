//! The intake on the open internet (contract §3.2, issue 26): with allowed destination
//! countries set, a burst of leads to numbers elsewhere (SMS pumping) sends nothing — every
//! SMS and WhatsApp row ends `skipped` with `country_not_allowed`, the provider sees no
//! request — while a lead in an allowed country is sent; the skipped rows show in `/v1/stats`.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;
mod world;

use serde_json::json;
use world::{world_with, FINAL};

#[tokio::test]
async fn a_burst_to_a_disallowed_country_sends_nothing_and_shows_in_stats() {
    let w = world_with(|s| {
        s.allowed_countries =
            quizflow_core::settings::CallingCodes::parse("55").expect("calling codes");
    })
    .await;
    w.campaign(
        json!({"name": "Promo", "quiz_id": "promo", "match": {}, "actions": [
        {"channel": "sms", "template": "Oi {{ respondent.name }}"},
        {"channel": "whatsapp", "template": "Oi {{ respondent.name }}"}]}),
    )
    .await;
    let burst = 40;
    let mut ids = Vec::new();
    for i in 0..burst {
        let phone = format!("+4477009{i:05}");
        ids.push((
            w.submit("promo", json!({"phone": phone, "name": "X"}))
                .await,
            phone,
        ));
    }
    let home = w
        .submit("promo", json!({"phone": "+5511987650000", "name": "Ana"}))
        .await;
    for (id, phone) in &ids {
        let rows = w.deliveries(id, FINAL, 2).await;
        for d in &rows {
            assert_eq!(d["status"], "skipped", "{rows:?}");
            assert_eq!(d["last_error"], "skipped: country_not_allowed", "{rows:?}");
        }
        assert_eq!(
            w.calls("sms", phone).await + w.calls("whatsapp", phone).await,
            0
        );
    }
    let rows = w.deliveries(&home, &["sent"], 2).await;
    assert!(rows.iter().all(|d| d["status"] == "sent"), "{rows:?}");
    let stats = w.api.admin_get("/v1/stats").await;
    for channel in ["sms", "whatsapp"] {
        assert_eq!(stats["deliveries"][channel]["skipped"], burst, "{stats}");
        assert_eq!(stats["deliveries"][channel]["sent"], 1, "{stats}");
    }
}
