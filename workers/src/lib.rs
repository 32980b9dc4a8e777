//! quizflow's delivery side (SPEC §3): per-channel worker pools, provider adapters, egress rules.
//!
//! A pool per channel pulls from its three consumers (high, then normal, then low), loads the
//! context of a whole fetch in one query, renders the campaign's template (minijinja), waits
//! for the channel's token bucket, and calls the provider under a concurrency cap and a
//! circuit breaker. The outcome ([`classify`]) is written to the ledger in batches
//! ([`status`]) *before* the ack: sent → ack; throttled → nak after `Retry-After` (not an
//! attempt); transient → nak after the retry schedule, dead letter once exhausted; permanent
//! → dead letter at once.

mod breaker;
pub mod classify;
pub mod cluster;
mod config;
pub mod egress;
mod handle;
mod lease;
mod metrics;
mod pool;
pub mod provider;
pub mod render;
pub mod schedule;
pub mod status;
mod sweep;

pub use config::{parse_schedule, Providers, WorkerSettings};
pub use metrics::WorkerMetrics;
pub use pool::{run, WorkerError};
