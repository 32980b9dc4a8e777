//! The batcher against a real nats-server and PostgreSQL: storage exactly once, matching,
//! job fan-out, crashes, poison messages, database outages and campaign changes.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use quizflow_batcher::{matcher::reference, Batcher, BatcherError, BatcherSettings};
use quizflow_core::{
    parse_campaign, parse_submission, Campaign, DeliveryJob, IdempotencyKey, QuizId,
    SubmissionEnvelope, SubmissionId,
};
use quizflow_nats::{subjects, NatsSettings, TopologyConfig};
use quizflow_testkit::{CutProxy, NatsServer, TestDb};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Env {
    _nats: NatsServer,
    db: TestDb,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

async fn env() -> Env {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    let settings = NatsSettings::new(nats.url(), "batcher-test");
    let client = quizflow_nats::connect(&settings).await.expect("connect");
    let js = quizflow_nats::jetstream(client.clone(), &settings);
    let topology = TopologyConfig {
        batcher_ack_wait: Duration::from_secs(2),
        ..TopologyConfig::default()
    };
    quizflow_nats::ensure_topology(&js, &topology)
        .await
        .expect("topology");
    Env {
        _nats: nats,
        db,
        client,
        js,
    }
}

impl Env {
    fn batcher_with_url(&self, url: &str) -> Arc<Batcher> {
        let settings = BatcherSettings {
            batch_max: 50,
            batch_wait: Duration::from_millis(50),
            ..BatcherSettings::default()
        };
        Batcher::new(
            settings,
            self.client.clone(),
            self.js.clone(),
            quizflow_store::pool(url, 4),
        )
    }

    fn batcher(&self) -> Arc<Batcher> {
        self.batcher_with_url(&self.db.url)
    }

    async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db.url)
            .await
            .expect("db")
    }

    async fn count(&self, sql: &str) -> i64 {
        quizflow_testkit::count(&self.db.url, sql).await
    }

    async fn stream_messages(&self, stream: &str) -> u64 {
        let mut s = self.js.get_stream(stream).await.expect("stream");
        s.info().await.expect("info").state.messages
    }

    /// Distinct jobs in DELIVERIES, and how many copies in all.
    async fn distinct_jobs(&self) -> (usize, usize) {
        let mut s = self.js.get_stream("DELIVERIES").await.expect("stream");
        let state = s.info().await.expect("info").state.clone();
        let mut ids = std::collections::HashSet::new();
        let mut all = 0;
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(m) = s.get_raw_message(seq).await else {
                continue;
            };
            for line in quizflow_nats::members(&m.payload) {
                let job: DeliveryJob = serde_json::from_slice(line).expect("job");
                ids.insert(job.msg_id());
                all += 1;
            }
        }
        (ids.len(), all)
    }

    /// Jobs (or submissions) a stream holds: a message carries one or more.
    async fn items(&self, stream: &str) -> u64 {
        quizflow_testkit::items_in(&self.js, stream).await
    }

    async fn add_campaign(&self, body: Value) -> Campaign {
        let spec = parse_campaign(&body).expect("valid campaign");
        let c = quizflow_store::campaigns::insert(&mut self.conn().await, &spec)
            .await
            .expect("insert");
        self.client
            .publish(subjects::CAMPAIGNS_CHANGED, c.id.to_string().into())
            .await
            .expect("notify");
        c
    }

    async fn publish(&self, env: &SubmissionEnvelope) {
        quizflow_nats::publish_submission(&self.js, env)
            .await
            .expect("publish");
    }

    async fn batcher_consumer(&self) -> async_nats::jetstream::consumer::Info {
        let mut c: async_nats::jetstream::consumer::PullConsumer = self
            .js
            .get_stream(subjects::SUBMISSIONS_STREAM)
            .await
            .expect("stream")
            .get_consumer(subjects::BATCHER_CONSUMER)
            .await
            .expect("consumer");
        c.info().await.expect("info").clone()
    }

    /// Waits until the batcher's consumer has nothing pending and nothing unacked.
    async fn wait_drained(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let i = self.batcher_consumer().await;
            if i.num_pending == 0 && i.num_ack_pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "consumer not drained: pending {}, ack pending {}",
                i.num_pending,
                i.num_ack_pending
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for(&self, sql: &str, want: i64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let n = self.count(sql).await;
            if n == want {
                return;
            }
            assert!(Instant::now() < deadline, "{sql}: {n}, want {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spawn(
    b: Arc<Batcher>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), BatcherError>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = tokio::spawn(b.run(async move {
        let _ = rx.await;
    }));
    (tx, h)
}

fn lead(quiz: &str, n: u64, body: Value) -> SubmissionEnvelope {
    let quiz = QuizId::parse(quiz).expect("quiz");
    let key = IdempotencyKey::parse(&format!("lead-{n}")).expect("key");
    let sub = parse_submission(&body).expect("valid");
    SubmissionEnvelope::new(
        SubmissionId::from_key(&quiz, &key),
        quiz,
        chrono::Utc::now(),
        Some(key),
        sub,
    )
}

fn leads(n: u64) -> Vec<SubmissionEnvelope> {
    (0..n)
        .map(|i| {
            let mut respondent = json!({"phone": format!("+55119{:08}", i)});
            if i % 2 == 0 {
                respondent["email"] = json!(format!("l{i}@example.com"));
            }
            let quiz = if i % 3 == 0 { "q2" } else { "q1" };
            lead(quiz, i, json!({"respondent": respondent, "score": (i * 7) % 100, "tags": if i % 4 == 0 { json!(["vip"]) } else { json!([]) }}))
        })
        .collect()
}

async fn campaigns(env: &Env) -> Vec<Arc<Campaign>> {
    vec![
        Arc::new(env.add_campaign(json!({"name": "q1 high", "quiz_id": "q1", "priority": "high",
            "match": {"all": [{"field": "score", "op": "gte", "value": 50}]},
            "actions": [{"channel": "sms", "template": "hi {{ respondent.name }}"}, {"channel": "email", "subject": "s", "template": "b"}]})).await),
        Arc::new(env.add_campaign(json!({"name": "vip anywhere", "quiz_id": null,
            "match": {"any": [{"field": "tags", "op": "contains", "value": "vip"}]},
            "actions": [{"channel": "webhook", "url": "http://127.0.0.1:9/hook"}]})).await),
    ]
}

#[tokio::test]
async fn given_campaigns_when_submissions_arrive_then_rows_ledger_and_jobs_match_exactly() {
    let env = env().await;
    let camps = campaigns(&env).await;
    let b = env.batcher();
    let (stop, handle) = spawn(b.clone());
    let batch = leads(120);
    for l in &batch {
        env.publish(l).await;
    }
    env.wait_for(
        "SELECT count(*) AS n FROM submissions",
        120,
        Duration::from_secs(20),
    )
    .await;
    let expected = reference::match_batch(&camps, &batch).len() as i64;
    assert!(expected > 20, "the fixture matches something: {expected}");
    env.wait_for(
        "SELECT count(*) AS n FROM deliveries",
        expected,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM deliveries WHERE status = 'queued'")
            .await,
        expected
    );
    assert_eq!(
        env.count("SELECT count(*) AS n FROM submission_ids").await,
        120
    );
    // Every ledger row has its job on deliveries.<channel>.<priority>.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.items("DELIVERIES").await != expected as u64 {
        assert!(Instant::now() < deadline, "jobs published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stream = env.js.get_stream("DELIVERIES").await.expect("stream");
    let msg = stream
        .get_last_raw_message_by_subject("deliveries.sms.high")
        .await
        .expect("an sms job");
    // Jobs of one channel and priority travel in chunks, one JSON job per line.
    let jobs: Vec<DeliveryJob> = quizflow_nats::members(&msg.payload)
        .map(|l| serde_json::from_slice(l).expect("job"))
        .collect();
    assert!(jobs.iter().all(|j| j.campaign_id == camps[0].id));
    let msg_id = msg.headers.get("Nats-Msg-Id").map(|v| v.to_string());
    match jobs.as_slice() {
        [one] => assert_eq!(msg_id, Some(one.msg_id())),
        _ => assert!(msg_id.is_some_and(|id| id.starts_with("chunk:"))),
    }
    assert!(
        env.stream_messages("DELIVERIES").await < expected as u64,
        "jobs are chunked"
    );
    // The same submissions again (after JetStream's dedup would have let them through):
    // nothing new is stored or published.
    for l in batch.iter().take(10) {
        let mut again = l.clone();
        again.v = SubmissionEnvelope::VERSION;
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(serde_json::to_vec(&again).expect("json").into())
            .message_id(format!("replay-{}", again.submission_id));
        env.js
            .send_publish(subjects::submission(&again.quiz_id), msg)
            .await
            .expect("send")
            .await
            .expect("ack");
    }
    env.wait_drained(Duration::from_secs(20)).await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM submissions").await,
        120
    );
    assert_eq!(
        env.count("SELECT count(*) AS n FROM deliveries").await,
        expected
    );
    // Copies in other messages publish nothing: the message that stored them did.
    let (distinct, copies) = env.distinct_jobs().await;
    assert_eq!(distinct, expected as usize);
    assert_eq!(copies, distinct, "nothing was published twice");
    let _ = stop.send(());
    handle.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn given_a_crash_between_commit_and_ack_then_redelivery_stores_nothing_twice_and_loses_no_job(
) {
    let env = env().await;
    let camps = campaigns(&env).await;
    let first = env.batcher();
    first.crash_after_next_commit();
    let (_stop, handle) = spawn(first);
    let batch = leads(30);
    for l in &batch {
        env.publish(l).await;
    }
    let crashed = tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("crash happens")
        .expect("join");
    assert!(matches!(crashed, Err(BatcherError::SimulatedCrash)));
    let stored = env.count("SELECT count(*) AS n FROM submissions").await;
    assert!(stored > 0, "the crashed batch was committed");
    assert_eq!(
        env.stream_messages("DELIVERIES").await,
        0,
        "but none of its jobs were published"
    );

    // A new instance gets the unacked messages back after ack_wait and finishes the job.
    let (stop, handle) = spawn(env.batcher());
    env.wait_for(
        "SELECT count(*) AS n FROM submissions",
        30,
        Duration::from_secs(20),
    )
    .await;
    let expected = reference::match_batch(&camps, &batch).len() as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.items("DELIVERIES").await != expected {
        assert!(
            Instant::now() < deadline,
            "jobs of the crashed batch were published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        env.count("SELECT count(*) AS n FROM deliveries").await,
        expected as i64
    );
    assert_eq!(
        env.count("SELECT count(*) AS n FROM submission_ids").await,
        30
    );
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = env
        .js
        .get_stream("SUBMISSIONS")
        .await
        .expect("stream")
        .get_consumer("batcher")
        .await
        .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer.info().await.expect("info");
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "everything acked: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    handle.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn given_a_poison_message_then_it_is_dead_lettered_and_the_consumer_moves_on() {
    let env = env().await;
    let (stop, handle) = spawn(env.batcher());
    env.js
        .publish("quiz.submissions.bad", "not json at all".into())
        .await
        .expect("send")
        .await
        .expect("ack");
    env.js
        .publish(
            "quiz.submissions.bad",
            r#"{"v": 99, "whatever": true}"#.into(),
        )
        .await
        .expect("send")
        .await
        .expect("ack");
    env.publish(&lead("q1", 1, json!({"score": 1}))).await;
    env.wait_for(
        "SELECT count(*) AS n FROM submissions",
        1,
        Duration::from_secs(15),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.stream_messages("DEAD_LETTERS").await != 2 {
        assert!(Instant::now() < deadline, "two dead letters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dl = env.js.get_stream("DEAD_LETTERS").await.expect("stream");
    let msg = dl
        .get_last_raw_message_by_subject("dead.submissions.bad")
        .await
        .expect("dead letter");
    assert!(msg
        .headers
        .get("Quizflow-Reason")
        .is_some_and(|r| r.to_string().contains("version 99")));
    let _ = stop.send(());
    handle.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn given_packed_messages_with_bad_members_then_only_those_are_dead_lettered_and_the_rest_stored(
) {
    let env = env().await;
    let (stop, handle) = spawn(env.batcher());
    // Through the API's packer: 200 concurrent leads become fewer messages.
    let packer = quizflow_nats::Packer::spawn(env.js.clone(), Default::default());
    let all = leads(200);
    let outcomes = futures::future::join_all(all.iter().map(|e| packer.publish(e))).await;
    assert!(outcomes
        .iter()
        .all(|o| o.as_ref().is_ok_and(|o| !o.duplicate)));
    let packed = env.stream_messages("SUBMISSIONS").await;
    assert!(packed < 200, "200 concurrent leads in {packed} messages");
    // A copy inside the window is answered "duplicate" (and stored once below).
    let again = packer.publish(&all[7]).await.expect("publish");
    assert!(again.duplicate);

    // One message, four members: good, undecodable, unstorable (U+0000), good.
    let good =
        |n: u64| serde_json::to_string(&lead("q1", 1000 + n, json!({"score": 1}))).expect("json");
    let mut bad = lead("q1", 1002, json!({"score": 1}));
    bad.submission.respondent.name = Some("A\u{0}na".into());
    bad.submission.metadata.insert("k".into(), json!("v\u{0}"));
    let payload = [
        good(0),
        "not json".to_owned(),
        serde_json::to_string(&bad).expect("json"),
        good(3),
    ]
    .join("\n");
    let ack = env
        .js
        .publish("quiz.submissions.q1", payload.into())
        .await
        .expect("send")
        .await
        .expect("ack");
    env.wait_for(
        "SELECT count(*) AS n FROM submissions",
        202,
        Duration::from_secs(30),
    )
    .await;
    env.wait_drained(Duration::from_secs(15)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.stream_messages("DEAD_LETTERS").await != 2 {
        assert!(Instant::now() < deadline, "two dead letters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each letter holds its member's bytes only, and is named by message and member.
    let dl = env.js.get_stream("DEAD_LETTERS").await.expect("stream");
    let first = dl.get_raw_message(1).await.expect("letter");
    let second = dl.get_raw_message(2).await.expect("letter");
    let mut letters = [&first, &second]
        .iter()
        .map(|m| {
            (
                m.headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect::<Vec<_>>();
    letters.sort();
    assert_eq!(letters[0].0, format!("submission-seq:{}:1", ack.sequence));
    assert_eq!(letters[0].1, "not json");
    assert_eq!(letters[1].0, format!("submission-seq:{}:2", ack.sequence));
    assert!(letters[1].1.contains(&bad.submission_id.to_string()));
    assert_eq!(
        env.count("SELECT count(*) AS n FROM dead_letters WHERE kind = 'submission'")
            .await,
        2
    );
    let _ = stop.send(());
    handle.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn given_postgres_down_under_load_then_nothing_is_acked_and_the_batcher_catches_up() {
    let env = env().await;
    let proxy = CutProxy::start(env.db.host_port()).await;
    let b = env.batcher_with_url(&env.db.url_via_port(proxy.port));
    let (stop, handle) = spawn(b);
    env.publish(&lead("q1", 1000, json!({"score": 1}))).await;
    env.wait_for(
        "SELECT count(*) AS n FROM submissions",
        1,
        Duration::from_secs(15),
    )
    .await;

    env.wait_drained(Duration::from_secs(10)).await;
    let acked_before = env.batcher_consumer().await.ack_floor.stream_sequence;
    proxy.cut();
    let batch = leads(200);
    for l in &batch {
        env.publish(l).await;
    }
    // The batcher has taken them and tried to store them (redeliveries prove the naks).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = env.batcher_consumer().await;
        if i.num_ack_pending > 0 && i.num_redelivered > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the batcher retries while down: {i:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        env.batcher_consumer().await.ack_floor.stream_sequence,
        acked_before,
        "nothing acked while the database is down"
    );
    assert_eq!(
        env.count("SELECT count(*) AS n FROM submissions").await,
        1,
        "nothing stored while down"
    );

    proxy.restore();
    env.wait_for(
        "SELECT count(*) AS n FROM submissions",
        201,
        Duration::from_secs(45),
    )
    .await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM submission_ids").await,
        201
    );
    let _ = stop.send(());
    handle.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn given_a_new_campaign_then_every_running_batcher_applies_it_within_5_seconds() {
    let env = env().await;
    let (a, b) = (env.batcher(), env.batcher());
    let (stop_a, ha) = spawn(a.clone());
    let (stop_b, hb) = spawn(b.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.campaign_loads() >= 1 && b.campaign_loads() >= 1) {
        assert!(Instant::now() < deadline, "both loaded their first set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both have loaded (empty) sets; their periodic refresh is 60 s away, so the next load
    // can only come from the announcement.
    let (loads_a, loads_b) = (a.campaign_loads(), b.campaign_loads());
    assert_eq!((a.active_campaigns(), b.active_campaigns()), (0, 0));
    let created = Instant::now();
    env.add_campaign(json!({"name": "new", "match": {}, "actions": [{"channel": "webhook", "url": "https://h/x"}]})).await;
    while !(a.active_campaigns() == 1 && b.active_campaigns() == 1) {
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "not applied within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        a.campaign_loads() > loads_a && b.campaign_loads() > loads_b,
        "applied by a reload the announcement caused"
    );
    // And it matches the next submission.
    env.publish(&lead("q7", 7, json!({"score": 1}))).await;
    env.wait_for(
        "SELECT count(*) AS n FROM deliveries WHERE channel = 'webhook'",
        1,
        Duration::from_secs(10),
    )
    .await;
    let _ = (stop_a.send(()), stop_b.send(()));
    ha.await.expect("join").expect("stop a");
    hb.await.expect("join").expect("stop b");
}

#[tokio::test]
async fn given_shutdown_then_the_batch_in_hand_is_flushed() {
    let env = env().await;
    let settings = BatcherSettings {
        batch_max: 1000,
        batch_wait: Duration::from_secs(30),
        ..BatcherSettings::default()
    };
    let b = Batcher::new(
        settings,
        env.client.clone(),
        env.js.clone(),
        quizflow_store::pool(&env.db.url, 2),
    );
    let (stop, handle) = spawn(b);
    for l in leads(10) {
        env.publish(&l).await;
    }
    // The batcher holds all 10 (fetched, unacked) in its open batch.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.batcher_consumer().await.num_ack_pending != 10 {
        assert!(Instant::now() < deadline, "the batcher took the 10");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        env.count("SELECT count(*) AS n FROM submissions").await,
        0,
        "still batching (30 s wait)"
    );
    let _ = stop.send(());
    handle.await.expect("join").expect("clean stop");
    assert_eq!(env.count("SELECT count(*) AS n FROM submissions").await, 10);
    let i = env.batcher_consumer().await;
    assert_eq!(
        (i.num_pending, i.num_ack_pending),
        (0, 0),
        "flushed and acked"
    );
}

/// A pack stored by a batcher that died before publishing its jobs, then published again by
/// an erasure without the erased person's member: the others' rows were stored from the
/// original sequence. Before: the replacement's batcher found their rows "stored from another
/// message" and published nothing, stranding their messages. Now: the replacement names the
/// sequence it replaces, and their queued rows get their jobs.
#[tokio::test]
async fn given_a_pack_republished_by_an_erasure_after_a_crash_then_the_others_get_their_jobs() {
    let env = env().await;
    let c = env
        .add_campaign(json!({"name": "all", "quiz_id": null, "match": {},
            "actions": [{"channel": "sms", "template": "hi"}]}))
        .await;
    let first = env.batcher();
    let (_stop_first, crashed) = spawn(first.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first.knows_campaign(c.id, c.version) {
        assert!(Instant::now() < deadline, "campaign loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.crash_after_next_commit();
    let ana = lead("q1", 1, json!({"respondent": {"phone": "+5511900000001"}}));
    let bob = lead("q1", 2, json!({"respondent": {"phone": "+5511900000002"}}));
    // One pack of two, as the API's packer makes it.
    let mut payload = serde_json::to_vec(&ana).expect("json");
    payload.push(b'\n');
    payload.extend(serde_json::to_vec(&bob).expect("json"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(quizflow_nats::PACK_HEADER, "2");
    env.js
        .send_publish(
            subjects::submission(&ana.quiz_id),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .headers(headers),
        )
        .await
        .expect("send")
        .await
        .expect("ack");
    let crashed = tokio::time::timeout(Duration::from_secs(20), crashed)
        .await
        .expect("crash happens")
        .expect("join");
    assert!(matches!(crashed, Err(BatcherError::SimulatedCrash)));
    assert_eq!(
        env.count("SELECT count(*) AS n FROM deliveries WHERE status = 'queued'")
            .await,
        2
    );
    assert_eq!(env.stream_messages("DELIVERIES").await, 0);

    // Ana is erased from the stream: the pack is published again with Bob alone.
    let erased = quizflow_nats::erase_person(
        &env.js,
        &quizflow_nats::Person {
            phone: Some("+5511900000001".into()),
            email: None,
            submission_ids: vec![ana.submission_id.to_string()],
        },
    )
    .await
    .expect("erase");
    assert_eq!(erased.submission_messages, 1);

    let (stop, handle) = spawn(env.batcher());
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.items("DELIVERIES").await != 1 {
        assert!(Instant::now() < deadline, "Bob's job was published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.wait_drained(Duration::from_secs(20)).await;
    let mut s = env.js.get_stream("DELIVERIES").await.expect("stream");
    let last = s.info().await.expect("info").state.last_sequence;
    let m = s.get_raw_message(last).await.expect("job");
    let job: DeliveryJob = serde_json::from_slice(&m.payload).expect("job");
    assert_eq!(job.submission_id, bob.submission_id);
    let _ = stop.send(());
    handle.await.expect("join").expect("clean stop");
}
