//! The store against a real PostgreSQL: migrations, partition upkeep, claims and
//! forward-only statuses.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use quizflow_store::deliveries::{self, Update};
use quizflow_testkit::TestDb;
use std::time::Duration;
use uuid::Uuid;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn setup() -> (TestDb, AsyncPgConnection) {
    let db = TestDb::create().await;
    let first = quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    assert_eq!(first.len(), 9);
    assert!(quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("again")
        .is_empty());
    let conn = AsyncPgConnection::establish(&db.url).await.expect("conn");
    (db, conn)
}

#[tokio::test]
async fn partitions_are_created_ahead_and_dropped_past_retention() {
    let (_db, mut conn) = setup().await;
    assert_eq!(partitions(&mut conn).await, 4);
    diesel::sql_query(
        "SELECT quizflow_ensure_submission_partitions(now() - interval '14 months', 2)",
    )
    .execute(&mut conn)
    .await
    .expect("old partitions");
    let dropped = quizflow_store::maintain_partitions(&mut conn, 3, 12)
        .await
        .expect("upkeep");
    assert_eq!(dropped, 2);
    assert_eq!(partitions(&mut conn).await, 4, "recent ones kept");
}

async fn partitions(c: &mut AsyncPgConnection) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'submissions'::regclass",
    )
    .get_result::<Count>(c)
    .await
    .expect("count")
    .n
}

async fn queued_row(conn: &mut AsyncPgConnection, key: &(Uuid, Uuid, String)) {
    diesel::sql_query(
        "INSERT INTO deliveries (submission_id, campaign_id, channel, campaign_version, priority, status) \
         VALUES ($1, $2, $3, 1, 'normal', 'queued')",
    )
    .bind::<diesel::sql_types::Uuid, _>(key.0)
    .bind::<diesel::sql_types::Uuid, _>(key.1)
    .bind::<diesel::sql_types::Text, _>(&key.2)
    .execute(conn)
    .await
    .expect("row");
}

fn update(key: &(Uuid, Uuid, String), status: &'static str, claim: Option<Uuid>) -> Update {
    Update {
        submission_id: key.0,
        campaign_id: key.1,
        channel: key.2.clone(),
        status,
        attempts: 1,
        last_error: Some("e\0rr".into()),
        history: vec![serde_json::json!({"outcome": status, "detail": "with \0 inside"})],
        claim,
        retry_in: None,
    }
}

#[tokio::test]
async fn one_claim_at_a_time_and_statuses_only_move_forward() {
    let (_db, mut conn) = setup().await;
    let key = (Uuid::new_v4(), Uuid::new_v4(), "sms".to_owned());
    queued_row(&mut conn, &key).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let lease = Duration::from_secs(60);
    assert_eq!(
        deliveries::claim(&mut conn, std::slice::from_ref(&key), a, lease)
            .await
            .expect("claim"),
        vec![key.clone()]
    );
    assert!(
        deliveries::claim(&mut conn, std::slice::from_ref(&key), b, lease)
            .await
            .expect("claim")
            .is_empty(),
        "a held row cannot be claimed twice"
    );
    assert!(
        deliveries::write(&mut conn, &[update(&key, "sent", Some(b))])
            .await
            .expect("write")
            .is_empty(),
        "another claim's outcome does not land"
    );
    assert_eq!(
        deliveries::write(&mut conn, &[update(&key, "sent", Some(a))])
            .await
            .expect("write")
            .len(),
        1,
        "the holder's outcome lands (text with U+0000 included)"
    );
    for (status, claim) in [("failed", Some(a)), ("failed", None), ("cancelled", None)] {
        assert!(
            deliveries::write(&mut conn, &[update(&key, status, claim)])
                .await
                .expect("write")
                .is_empty(),
            "{status} must not overwrite sent"
        );
    }
    assert!(
        deliveries::claim(&mut conn, std::slice::from_ref(&key), b, lease)
            .await
            .expect("claim")
            .is_empty()
    );
    let sent: Count =
        diesel::sql_query("SELECT count(*) AS n FROM deliveries WHERE status = 'sent'")
            .get_result(&mut conn)
            .await
            .expect("count");
    assert_eq!(sent.n, 1);
    // An expired lease can be taken over (the holder crashed).
    let key2 = (Uuid::new_v4(), key.1, "sms".to_owned());
    queued_row(&mut conn, &key2).await;
    deliveries::claim(&mut conn, std::slice::from_ref(&key2), a, Duration::ZERO)
        .await
        .expect("claim");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        deliveries::claim(&mut conn, std::slice::from_ref(&key2), b, lease)
            .await
            .expect("claim")
            .len(),
        1
    );
}

#[tokio::test]
async fn a_waiting_job_is_not_claimed_before_its_backoff_runs_out() {
    let (_db, mut conn) = setup().await;
    let key = (Uuid::new_v4(), Uuid::new_v4(), "sms".to_owned());
    queued_row(&mut conn, &key).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let lease = Duration::from_secs(60);
    deliveries::claim(&mut conn, std::slice::from_ref(&key), a, lease)
        .await
        .expect("claim");
    let mut failed = update(&key, "failed", Some(a));
    failed.retry_in = Some(Duration::from_millis(400));
    assert_eq!(
        deliveries::write(&mut conn, &[failed])
            .await
            .expect("write")
            .len(),
        1
    );
    assert!(
        deliveries::claim(&mut conn, std::slice::from_ref(&key), b, lease)
            .await
            .expect("claim")
            .is_empty(),
        "an early copy cannot jump the backoff"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        deliveries::claim(&mut conn, std::slice::from_ref(&key), b, lease)
            .await
            .expect("claim")
            .len(),
        1,
        "claimable once the backoff ran out"
    );
}

#[tokio::test]
async fn attempt_histories_keep_the_newest_fifty() {
    let (_db, mut conn) = setup().await;
    let key = (Uuid::new_v4(), Uuid::new_v4(), "sms".to_owned());
    queued_row(&mut conn, &key).await;
    for i in 0..60 {
        let mut u = update(&key, "failed", None);
        u.history = vec![serde_json::json!({"n": i})];
        assert_eq!(
            deliveries::write(&mut conn, &[u])
                .await
                .expect("write")
                .len(),
            1
        );
    }
    #[derive(diesel::QueryableByName)]
    struct H {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        history: serde_json::Value,
    }
    let h: H = diesel::sql_query("SELECT history FROM deliveries")
        .get_result(&mut conn)
        .await
        .expect("history");
    let entries = h.history.as_array().expect("array");
    assert_eq!(entries.len(), 50);
    assert_eq!(entries[0]["n"], 10, "the oldest are dropped");
    assert_eq!(entries[49]["n"], 59);
}
