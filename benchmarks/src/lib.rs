//! quizflow's benchmark harness (behind `quizflow bench ingest|store|deliveries|replay|erase|schedules|e2e|limits|senders`) and data generators
//! for the criterion benches in `benches/`.
//!
//! The ingest benchmark measures, in one run on one machine:
//! 1. the raw ceiling: pipelined JetStream publishes of the very payloads the API would
//!    publish (same size, `Nats-Msg-Id` set, file store), with a bounded ack window;
//! 2. the API at saturation: as many concurrent HTTP posts as `--concurrency` allows;
//! 3. the API at a constant rate (open loop, default 1,667/s = 100k/min): latency measured
//!    from each request's scheduled send time, so a stall cannot hide (no coordinated omission).
//!
//! Benchmarks are never tests: tests check behaviour, this measures it.

mod deliveries;
pub mod e2e;
mod erase;
mod ingest;
pub mod leads;
pub mod limits;
mod replay;
mod schedules;
pub mod senders;
mod store;

pub use deliveries::{run_deliveries, DeliveriesArgs, DeliveriesReport};
pub use erase::{run_erase, EraseArgs, EraseReport};
pub use ingest::{run_ingest, Fsync, IngestArgs, IngestReport};
pub use replay::{run_replay, ReplayArgs, ReplayReport};
pub use schedules::{run_schedules, SchedulesArgs, SchedulesReport};
pub use store::{run_store, StoreArgs, StoreReport};

/// What `quizflow bench` measures.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchKind {
    /// HTTP intake beside raw JetStream publishes (starts a private deployment unless --api/--nats).
    Ingest(IngestArgs),
    /// The batcher's write path beside raw binary COPY (private PostgreSQL unless DATABASE_URL).
    Store(StoreArgs),
    /// Deliveries/s of one workers process against the mock provider at several latencies
    /// (private deployment; the mock runs as its own process).
    Deliveries(DeliveriesArgs),
    /// The whole pipeline from outside beside the machine's ceiling: accepted/s, SMS
    /// delivered/s, latencies, lost and duplicate counts, CPU per process, charts, `--plan`.
    E2e(e2e::E2eArgs),
    /// Provider limits across 1, 2 and 4 workers processes: sends/s against the cluster-wide
    /// limit, and how fast a killed process's share returns (private deployment).
    Limits(limits::LimitsArgs),
    /// A WhatsApp backlog through a pool of senders (default 20 × 50 msg/s, 100,000 jobs):
    /// the aggregate rate and each sender's busiest second (private deployment).
    Senders(senders::SendersArgs),
    /// Replayed submissions/s against 1,000 campaigns: read ceiling, matcher, dry run, real
    /// run, idempotent second run, PostgreSQL source (private deployment unless configured).
    Replay(ReplayArgs),
    /// One respondent erased from a deployment holding --submissions stored leads: table
    /// lookup, stream scan and rewrite, table scrub, and the no-op second call.
    Erase(EraseArgs),
    /// A million scheduled messages pending at once in the schedule table: disk, memory, and
    /// how late the firers publish each after its due time (private deployment).
    Schedules(SchedulesArgs),
}
