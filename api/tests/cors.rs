//! Browser quiz pages on other origins (contract §2, `QUIZFLOW_CORS_ORIGINS`): in headless
//! Chromium a page served from a listed origin posts a lead (with an `Idempotency-Key`) to the
//! API on another origin and reads the 202; a page from an origin not listed cannot (its
//! preflight is refused, so the browser never sends the lead); admin routes answer no CORS.

mod harness;

use harness::Api;
use poem::web::Html;
use quizflow_testkit::chromium::{dump_dom, text_by_id};
use reqwest::Method;

/// A quiz page that posts one lead to `api` and writes what it could read into `#result`.
fn page(api: &str) -> String {
    format!(
        r#"<!doctype html><html><body><pre id="result">pending</pre><script>
fetch("{api}/v1/quizzes/browser-quiz/submissions", {{
  method: "POST",
  headers: {{"content-type": "application/json", "idempotency-key": "browser-lead-1"}},
  body: JSON.stringify({{respondent: {{email: "ana@example.com"}}, score: 80}})
}}).then(r => r.json().then(b => {{
  document.getElementById("result").textContent = r.status + " " + b.submission_id + " " + b.duplicate;
}})).catch(e => {{ document.getElementById("result").textContent = "blocked " + e.name; }});
</script></body></html>"#
    )
}

/// A listener for a page: its own port, so its own origin (known before the API starts).
async fn page_listener() -> (poem::listener::TcpAcceptor, String) {
    use poem::listener::{Acceptor, Listener};
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .expect("addr");
    (acceptor, format!("http://{addr}"))
}

/// Serves `html` at `/` on `acceptor`.
fn serve_page(acceptor: poem::listener::TcpAcceptor, html: String) {
    let app = poem::Route::new().at("/", poem::endpoint::make_sync(move |_| Html(html.clone())));
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_origin_posts_from_a_browser_and_another_cannot() {
    let (listed_acceptor, listed) = page_listener().await;
    let (other_acceptor, other) = page_listener().await;
    let origins = format!("{listed},https://*.example.com");
    let api = Api::start_with(move |s| {
        s.cors_origins = quizflow_api::CorsOrigins::parse(&origins).expect("origins");
    })
    .await;
    serve_page(listed_acceptor, page(&api.base));
    serve_page(other_acceptor, page(&api.base));

    // From the listed origin the browser sends the lead and the page reads the 202.
    let dom = tokio::task::spawn_blocking(move || dump_dom(&format!("{listed}/")))
        .await
        .expect("chromium");
    let result = text_by_id(&dom, "result");
    let parts: Vec<&str> = result.split(' ').collect();
    assert_eq!(parts.len(), 3, "{result}");
    assert_eq!((parts[0], parts[2]), ("202", "false"), "{result}");
    assert!(uuid::Uuid::parse_str(parts[1]).is_ok(), "{result}");

    // From an origin not listed the preflight is refused: the lead is never sent.
    let dom = tokio::task::spawn_blocking(move || dump_dom(&format!("{other}/")))
        .await
        .expect("chromium");
    assert_eq!(text_by_id(&dom, "result"), "blocked TypeError");
    let mut stream = api.js.get_stream("SUBMISSIONS").await.expect("stream");
    let stored = stream.info().await.expect("info").state.messages;
    assert_eq!(stored, 1, "one lead reached JetStream: the listed page's");
}

#[tokio::test]
async fn preflights_are_answered_for_listed_origins_alone_and_admin_routes_never() {
    let api = Api::start_with(|s| {
        s.cors_origins =
            quizflow_api::CorsOrigins::parse("https://quiz.example.com,https://*.promo.com.br")
                .expect("origins");
    })
    .await;
    let preflight = |origin: &'static str, headers: &'static str, path: &'static str| {
        api.http
            .request(Method::OPTIONS, api.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", headers)
            .send()
    };
    let path = "/v1/quizzes/q/submissions";
    let ok = preflight(
        "https://a.promo.com.br",
        "content-type, idempotency-key, traceparent",
        path,
    )
    .await
    .expect("preflight");
    assert_eq!(ok.status().as_u16(), 204);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://a.promo.com.br");
    assert_eq!(h["access-control-allow-methods"], "POST");
    assert!(h["access-control-allow-headers"]
        .to_str()
        .expect("text")
        .contains("idempotency-key"));
    assert_eq!(h["vary"], "Origin");
    for (origin, headers, why) in [
        ("https://evil.example", "content-type", "origin"),
        (
            "https://quiz.example.com",
            "content-type, authorization",
            "header",
        ),
    ] {
        let r = preflight(origin, headers, path).await.expect("preflight");
        assert_eq!(r.status().as_u16(), 403, "{why}");
        assert!(r.headers().get("access-control-allow-origin").is_none());
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "cors_not_allowed");
    }
    let batch = preflight(
        "https://quiz.example.com",
        "content-type",
        "/v1/submissions/batch",
    )
    .await
    .expect("preflight");
    assert_eq!(batch.status().as_u16(), 204);
    // Admin routes: no preflight answered, no CORS header on an answer.
    let admin = preflight("https://quiz.example.com", "content-type", "/v1/campaigns")
        .await
        .expect("preflight");
    assert_ne!(admin.status().as_u16(), 204);
    assert!(admin.headers().get("access-control-allow-origin").is_none());
    let stats = api
        .http
        .get(api.url("/v1/stats"))
        .header("origin", "https://quiz.example.com")
        .bearer_auth(harness::ADMIN_TOKEN)
        .send()
        .await
        .expect("stats");
    assert_eq!(stats.status().as_u16(), 200);
    assert!(stats.headers().get("access-control-allow-origin").is_none());
    // A lead from a listed origin's page: its answer carries the origin.
    let lead = api
        .http
        .post(api.url(path))
        .header("origin", "https://quiz.example.com")
        .json(&serde_json::json!({"respondent": {"email": "bia@example.com"}}))
        .send()
        .await
        .expect("lead");
    assert_eq!(lead.status().as_u16(), 202);
    assert_eq!(
        lead.headers()["access-control-allow-origin"],
        "https://quiz.example.com"
    );
}
