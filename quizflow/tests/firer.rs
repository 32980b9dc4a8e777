//! The schedule firer under `kill -9`: a workers process killed while it fires a backlog of
//! due reminders leaves no row behind and publishes no job it did not commit; a new process
//! picks up exactly where the transaction was cut, at the production round size.

use quizflow_core::{parse_campaign, Channel, DeliveryJob, SubmissionId};
use quizflow_nats::{NatsSettings, TopologyConfig};
use quizflow_testkit::{NatsServer, TestDb};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Due reminders: enough that firing them takes many rounds of the production size.
const DUE: i64 = 30_000;

fn workers(nats: &str, db: &str) -> Child {
    // `--channels webhook`: no pool consumes the SMS jobs, so the stream shows exactly what
    // the firers published.
    Command::new(env!("CARGO_BIN_EXE_quizflow"))
        .args([
            "workers",
            "--channels",
            "webhook",
            "--mock-provider",
            "http://127.0.0.1:9",
        ])
        .env_remove("QUIZFLOW_CONFIG")
        .env("NATS_URL", nats)
        .env("DATABASE_URL", db)
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
    drop(conn);

    // kill -9 once the firer is under way, mid-backlog.
    let mut first = workers(&nats.url(), &db.url);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = statuses(&db.url).await;
        if s.get("queued").copied().unwrap_or(0) >= 2_000 {
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

    let mut second = workers(&nats.url(), &db.url);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = statuses(&db.url).await;
        if s.get("queued").copied().unwrap_or(0) == DUE {
            assert_eq!(s.len(), 1, "every row queued, none elsewhere: {s:?}");
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
    let mut s = js
        .get_stream(quizflow_nats::subjects::DELIVERIES_STREAM)
        .await
        .expect("stream");
    let state = s.info().await.expect("info").state.clone();
    let mut published = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let m = s.get_raw_message(seq).await.expect("message");
        for line in m.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let job: DeliveryJob = serde_json::from_slice(line).expect("job");
            published.push(job.job_id);
        }
    }
    let distinct: HashSet<uuid::Uuid> = published.iter().copied().collect();
    assert_eq!(distinct, expected, "every reminder published, nothing else");
    println!(
        "{DUE} reminders; kill -9 left {} scheduled; {} published copies beyond one",
        cut.get("scheduled").copied().unwrap_or(0),
        published.len() - distinct.len()
    );
}
