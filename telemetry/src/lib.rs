//! Observability plumbing shared by every role: structured logs, the Prometheus registry and
//! the small ops server that roles running alone expose, OTLP export of traces and metrics, and
//! W3C trace context carried in NATS headers.
//!
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` is not set nothing is exported and nothing is injected
//! into messages: [`enabled`] is one atomic load on the hot path.

mod metrics;
mod ops;
mod otlp;
mod propagation;

pub use metrics::{render, ConsumerDepth, DepthGauges};
pub use ops::{serve_ops, ReadyCheck};
pub use otlp::{init, LogFormat, Telemetry};
pub use prometheus;
pub use propagation::{
    enabled, headers_for, inject_current, set_parent_from_http, set_parent_from_nats,
};

/// Errors of the telemetry set-up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}
