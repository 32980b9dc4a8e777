//! OTLP export end to end: `quizflow up` with `OTEL_EXPORTER_OTLP_ENDPOINT` pointed at a
//! local OTLP/HTTP receiver. One lead posted with a W3C `traceparent` yields one trace: the
//! API request, the batcher's store of that submission (child of the request, through the
//! NATS headers) and the delivery attempt (child of the store, through the job's headers).
//! The Prometheus figures arrive as OTLP metrics too.

mod support;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Data;
use poem::{handler, post, EndpointExt, Route};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{spawn_up_with, wait_ready};

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<Span>>,
    metrics: Mutex<Vec<String>>,
}

#[handler]
fn traces(body: Vec<u8>, got: Data<&Arc<Received>>) -> poem::http::StatusCode {
    let Ok(req) = ExportTraceServiceRequest::decode(body.as_slice()) else {
        return poem::http::StatusCode::BAD_REQUEST;
    };
    let mut spans = got.spans.lock().expect("lock");
    for rs in req.resource_spans {
        for ss in rs.scope_spans {
            for s in ss.spans {
                spans.push(Span {
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                });
            }
        }
    }
    poem::http::StatusCode::OK
}

#[handler]
fn metrics(body: Vec<u8>, got: Data<&Arc<Received>>) -> poem::http::StatusCode {
    let Ok(req) = ExportMetricsServiceRequest::decode(body.as_slice()) else {
        return poem::http::StatusCode::BAD_REQUEST;
    };
    let mut names = got.metrics.lock().expect("lock");
    for rm in req.resource_metrics {
        for sm in rm.scope_metrics {
            names.extend(sm.metrics.into_iter().map(|m| m.name));
        }
    }
    poem::http::StatusCode::OK
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn given_an_otlp_endpoint_then_one_trace_follows_a_lead_from_request_to_delivery() {
    let got = Arc::new(Received::default());
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let otlp = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .expect("addr");
    let app = Route::new()
        .at("/v1/traces", post(traces))
        .at("/v1/metrics", post(metrics))
        .data(got.clone());
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));

    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let port = quizflow_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = format!("http://{otlp}");
    let _up = spawn_up_with(
        &data,
        port,
        quizflow_testkit::free_port(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    );
    let http = reqwest::Client::new();
    wait_ready(&http, &base, &data).await;
    let token = std::fs::read_to_string(data.join("admin-token")).expect("token");
    let created = http
        .post(format!("{base}/v1/campaigns"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "name": "traced", "match": {},
            "actions": [{"channel": "sms", "template": "Oi"}]
        }))
        .send()
        .await
        .expect("campaign");
    assert_eq!(created.status().as_u16(), 201);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The caller's trace: quizflow's spans must join it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = http
        .post(format!("{base}/v1/quizzes/traced/submissions"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&serde_json::json!({"score": 1, "respondent": {"phone": "+5511987654321"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);

    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans: Vec<Span> = got
            .spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        if spans.iter().any(|s| s.name == "worker.deliver") {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery span in the caller's trace: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
            .clone()
    };
    let request = find("http.request");
    let store = find("batcher.store");
    let deliver = find("worker.deliver");
    assert_eq!(request.parent, caller_span, "the request joins the caller");
    assert_eq!(
        store.parent, request.span_id,
        "the batcher continues the request"
    );
    assert_eq!(
        deliver.parent, store.span_id,
        "the attempt continues the store"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names = got.metrics.lock().expect("lock").clone();
        if [
            "quizflow_submissions_accepted_total",
            "quizflow_deliveries_total",
        ]
        .iter()
        .all(|n| names.iter().any(|m| m == n))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics not exported over OTLP: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
