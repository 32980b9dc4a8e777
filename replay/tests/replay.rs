//! Replay against a real nats-server and PostgreSQL, with the live batcher storing the
//! submissions first: range boundaries (sequence and time), quiz and campaign filters,
//! idempotence, dry-run accuracy, resume from a checkpoint, the PostgreSQL source and history
//! that has aged out of the stream.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use quizflow_batcher::{Batcher, BatcherSettings};
use quizflow_core::{parse_campaign, Campaign, Priority, QuizId, SubmissionEnvelope};
use quizflow_nats::{subjects, NatsSettings, TopologyConfig};
use quizflow_replay::{replay, Bound, ReplayError, ReplaySpec, Source, Summary};
use quizflow_testkit::{NatsServer, TestDb};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

struct Env {
    _nats: NatsServer,
    db: TestDb,
    js: async_nats::jetstream::Context,
    pool: quizflow_store::Pool,
    batcher: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.batcher.abort();
    }
}

async fn env() -> Env {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    let settings = NatsSettings::new(nats.url(), "replay-test");
    let client = quizflow_nats::connect(&settings).await.expect("connect");
    let js = quizflow_nats::jetstream(client.clone(), &settings);
    quizflow_nats::ensure_topology(&js, &TopologyConfig::default())
        .await
        .expect("topology");
    let pool = quizflow_store::pool(&db.url, 4);
    // The live batcher at its defaults: it stores what the tests publish.
    let batcher = Batcher::new(
        BatcherSettings::default(),
        client.clone(),
        js.clone(),
        pool.clone(),
    );
    let batcher = tokio::spawn(async move {
        let _ = batcher.run(futures::future::pending()).await;
    });
    Env {
        _nats: nats,
        db,
        js,
        pool,
        batcher,
    }
}

fn submission(
    quiz: &str,
    n: usize,
    received_at: chrono::DateTime<chrono::Utc>,
) -> SubmissionEnvelope {
    let quiz_id = QuizId::parse(quiz).expect("quiz id");
    let body = json!({
        "respondent": {"phone": format!("+55119{n:08}"), "email": format!("lead{n}@example.com")},
        "answers": [{"question": "q1", "value": if n.is_multiple_of(2) { "b" } else { "a" }}],
        "score": n as f64,
    });
    let sub = quizflow_core::parse_submission(&body).expect("valid submission");
    let key = quizflow_core::IdempotencyKey::parse(&format!("k{n}")).expect("key");
    SubmissionEnvelope::new(
        quizflow_core::SubmissionId::from_key(&quiz_id, &key),
        quiz_id,
        received_at,
        Some(key),
        sub,
    )
}

impl Env {
    async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db.url)
            .await
            .expect("db")
    }

    async fn count(&self, sql: &str) -> i64 {
        quizflow_testkit::count(&self.db.url, sql).await
    }

    /// Publishes submissions `range` of `quiz` (received now) and returns their envelopes.
    async fn publish(&self, quiz: &str, range: std::ops::Range<usize>) -> Vec<SubmissionEnvelope> {
        let mut out = Vec::new();
        for n in range {
            let e = submission(quiz, n, chrono::Utc::now());
            self.publish_envelope(&e).await;
            out.push(e);
        }
        out
    }

    async fn publish_envelope(&self, e: &SubmissionEnvelope) {
        quizflow_nats::publish_submission(&self.js, e)
            .await
            .expect("publish");
    }

    /// Waits until the batcher stored `n` submissions in all.
    async fn wait_stored(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.count("SELECT count(*) AS n FROM submissions").await;
            if got == n {
                return;
            }
            assert!(Instant::now() < deadline, "stored {got} of {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn campaign(&self, body: Value) -> Campaign {
        let spec = parse_campaign(&body).expect("valid campaign");
        quizflow_store::campaigns::insert(&mut self.conn().await, &spec)
            .await
            .expect("insert")
    }

    async fn run(&self, spec: &ReplaySpec) -> Result<Summary, ReplayError> {
        replay(
            spec,
            &self.js,
            &self.pool,
            |_| {},
            futures::future::pending(),
        )
        .await
    }

    /// Jobs in `DELIVERIES` (a message carries a chunk of one or more).
    async fn deliveries_messages(&self) -> u64 {
        quizflow_testkit::items_in(&self.js, subjects::DELIVERIES_STREAM).await
    }

    /// (submission, campaign, channel, priority) of every ledger row, sorted.
    async fn ledger(&self) -> Vec<(Uuid, Uuid, String, String)> {
        #[derive(diesel::QueryableByName)]
        struct R {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            submission_id: Uuid,
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            campaign_id: Uuid,
            #[diesel(sql_type = diesel::sql_types::Text)]
            channel: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            priority: String,
        }
        let rows: Vec<R> = diesel::sql_query(
            "SELECT submission_id, campaign_id, channel, priority FROM deliveries ORDER BY 1, 2, 3",
        )
        .load(&mut self.conn().await)
        .await
        .expect("ledger");
        rows.into_iter()
            .map(|r| (r.submission_id, r.campaign_id, r.channel, r.priority))
            .collect()
    }
}

fn sms_campaign(name: &str, quiz: Option<&str>) -> Value {
    let mut c = json!({
        "name": name,
        "active": true,
        "match": {"all": [{"field": "answers.q1", "op": "eq", "value": "b"}]},
        "actions": [{"channel": "sms", "template": "Hi {{ respondent.name }}"}],
    });
    if let Some(q) = quiz {
        c["quiz_id"] = json!(q);
    }
    c
}

#[tokio::test]
async fn a_new_campaign_reaches_history_once_and_a_second_run_creates_nothing() {
    let env = env().await;
    env.publish("spring", 0..40).await;
    env.wait_stored(40).await;
    // Created after the submissions: live matching never sends it anything.
    let c = env.campaign(sms_campaign("late", None)).await;
    assert_eq!(env.ledger().await.len(), 0);

    let first = env
        .run(&ReplaySpec::new(Bound::Seq(1)))
        .await
        .expect("replay");
    assert!(first.completed);
    assert_eq!(first.scanned, 40);
    assert_eq!(first.matched, 20, "even-numbered leads answered b");
    assert_eq!(first.jobs_created, 20);
    assert_eq!(first.already_existed, 0);
    assert_eq!(first.checkpoint.as_deref(), Some("41"));
    assert_eq!(first.by_campaign.len(), 1);
    assert_eq!(first.by_campaign[0].campaign_id, c.id);
    assert_eq!(first.by_campaign[0].created, 20);
    let ledger = env.ledger().await;
    assert_eq!(ledger.len(), 20);
    assert!(ledger
        .iter()
        .all(|r| r.1 == c.id && r.2 == "sms" && r.3 == "low"));
    // Jobs on the low-priority subject, one per row.
    assert_eq!(env.deliveries_messages().await, 20);
    let low = env
        .js
        .get_stream(subjects::DELIVERIES_STREAM)
        .await
        .expect("stream");
    let last = low
        .get_last_raw_message_by_subject(&subjects::delivery(
            quizflow_core::Channel::Sms,
            Priority::Low,
        ))
        .await;
    assert!(last.is_ok(), "a job on deliveries.sms.low");

    // Workers sent them; the work queue is empty (as after delivery, and far past the
    // duplicate window: only the ledger can tell what exists now).
    diesel::sql_query("UPDATE deliveries SET status = 'sent'")
        .execute(&mut env.conn().await)
        .await
        .expect("mark sent");
    low.purge().await.expect("purge");
    let second = env
        .run(&ReplaySpec::new(Bound::Seq(1)))
        .await
        .expect("replay");
    assert_eq!(second.scanned, 40);
    assert_eq!(second.matched, 20);
    assert_eq!(second.jobs_created, 0);
    assert_eq!(second.already_existed, 20);
    assert_eq!(second.republished, 0);
    assert_eq!(env.ledger().await.len(), 20);
    assert_eq!(env.deliveries_messages().await, 0, "nothing published");
}

#[tokio::test]
async fn sequence_bounds_are_inclusive_and_time_bounds_half_open() {
    let env = env().await;
    let all = env.publish("q", 0..30).await; // seqs 1..=30
    env.wait_stored(30).await;
    env.campaign(json!({
        "name": "all", "active": true, "match": {},
        "actions": [{"channel": "sms", "template": "x"}],
    }))
    .await;
    let mut spec = ReplaySpec::new(Bound::Seq(11));
    spec.to = Some(Bound::Seq(20));
    spec.dry_run = true;
    let s = env.run(&spec).await.expect("replay");
    assert_eq!((s.read, s.scanned, s.jobs_created), (10, 10, 10));
    assert_eq!(s.checkpoint.as_deref(), Some("21"));
    // A sequence past the end: nothing, at once.
    let s = env
        .run(&ReplaySpec {
            dry_run: true,
            ..ReplaySpec::new(Bound::Seq(31))
        })
        .await
        .expect("replay");
    assert_eq!(s.scanned, 0);
    assert!(s.completed);

    // Times: exactly on `from` is in, exactly on `to` is out.
    let t1 = all[9].received_at;
    let t2 = all[19].received_at;
    let mut spec = ReplaySpec::new(Bound::Time(t1));
    spec.to = Some(Bound::Time(t2));
    let s = env.run(&spec).await.expect("replay");
    let want: std::collections::HashSet<Uuid> = all
        .iter()
        .filter(|e| e.received_at >= t1 && e.received_at < t2)
        .map(|e| e.submission_id.0)
        .collect();
    assert!(want.contains(&all[9].submission_id.0));
    assert!(!want.contains(&all[19].submission_id.0));
    assert_eq!(s.scanned, want.len() as u64);
    let got: std::collections::HashSet<Uuid> = env.ledger().await.iter().map(|r| r.0).collect();
    assert_eq!(got, want);
    assert_eq!(s.jobs_created, want.len() as u64);
}

#[tokio::test]
async fn quiz_and_campaign_filters_select_what_is_replayed() {
    let env = env().await;
    let a = env.publish("quiz-a", 0..20).await;
    let b = env.publish("quiz-b", 100..120).await;
    env.wait_stored(40).await;
    let global = env.campaign(sms_campaign("global", None)).await;
    let only_b = env.campaign(sms_campaign("only-b", Some("quiz-b"))).await;

    // --quiz quiz-a: only quiz-a's leads, and only the campaign that can match them.
    let mut spec = ReplaySpec::new(Bound::Seq(1));
    spec.quizzes = vec![QuizId::parse("quiz-a").expect("quiz")];
    let s = env.run(&spec).await.expect("replay");
    assert_eq!(s.scanned, 20);
    assert_eq!(
        s.read, 20,
        "the filter is on the consumer: quiz-b is never read"
    );
    assert_eq!(s.jobs_created, 10);
    let a_ids: std::collections::HashSet<Uuid> = a.iter().map(|e| e.submission_id.0).collect();
    assert!(env
        .ledger()
        .await
        .iter()
        .all(|r| a_ids.contains(&r.0) && r.1 == global.id));

    // --campaign only-b: quiz-b's even leads for that campaign alone.
    let mut spec = ReplaySpec::new(Bound::Seq(1));
    spec.campaigns = vec![only_b.id];
    let s = env.run(&spec).await.expect("replay");
    assert_eq!(s.scanned, 40);
    assert_eq!(s.jobs_created, 10);
    assert_eq!(s.by_campaign.len(), 1);
    assert_eq!(s.by_campaign[0].campaign_id, only_b.id);
    let b_ids: std::collections::HashSet<Uuid> = b.iter().map(|e| e.submission_id.0).collect();
    let rows = env.ledger().await;
    assert_eq!(
        rows.iter()
            .filter(|r| r.1 == only_b.id && b_ids.contains(&r.0))
            .count(),
        10
    );
    assert_eq!(rows.len(), 20);

    // Unknown and inactive campaigns are refused, not replayed to be cancelled.
    let mut spec = ReplaySpec::new(Bound::Seq(1));
    spec.campaigns = vec![Uuid::new_v4()];
    assert!(matches!(
        env.run(&spec).await,
        Err(ReplayError::UnknownCampaign(_))
    ));
    let mut off = sms_campaign("off", None);
    off["active"] = json!(false);
    let off = env.campaign(off).await;
    spec.campaigns = vec![off.id];
    assert!(matches!(
        env.run(&spec).await,
        Err(ReplayError::CampaignNotLive { .. })
    ));
}

#[tokio::test]
async fn a_dry_run_counts_exactly_what_the_real_run_then_creates() {
    let env = env().await;
    env.publish("q", 0..60).await;
    env.wait_stored(60).await;
    let c1 = env.campaign(sms_campaign("one", None)).await;
    env.campaign(json!({
        "name": "two", "active": true,
        "match": {"all": [{"field": "score", "op": "gte", "value": 30}]},
        "actions": [{"channel": "sms", "template": "x"}, {"channel": "email", "subject": "s", "template": "y"}],
    }))
    .await;
    // Part of it exists already (an earlier replay of one campaign over a part of the range).
    let mut part = ReplaySpec::new(Bound::Seq(1));
    part.to = Some(Bound::Seq(25));
    part.campaigns = vec![c1.id];
    env.run(&part).await.expect("partial replay");
    let rows_before = env.ledger().await.len();
    let msgs_before = env.deliveries_messages().await;

    let dry = env
        .run(&ReplaySpec {
            dry_run: true,
            ..ReplaySpec::new(Bound::Seq(1))
        })
        .await
        .expect("dry run");
    assert_eq!(
        env.ledger().await.len(),
        rows_before,
        "a dry run writes nothing"
    );
    assert_eq!(
        env.deliveries_messages().await,
        msgs_before,
        "nor publishes"
    );
    let real = env
        .run(&ReplaySpec::new(Bound::Seq(1)))
        .await
        .expect("replay");
    assert!(dry.jobs_created > 0 && dry.already_existed > 0);
    assert_eq!(dry.jobs_created, real.jobs_created);
    assert_eq!(dry.already_existed, real.already_existed);
    assert_eq!(dry.matched, real.matched);
    assert_eq!(dry.by_campaign, real.by_campaign);
    assert_eq!(
        env.ledger().await.len(),
        rows_before + real.jobs_created as usize
    );
}

#[tokio::test]
async fn a_stopped_replay_resumes_from_its_checkpoint() {
    let env = env().await;
    env.publish("q", 0..100).await;
    env.wait_stored(100).await;
    env.campaign(sms_campaign("late", None)).await;
    let mut spec = ReplaySpec::new(Bound::Seq(1));
    spec.batch = 30;
    // Stop as soon as the first batch reports.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let first = replay(
        &spec,
        &env.js,
        &env.pool,
        |_| {
            let _ = tx.send(true);
        },
        async {
            let mut rx = rx.clone();
            let _ = rx.wait_for(|v| *v).await;
        },
    )
    .await
    .expect("replay");
    assert!(!first.completed);
    assert_eq!(first.read, 30);
    assert_eq!(first.checkpoint.as_deref(), Some("31"));
    let rest = env
        .run(&ReplaySpec {
            batch: 30,
            ..ReplaySpec::new(
                Bound::parse(first.checkpoint.as_deref().expect("cp")).expect("bound"),
            )
        })
        .await
        .expect("resume");
    assert!(rest.completed);
    assert_eq!(rest.read, 70);
    assert_eq!(
        rest.already_existed, 0,
        "the resume starts after what was done"
    );
    assert_eq!(first.jobs_created + rest.jobs_created, 50);
    assert_eq!(env.ledger().await.len(), 50);

    // A replay that died between its commit and its publishes left queued rows without jobs
    // (here: written by SQL, never published). Running it again publishes them, once.
    let second = env.campaign(sms_campaign("second", None)).await;
    diesel::sql_query(format!(
        "INSERT INTO deliveries (submission_id, campaign_id, campaign_version, channel, priority, status) \
         SELECT id, '{}', 1, 'sms', 'low', 'queued' FROM submissions WHERE score::int % 2 = 0",
        second.id
    ))
    .execute(&mut env.conn().await)
    .await
    .expect("queued rows without jobs");
    let before = env.deliveries_messages().await;
    let mut spec = ReplaySpec::new(Bound::Seq(1));
    spec.campaigns = vec![second.id];
    let again = env.run(&spec).await.expect("again");
    assert_eq!(again.jobs_created, 0);
    assert_eq!(again.already_existed, 50);
    assert_eq!(again.republished, 50);
    assert_eq!(env.deliveries_messages().await, before + 50);
}

#[tokio::test]
async fn history_aged_out_of_the_stream_replays_from_postgres() {
    let env = env().await;
    let all = env.publish("q", 0..50).await;
    env.wait_stored(50).await;
    let from = all[0].received_at;
    let to = all[49].received_at + chrono::TimeDelta::milliseconds(1);
    // The stream's retention removed the first 20 (as max age would).
    let s = env
        .js
        .get_stream(subjects::SUBMISSIONS_STREAM)
        .await
        .expect("stream");
    s.purge().sequence(21).await.expect("purge");
    env.campaign(sms_campaign("late", None)).await;

    let mut spec = ReplaySpec::new(Bound::Time(from));
    spec.to = Some(Bound::Time(to));
    match env.run(&spec).await {
        Err(ReplayError::AgedOut { first_seq, .. }) => assert_eq!(first_seq, 21),
        other => panic!("expected an aged-out error, got {other:?}"),
    }
    assert!(matches!(
        env.run(&ReplaySpec::new(Bound::Seq(5))).await,
        Err(ReplayError::AgedOut { .. })
    ));

    spec.source = Source::Postgres;
    spec.batch = 7; // several pages, and windows that shrink to fit them
    let dry = env
        .run(&ReplaySpec {
            dry_run: true,
            ..spec.clone()
        })
        .await
        .expect("dry");
    let s = env.run(&spec).await.expect("postgres replay");
    assert!(s.completed);
    assert_eq!(s.source, "postgres");
    assert_eq!(s.scanned, 50);
    assert_eq!(s.jobs_created, 25);
    assert_eq!(dry.jobs_created, 25);
    assert_eq!(env.ledger().await.len(), 25);
    // Resuming from its own checkpoint finds nothing new.
    let cp = Bound::parse(s.checkpoint.as_deref().expect("checkpoint")).expect("time");
    assert!(matches!(cp, Bound::Time(_)));
    let again = env.run(&spec).await.expect("again");
    assert_eq!((again.jobs_created, again.already_existed), (0, 25));
    // Sequences are the stream's.
    let mut seq = ReplaySpec::new(Bound::Seq(1));
    seq.source = Source::Postgres;
    assert!(matches!(env.run(&seq).await, Err(ReplayError::Range(_))));
}

#[tokio::test]
async fn submissions_not_stored_yet_are_counted_not_matched() {
    let env = env().await;
    env.publish("q", 0..10).await;
    env.wait_stored(10).await;
    env.batcher.abort();
    // Published while no batcher runs: in the stream, not in the database.
    let late: Vec<SubmissionEnvelope> = (10..14)
        .map(|n| submission("q", n, chrono::Utc::now()))
        .collect();
    for e in &late {
        env.publish_envelope(e).await;
    }
    env.campaign(sms_campaign("late", None)).await;
    let s = env
        .run(&ReplaySpec::new(Bound::Seq(1)))
        .await
        .expect("replay");
    assert_eq!(s.scanned, 14);
    assert_eq!(s.not_stored, 4);
    assert_eq!(s.jobs_created, 5);
}

#[tokio::test]
async fn the_rate_bounds_how_fast_history_is_read() {
    let env = env().await;
    env.publish("q", 0..600).await;
    env.wait_stored(600).await;
    env.campaign(sms_campaign("late", None)).await;
    let mut spec = ReplaySpec::new(Bound::Seq(1));
    spec.rate = std::num::NonZeroU32::new(200);
    spec.dry_run = true;
    let started = Instant::now();
    let s = env.run(&spec).await.expect("replay");
    assert_eq!(s.read, 600);
    // A token bucket of 200/s holding one batch (200): the other 400 take at least 2 s. A
    // lower bound only: a slow machine cannot make it fail.
    assert!(
        started.elapsed() >= Duration::from_millis(1_900),
        "600 submissions at 200/s in {:?}",
        started.elapsed()
    );
}

/// An erased person's submissions are not history to replay: from PostgreSQL the scrubbed
/// rows are skipped, from the stream their ids count as not stored. Either way no ledger row
/// (and so no message) is made for them.
#[tokio::test]
async fn erased_submissions_are_skipped_from_either_source() {
    let env = env().await;
    let all = env.publish("q", 0..10).await;
    env.wait_stored(10).await;
    // Lead 0 (answer "b": it would match) is erased from the tables.
    let erased = &all[0];
    let phone = erased.submission.respondent.phone.clone();
    let mut conn = env.conn().await;
    quizflow_store::erase::erase(&mut conn, phone.as_deref(), None, &[erased.submission_id.0])
        .await
        .expect("erase");
    env.campaign(sms_campaign("late", None)).await;

    let from_stream = ReplaySpec::new(Bound::Seq(1));
    let s = env.run(&from_stream).await.expect("stream replay");
    assert_eq!(
        s.jobs_created, 4,
        "the five matching leads but the erased one"
    );
    // From PostgreSQL (a fresh ledger: the rows the stream replay made are removed first).
    diesel::sql_query("DELETE FROM deliveries")
        .execute(&mut conn)
        .await
        .expect("clear");
    let mut from_pg = ReplaySpec::new(Bound::Time(all[0].received_at));
    from_pg.to = Some(Bound::Time(
        all[9].received_at + chrono::TimeDelta::milliseconds(1),
    ));
    from_pg.source = Source::Postgres;
    let s = env.run(&from_pg).await.expect("postgres replay");
    assert_eq!(s.jobs_created, 4, "the erased lead's row is skipped");
    let ledger = env.ledger().await;
    assert_eq!(ledger.len(), 4);
    assert!(ledger
        .iter()
        .all(|(sub, ..)| *sub != erased.submission_id.0));
}
