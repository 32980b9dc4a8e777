//! W3C trace context in NATS and HTTP headers, so one trace follows a lead from the API
//! request through the batcher to each delivery attempt.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub(crate) static ENABLED: AtomicBool = AtomicBool::new(false);

/// True when traces are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` was set at start).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

struct NatsInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes lowercase `traceparent` / `tracestate`; NATS header names are
        // case-sensitive, so they stay exactly as written.
        self.0.insert(key, value.as_str());
    }
}

struct NatsExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

struct HttpExtractor<'a>(&'a poem::http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Adds the current span's trace context to `headers` (nothing when tracing is off).
pub fn inject_current(headers: &mut async_nats::HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut NatsInjector(headers));
}

/// The trace context of `span` as NATS headers, or `None` when tracing is off.
pub fn headers_for(span: &tracing::Span) -> Option<async_nats::HeaderMap> {
    if !enabled() {
        return None;
    }
    let mut headers = async_nats::HeaderMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut NatsInjector(&mut headers));
    Some(headers)
}

/// Makes the trace context a message carries the parent of `span`.
pub fn set_parent_from_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if !enabled() {
        return;
    }
    if let Some(h) = headers {
        let cx = TraceContextPropagator::new().extract(&NatsExtractor(h));
        // Fails only when the span is already started elsewhere: then it keeps its parent.
        let _ = span.set_parent(cx);
    }
}

/// Makes the caller's `traceparent` (if any) the parent of `span`.
pub fn set_parent_from_http(span: &tracing::Span, headers: &poem::http::HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HttpExtractor(headers));
    let _ = span.set_parent(cx);
}
