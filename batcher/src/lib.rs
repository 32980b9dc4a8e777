//! quizflow's batcher: turns the `SUBMISSIONS` stream into stored leads and delivery jobs.
//!
//! Per batch (flushed at `batch_max` messages or `batch_wait` after its first message):
//! decode (poison → `DEAD_LETTERS`), match against the campaigns ([`Matcher`], columnar, on
//! rayon), store submissions and ledger rows in one transaction (`quizflow_store::intake`), publish the jobs
//! pipelined with `Nats-Msg-Id = <submission>:<campaign>:<channel>`, and only then ack.

mod bitmap;
mod config;
pub mod consent;
pub mod matcher;
mod metrics;
mod run;

pub use bitmap::Bitmap;
pub use config::{BatcherConfig, BatcherSettings};
pub use matcher::{Match, Matcher};
pub use metrics::BatcherMetrics;
pub use run::{decode, decode_members, Batcher, BatcherError};
