//! A person's data on request (the LGPD/GDPR access right, issue 26): `GET /v1/respondents`
//! pages through every stored submission of a phone with its deliveries and their histories,
//! names their suppression-list entries, holds nobody else's data and is audited; after
//! erasure it holds nothing of theirs but the suppressions, which outlive it.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;
mod world;

use reqwest::Method;
use serde_json::{json, Value};
use world::{world, FINAL};

const ANA: &str = "+5511987650101";
const BIA: &str = "+5511987650202";

#[tokio::test]
async fn a_person_gets_everything_held_on_them_and_erasure_leaves_only_their_opt_out() {
    let w = world().await;
    w.campaign(
        json!({"name": "Oi", "quiz_id": "acesso", "match": {}, "actions": [
        {"channel": "sms", "template": "Oi {{ respondent.name }}"}]}),
    )
    .await;
    let mut ana = Vec::new();
    for _ in 0..3 {
        ana.push(
            w.submit("acesso", json!({"phone": ANA, "name": "Ana"}))
                .await,
        );
    }
    let bia = w
        .submit("acesso", json!({"phone": BIA, "name": "Bia"}))
        .await;
    for id in ana.iter().chain([&bia]) {
        w.deliveries(id, FINAL, 1).await;
    }
    let r = w
        .api
        .admin(Method::POST, "/v1/suppressions")
        .json(&json!({"channel": "sms", "contact": ANA}))
        .send()
        .await
        .expect("suppress");
    assert_eq!(r.status().as_u16(), 201);

    let first = w
        .api
        .admin_get(&format!("/v1/respondents?phone=%2B{}&limit=2", &ANA[1..]))
        .await;
    let second = w
        .api
        .admin_get(&format!(
            "/v1/respondents?phone=%2B{}&limit=2&after={}",
            &ANA[1..],
            first["next"].as_str().expect("a next page")
        ))
        .await;
    assert!(second["next"].is_null(), "{second}");
    let subs: Vec<&Value> = [&first, &second]
        .iter()
        .flat_map(|p| p["submissions"].as_array().into_iter().flatten())
        .collect();
    let mut ids: Vec<&str> = subs
        .iter()
        .filter_map(|s| s["submission_id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = ana.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "Ana's three, nobody else's");
    for s in &subs {
        assert_eq!(s["respondent"]["phone"], ANA);
        let d = &s["deliveries"][0];
        assert_eq!(d["status"], "sent", "{s}");
        assert!(
            d["history"].as_array().is_some_and(|h| !h.is_empty()),
            "{s}"
        );
    }
    assert_eq!(
        first["suppressions"].as_array().map(Vec::len),
        Some(1),
        "{first}"
    );
    assert_eq!(first["suppressions"][0]["reason"], "admin");
    assert_eq!(second["suppressions"].as_array().map(Vec::len), Some(0));
    let audit = w.api.admin_get("/v1/audit").await;
    let exports = audit["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "respondent.export")
        .count();
    assert_eq!(exports, 2, "{audit}");
    assert!(
        !audit.to_string().contains(&ANA[1..]),
        "no phone in the audit log"
    );

    // Erased: nothing of theirs is held but the opt-out.
    let r = w
        .api
        .admin(Method::POST, "/v1/respondents/erase")
        .json(&json!({"phone": ANA}))
        .send()
        .await
        .expect("erase");
    assert_eq!(r.status().as_u16(), 200);
    let after = w
        .api
        .admin_get(&format!("/v1/respondents?phone=%2B{}", &ANA[1..]))
        .await;
    assert_eq!(after["submissions"], json!([]), "{after}");
    assert_eq!(after["dead_letters"], json!([]), "{after}");
    assert_eq!(
        after["suppressions"].as_array().map(Vec::len),
        Some(1),
        "{after}"
    );

    // Bad input is a 400 naming the field.
    for (query, field) in [
        ("phone=123", "phone"),
        ("", "phone"),
        ("phone=%2B5511987650101&after=x", "after"),
    ] {
        let r = w
            .api
            .admin(Method::GET, &format!("/v1/respondents?{query}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 400, "{query}");
        let e: Value = r.json().await.expect("json");
        assert_eq!(e["error"]["details"][0]["field"], field, "{query}: {e}");
    }
}
