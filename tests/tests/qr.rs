//! Check-in QR codes through the pipeline: an e-mail carries the code inline (`qr_img`), a
//! WhatsApp message carries it as an image whose link (`qr_url`) the API serves as a PNG;
//! a link the deployment did not sign is 404.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;

use common::{pipeline_behind, wait_until};
use harness::Api;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const LINK_KEY: &str = "link-key-for-tests";

#[tokio::test]
async fn given_qr_templates_then_the_email_holds_the_image_and_the_whatsapp_link_serves_it() {
    let api = Api::start_with(|s| s.link_key = Some(LINK_KEY.into())).await;
    let base = api.base.clone();
    let mock = pipeline_behind(
        &api.nats.url(),
        &api.db.url,
        quizflow_mock_provider::MockState::default(),
        move |s| {
            s.qr_links = Some(quizflow_workers::render::QrLinks {
                public_url: base,
                key: Some(LINK_KEY.as_bytes().to_vec()),
            })
        },
    )
    .await;
    let created = api
        .admin(Method::POST, "/v1/campaigns")
        .json(&json!({
            "name": "Guest list", "quiz_id": "event", "match": {},
            "actions": [
                {"channel": "email", "subject": "Your ticket",
                 "template": "<p>Hi {{ respondent.name }}</p>{{ qr_img(submission_id) }}"},
                {"channel": "whatsapp", "template": "Your ticket", "image": "{{ qr_url(submission_id) }}"}
            ]
        }))
        .send()
        .await
        .expect("campaign");
    assert_eq!(created.status().as_u16(), 201);
    let accepted: Value = api
        .post_json(
            "/v1/quizzes/event/submissions",
            &json!({"respondent": {"phone": "+5511987654321", "email": "ana@example.com", "name": "<b>Ana</b>"}}),
        )
        .await
        .json()
        .await
        .expect("json");
    let id = accepted["submission_id"].as_str().expect("id").to_owned();

    let http = reqwest::Client::new();
    let messages = || async {
        http.get(format!("{mock}/_mock/messages"))
            .send()
            .await
            .expect("mock")
            .json::<Value>()
            .await
            .expect("json")["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait_until(
        "both messages received",
        Duration::from_secs(30),
        || async { messages().await.len() == 2 },
    )
    .await;
    let all = messages().await;
    let email = all.iter().find(|m| m["channel"] == "email").expect("email");
    let whatsapp = all
        .iter()
        .find(|m| m["channel"] == "whatsapp")
        .expect("whatsapp");

    // E-mail: the image inline, not escaped; submission data still escaped.
    let body = email["body"].as_str().expect("body");
    let inline = quizflow_core::qr::data_uri(&id).expect("png");
    assert!(body.contains(&format!("<img src=\"{inline}\"")), "{body}");
    assert!(
        body.contains("&lt;b&gt;Ana&lt;") && !body.contains("<b>"),
        "{body}"
    );

    // WhatsApp: an image message whose link the API serves as the same PNG.
    assert_eq!(whatsapp["body"], "Your ticket");
    let link = whatsapp["media"].as_str().expect("media link");
    assert!(link.starts_with(&format!("{}/v1/qr/", api.base)) && link.ends_with(".png"));
    assert!(
        !link.contains(&id),
        "the link does not spell the value out: {link}"
    );
    let png = http.get(link).send().await.expect("qr");
    assert_eq!(png.status().as_u16(), 200);
    assert_eq!(
        png.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    let bytes = png.bytes().await.expect("bytes");
    assert_eq!(
        bytes.as_ref(),
        quizflow_core::qr::png(&id).expect("png").as_slice()
    );

    // A link sealed with another key, expired, or tampered with, draws nothing.
    let sealed = |key: &[u8], expires_in: chrono::TimeDelta| {
        quizflow_core::qr::seal(
            key,
            &quizflow_core::qr::Link {
                value: id.clone(),
                submission_id: None,
                expires_at: chrono::Utc::now() + expires_in,
            },
        )
        .expect("sealed")
    };
    for bad in [
        format!(
            "/v1/qr/{}.png",
            sealed(b"other", chrono::TimeDelta::days(1))
        ),
        format!(
            "/v1/qr/{}.png",
            sealed(LINK_KEY.as_bytes(), chrono::TimeDelta::seconds(-1))
        ),
        link.replace(".png", "x.png").replace(&api.base, ""),
        "/v1/qr/nothing.png".to_owned(),
    ] {
        let r = http.get(api.url(&bad)).send().await.expect("qr");
        harness::assert_error(r, 404, "not_found").await;
    }
    // Once the person is erased, their link is dead.
    let erased = api
        .admin(Method::POST, "/v1/respondents/erase")
        .json(&json!({"phone": "+5511987654321"}))
        .send()
        .await
        .expect("erase");
    assert_eq!(erased.status().as_u16(), 200);
    let r = http.get(link).send().await.expect("qr");
    harness::assert_error(r, 404, "not_found").await;
}
