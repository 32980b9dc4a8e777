//! The database's own trouble is never the lead's fault (contract §4): a full disk, a dropped
//! partition and a refusal the operator fixes afterwards, each through the production path
//! (leads packed as the API packs them, the batcher at its production ack wait and backoff).

mod common;

use common::*;

async fn exec(env: &Env, sql: &str) {
    let mut conn = AsyncPgConnection::establish(&env.db.url).await.expect("db");
    diesel::sql_query(sql).execute(&mut conn).await.expect(sql);
}

async fn n(env: &Env, sql: &str) -> i64 {
    count(&env.db.url, sql).await
}

async fn messages_in(env: &Env, stream: &str) -> u64 {
    let mut s = env.js.get_stream(stream).await.expect("stream");
    s.info().await.expect("info").state.messages
}

async fn submit_many(env: &Env, prefix: &str, how_many: usize) -> Vec<SubmissionId> {
    let mut ids = Vec::with_capacity(how_many);
    for i in 0..how_many {
        ids.push(
            env.submit(
                &format!("{prefix}-{i}"),
                json!({"phone": format!("+55119{i:08}")}),
            )
            .await,
        );
    }
    ids
}

/// The disk under `submissions` is full for 20 s while `SELECT 1` still answers (a trigger
/// raising SQLSTATE 53100, the code PostgreSQL gives "could not extend file … No space left
/// on device"). Before: all 40 acknowledged leads were dead-lettered as `unstorable` within
/// milliseconds and never stored. Now: they wait, and every one is stored once the space is
/// back, with its SMS; no dead letter.
#[tokio::test]
async fn given_the_disk_full_for_20s_then_every_acknowledged_lead_waits_and_is_stored() {
    let env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "Olá"}]))
        .await;
    exec(
        &env,
        "CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           RAISE EXCEPTION 'could not extend file \"base/1/2\": No space left on device' USING ERRCODE = '53100'; \
         END $$",
    )
    .await;
    exec(
        &env,
        "CREATE TRIGGER disk_full BEFORE INSERT ON submissions FOR EACH ROW EXECUTE FUNCTION test_disk_full()",
    )
    .await;
    let full_since = Instant::now();
    let ids = submit_many(&env, "full", 40).await;
    // The batcher meets the full disk again and again for 20 s: nothing is stored, and
    // nothing is given up on.
    while full_since.elapsed() < Duration::from_secs(20) {
        assert_eq!(n(&env, "SELECT count(*) AS n FROM dead_letters").await, 0);
        assert_eq!(env.dead_letters().await, 0, "no lead dead-lettered");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(n(&env, "SELECT count(*) AS n FROM submission_ids").await, 0);
    exec(&env, "DROP TRIGGER disk_full ON submissions").await;
    wait_until(
        "every acknowledged lead is stored with its ledger row",
        Duration::from_secs(60),
        || async {
            n(&env, "SELECT count(*) AS n FROM submissions").await == 40
                && n(&env, "SELECT count(*) AS n FROM deliveries").await == 40
        },
    )
    .await;
    let stored = n(
        &env,
        &format!(
            "SELECT count(DISTINCT id) AS n FROM submissions WHERE id IN ({})",
            ids.iter()
                .map(|id| format!("'{}'", id.0))
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .await;
    assert_eq!(stored, 40, "each acknowledged lead, once");
    assert_eq!(env.dead_letters().await, 0);
    wait_until(
        "the batcher's consumer is drained",
        Duration::from_secs(10),
        || async {
            let info = env.batcher_consumer().await;
            info.num_pending == 0 && info.num_ack_pending == 0
        },
    )
    .await;
}

/// The partition a lead belongs to is gone (dropped by hand, or by retention while the
/// batcher's cache still had it): the write fails with 23514 on `submissions` itself. Before:
/// read as bad data, the lead was dead-lettered. Now: the partition is created again and the
/// lead stored.
#[tokio::test]
async fn given_a_dropped_partition_then_it_is_created_again_and_the_lead_stored() {
    let env = Env::start_with(|_| {}).await;
    env.submit("first", json!({"phone": PHONE})).await;
    wait_until(
        "the first lead is stored",
        Duration::from_secs(20),
        || async { n(&env, "SELECT count(*) AS n FROM submissions").await == 1 },
    )
    .await;
    let month = chrono::Utc::now().format("%Y_%m");
    exec(
        &env,
        &format!("ALTER TABLE submissions DETACH PARTITION submissions_{month}"),
    )
    .await;
    exec(&env, &format!("DROP TABLE submissions_{month}")).await;
    // The batcher still believes the month's partition exists (its cache): only the
    // server's 23514 tells it otherwise.
    env.submit("second", json!({"phone": PHONE})).await;
    wait_until(
        "the second lead is stored in a new partition",
        Duration::from_secs(30),
        || async { n(&env, "SELECT count(*) AS n FROM submissions").await == 1 },
    )
    .await;
    assert_eq!(
        n(
            &env,
            &format!(
                "SELECT count(*) AS n FROM pg_inherits WHERE inhrelid = 'submissions_{month}'::regclass"
            )
        )
        .await,
        1
    );
    assert_eq!(env.dead_letters().await, 0);
    assert_eq!(n(&env, "SELECT count(*) AS n FROM dead_letters").await, 0);
}

/// A lead the database refuses for its data while it takes every other write is dead-lettered
/// alone (`kind: submission`); once the operator has fixed what refused it, the letter is
/// redriven through the same pipeline and stored once, and a second redrive finds nothing.
#[tokio::test]
async fn given_a_refused_lead_then_its_dead_letter_can_be_redriven_and_is_stored_once() {
    let env = Env::start_with(|_| {}).await;
    // A rule added by hand that a lead breaks (class 23: the data's fault).
    exec(
        &env,
        "ALTER TABLE submissions ADD CONSTRAINT test_no_ana CHECK (name IS DISTINCT FROM 'Ana')",
    )
    .await;
    env.submit("ok-1", json!({"phone": PHONE, "name": "Bia"}))
        .await;
    let refused = env
        .submit("refused", json!({"phone": PHONE, "name": "Ana"}))
        .await;
    env.submit("ok-2", json!({"phone": PHONE, "name": "Caio"}))
        .await;
    wait_until(
        "two leads stored, one dead-lettered alone",
        Duration::from_secs(30),
        || async {
            n(&env, "SELECT count(*) AS n FROM submissions").await == 2
                && n(
                    &env,
                    "SELECT count(*) AS n FROM dead_letters WHERE kind = 'submission' AND class = 'poison'",
                )
                .await
                    == 1
        },
    )
    .await;
    exec(&env, "ALTER TABLE submissions DROP CONSTRAINT test_no_ana").await;
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: uuid::Uuid,
    }
    let mut conn = AsyncPgConnection::establish(&env.db.url).await.expect("db");
    let letter: Id = diesel::sql_query("SELECT id FROM dead_letters WHERE kind = 'submission'")
        .get_result(&mut conn)
        .await
        .expect("letter");
    let taken =
        quizflow_store::dead_letters::take_for_redrive(&mut conn, Some(letter.id), None, 10)
            .await
            .expect("take");
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].kind, "submission");
    let letters: Vec<quizflow_nats::Redrive<'_>> = taken
        .iter()
        .map(|t| quizflow_nats::Redrive {
            letter_id: t.id.to_string(),
            kind: &t.kind,
            payload: t.payload.as_deref().expect("payload"),
        })
        .collect();
    assert_eq!(
        quizflow_nats::publish_redrives(&env.js, &letters).await,
        vec![true]
    );
    // The same redrive published again (the outbox relay after a crash) stores nothing more.
    assert_eq!(
        quizflow_nats::publish_redrives(&env.js, &letters).await,
        vec![true]
    );
    wait_until(
        "the redriven lead is stored",
        Duration::from_secs(30),
        || async {
            n(
                &env,
                &format!(
                    "SELECT count(*) AS n FROM submissions WHERE id = '{}'",
                    refused.0
                ),
            )
            .await
                == 1
        },
    )
    .await;
    wait_until(
        "the batcher's consumer is drained",
        Duration::from_secs(10),
        || async {
            let info = env.batcher_consumer().await;
            info.num_pending == 0 && info.num_ack_pending == 0
        },
    )
    .await;
    assert_eq!(n(&env, "SELECT count(*) AS n FROM submissions").await, 3);
    assert!(
        quizflow_store::dead_letters::take_for_redrive(&mut conn, Some(letter.id), None, 10)
            .await
            .expect("take")
            .is_empty(),
        "a letter is redriven once"
    );
}

/// The database is away when a worker fetches a chunk: every job of it must wait. Before:
/// each of the 20 was re-published on its own (20 new messages, and as many again on every
/// redelivery). Now: the chunk is naked as one message; once the database is back each job is
/// sent once.
#[tokio::test]
async fn given_the_database_away_when_a_chunk_is_fetched_then_it_waits_as_one_message() {
    let env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "Olá"}]))
        .await;
    let proxy = quizflow_testkit::CutProxy::start(env.db.host_port()).await;
    let mut items = Vec::new();
    for i in 0..20 {
        let quiz = QuizId::parse("promo").expect("quiz");
        let key = IdempotencyKey::parse(&format!("chunk-{i}")).expect("key");
        let sub = parse_submission(
            &json!({"respondent": {"phone": format!("+55119{i:08}")}, "score": 1}),
        )
        .expect("valid");
        items.push(SubmissionEnvelope::new(
            SubmissionId::from_key(&quiz, &key),
            quiz,
            chrono::Utc::now(),
            Some(key),
            sub,
        ));
    }
    // All at once: one pack, one batch, one chunk of 20 jobs.
    futures::future::join_all(items.iter().map(|e| env.packer.publish(e)))
        .await
        .into_iter()
        .for_each(|r| {
            r.expect("published");
        });
    wait_until("20 jobs in one chunk", Duration::from_secs(20), || async {
        n(&env, "SELECT count(*) AS n FROM deliveries").await == 20
            && messages_in(&env, "DELIVERIES").await == 1
    })
    .await;
    proxy.cut();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let settings = env.settings(|_| {});
    let js = env.js.clone();
    let pool = quizflow_store::pool(&env.db.url_via_port(proxy.port), 4);
    let workers = tokio::spawn(quizflow_workers::run(
        settings,
        js,
        pool,
        prometheus::Registry::new(),
        async move {
            let _ = rx.await;
        },
    ));
    wait_until(
        "the chunk came back at least twice",
        Duration::from_secs(30),
        || async {
            let mut c: async_nats::jetstream::consumer::PullConsumer = env
                .js
                .get_stream("DELIVERIES")
                .await
                .expect("stream")
                .get_consumer(&subjects::worker_consumer(
                    quizflow_core::Channel::Sms,
                    quizflow_core::Priority::Normal,
                ))
                .await
                .expect("consumer");
            c.info().await.expect("info").num_redelivered >= 1
        },
    )
    .await;
    assert_eq!(
        messages_in(&env, "DELIVERIES").await,
        1,
        "the waiting chunk stays one message"
    );
    proxy.restore();
    wait_until("every job sent once", Duration::from_secs(60), || async {
        n(
            &env,
            "SELECT count(*) AS n FROM deliveries WHERE status = 'sent'",
        )
        .await
            == 20
    })
    .await;
    let sent = env.mock_get("/_mock/messages").await;
    assert_eq!(sent["messages"].as_array().map(Vec::len), Some(20));
    let _ = stop.send(());
    let _ = workers.await;
}
