//! `GET /v1/stats` (contract §2.4): cluster-wide figures from counters, never from scans.
//!
//! Stored submissions, deliveries per campaign, channel and status, and open dead letters come
//! from the counters the database keeps by trigger (`quizflow_store::stats`); accepted
//! submissions, duplicates and rejections from the counters every API instance adds to the
//! database every two seconds (a message of SUBMISSIONS packs many submissions, so its
//! sequence no longer counts them); depths from JetStream;
//! circuits from the reports live workers instances write. Each source answers in a few
//! milliseconds whatever the size of the tables.

use crate::admin::db_error;
use crate::error::ApiError;
use crate::AppState;
use poem::handler;
use poem::web::{Data, Json};
use quizflow_core::{Channel, DeliveryStatus};
use quizflow_store::stats::{self as counters, Delta};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The counters, added up.
#[derive(Default)]
struct Tally {
    stored: i64,
    duplicate: i64,
    accepted: i64,
    rejected: BTreeMap<String, i64>,
    /// channel -> status -> rows
    deliveries: BTreeMap<&'static str, BTreeMap<&'static str, i64>>,
    dead_letters: BTreeMap<String, i64>,
    /// reason -> suppression list entries (every channel)
    suppressions: BTreeMap<&'static str, i64>,
    /// (campaign, channel) -> billed messages
    billed: BTreeMap<(uuid::Uuid, String), i64>,
}

impl Tally {
    fn of(rows: &[counters::Counter]) -> Self {
        let mut t = Tally {
            deliveries: Channel::ALL
                .iter()
                .map(|c| {
                    let statuses = DeliveryStatus::ALL.iter().map(|s| (s.as_str(), 0i64));
                    (c.as_str(), statuses.collect())
                })
                .collect(),
            dead_letters: Channel::ALL
                .iter()
                .map(|c| (c.as_str().to_owned(), 0))
                .chain([("submission".to_owned(), 0)])
                .collect(),
            suppressions: quizflow_core::consent::Reason::ALL
                .iter()
                .map(|r| (r.as_str(), 0))
                .collect(),
            ..Default::default()
        };
        for c in rows {
            match c.metric.as_str() {
                "submissions_stored" => t.stored += c.n,
                "submissions_duplicate" => t.duplicate += c.n,
                "submissions_accepted" => t.accepted += c.n,
                "submissions_rejected" => *t.rejected.entry(c.status.clone()).or_default() += c.n,
                "dead_letters" => *t.dead_letters.entry(c.channel.clone()).or_default() += c.n,
                "deliveries" => t.delivery(c),
                "suppressions" => {
                    if let Some(n) = t.suppressions.get_mut(c.status.as_str()) {
                        *n += c.n;
                    }
                }
                _ => {}
            }
        }
        t
    }

    fn delivery(&mut self, c: &counters::Counter) {
        if let Some(n) = self
            .deliveries
            .get_mut(c.channel.as_str())
            .and_then(|ch| ch.get_mut(c.status.as_str()))
        {
            *n += c.n;
        }
        let billed = c
            .status
            .parse::<DeliveryStatus>()
            .is_ok_and(|s| DeliveryStatus::BILLED.contains(&s));
        if billed {
            let key = (c.campaign_id, c.channel.clone());
            *self.billed.entry(key).or_default() += c.n;
        }
    }

    /// What the billed messages cost, by channel and by campaign.
    fn cost(&self, costs: &quizflow_core::Costs, names: &HashMap<uuid::Uuid, String>) -> Value {
        let mut by_channel: BTreeMap<&str, f64> =
            Channel::ALL.iter().map(|c| (c.as_str(), 0.0)).collect();
        let mut by_campaign: Vec<Value> = Vec::new();
        for ((campaign, channel), n) in &self.billed {
            let unit = Channel::parse(channel)
                .map(|c| costs.unit(c))
                .unwrap_or(0.0);
            let cost = unit * *n as f64;
            if let Some(t) = by_channel.get_mut(channel.as_str()) {
                *t += cost;
            }
            by_campaign.push(json!({
                "campaign_id": campaign,
                "campaign": names.get(campaign),
                "channel": channel,
                "sent": n,
                "cost": round(cost),
            }));
        }
        let total: f64 = by_channel.values().sum();
        json!({
            "currency": costs.currency,
            "unit": {"sms": costs.sms, "email": costs.email, "whatsapp": costs.whatsapp, "webhook": costs.webhook},
            "total": round(total),
            "by_channel": by_channel.into_iter().map(|(k, v)| (k, round(v))).collect::<BTreeMap<_, _>>(),
            "by_campaign": by_campaign,
        })
    }
}

#[handler]
pub async fn stats(state: Data<&Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let depths = tokio::time::timeout(Duration::from_secs(2), quizflow_nats::depths(&state.js));
    let db = async {
        let mut conn = state.db.get().await.map_err(db_error)?;
        let rows = counters::read(&mut conn).await.map_err(db_error)?;
        let instances = counters::live_instances(&mut conn, 30)
            .await
            .map_err(db_error)?;
        let names = quizflow_store::campaigns::names(&mut conn)
            .await
            .map_err(db_error)?;
        Ok::<_, ApiError>((rows, instances, names))
    };
    let (depths, db) = tokio::join!(depths, db);
    let (rows, instances, names) = db?;
    let depths = match depths {
        Ok(Ok(d)) => Some(d),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "stats: JetStream depths unavailable");
            None
        }
        Err(_) => {
            tracing::warn!("stats: JetStream depths timed out");
            None
        }
    };
    let t = Tally::of(&rows);
    let (streams, consumers) = depths_json(depths.as_ref());
    let rejected_total: i64 = t.rejected.values().sum();
    let mut body = Map::new();
    body.insert(
        "submissions".into(),
        json!({
            "accepted": t.accepted,
            "duplicate": t.duplicate,
            "rejected": rejected_total,
            "rejected_by_code": t.rejected,
            "stored": t.stored,
        }),
    );
    body.insert("deliveries".into(), json!(t.deliveries));
    body.insert("dead_letters".into(), json!(t.dead_letters));
    // The suppression list by reason (contract §3.2): why people are not messaged.
    body.insert("suppressions".into(), json!(t.suppressions));
    body.insert("streams".into(), streams);
    body.insert("consumers".into(), consumers);
    body.insert("circuits".into(), circuits_json(&instances));
    body.insert("cost".into(), t.cost(&state.settings.costs, &names));
    body.insert("generated_at".into(), json!(chrono::Utc::now()));
    body.insert(
        "took_ms".into(),
        json!(started.elapsed().as_secs_f64() * 1000.0),
    );
    Ok(Json(Value::Object(body)))
}

/// Streams and consumers with their depths; `null` when JetStream did not answer.
fn depths_json(depths: Option<&quizflow_nats::Depths>) -> (Value, Value) {
    let Some(d) = depths else {
        return (Value::Null, Value::Null);
    };
    let streams = d
        .streams
        .iter()
        .map(|s| json!({"stream": s.stream, "messages": s.messages, "bytes": s.bytes}))
        .collect();
    let consumers = d
        .consumers
        .iter()
        .map(|c| {
            json!({"stream": c.stream, "consumer": c.consumer, "pending": c.pending,
                   "ack_pending": c.ack_pending, "redelivered": c.redelivered})
        })
        .collect();
    (Value::Array(streams), Value::Array(consumers))
}

/// Every live workers instance's circuits, one entry per instance and sender.
fn circuits_json(instances: &[counters::InstanceReport]) -> Value {
    let mut circuits: Vec<Value> = Vec::new();
    for i in instances {
        let entry = |channel: &str, c: &Value| {
            json!({
                "instance": i.instance,
                "channel": channel,
                "provider": c.get("provider"),
                "sender": c.get("sender"),
                "state": c.get("state"),
                "seen_at": i.seen_at,
            })
        };
        match i.report.get("circuits") {
            Some(Value::Array(per)) => circuits.extend(
                per.iter()
                    .map(|c| entry(c["channel"].as_str().unwrap_or_default(), c)),
            ),
            // Instances from before senders: one circuit per channel.
            Some(Value::Object(per)) => circuits.extend(per.iter().map(|(ch, c)| entry(ch, c))),
            _ => {}
        }
    }
    Value::Array(circuits)
}

/// Money to a millionth: no float noise in the JSON.
fn round(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// Every 2 s: adds this instance's accepted, duplicate and rejection counts (since the last flush) to
/// the database counters, and folds the counters' deltas. Ends when the state is dropped.
pub(crate) fn spawn_flusher(state: std::sync::Weak<AppState>) {
    tokio::spawn(async move {
        let mut flushed: BTreeMap<(&'static str, String), u64> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut rounds = 0u64;
        loop {
            tick.tick().await;
            let Some(s) = state.upgrade() else { break };
            let now = s.metrics.process_counts();
            let deltas: Vec<(&'static str, String, i64)> = now
                .iter()
                .filter_map(|((metric, status), n)| {
                    let before = flushed
                        .get(&(*metric, status.clone()))
                        .copied()
                        .unwrap_or(0);
                    (*n > before).then(|| (*metric, status.clone(), (*n - before) as i64))
                })
                .collect();
            let Ok(mut conn) = s.db.get().await else {
                continue;
            };
            if !deltas.is_empty() {
                let rows: Vec<Delta<'_>> = deltas
                    .iter()
                    .map(|(m, st, n)| Delta {
                        metric: m,
                        status: st,
                        n: *n,
                    })
                    .collect();
                match counters::add(&mut conn, &rows).await {
                    Ok(()) => flushed = now,
                    Err(e) => tracing::debug!(error = %e, "stats counters not flushed; next round"),
                }
            }
            rounds += 1;
            // Compaction keeps the deltas table small; one compactor at a time cluster-wide.
            if rounds.is_multiple_of(3) {
                if let Err(e) = counters::compact(&mut conn).await {
                    tracing::debug!(error = %e, "stats compaction failed; next round");
                }
            }
        }
    });
}
