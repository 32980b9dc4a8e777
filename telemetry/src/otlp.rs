//! Start-up: the log subscriber (text or JSON) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//! OTLP export (HTTP/protobuf) of traces and of the Prometheus registry's metrics.

use crate::propagation::ENABLED;
use crate::TelemetryError;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use prometheus::proto::MetricType;
use prometheus::Registry;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What [`init`] installed; [`Telemetry::shutdown`] flushes the exporters.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    /// Picks up metric families registered after start; its thread ends when this is dropped.
    bridge: Option<std::sync::Arc<Bridge>>,
    service: String,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("otlp", &self.tracer.is_some())
            .field("service", &self.service)
            .finish()
    }
}

fn otlp_endpoint() -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
        .filter(|v| !v.trim().is_empty())
}

/// Installs the global log subscriber (filter from `RUST_LOG`, default `info,poem=warn`) and,
/// when an OTLP endpoint is configured, the trace exporter and W3C propagation.
pub fn init(format: LogFormat, service: &str) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,poem=warn".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let tracer = match otlp_endpoint() {
        None => None,
        Some(_) => {
            // An https collector: rustls needs its crypto provider chosen once per process
            // (an error only means one is installed already).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.clone())
                    .build(),
            )
        }
    };
    // Spans go to OTLP whatever `RUST_LOG` says about log lines (an operator who quiets the
    // logs still gets traces); only quizflow's own spans, never the exporter's HTTP client's.
    let otel_layer = tracer.as_ref().map(|tp| {
        tracing_opentelemetry::layer()
            .with_tracer(tp.tracer("quizflow"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("quizflow", tracing::Level::INFO),
            )
            .boxed()
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel_layer)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    if let Some(tp) = &tracer {
        opentelemetry::global::set_tracer_provider(tp.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        ENABLED.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry {
        tracer,
        meter: None,
        bridge: None,
        service: service.to_owned(),
    })
}

impl Telemetry {
    /// True when traces go to an OTLP endpoint.
    pub fn exporting(&self) -> bool {
        self.tracer.is_some()
    }

    /// Exports `registry` over OTLP too, when an endpoint is configured (every 60 s, or
    /// `OTEL_METRIC_EXPORT_INTERVAL` milliseconds): counters and gauges as they are,
    /// histograms as their `_sum` and `_count`. Families registered later are picked up within
    /// seconds.
    pub fn export_metrics(&mut self, registry: Registry) -> Result<(), TelemetryError> {
        if self.tracer.is_none() {
            return Ok(());
        }
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(
                Resource::builder()
                    .with_service_name(self.service.clone())
                    .build(),
            )
            .build();
        let meter = provider.meter("quizflow");
        // Instruments are created for the families present now and, from a background task,
        // for those registered later (roles start after telemetry).
        let bridge = Bridge {
            registry,
            meter,
            seen: std::sync::Mutex::new(HashSet::new()),
        };
        bridge.sync();
        let bridge = std::sync::Arc::new(bridge);
        let weak = std::sync::Arc::downgrade(&bridge);
        std::thread::Builder::new()
            .name("otlp-metrics-bridge".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                match weak.upgrade() {
                    Some(b) => b.sync(),
                    None => break,
                }
            })
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        self.bridge = Some(bridge);
        self.meter = Some(provider);
        Ok(())
    }

    /// Flushes and stops the exporters (graceful stop).
    pub fn shutdown(self) {
        drop(self.bridge);
        if let Some(tp) = self.tracer {
            let _ = tp.shutdown();
        }
        if let Some(mp) = self.meter {
            let _ = mp.shutdown();
        }
    }
}

struct Bridge {
    registry: Registry,
    meter: Meter,
    seen: std::sync::Mutex<HashSet<String>>,
}

impl Bridge {
    /// An OTLP counter `otlp_name` reading `value` of every series of family `family`.
    fn counter(
        &self,
        otlp_name: &str,
        family: &str,
        help: String,
        value: fn(&prometheus::proto::Metric) -> f64,
    ) {
        let (reg, family) = (self.registry.clone(), family.to_owned());
        self.meter
            .f64_observable_counter(otlp_name.to_owned())
            .with_description(help)
            .with_callback(move |o| observe(&reg, &family, value, |v, a| o.observe(v, a)))
            .build();
    }

    fn sync(&self) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        for family in self.registry.gather() {
            let name = family.name().to_owned();
            if !seen.insert(name.clone()) {
                continue;
            }
            let help = family.help().to_owned();
            match family.get_field_type() {
                MetricType::COUNTER => {
                    self.counter(&name, &name, help, |m| m.get_counter().get_value())
                }
                MetricType::GAUGE => {
                    let (reg, n) = (self.registry.clone(), name.clone());
                    self.meter
                        .f64_observable_gauge(name)
                        .with_description(help)
                        .with_callback(move |o| {
                            observe(
                                &reg,
                                &n,
                                |m| m.get_gauge().get_value(),
                                |v, a| o.observe(v, a),
                            )
                        })
                        .build();
                }
                MetricType::HISTOGRAM => {
                    self.counter(&format!("{name}_sum"), &name, help.clone(), |m| {
                        m.get_histogram().get_sample_sum()
                    });
                    self.counter(&format!("{name}_count"), &name, help, |m| {
                        m.get_histogram().get_sample_count() as f64
                    });
                }
                _ => {}
            }
        }
    }
}

fn observe(
    registry: &Registry,
    name: &str,
    value: impl Fn(&prometheus::proto::Metric) -> f64,
    mut emit: impl FnMut(f64, &[KeyValue]),
) {
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            let attrs: Vec<KeyValue> = m
                .get_label()
                .iter()
                .map(|l| KeyValue::new(l.name().to_owned(), l.value().to_owned()))
                .collect();
            emit(value(m), &attrs);
        }
    }
}
