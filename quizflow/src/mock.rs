//! `quizflow mock-provider`: the bundled mock provider (Twilio, WhatsApp Cloud, Evolution,
//! Resend, webhook and SMTP shapes) as a role.

use crate::config::Config;
use anyhow::Context;
use std::future::Future;

pub async fn serve(cfg: &Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    use poem::listener::{Acceptor, Listener};
    let acceptor = poem::listener::TcpListener::bind(cfg.mock_addr.clone())
        .into_acceptor()
        .await
        .with_context(|| format!("mock provider cannot listen on {}", cfg.mock_addr))?;
    let smtp = tokio::net::TcpListener::bind(&cfg.mock_smtp_addr)
        .await
        .with_context(|| format!("mock SMTP cannot listen on {}", cfg.mock_smtp_addr))?;
    tracing::info!(addr = ?acceptor.local_addr(), smtp = %cfg.mock_smtp_addr, "mock provider listening");
    let state = quizflow_mock_provider::MockState::default();
    if cfg.mock_callbacks {
        // Every accepted message is reported delivered a moment later (PUT /_mock/callbacks
        // changes the share, the delay and the outcome).
        let public = cfg.api.public_url.clone().unwrap_or_default();
        state.set_callbacks(quizflow_mock_provider::Callbacks {
            share: 1.0,
            delay_ms: 200,
            status: None,
            whatsapp_url: Some(format!("{public}/v1/callbacks/whatsapp")),
            whatsapp_app_secret: cfg.api.whatsapp_app_secret.clone(),
            email_url: Some(format!("{public}/v1/callbacks/email")),
            email_secret: cfg.api.email_webhook_secret.clone(),
            // `POST /_mock/inbound` replies as Twilio would, signed with the mock account's
            // token (the one `up` gives the API).
            twilio_inbound_url: Some(format!("{public}/v1/inbound/twilio")),
            twilio_auth_token: Some("mock".into()),
            evolution_url: Some(format!("{public}/v1/callbacks/evolution")),
            evolution_api_key: cfg.api.evolution_webhook_key.clone(),
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let smtp_task = tokio::spawn(quizflow_mock_provider::serve_smtp(
        smtp,
        state.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    quizflow_mock_provider::serve(acceptor, state, shutdown).await?;
    let _ = stop_tx.send(());
    let _ = smtp_task.await;
    Ok(())
}
