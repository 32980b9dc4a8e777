//! Provider limits that hold for the whole cluster, not per process.
//!
//! A channel's rate limit and concurrency cap are totals. Every workers process heartbeats
//! into the `quizflow_workers` KV bucket (`member.<instance>`, the channels it serves) and
//! watches it; each process then takes `total / n` of a channel's rate and an even split of
//! its concurrency, where `n` is the live members serving that channel. The member list
//! sorted by id gives every process the same split, and the first member is the one that
//! probes a provider whose breaker is open.
//!
//! Liveness is read on the server's clock: a member is live while its last heartbeat is
//! within [`MEMBER_TTL`] of the newest heartbeat in the bucket, so clock skew between
//! machines does not matter. A killed process's share returns to the others within about
//! [`MEMBER_TTL`]. A process that has not seen its own heartbeat for [`FENCE_AFTER`] (lost
//! touch with NATS) takes no share at all, before the others count it out: during a
//! partition the sum stays under the limit. A process that joins waits a heartbeat before it
//! takes a share, so it starts from the full member list instead of thinking itself alone.
//!
//! Each sender of a channel (contract §3.3) has its own rate and concurrency, split the same
//! way, and its own breaker, whose verdicts are shared through `breaker.<channel>.<sender
//! key>`: an open breaker (failures, or a provider's `Retry-After`) stops that sender in every
//! process; the probe's success closes it everywhere.
//!
//! Cost: one KV put per process per second, and each process reads every heartbeat (n² small
//! messages a second over the cluster: fine into the hundreds of processes).

use crate::breaker::Breaker;
use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use quizflow_core::Channel;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How often a member writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A member whose last heartbeat is this much older than the newest is counted out.
pub const MEMBER_TTL: Duration = Duration::from_secs(3);
/// A member that has not seen its own heartbeat for this long stops sending (less than
/// [`MEMBER_TTL`], so it stops before the others take its share).
pub const FENCE_AFTER: Duration = Duration::from_millis(2_000);

/// What one process may use of a channel's limits now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Messages per second; 0: send nothing.
    pub rate_per_sec: f64,
    /// Provider calls in flight.
    pub concurrency: usize,
    /// This process probes the provider when the breaker's cooldown ends.
    pub probe: bool,
    /// Live processes serving the channel (0 before this one has joined).
    pub members: usize,
}

impl Share {
    /// Before the first view of the cluster: nothing.
    pub const NONE: Share = Share {
        rate_per_sec: 0.0,
        concurrency: 0,
        probe: false,
        members: 0,
    };
}

/// The channel totals that are split.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    pub rate_per_sec: f64,
    pub concurrency: usize,
}

/// This process's share of `channel`, given the live members (id → channels served).
/// Shares of all members sum to the totals: the rate exactly, the concurrency by giving the
/// remainder to the first members in id order.
pub fn share_of(
    live: &BTreeMap<String, Vec<Channel>>,
    me: &str,
    channel: Channel,
    totals: Totals,
) -> Share {
    let serving: Vec<&String> = live
        .iter()
        .filter(|(_, chans)| chans.contains(&channel))
        .map(|(id, _)| id)
        .collect();
    let Some(rank) = serving.iter().position(|id| id.as_str() == me) else {
        return Share::NONE;
    };
    let n = serving.len();
    let concurrency = totals.concurrency / n + usize::from(rank < totals.concurrency % n);
    Share {
        rate_per_sec: totals.rate_per_sec / n as f64,
        concurrency,
        probe: rank == 0,
        members: n,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    channels: Vec<Channel>,
}

/// A breaker verdict, shared with every process serving the channel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verdict {
    /// Open (or paused) for this long from when it was written.
    Open {
        for_ms: u64,
    },
    Closed,
}

#[derive(Debug, Serialize, Deserialize)]
struct VerdictRecord {
    by: String,
    #[serde(flatten)]
    verdict: Verdict,
}

/// Heartbeats as seen in the bucket: id → (channels, server time of the last one).
#[derive(Default)]
struct Members {
    seen: HashMap<String, (Vec<Channel>, i64)>,
}

impl Members {
    /// Forgets members silent for a minute (killed processes never delete their key).
    fn prune(&mut self) {
        let newest = self.seen.values().map(|(_, t)| *t).max().unwrap_or(0);
        self.seen.retain(|_, (_, t)| newest - *t <= 60_000);
    }

    /// Members whose last heartbeat is within `ttl` of the newest (server clock).
    fn live(&self, ttl: Duration) -> BTreeMap<String, Vec<Channel>> {
        let newest = self.seen.values().map(|(_, t)| *t).max().unwrap_or(0);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.seen
            .iter()
            .filter(|(_, (_, t))| newest - *t <= ttl_ms)
            .map(|(id, (c, _))| (id.clone(), c.clone()))
            .collect()
    }
}

/// One channel as the cluster task sees it: its concurrency, split among the members, and its
/// senders.
pub struct ChannelLink {
    pub channel: Channel,
    pub totals: Totals,
    pub share: watch::Sender<Share>,
    pub lanes: Vec<LaneLink>,
}

/// One sender of a channel: its limits, split among the members serving the channel, and its
/// breaker, whose verdicts are shared under `key`.
pub struct LaneLink {
    pub key: String,
    pub totals: Totals,
    pub breaker: Arc<Breaker>,
    pub share: watch::Sender<Share>,
}

/// Verdicts the pools reach, by breaker key, to be published (bounded: a verdict that does
/// not fit is dropped, and the other processes reach their own).
pub type VerdictTx = mpsc::Sender<(String, Verdict)>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("workers bucket: {0}")]
    Bucket(#[from] async_nats::jetstream::context::KeyValueError),
}

/// Opens the bucket; fails the start when it cannot (limits would not hold).
pub async fn bucket(js: &async_nats::jetstream::Context) -> Result<kv::Store, ClusterError> {
    js.get_key_value(quizflow_nats::subjects::WORKERS_BUCKET)
        .await
        .map_err(ClusterError::from)
}

fn member_key(id: &str) -> String {
    format!("member.{id}")
}

/// Runs until `stop`: heartbeats, watches, recomputes shares, shares verdicts. On stop the
/// member key is deleted, so the others take the share at once.
pub async fn run(
    kv: kv::Store,
    me: String,
    links: Vec<ChannelLink>,
    mut verdicts: mpsc::Receiver<(String, Verdict)>,
    mut stop: watch::Receiver<bool>,
) {
    let channels: Vec<Channel> = links.iter().map(|l| l.channel).collect();
    let beat = serde_json::to_vec(&Heartbeat { channels }).unwrap_or_default();
    let mut members = Members::default();
    let mut last_self: Option<Instant> = None;
    // When this process first saw its own heartbeat: it takes a share only a heartbeat
    // later, once it has heard from every member (and every member from it).
    let mut joined: Option<Instant> = None;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = None;
    loop {
        if watch.is_none() {
            match kv.watch_all().await {
                Ok(w) => watch = Some(w),
                Err(e) => tracing::warn!(error = %e, "workers bucket: cannot watch"),
            }
        }
        tokio::select! {
            // Stopped, or the sender is gone.
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            _ = tick.tick() => {
                members.prune();
                if let Err(e) = kv.put(member_key(&me), beat.clone().into()).await {
                    tracing::warn!(error = %e, "workers bucket: heartbeat not written");
                }
            }
            Some((key, verdict)) = verdicts.recv() => {
                let rec = VerdictRecord { by: me.clone(), verdict };
                let body = serde_json::to_vec(&rec).unwrap_or_default();
                if let Err(e) = kv.put(key, body.into()).await {
                    tracing::warn!(error = %e, "workers bucket: breaker verdict not shared");
                }
            }
            entry = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            } => match entry {
                Some(Ok(e)) => apply(&e, &me, &mut members, &mut last_self, &links),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "workers bucket: watch failed; watching again");
                    watch = None;
                }
                None => watch = None,
            },
        }
        if joined.is_none() {
            joined = last_self;
        }
        // Fenced: no sign of our own heartbeat lately — take nothing until it is back.
        let fenced = last_self.is_none_or(|t| t.elapsed() > FENCE_AFTER)
            || joined.is_none_or(|t| t.elapsed() < HEARTBEAT + HEARTBEAT / 5);
        let live = (!fenced).then(|| members.live(MEMBER_TTL));
        publish_shares(&links, live.as_ref(), &me);
    }
    if let Err(e) = kv.delete(member_key(&me)).await {
        tracing::debug!(error = %e, "workers bucket: member key not deleted");
    }
}

/// Every channel's and sender's share for this process (none while fenced: `live` is `None`).
fn publish_shares(links: &[ChannelLink], live: Option<&BTreeMap<String, Vec<Channel>>>, me: &str) {
    for l in links {
        let share_at = |totals| match live {
            Some(live) => share_of(live, me, l.channel, totals),
            None => Share::NONE,
        };
        publish(&l.share, share_at(l.totals));
        for lane in &l.lanes {
            let share = share_at(lane.totals);
            lane.breaker.set_may_probe(share.probe);
            publish(&lane.share, share);
        }
    }
}

fn publish(tx: &watch::Sender<Share>, share: Share) {
    tx.send_if_modified(|s| {
        let changed = *s != share;
        *s = share;
        changed
    });
}

fn apply(
    e: &kv::Entry,
    me: &str,
    members: &mut Members,
    last_self: &mut Option<Instant>,
    links: &[ChannelLink],
) {
    let created_ms = e.created.timestamp_millis();
    if let Some(id) = e.key.strip_prefix("member.") {
        match e.operation {
            Operation::Put => {
                let Ok(hb) = serde_json::from_slice::<Heartbeat>(&e.value) else {
                    return;
                };
                if id == me {
                    *last_self = Some(Instant::now());
                }
                members
                    .seen
                    .insert(id.to_owned(), (hb.channels, created_ms));
            }
            Operation::Delete | Operation::Purge => {
                members.seen.remove(id);
            }
        }
        return;
    }
    let Some(link) = links.iter().flat_map(|l| &l.lanes).find(|l| l.key == e.key) else {
        return;
    };
    let Ok(rec) = serde_json::from_slice::<VerdictRecord>(&e.value) else {
        return;
    };
    if rec.by == me {
        return;
    }
    match rec.verdict {
        Verdict::Open { for_ms } => {
            // An old verdict (read at start-up) counts only for what is left of it, measured
            // on the server's clock against the newest heartbeat.
            let newest = members
                .seen
                .values()
                .map(|(_, t)| *t)
                .max()
                .unwrap_or(created_ms);
            let age = u64::try_from(newest - created_ms).unwrap_or(0);
            if let Some(left) = for_ms.checked_sub(age).filter(|l| *l > 0) {
                link.breaker.open_remote(Duration::from_millis(left));
            }
        }
        Verdict::Closed => link.breaker.close_remote(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(ids: &[(&str, &[Channel])]) -> BTreeMap<String, Vec<Channel>> {
        ids.iter()
            .map(|(id, c)| ((*id).to_owned(), c.to_vec()))
            .collect()
    }

    #[test]
    fn shares_sum_to_the_totals_and_one_member_probes() {
        let totals = Totals {
            rate_per_sec: 50.0,
            concurrency: 10,
        };
        let all = Channel::ALL;
        for n in 1..=7usize {
            let ids: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
            let members = live(
                &ids.iter()
                    .map(|i| (i.as_str(), &all[..]))
                    .collect::<Vec<_>>(),
            );
            let shares: Vec<Share> = ids
                .iter()
                .map(|id| share_of(&members, id, Channel::Sms, totals))
                .collect();
            let rate: f64 = shares.iter().map(|s| s.rate_per_sec).sum();
            assert!((rate - 50.0).abs() < 1e-9, "{n} members: rate {rate}");
            assert_eq!(
                shares.iter().map(|s| s.concurrency).sum::<usize>(),
                10,
                "{n} members"
            );
            assert_eq!(shares.iter().filter(|s| s.probe).count(), 1);
            assert!(shares.iter().all(|s| s.members == n));
        }
    }

    #[test]
    fn only_members_serving_a_channel_share_it() {
        let totals = Totals {
            rate_per_sec: 30.0,
            concurrency: 4,
        };
        let members = live(&[
            ("a", &[Channel::Sms]),
            ("b", &[Channel::Email]),
            ("c", &[Channel::Sms, Channel::Email]),
        ]);
        assert_eq!(
            share_of(&members, "a", Channel::Sms, totals).rate_per_sec,
            15.0
        );
        assert_eq!(share_of(&members, "b", Channel::Sms, totals), Share::NONE);
        assert_eq!(
            share_of(&members, "b", Channel::Email, totals).concurrency,
            2
        );
        assert_eq!(share_of(&members, "z", Channel::Sms, totals), Share::NONE);
    }

    #[test]
    fn liveness_is_judged_on_the_servers_clock() {
        let mut m = Members::default();
        m.seen.insert("old".into(), (vec![Channel::Sms], 1_000));
        m.seen.insert("edge".into(), (vec![Channel::Sms], 7_000));
        m.seen.insert("new".into(), (vec![Channel::Sms], 10_000));
        let live = m.live(Duration::from_secs(3));
        assert_eq!(live.keys().collect::<Vec<_>>(), ["edge", "new"]);
        m.seen.insert("gone".into(), (vec![Channel::Sms], -60_000));
        m.prune();
        assert_eq!(m.seen.len(), 3, "the silent minute-old member is forgotten");
    }

    #[test]
    fn verdicts_round_trip() {
        let rec = VerdictRecord {
            by: "x".into(),
            verdict: Verdict::Open { for_ms: 1500 },
        };
        let text = serde_json::to_string(&rec).expect("serialize");
        assert_eq!(text, r#"{"by":"x","state":"open","for_ms":1500}"#);
        let back: VerdictRecord = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.verdict, Verdict::Open { for_ms: 1500 });
    }
}
