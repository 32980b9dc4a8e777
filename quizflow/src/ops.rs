//! What every long-running command has besides its roles: the stream and consumer depth
//! gauges, the ops server (`/metrics`, `/healthz`, `/readyz`) of a role running alone, and the
//! shutdown signal.

use crate::config::Config;
use anyhow::Context;
use quizflow_telemetry::prometheus::Registry;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// Polls stream and consumer depths into the `quizflow_consumer_*` gauges every 5 s, until
/// `stop` resolves.
pub async fn poll_depths(
    js: async_nats::jetstream::Context,
    registry: &Registry,
    stop: impl Future<Output = ()>,
) {
    let gauges = match quizflow_telemetry::DepthGauges::register(registry) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "consumer depth gauges not registered");
            return;
        }
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        match quizflow_nats::depths(&js).await {
            Ok(d) => {
                for s in &d.streams {
                    gauges.set_stream(&s.stream, s.messages);
                }
                for c in &d.consumers {
                    gauges.set_consumer(c);
                }
            }
            Err(e) => tracing::debug!(error = %e, "consumer depths not read"),
        }
    }
}

/// Resolves once `stop` turns true.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Serves `/metrics`, `/healthz` and `/readyz` for roles running without the API, until
/// `stop`. Nothing when the role's metrics address is empty.
pub async fn serve_ops(
    cfg: &Config,
    role: &str,
    client: async_nats::Client,
    pool: quizflow_store::Pool,
    registry: Registry,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = cfg.metrics_addr_for(role) else {
        return Ok(None);
    };
    let ready: quizflow_telemetry::ReadyCheck = std::sync::Arc::new(move || {
        let (client, pool) = (client.clone(), pool.clone());
        Box::pin(async move {
            let mut down = Vec::new();
            if client.connection_state() != async_nats::connection::State::Connected {
                down.push("nats".to_owned());
            }
            let ping = tokio::time::timeout(Duration::from_secs(2), quizflow_store::ping(&pool));
            if !matches!(ping.await, Ok(Ok(()))) {
                down.push("postgres".to_owned());
            }
            down
        })
    });
    let (_, serve) = quizflow_telemetry::serve_ops(&addr, registry, ready, stopped(stop))
        .await
        .with_context(|| {
            format!("{role} metrics: set QUIZFLOW_METRICS_ADDR to a free address, or empty to switch them off")
        })?;
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    })))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
