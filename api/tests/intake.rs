//! contract §2.1/§2.2 against a real nats-server and PostgreSQL.

mod harness;

use futures::StreamExt;
use harness::{assert_error, lead, Api};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn given_a_valid_submission_when_posted_then_202_after_it_is_in_the_stream() {
    let api = Api::start().await;
    let resp = api
        .post_json("/v1/quizzes/promo-nov/submissions", &lead("+5511987654321"))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let location = resp.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: serde_json::Value = resp.json().await.expect("json");
    let id = body["submission_id"].as_str().expect("id").to_owned();
    assert_eq!(body["duplicate"], false);
    assert_eq!(location, format!("/v1/submissions/{id}"));

    let stored = api.stream_envelopes().await;
    assert_eq!(stored.len(), 1);
    let envelope = &stored[0];
    assert_eq!(envelope.submission_id.to_string(), id);
    assert_eq!(envelope.quiz_id.as_str(), "promo-nov");
    assert_eq!(
        envelope.submission.respondent.phone.as_deref(),
        Some("+5511987654321")
    );
    assert_eq!(envelope.submission.score, Some(72.0));
    // On its quiz's subject, so a replay can filter by quiz.
    let stream = api.js.get_stream("SUBMISSIONS").await.expect("stream");
    let msg = stream
        .get_last_raw_message_by_subject("quiz.submissions.promo-nov")
        .await
        .expect("message on the quiz's subject");
    assert!(quizflow_nats::members(&msg.payload).count() >= 1);
}

#[tokio::test]
async fn given_the_same_idempotency_key_when_posted_twice_then_same_id_duplicate_and_one_message() {
    let api = Api::start().await;
    let post = |body: serde_json::Value| {
        api.http
            .post(api.url("/v1/quizzes/q1/submissions"))
            .header("Idempotency-Key", "click-42")
            .json(&body)
            .send()
    };
    let a: serde_json::Value = post(lead("+5511987654321"))
        .await
        .expect("a")
        .json()
        .await
        .expect("json");
    // A different body with the same key is still the same submission.
    let b: serde_json::Value = post(json!({"score": 1}))
        .await
        .expect("b")
        .json()
        .await
        .expect("json");
    assert_eq!(a["submission_id"], b["submission_id"]);
    assert_eq!(a["duplicate"], false);
    assert_eq!(b["duplicate"], true);
    assert_eq!(api.stream_count().await, 1);
}

#[tokio::test]
async fn given_no_key_when_the_same_body_is_posted_reformatted_then_it_is_a_duplicate() {
    let api = Api::start().await;
    let send = |raw: &'static str| {
        api.http
            .post(api.url("/v1/quizzes/q1/submissions"))
            .header("content-type", "application/json; charset=utf-8")
            .body(raw)
            .send()
    };
    let a: serde_json::Value =
        send(r#"{"score": 5, "tags": ["a"], "respondent": {"name": "X", "locale": "en"}}"#)
            .await
            .expect("a")
            .json()
            .await
            .expect("json");
    let b: serde_json::Value =
        send(r#"{"respondent":{"locale":"en","name":"X"},"tags":["a"],"score":5}"#)
            .await
            .expect("b")
            .json()
            .await
            .expect("json");
    assert_eq!(a["submission_id"], b["submission_id"]);
    assert_eq!(b["duplicate"], true);
    // The same body on another quiz is another submission.
    let c = api
        .post_json(
            "/v1/quizzes/q2/submissions",
            &json!({"score": 5, "tags": ["a"], "respondent": {"name": "X", "locale": "en"}}),
        )
        .await;
    let c: serde_json::Value = c.json().await.expect("json");
    assert_ne!(a["submission_id"], c["submission_id"]);
    assert_eq!(api.stream_count().await, 2);
}

struct Bad {
    name: &'static str,
    path: String,
    method: &'static str,
    content_type: Option<&'static str>,
    key: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn bad(name: &'static str, body: serde_json::Value, code: &'static str) -> Bad {
    Bad {
        name,
        path: "/v1/quizzes/q1/submissions".into(),
        method: "POST",
        content_type: Some("application/json"),
        key: None,
        body: serde_json::to_vec(&body).expect("json"),
        status: 400,
        code,
    }
}

fn raw(name: &'static str, body: &'static str) -> Bad {
    Bad {
        body: body.as_bytes().to_vec(),
        ..bad(name, json!({}), "invalid_json")
    }
}

fn malformed_inputs() -> Vec<Bad> {
    let mut cases = vec![
        raw("empty body", ""),
        raw("truncated", r#"{"score": 1"#),
        raw("trailing garbage", r#"{"score": 1} x"#),
        raw("not utf-8", "\u{0}"),
        raw("single quotes", "{'score': 1}"),
        raw("NaN literal", r#"{"score": NaN}"#),
        bad("array body", json!([1, 2]), "invalid_request"),
        bad("string body", json!("hello"), "invalid_request"),
        bad("null body", json!(null), "invalid_request"),
        bad(
            "typo at top level",
            json!({"respondant": {}}),
            "invalid_request",
        ),
        bad(
            "unknown respondent field",
            json!({"respondent": {"cpf": "1"}}),
            "invalid_request",
        ),
        bad(
            "phone without plus",
            json!({"respondent": {"phone": "5511987654321"}}),
            "invalid_request",
        ),
        bad(
            "phone too short",
            json!({"respondent": {"phone": "+12345"}}),
            "invalid_request",
        ),
        bad(
            "phone as number",
            json!({"respondent": {"phone": 5511987654321u64}}),
            "invalid_request",
        ),
        bad(
            "bad email",
            json!({"respondent": {"email": "ana@"}}),
            "invalid_request",
        ),
        bad(
            "long name",
            json!({"respondent": {"name": "n".repeat(201)}}),
            "invalid_request",
        ),
        bad(
            "bad locale",
            json!({"respondent": {"locale": "pt_BR!"}}),
            "invalid_request",
        ),
        bad(
            "answers not array",
            json!({"answers": {"q1": "b"}}),
            "invalid_request",
        ),
        bad(
            "too many answers",
            json!({"answers": vec![json!({"question": "q", "value": 1}); 201]}),
            "invalid_request",
        ),
        bad(
            "answer without value",
            json!({"answers": [{"question": "q"}]}),
            "invalid_request",
        ),
        bad(
            "answer object value",
            json!({"answers": [{"question": "q", "value": {"x": 1}}]}),
            "invalid_request",
        ),
        bad(
            "answer null value",
            json!({"answers": [{"question": "q", "value": null}]}),
            "invalid_request",
        ),
        bad(
            "long question",
            json!({"answers": [{"question": "q".repeat(65), "value": 1}]}),
            "invalid_request",
        ),
        bad(
            "long text value",
            json!({"answers": [{"question": "q", "value": "v".repeat(1025)}]}),
            "invalid_request",
        ),
        bad(
            "list of numbers",
            json!({"answers": [{"question": "q", "value": [1, 2]}]}),
            "invalid_request",
        ),
        bad(
            "list too long",
            json!({"answers": [{"question": "q", "value": vec!["a"; 51]}]}),
            "invalid_request",
        ),
        bad(
            "unknown answer field",
            json!({"answers": [{"question": "q", "value": 1, "weight": 2}]}),
            "invalid_request",
        ),
        bad("score as string", json!({"score": "72"}), "invalid_request"),
        bad(
            "completed_at not rfc3339",
            json!({"completed_at": "22/11/2026"}),
            "invalid_request",
        ),
        bad(
            "completed_at as number",
            json!({"completed_at": 1763805600}),
            "invalid_request",
        ),
        bad(
            "too many tags",
            json!({"tags": vec!["t"; 21]}),
            "invalid_request",
        ),
        bad(
            "long tag",
            json!({"tags": ["t".repeat(65)]}),
            "invalid_request",
        ),
        bad(
            "metadata as array",
            json!({"metadata": [1]}),
            "invalid_request",
        ),
        Bad {
            path: "/v1/quizzes/a.b/submissions".into(),
            ..bad("dot in quiz id", json!({}), "invalid_request")
        },
        Bad {
            path: format!("/v1/quizzes/{}/submissions", "q".repeat(65)),
            ..bad("quiz id too long", json!({}), "invalid_request")
        },
        Bad {
            path: "/v1/quizzes/%2A/submissions".into(),
            ..bad("wildcard quiz id", json!({}), "invalid_request")
        },
        Bad {
            key: Some(""),
            ..bad("empty idempotency key", json!({}), "invalid_request")
        },
        Bad {
            content_type: Some("text/plain"),
            status: 415,
            ..bad("text/plain", json!({}), "unsupported_media_type")
        },
        Bad {
            content_type: None,
            status: 415,
            ..bad("no content type", json!({}), "unsupported_media_type")
        },
        Bad {
            content_type: Some("application/json; charset=latin1"),
            status: 415,
            ..bad("latin1 charset", json!({}), "unsupported_media_type")
        },
        Bad {
            status: 413,
            ..bad(
                "body over 64 KiB",
                json!({"metadata": {"x": "x".repeat(70_000)}}),
                "payload_too_large",
            )
        },
        Bad {
            path: "/v1/nope".into(),
            status: 404,
            ..bad("unknown route", json!({}), "not_found")
        },
        Bad {
            method: "GET",
            status: 405,
            ..bad("wrong method", json!({}), "method_not_allowed")
        },
        Bad {
            path: "/v1/submissions/batch".into(),
            ..bad(
                "batch without submissions",
                json!({"items": []}),
                "invalid_request",
            )
        },
        Bad {
            path: "/v1/submissions/batch".into(),
            ..bad(
                "batch over 1000 items",
                json!({"submissions": vec![json!({"quiz_id": "q"}); 1001]}),
                "invalid_request",
            )
        },
        Bad {
            path: "/v1/submissions/batch".into(),
            status: 413,
            ..bad(
                "batch over 4 MiB",
                json!({"submissions": vec![json!({"quiz_id": "q", "metadata": {"x": "x".repeat(50_000)}}); 90]}),
                "payload_too_large",
            )
        },
    ];
    cases.retain(|c| !c.name.is_empty());
    cases
}

#[tokio::test]
async fn given_malformed_inputs_then_each_gets_a_json_4xx_and_the_server_keeps_serving() {
    let api = Api::start().await;
    let cases = malformed_inputs();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in cases {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
        let mut req = api
            .http
            .request(method, api.url(&case.path))
            .body(case.body);
        if let Some(ct) = case.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(k) = case.key {
            req = req.header("idempotency-key", k);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let status = resp.status().as_u16();
        assert!(status < 500, "{}: got {status}", case.name);
        let body = assert_error(resp, case.status, case.code).await;
        if case.code == "invalid_request" && case.status == 400 && case.path.contains("quizzes") {
            assert!(
                !body["error"]["details"]
                    .as_array()
                    .expect("details")
                    .is_empty(),
                "{}: {body}",
                case.name
            );
        }
    }
    assert_eq!(
        api.stream_count().await,
        0,
        "nothing invalid reached the stream"
    );
    let ok = api
        .post_json("/v1/quizzes/q1/submissions", &lead("+5511987654321"))
        .await;
    assert_eq!(ok.status().as_u16(), 202);
    let health = api
        .http
        .get(api.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn given_details_when_several_fields_are_wrong_then_all_are_named() {
    let api = Api::start().await;
    let resp = api
        .post_json(
            "/v1/quizzes/q1/submissions",
            &json!({"respondent": {"phone": "1", "email": "x"}, "score": "a"}),
        )
        .await;
    let body = assert_error(resp, 400, "invalid_request").await;
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    for f in ["respondent.phone", "respondent.email", "score"] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
}

/// Sends a chunked body (no Content-Length) over a raw socket and returns status and body.
async fn post_chunked(base: &str, path: &str, chunk: &[u8], chunks: usize) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.expect("head");
    for _ in 0..chunks {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before the whole body is sent: that is the point.
        if sock.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn given_a_chunked_body_over_the_limit_then_413_json_without_reading_it_all() {
    let api = Api::start().await;
    let chunk = vec![b' '; 8 * 1024];
    // 1 MiB of whitespace, chunked: over the 64 KiB limit.
    let (status, text) = post_chunked(&api.base, "/v1/quizzes/q1/submissions", &chunk, 128).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("\"payload_too_large\""), "{text}");
    // And for the batch route (4 MiB limit): 5 MiB.
    let (status, text) = post_chunked(&api.base, "/v1/submissions/batch", &chunk, 640).await;
    assert_eq!(status, 413, "{text}");
    // A small chunked body is fine.
    let (status, text) = post_chunked(
        &api.base,
        "/v1/quizzes/q1/submissions",
        br#"{"score": 3}"#,
        1,
    )
    .await;
    assert_eq!(status, 202, "{text}");
}

#[tokio::test]
async fn given_nats_down_when_submitting_then_503_fast_and_202_again_after_restart() {
    let mut api = Api::start().await;
    assert_eq!(
        api.post_json("/v1/quizzes/q1/submissions", &json!({"score": 1}))
            .await
            .status()
            .as_u16(),
        202
    );
    api.nats.stop();
    let started = Instant::now();
    let resp = api
        .post_json("/v1/quizzes/q1/submissions", &json!({"score": 2}))
        .await;
    let elapsed = started.elapsed();
    assert!(resp.headers().contains_key("retry-after"));
    assert_error(resp, 503, "unavailable").await;
    // Bounded by the configured publish timeout (1 s here), never a hang.
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let ready = api
        .http
        .get(api.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_error(ready, 503, "unavailable").await;

    api.nats.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = api
            .post_json("/v1/quizzes/q1/submissions", &json!({"score": 3}))
            .await;
        match resp.status().as_u16() {
            202 => break,
            503 => assert!(Instant::now() < deadline, "no 202 after the restart"),
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = api
        .http
        .get(api.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    // The file store kept what was acknowledged before the outage.
    assert_eq!(api.stream_count().await, 2);
}

#[tokio::test]
async fn given_the_respondent_limit_then_the_next_submission_is_429_and_duplicates_do_not_count() {
    let api = Api::start_with(|s| s.respondent_limit_per_min = 3).await;
    let post = |score: i32, phone: &str, email: &str, quiz: &str| {
        api.post_owned(
            format!("/v1/quizzes/{quiz}/submissions"),
            json!({"score": score, "respondent": {"phone": phone, "email": email}}),
        )
    };
    for score in [1, 1, 1, 2, 3] {
        // Score 1 three times: two duplicates, which must not use up the limit.
        assert_eq!(
            post(score, "+5511900000001", "a@x.io", "q1")
                .await
                .status()
                .as_u16(),
            202,
            "score {score}"
        );
    }
    let resp = post(4, "+5511900000001", "b@x.io", "q1").await;
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry));
    assert_error(resp, 429, "rate_limited").await;
    // E-mail is counted on its own: a new phone with the same e-mail is limited too.
    assert_error(
        post(5, "+5511900000002", "a@x.io", "q1").await,
        429,
        "rate_limited",
    )
    .await;
    // Another quiz has its own budget.
    assert_eq!(
        post(6, "+5511900000001", "a@x.io", "q2")
            .await
            .status()
            .as_u16(),
        202
    );
    // A respondent with no contact is not limited by it.
    assert_eq!(
        api.post_json("/v1/quizzes/q1/submissions", &json!({"score": 7}))
            .await
            .status()
            .as_u16(),
        202
    );
}

#[tokio::test]
async fn given_the_ip_limit_then_the_next_submission_is_429() {
    let api = Api::start_with(|s| s.ip_limit_per_min = 2).await;
    for score in 0..2 {
        assert_eq!(
            api.post_json("/v1/quizzes/q1/submissions", &json!({"score": score}))
                .await
                .status()
                .as_u16(),
            202
        );
    }
    let resp = api
        .post_json("/v1/quizzes/q1/submissions", &json!({"score": 9}))
        .await;
    assert_error(resp, 429, "rate_limited").await;
}

#[tokio::test]
async fn given_a_batch_with_a_bad_item_then_the_others_are_accepted_in_order() {
    let api = Api::start().await;
    let mut good = lead("+5511987654321");
    good["quiz_id"] = json!("q1");
    good["idempotency_key"] = json!("k-1");
    let resp = api
        .post_json(
            "/v1/submissions/batch",
            &json!({"submissions": [
                good,
                {"quiz_id": "q1", "score": "high"},
                {"quiz_id": "bad.quiz", "score": 1},
                {"quiz_id": "q2", "score": 2},
                {"quiz_id": "q1", "idempotency_key": "k-1"},
                7
            ]}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, [202, 400, 400, 202, 202, 400]);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
    }
    assert_eq!(results[1]["error"]["code"], "invalid_request");
    assert_eq!(results[1]["error"]["details"][0]["field"], "score");
    assert_eq!(results[2]["error"]["details"][0]["field"], "quiz_id");
    // Items 0 and 4 share a key: one submission, reported once as a duplicate.
    assert_eq!(results[0]["submission_id"], results[4]["submission_id"]);
    let dups = [&results[0], &results[4]]
        .iter()
        .filter(|r| r["duplicate"] == true)
        .count();
    assert_eq!(dups, 1);
    assert_eq!(api.stream_count().await, 2);

    // A batch item and a single post with the same key and quiz are the same submission.
    let single: serde_json::Value = api
        .http
        .post(api.url("/v1/quizzes/q1/submissions"))
        .header("Idempotency-Key", "k-1")
        .json(&json!({}))
        .send()
        .await
        .expect("single")
        .json()
        .await
        .expect("json");
    assert_eq!(single["submission_id"], results[0]["submission_id"]);
    assert_eq!(single["duplicate"], true);
}

#[tokio::test]
async fn given_a_full_batch_then_every_item_is_published() {
    let api = Api::start_with(|s| s.respondent_limit_per_min = 0).await;
    let items: Vec<_> = (0..1000)
        .map(|i| json!({"quiz_id": "big", "score": i}))
        .collect();
    let resp = api
        .post_json("/v1/submissions/batch", &json!({ "submissions": items }))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    let accepted = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["status"] == 202 && r["duplicate"] == false)
        .count();
    assert_eq!(accepted, 1000);
    assert_eq!(api.stream_count().await, 1000);
}

#[tokio::test]
async fn given_operations_routes_then_they_answer() {
    let api = Api::start().await;
    assert_eq!(
        api.post_json("/v1/quizzes/q1/submissions", &json!({"score": 1}))
            .await
            .status()
            .as_u16(),
        202
    );
    let ready = api
        .http
        .get(api.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    let metrics = api
        .http
        .get(api.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("quizflow_submissions_accepted_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("quizflow_api_request_duration_seconds"),
        "{metrics}"
    );
    assert!(!metrics.contains("+55"), "no personal data in metrics");
    let spec: serde_json::Value = api
        .http
        .get(api.url("/openapi.json"))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("json");
    assert!(spec["paths"]["/v1/submissions/batch"].is_object());
    let docs = api.http.get(api.url("/docs")).send().await.expect("docs");
    assert!(docs.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
}

#[tokio::test]
async fn given_concurrent_posts_then_every_202_is_in_the_stream() {
    let api = Api::start_with(|s| s.respondent_limit_per_min = 0).await;
    let results = futures::stream::iter(0..300)
        .map(|i| api.post_owned("/v1/quizzes/load/submissions".into(), json!({"score": i})))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    assert!(results.iter().all(|r| r.status().as_u16() == 202));
    assert_eq!(api.stream_count().await, 300);
}

#[tokio::test]
async fn given_u0000_anywhere_then_400_names_the_field_and_nothing_reaches_the_stream() {
    let api = Api::start().await;
    // Raw JSON text: `\u0000` escapes, as a frontend would send them.
    for (body, field) in [
        (
            r#"{"respondent": {"name": "A\u0000na"}}"#,
            "respondent.name",
        ),
        (
            r#"{"answers": [{"question": "q1", "value": "b\u0000"}]}"#,
            "answers[0].value",
        ),
        (r#"{"tags": ["ok", "t\u0000"]}"#, "tags[1]"),
        (
            r#"{"metadata": {"utm": {"src": "tv\u0000"}}}"#,
            "metadata.utm.src",
        ),
    ] {
        let resp = api
            .http
            .post(api.url("/v1/quizzes/q1/submissions"))
            .header("content-type", "application/json")
            .body(body)
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
        assert!(fields.contains(&field), "{field} in {fields:?}");
    }
    let mut deep = json!(1);
    for _ in 0..17 {
        deep = json!({ "a": deep });
    }
    let resp = api
        .post_json("/v1/quizzes/q1/submissions", &json!({ "metadata": deep }))
        .await;
    assert_error(resp, 400, "invalid_request").await;
    // In a batch, the bad item is refused alone.
    let resp = api
        .post_json(
            "/v1/submissions/batch",
            &json!({"submissions": [
                {"quiz_id": "q1", "idempotency_key": "a", "respondent": {"name": "A\u{0}na"}},
                {"quiz_id": "q1", "idempotency_key": "b", "respondent": {"name": "Ana"}}
            ]}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let results: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(results["results"][0]["status"], 400);
    assert_eq!(results["results"][1]["status"], 202);
    assert_eq!(
        api.stream_count().await,
        1,
        "only the clean lead was published"
    );
}

#[tokio::test]
async fn given_a_draining_api_then_new_submissions_get_503_and_health_stays_up() {
    let api = Api::start().await;
    let ok = api
        .post_json("/v1/quizzes/q1/submissions", &lead("+5511987654321"))
        .await;
    assert_eq!(ok.status().as_u16(), 202);
    api.state.drain();
    let one = api
        .post_json("/v1/quizzes/q1/submissions", &json!({"score": 1}))
        .await;
    assert!(one.headers().contains_key("retry-after"));
    assert_error(one, 503, "unavailable").await;
    let batch = api
        .post_json(
            "/v1/submissions/batch",
            &json!({"submissions": [{"quiz_id": "q1", "score": 1}]}),
        )
        .await;
    assert_error(batch, 503, "unavailable").await;
    let health = api
        .http
        .get(api.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(
        api.stream_count().await,
        1,
        "nothing published while draining"
    );
}

#[tokio::test]
async fn given_a_graceful_stop_under_load_then_every_answer_is_honest_and_every_202_is_durable() {
    let mut api = Api::start_with(|s| s.respondent_limit_per_min = 0).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .expect("client");
    let url = api.url("/v1/quizzes/q1/submissions");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400 {
        let (http, url) = (http.clone(), url.clone());
        tasks.spawn(async move {
            http.post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", format!("drain-{i}"))
                .body(lead("+5511987654321").to_string())
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        statuses.push(r.expect("task"));
        if statuses.len() == 50 {
            api.stop();
        }
    }
    let accepted = statuses.iter().filter(|s| matches!(s, Ok(202))).count();
    for s in statuses.iter().flatten() {
        assert!(
            matches!(s, 202 | 503),
            "only 202 or 503 during a stop, got {s}"
        );
    }
    let refused = statuses.iter().filter(|s| matches!(s, Ok(503))).count();
    eprintln!(
        "drain: {accepted} accepted, {refused} refused with 503, {} not connected",
        statuses.iter().filter(|s| s.is_err()).count()
    );
    assert!(accepted >= 50, "{accepted} accepted");
    assert_eq!(
        api.stream_count().await,
        accepted as u64,
        "every 202 is in the stream, nothing else is"
    );
}

/// contract §2.5: a PostgreSQL outage never makes the API unready (intake goes on while JetStream
/// buffers); the body and `quizflow_dependency_up` name the database's state, without driver
/// text, and submissions keep getting 202.
#[tokio::test]
async fn given_postgres_unreachable_then_the_api_stays_ready_and_names_it_without_driver_text() {
    let nats = quizflow_testkit::NatsServer::start();
    let ns = quizflow_nats::NatsSettings::new(nats.url(), "readyz-test");
    let client = quizflow_nats::connect(&ns).await.expect("connect");
    let js = quizflow_nats::jetstream(client.clone(), &ns);
    quizflow_nats::ensure_topology(&js, &quizflow_nats::TopologyConfig::default())
        .await
        .expect("topology");
    // Nothing listens on port 1: every connection attempt is refused.
    let pool = quizflow_store::pool("postgres://quizflow:s3cret@127.0.0.1:1/quizflow", 1);
    let settings = quizflow_api::ApiSettings {
        http_addr: "127.0.0.1:0".into(),
        ..Default::default()
    };
    let state = quizflow_api::AppState::new(settings, client, js, pool).expect("state");
    let bound = quizflow_api::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", bound.local_addr);
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(quizflow_api::serve(bound, state, async move {
        let _ = rx.await;
    }));
    // NATS connects in the background; once it has, the API is ready, PostgreSQL or not.
    let deadline = Instant::now() + Duration::from_secs(15);
    let body: Value = loop {
        let resp = reqwest::get(format!("{base}/readyz"))
            .await
            .expect("readyz");
        if resp.status().as_u16() == 200 {
            break resp.json().await.expect("json");
        }
        assert!(Instant::now() < deadline, "never ready: {}", resp.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["status"], "ready", "{body}");
    assert!(
        matches!(
            body["postgres"].as_str(),
            Some("database unavailable" | "database timeout" | "no answer within 2s")
        ),
        "{body}"
    );
    let text = body.to_string();
    for leak in ["s3cret", "127.0.0.1:1", "refused", "Connection"] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("quizflow_dependency_up{dependency=\"postgres\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("quizflow_dependency_up{dependency=\"nats\"} 1"));
    // And intake goes on: the lead is in JetStream, waiting for the database.
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/quizzes/q1/submissions"))
        .json(&json!({"score": 1}))
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status().as_u16(), 202);
}

#[tokio::test]
async fn given_the_cluster_wide_respondent_limit_then_two_instances_share_one_budget() {
    let api = Api::start_with(|s| {
        s.respondent_limit_per_min = 3;
        s.respondent_limit_scope = quizflow_api::LimitScope::Cluster;
    })
    .await;
    // A second instance on the same NATS and database.
    let settings = quizflow_api::ApiSettings {
        http_addr: "127.0.0.1:0".into(),
        respondent_limit_per_min: 3,
        respondent_limit_scope: quizflow_api::LimitScope::Cluster,
        admin_token: Some(harness::ADMIN_TOKEN.into()),
        ..Default::default()
    };
    let other = quizflow_api::AppState::new(
        settings.clone(),
        api.js.client(),
        api.js.clone(),
        quizflow_store::pool(&api.db.url, 2),
    )
    .expect("state");
    let bound = quizflow_api::bind(&settings.http_addr).await.expect("bind");
    let other_base = format!("http://{}", bound.local_addr);
    tokio::spawn(quizflow_api::serve(
        bound,
        other,
        std::future::pending::<()>(),
    ));
    let post = |base: String, score: i32| {
        let http = api.http.clone();
        async move {
            http.post(format!("{base}/v1/quizzes/q1/submissions"))
                .json(&json!({"score": score, "respondent": {"phone": "+5511900000009"}}))
                .send()
                .await
                .expect("post")
        }
    };
    assert_eq!(post(api.base.clone(), 1).await.status().as_u16(), 202);
    // A duplicate does not use up the budget, on either instance.
    assert_eq!(post(other_base.clone(), 1).await.status().as_u16(), 202);
    assert_eq!(post(other_base.clone(), 2).await.status().as_u16(), 202);
    assert_eq!(post(api.base.clone(), 3).await.status().as_u16(), 202);
    // Three counted across the two instances: the fourth is refused by either.
    for base in [other_base.clone(), api.base.clone()] {
        let resp = post(base, 4).await;
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((1..=60).contains(&retry), "{retry}");
        assert_error(resp, 429, "rate_limited").await;
    }
    // The shared counters name respondents by keyed hash only.
    let mut stream = api
        .js
        .get_stream("RESPONDENT_LIMITS")
        .await
        .expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.messages, 3);
    let subjects = stream
        .info_with_subjects("quizflow.limits.respondent.*")
        .await
        .expect("subjects");
    use futures::TryStreamExt;
    let subjects: Vec<(String, usize)> = subjects.try_collect().await.expect("subjects");
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert!(!subjects[0].0.contains("5511900000009"), "{subjects:?}");
}

/// Starts a request whose body never finishes: it holds a slot until the read timeout.
async fn trickling(base: &str) -> tokio::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"POST /v1/quizzes/q1/submissions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"sc",
    )
    .await
    .expect("write");
    s
}

/// Inbound work is bounded: past `max_inflight` requests in flight the instance answers 503
/// `overloaded` at once (health and readiness still answer), and a body that does not arrive
/// within the read timeout (15 s, the production value) is cut off with 408, freeing its slot.
#[tokio::test]
async fn given_requests_past_the_inflight_limit_or_a_stalled_body_then_503_overloaded_and_408() {
    let api = Api::start_with(|s| s.max_inflight = 2).await;
    let mut held = vec![trickling(&api.base).await, trickling(&api.base).await];
    // Both slots are taken once the server has read their headers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r = api
            .post_json("/v1/quizzes/q1/submissions", &json!({"score": 1}))
            .await;
        if r.status().as_u16() == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "never refused: {}", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.headers().contains_key("retry-after"));
    assert_error(refused, 503, "overloaded").await;
    let ready = api
        .http
        .get(api.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200, "readiness is never refused");
    // The stalled bodies are cut off with 408 after the read timeout.
    let started = Instant::now();
    for s in &mut held {
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut answer))
            .await
            .expect("answered within the read timeout")
            .expect("read");
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("request_timeout"), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    // Slots are free again.
    let ok = api
        .post_json("/v1/quizzes/q1/submissions", &json!({"score": 2}))
        .await;
    assert_eq!(ok.status().as_u16(), 202);
}
