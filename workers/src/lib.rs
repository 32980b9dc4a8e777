//! quizflow's delivery side: per-channel worker pools, provider adapters, egress rules.
//!
//! A job's life, one file per step:
//! - [`fetch`](crate::fetch): the pool's loop pulls from its three consumers (high, then
//!   normal, then low), decodes, loads the context of a whole fetch in one query, and claims
//!   the jobs to send in one statement;
//! - [`triage`](crate::triage): per job, before any claim: send, wait, cancel, or drop (pure);
//! - [`send`](crate::send): renders the campaign's template (minijinja), picks a sender
//!   ([`lanes`](crate::lanes): sticky per recipient, failover in provider order), waits for its
//!   token bucket, breaker, the erasure gate and its pacer, and calls the [`provider`];
//! - [`outcome`](crate::outcome): what the call's outcome means for the job and the breaker
//!   (pure);
//! - [`settle`](crate::settle): the decision written to the ledger in batches ([`status`])
//!   *before* the ack: sent → ack; throttled → nak after `Retry-After` (not an attempt);
//!   transient → nak after the retry schedule; permanent or exhausted → dead letter;
//! - [`dead`](crate::dead): dead letters, in the ledger and in `DEAD_LETTERS`.
//!
//! Around them: [`pool`](crate::pool) starts a pool per channel and the shared tasks (cluster
//! shares, lease renewal, the max-deliveries sweeper, the schedule firer).

mod breaker;
mod channel;
pub mod classify;
pub mod cluster;
mod config;
mod dead;
pub mod egress;
mod fetch;
mod handle;
mod lanes;
mod lease;
mod metrics;
mod outcome;
mod pool;
pub mod provider;
pub use quizflow_core::render;
pub mod schedule;
mod send;
mod settle;
pub mod status;
mod sweep;
mod triage;

pub use config::{
    parse_schedule, ConfigError, ProviderConfig, Providers, WhatsappProvider, WorkerSettings,
    WorkersConfig,
};
pub use metrics::WorkerMetrics;
pub use pool::{run, WorkerError};
