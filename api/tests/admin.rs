//! Admin routes: bearer token, campaigns CRUD with validation, reading stored submissions.

mod harness;

use harness::{assert_error, Api};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

fn campaign() -> serde_json::Value {
    json!({
        "name": "Promo Nov high scorers", "active": true, "quiz_id": "promo-nov",
        "match": {"all": [{"field": "score", "op": "gte", "value": 70}], "any": []},
        "actions": [{"channel": "sms", "template": "Olá {{ respondent.name }}"}, {"channel": "webhook", "url": "https://crm.example.com/x"}],
        "priority": "high", "starts_at": null, "ends_at": null
    })
}

#[tokio::test]
async fn given_no_or_a_wrong_token_then_every_admin_route_is_401_json() {
    let api = Api::start().await;
    let id = uuid::Uuid::new_v4();
    let routes = [
        (Method::GET, "/v1/campaigns".to_owned()),
        (Method::POST, "/v1/campaigns".to_owned()),
        (Method::GET, format!("/v1/campaigns/{id}")),
        (Method::PUT, format!("/v1/campaigns/{id}")),
        (Method::DELETE, format!("/v1/campaigns/{id}")),
        (Method::PATCH, format!("/v1/campaigns/{id}")),
        (Method::GET, format!("/v1/submissions/{id}")),
        (Method::GET, "/v1/stats".to_owned()),
        (Method::GET, "/v1/dead-letters".to_owned()),
        (
            Method::POST,
            "/v1/dead-letters/redrive?channel=sms".to_owned(),
        ),
        (Method::POST, format!("/v1/dead-letters/{id}/redrive")),
    ];
    for (method, path) in routes {
        let none = api
            .http
            .request(method.clone(), api.url(&path))
            .send()
            .await
            .expect("send");
        assert_error(none, 401, "unauthorized").await;
        let wrong = api
            .http
            .request(method.clone(), api.url(&path))
            .bearer_auth("nope-nope-nope-nope")
            .send()
            .await
            .expect("send");
        assert_error(wrong, 401, "unauthorized").await;
        let basic = api
            .http
            .request(method, api.url(&path))
            .basic_auth("admin", Some(harness::ADMIN_TOKEN))
            .send()
            .await
            .expect("send");
        assert_error(basic, 401, "unauthorized").await;
    }
}

/// 40 wrong tokens from one address, then the right one from the same address: the guesses
/// are throttled, the operator gets in (behind a proxy every client may share one address).
#[tokio::test]
async fn given_many_wrong_tokens_from_one_ip_then_guesses_get_429_and_the_right_token_gets_in() {
    let api = Api::start().await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let r = api
            .http
            .get(api.url("/v1/campaigns"))
            .bearer_auth("guess-guess-guess-guess")
            .send()
            .await
            .expect("send");
        statuses.push(r.status().as_u16());
    }
    assert!(statuses[..30].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[30..].iter().all(|s| *s == 429), "{statuses:?}");
    let right = api
        .admin(Method::GET, "/v1/campaigns")
        .send()
        .await
        .expect("send");
    assert_eq!(right.status().as_u16(), 200);
    // ... and the guesser is still throttled.
    let guess = api
        .http
        .get(api.url("/v1/campaigns"))
        .bearer_auth("guess-guess-guess-guess")
        .send()
        .await
        .expect("send");
    let body = assert_error(guess, 429, "rate_limited").await;
    assert!(body["error"]["message"].as_str().is_some());
}

/// Behind a trusted proxy the client is the `X-Forwarded-For` entry the proxy appended: one
/// client's guesses throttle that client only, never the others sharing the proxy's address.
#[tokio::test]
async fn given_a_trusted_proxy_then_guesses_are_throttled_per_forwarded_client() {
    let api =
        Api::start_with(|s| s.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")]).await;
    let guess = |client: &'static str| {
        api.http
            .get(api.url("/v1/campaigns"))
            .bearer_auth("guess-guess-guess-guess")
            // The client's own claim on the left is ignored; the proxy's entry is on the right.
            .header("x-forwarded-for", format!("9.9.9.9, {client}"))
            .send()
    };
    for _ in 0..30 {
        assert_eq!(
            guess("203.0.113.7").await.expect("send").status().as_u16(),
            401
        );
    }
    assert_eq!(
        guess("203.0.113.7").await.expect("send").status().as_u16(),
        429
    );
    // Another client behind the same proxy is not throttled by the first one's guesses.
    assert_eq!(
        guess("198.51.100.4").await.expect("send").status().as_u16(),
        401
    );
}

#[tokio::test]
async fn given_a_token_then_campaigns_can_be_created_read_replaced_and_deleted() {
    let api = Api::start().await;
    let created = api
        .admin(Method::POST, "/v1/campaigns")
        .json(&campaign())
        .send()
        .await
        .expect("create");
    assert_eq!(created.status().as_u16(), 201);
    let c: serde_json::Value = created.json().await.expect("json");
    let id = c["id"].as_str().expect("top-level id").to_owned();
    assert_eq!(c["version"], 1);
    assert_eq!(c["name"], "Promo Nov high scorers");
    assert_eq!(c["match"]["all"][0]["field"], "score");

    let list: serde_json::Value = api
        .admin(Method::GET, "/v1/campaigns")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let got: serde_json::Value = api
        .admin(Method::GET, &format!("/v1/campaigns/{id}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(got["id"], c["id"]);

    let mut changed = campaign();
    changed["name"] = json!("renamed");
    let put = api
        .admin(Method::PUT, &format!("/v1/campaigns/{id}"))
        .json(&changed)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 200);
    let put: serde_json::Value = put.json().await.expect("json");
    assert_eq!(put["name"], "renamed");
    assert_eq!(put["version"], 2);

    let del = api
        .admin(Method::DELETE, &format!("/v1/campaigns/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status().as_u16(), 204);
    let gone = api
        .admin(Method::GET, &format!("/v1/campaigns/{id}"))
        .send()
        .await
        .expect("get");
    assert_error(gone, 404, "not_found").await;
    let gone = api
        .admin(Method::DELETE, &format!("/v1/campaigns/{id}"))
        .send()
        .await
        .expect("delete");
    assert_error(gone, 404, "not_found").await;
    let bad_id = api
        .admin(Method::GET, "/v1/campaigns/not-a-uuid")
        .send()
        .await
        .expect("get");
    assert_error(bad_id, 404, "not_found").await;
}

#[tokio::test]
async fn given_invalid_campaigns_then_400_with_details() {
    let api = Api::start().await;
    let cases = [
        (
            "unknown field",
            json!({"name": "x", "colour": "red", "actions": [{"channel": "webhook", "url": "http://h"}]}),
            "colour",
        ),
        (
            "unknown op",
            json!({"name": "x", "match": {"all": [{"field": "score", "op": "like", "value": 1}]}, "actions": [{"channel": "webhook", "url": "http://h"}]}),
            "match.all[0].op",
        ),
        (
            "unknown predicate field",
            json!({"name": "x", "match": {"any": [{"field": "shoe", "op": "eq", "value": 1}]}, "actions": [{"channel": "webhook", "url": "http://h"}]}),
            "match.any[0].field",
        ),
        (
            "template does not compile",
            json!({"name": "x", "actions": [{"channel": "sms", "template": "{{ oops"}]}),
            "actions[0].template",
        ),
        (
            "webhook not http",
            json!({"name": "x", "actions": [{"channel": "webhook", "url": "ftp://h/x"}]}),
            "actions[0].url",
        ),
        ("no actions", json!({"name": "x", "actions": []}), "actions"),
        (
            "bad priority",
            json!({"name": "x", "priority": "urgent", "actions": [{"channel": "webhook", "url": "http://h"}]}),
            "priority",
        ),
    ];
    for (name, body, field) in cases {
        let resp = api
            .admin(Method::POST, "/v1/campaigns")
            .json(&body)
            .send()
            .await
            .expect("send");
        let err = assert_error(resp, 400, "invalid_request").await;
        let fields: Vec<&str> = err["error"]["details"]
            .as_array()
            .expect("details")
            .iter()
            .filter_map(|d| d["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{name}: {field} not in {fields:?}");
    }
    let list: serde_json::Value = api
        .admin(Method::GET, "/v1/campaigns")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0));
}

async fn audit_page(api: &Api, query: &str) -> serde_json::Value {
    let resp = api
        .admin(Method::GET, &format!("/v1/audit{query}"))
        .send()
        .await
        .expect("audit");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.expect("json")
}

#[tokio::test]
async fn given_admin_actions_then_each_is_in_the_audit_log_newest_first_and_paged() {
    let api = Api::start().await;
    let created: serde_json::Value = api
        .admin(Method::POST, "/v1/campaigns")
        .json(&campaign())
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    let mut changed = campaign();
    changed["name"] = json!("renamed");
    let put = api
        .admin(Method::PUT, &format!("/v1/campaigns/{id}"))
        .json(&changed)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 200);
    // A refused change is recorded as rejected, with its error code.
    let bad = api
        .admin(Method::PUT, &format!("/v1/campaigns/{id}"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status().as_u16(), 400);
    let del = api
        .admin(Method::DELETE, &format!("/v1/campaigns/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status().as_u16(), 204);
    // A wrong token is recorded; a missing one (guessing nothing) is not; plain reads are not.
    let wrong = api
        .http
        .get(api.url("/v1/stats"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("wrong");
    assert_eq!(wrong.status().as_u16(), 401);
    let missing = api
        .http
        .get(api.url("/v1/stats"))
        .send()
        .await
        .expect("none");
    assert_eq!(missing.status().as_u16(), 401);
    let read = api
        .admin(Method::GET, "/v1/campaigns")
        .send()
        .await
        .expect("list");
    assert_eq!(read.status().as_u16(), 200);

    let page = audit_page(&api, "").await;
    let items = page["items"].as_array().expect("items");
    let actions: Vec<(&str, &str, i64)> = items
        .iter()
        .map(|e| {
            (
                e["action"].as_str().expect("action"),
                e["outcome"].as_str().expect("outcome"),
                e["status"].as_i64().expect("status"),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("auth.failure", "denied", 401),
            ("campaign.delete", "ok", 204),
            ("campaign.replace", "rejected", 400),
            ("campaign.replace", "ok", 200),
            ("campaign.create", "ok", 201),
        ]
    );
    assert_eq!(page["next"], serde_json::Value::Null);
    let replace = &items[3];
    assert_eq!(replace["route"], "PUT /v1/campaigns/{id}");
    assert_eq!(replace["target"], id.as_str());
    assert_eq!(replace["detail"]["version"], 2);
    assert_eq!(replace["detail"]["previous_version"], 1);
    assert_eq!(replace["detail"]["campaign"]["name"], "renamed");
    assert_eq!(items[2]["detail"]["error"], "invalid_request");
    assert_eq!(items[2]["target"], id.as_str());
    // The client is a keyed hash, never the address.
    let client = items[0]["detail"]["client"].as_str().expect("client");
    assert!(client.starts_with("h:") && !client.contains("127.0.0.1"));
    assert!(items[0]["at"].as_str().is_some());

    // Paging: two at a time, following `next`, gives the same entries in the same order.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = audit_page(&api, &query).await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|e| e["action"].clone()));
        match page["next"].as_str() {
            Some(cursor) => query = format!("?limit=2&before={cursor}"),
            None => break,
        }
    }
    let all: Vec<_> = items.iter().map(|e| e["action"].clone()).collect();
    assert_eq!(seen, all);

    for bad in ["?limit=0", "?limit=1001", "?before=x", "?before=-3"] {
        let resp = api
            .admin(Method::GET, &format!("/v1/audit{bad}"))
            .send()
            .await
            .expect("audit");
        assert_error(resp, 400, "invalid_request").await;
    }
}

/// The dashboard polls the dead-letter list every few seconds: the same client's same read is
/// recorded once per ten minutes, not once per poll; a different read is recorded.
#[tokio::test]
async fn given_the_dead_letter_list_polled_then_the_audit_log_records_it_once() {
    let api = Api::start().await;
    for _ in 0..5 {
        let r = api
            .admin(Method::GET, "/v1/dead-letters?limit=5")
            .send()
            .await
            .expect("list");
        assert_eq!(r.status().as_u16(), 200);
    }
    let r = api
        .admin(Method::GET, "/v1/dead-letters?limit=50")
        .send()
        .await
        .expect("list");
    assert_eq!(r.status().as_u16(), 200);
    let page = audit_page(&api, "?limit=100").await;
    let reads: Vec<&serde_json::Value> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "dead_letters.read")
        .collect();
    assert_eq!(reads.len(), 2, "{page}");
}

/// An erasure whose sweep outlasts the answer's wait runs on as a job: 202 with its status
/// resource (the barrier already in place), then `done` with what was erased. Two at once
/// both finish (their stream scans take turns).
#[tokio::test]
async fn given_an_erasure_that_runs_as_a_job_then_202_and_its_status_resource_ends_done() {
    let api = Api::start_with(|s| s.erase_wait = Duration::ZERO).await;
    let (a, b) = tokio::join!(
        api.admin(Method::POST, "/v1/respondents/erase")
            .json(&json!({"phone": "+5511900000001"}))
            .send(),
        api.admin(Method::POST, "/v1/respondents/erase")
            .json(&json!({"email": "b@example.com"}))
            .send(),
    );
    for r in [a.expect("erase a"), b.expect("erase b")] {
        assert_eq!(r.status().as_u16(), 202);
        let job: serde_json::Value = r.json().await.expect("json");
        assert_eq!(job["status"], "running");
        let url = job["status_url"].as_str().expect("status url").to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        let done = loop {
            let s: serde_json::Value = api
                .admin(Method::GET, &url)
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("json");
            if s["status"] != "running" {
                break s;
            }
            assert!(Instant::now() < deadline, "still running: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(done["status"], "done", "{done}");
        assert_eq!(done["erased"]["submissions"], 0, "{done}");
        assert!(done["finished_at"].is_string());
    }
    let missing = api
        .admin(
            Method::GET,
            "/v1/erasures/00000000-0000-0000-0000-000000000000",
        )
        .send()
        .await
        .expect("status");
    assert_error(missing, 404, "not_found").await;
}
