//! The schedule firer under `kill -9`: a workers process killed while it fires (and sends) a
//! backlog of due reminders leaves no row behind; a new process picks up exactly where the
//! transaction was cut, at the production round size, and every reminder reaches the provider.

use quizflow_core::{parse_campaign, Channel, DeliveryJob, SubmissionId};
use quizflow_nats::{NatsSettings, TopologyConfig};
use quizflow_testkit::{NatsServer, TestDb};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Due reminders: enough that firing them takes many rounds of the production size.
const DUE: i64 = 30_000;

fn workers(nats: &str, db: &str, mock: &str) -> Child {
    // An SMS workers process (a firer fires the channels its process serves), sending to the
    // mock in this test process as fast as it can: the mock's record is what was sent.
    Command::new(env!("CARGO_BIN_EXE_quizflow"))
        .args(["workers", "--channels", "sms", "--mock-provider", mock])
        .env_remove("QUIZFLOW_CONFIG")
        .env("NATS_URL", nats)
        .env("DATABASE_URL", db)
        .env("QUIZFLOW_HASH_KEY", "firer-test-hash-key-0123456789")
        .env("QUIZFLOW_PROVIDER_RATE_PER_SEC", "100000")
        .env("QUIZFLOW_WORKER_CONCURRENCY", "256")
        .env("QUIZFLOW_METRICS_ADDR", "")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn workers")
}

async fn statuses(db: &str) -> HashMap<String, i64> {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(db).await.expect("db");
    let rows: Vec<Row> =
        diesel::sql_query("SELECT status, count(*) AS n FROM deliveries GROUP BY status")
            .load(&mut conn)
            .await
            .expect("statuses");
    rows.into_iter().map(|r| (r.status, r.n)).collect()
}

#[derive(diesel::QueryableByName)]
struct Key {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    submission_id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    campaign_id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    channel: String,
    #[diesel(sql_type = diesel::sql_types::SmallInt)]
    step: i16,
}

async fn keys(db: &str) -> Vec<Key> {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut conn = AsyncPgConnection::establish(db).await.expect("db");
    diesel::sql_query("SELECT submission_id, campaign_id, channel, step FROM deliveries")
        .load(&mut conn)
        .await
        .expect("keys")
}

#[tokio::test]
async fn given_a_firer_killed_mid_backlog_then_a_new_one_publishes_every_reminder_and_none_is_lost()
{
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    let settings = NatsSettings::new(nats.url(), "firer-test");
    let client = quizflow_nats::connect(&settings).await.expect("connect");
    let js = quizflow_nats::jetstream(client, &settings);
    quizflow_nats::ensure_topology(&js, &TopologyConfig::default())
        .await
        .expect("topology");
    let pool = quizflow_store::pool(&db.url, 2);
    let mut conn = pool.get().await.expect("conn");
    let spec = parse_campaign(&serde_json::json!({
        "name": "reminders",
        "match": {"all": [{"field": "score", "op": "gte", "value": 0}]},
        "actions": [{"channel": "sms", "template": "hi"},
                    {"channel": "sms", "template": "tomorrow!", "delay": "1d"}]
    }))
    .expect("campaign");
    let campaign = quizflow_store::campaigns::insert(&mut conn, &spec)
        .await
        .expect("insert campaign");
    // All due already, a millisecond apart (a distinct due order, as in real schedules).
    quizflow_store::schedules::seed(
        &mut conn,
        campaign.id,
        campaign.version,
        DUE,
        chrono::Utc::now() - chrono::Duration::minutes(2),
        Duration::from_millis(DUE as u64),
    )
    .await
    .expect("seed");
    // Each reminder's submission, stored as the batcher stores one (the worker loads it).
    {
        use diesel_async::RunQueryDsl;
        diesel::sql_query(
            "INSERT INTO submission_ids (id, received_at) SELECT submission_id, now() FROM deliveries",
        )
        .execute(&mut conn)
        .await
        .expect("ids");
        diesel::sql_query(
            "INSERT INTO submissions (id, quiz_id, received_at, completed_at, phone, answers, tags, metadata, stream_seq) \
             SELECT id, 'q', received_at, received_at, '+5511' || lpad((row_number() OVER ())::text, 9, '0'), \
                    '[]', '{}', '{}', 0 FROM submission_ids",
        )
        .execute(&mut conn)
        .await
        .expect("submissions");
    }
    drop(conn);
    use poem::listener::{Acceptor, Listener};
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let mock_port = acceptor.local_addr()[0]
        .as_socket_addr()
        .map(|a| a.port())
        .expect("port");
    let mock = format!("http://127.0.0.1:{mock_port}");
    tokio::spawn(quizflow_mock_provider::serve(
        acceptor,
        quizflow_mock_provider::MockState::default(),
        std::future::pending::<()>(),
    ));

    // kill -9 once the firer is under way, mid-backlog.
    let mut first = workers(&nats.url(), &db.url, &mock);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = statuses(&db.url).await;
        if DUE - s.get("scheduled").copied().unwrap_or(0) >= 2_000 {
            break;
        }
        assert!(Instant::now() < deadline, "the firer never started: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("kill -9");
    let _ = first.wait();
    let cut = statuses(&db.url).await;
    assert!(
        cut.get("scheduled").copied().unwrap_or(0) > 0,
        "killed after the whole backlog fired; nothing was interrupted: {cut:?}"
    );

    let mut second = workers(&nats.url(), &db.url, &mock);
    // Calls the killed process had under way come back when their lease runs out.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let s = statuses(&db.url).await;
        if s.get("sent").copied().unwrap_or(0) == DUE {
            assert_eq!(s.len(), 1, "every row sent, none elsewhere: {s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "backlog not drained: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = second.kill();
    let _ = second.wait();

    // Every queued row's job is in DELIVERIES; copies of a round cut by the kill are allowed
    // (the worker's claim sends a job once) but no job is missing and none is foreign.
    let expected: HashSet<uuid::Uuid> = keys(&db.url)
        .await
        .into_iter()
        .map(|k| {
            let channel = Channel::parse(&k.channel).expect("channel");
            DeliveryJob::job_id(
                SubmissionId(k.submission_id),
                k.campaign_id,
                channel,
                k.step as u16,
            )
        })
        .collect();
    assert_eq!(expected.len() as i64, DUE);
    let record: serde_json::Value = reqwest::get(format!("{mock}/_mock/messages"))
        .await
        .expect("mock")
        .json()
        .await
        .expect("json");
    let published: Vec<uuid::Uuid> = record["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["idempotency_key"].as_str()?.parse().ok())
        .collect();
    let distinct: HashSet<uuid::Uuid> = published.iter().copied().collect();
    assert_eq!(distinct, expected, "every reminder sent, nothing else");
    // A second send only for a call the kill cut between the provider and the ledger.
    let sending_at_kill = cut.get("sending").copied().unwrap_or(0) as usize;
    assert!(
        published.len() - distinct.len() <= sending_at_kill,
        "{} sent twice, {sending_at_kill} calls were under way at the kill",
        published.len() - distinct.len()
    );
    println!(
        "{DUE} reminders; kill -9 left {} scheduled; {} sent copies beyond one",
        cut.get("scheduled").copied().unwrap_or(0),
        published.len() - distinct.len()
    );
}
