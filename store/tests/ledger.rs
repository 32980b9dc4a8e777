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
    assert_eq!(first.len(), 15);
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

async fn queued_row(conn: &mut AsyncPgConnection, key: &(Uuid, Uuid, String, u16)) {
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

fn update(key: &(Uuid, Uuid, String, u16), status: &'static str, claim: Option<Uuid>) -> Update {
    Update {
        submission_id: key.0,
        campaign_id: key.1,
        channel: key.2.clone(),
        step: key.3,
        status: status.parse().expect("a delivery status"),
        attempts: 1,
        last_error: Some("e\0rr".into()),
        history: vec![serde_json::json!({"outcome": status, "detail": "with \0 inside"})],
        claim,
        retry_in: None,
        provider_message_id: None,
        fallback: None,
    }
}

#[tokio::test]
async fn one_claim_at_a_time_and_statuses_only_move_forward() {
    let (_db, mut conn) = setup().await;
    let key = (Uuid::new_v4(), Uuid::new_v4(), "sms".to_owned(), 0u16);
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
    let key2 = (Uuid::new_v4(), key.1, "sms".to_owned(), 0u16);
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
    let key = (Uuid::new_v4(), Uuid::new_v4(), "sms".to_owned(), 0u16);
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
    let key = (Uuid::new_v4(), Uuid::new_v4(), "sms".to_owned(), 0u16);
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

async fn scheduled_row(conn: &mut AsyncPgConnection, key: &(Uuid, Uuid, String, u16), in_ms: i64) {
    diesel::sql_query(
        "INSERT INTO deliveries (submission_id, campaign_id, channel, step, campaign_version, priority, status, due_at) \
         VALUES ($1, $2, $3, $4, 1, 'normal', 'scheduled', now() + make_interval(secs => $5))",
    )
    .bind::<diesel::sql_types::Uuid, _>(key.0)
    .bind::<diesel::sql_types::Uuid, _>(key.1)
    .bind::<diesel::sql_types::Text, _>(&key.2)
    .bind::<diesel::sql_types::SmallInt, _>(key.3 as i16)
    .bind::<diesel::sql_types::Double, _>(in_ms as f64 / 1000.0)
    .execute(conn)
    .await
    .expect("row");
}

async fn status_of(conn: &mut AsyncPgConnection, key: &(Uuid, Uuid, String, u16)) -> String {
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
    }
    diesel::sql_query(
        "SELECT status FROM deliveries WHERE submission_id = $1 AND campaign_id = $2 AND channel = $3 AND step = $4",
    )
    .bind::<diesel::sql_types::Uuid, _>(key.0)
    .bind::<diesel::sql_types::Uuid, _>(key.1)
    .bind::<diesel::sql_types::Text, _>(&key.2)
    .bind::<diesel::sql_types::SmallInt, _>(key.3 as i16)
    .get_result::<S>(conn)
    .await
    .expect("status")
    .status
}

async fn campaign(conn: &mut AsyncPgConnection, id: Uuid, active: bool) {
    diesel::sql_query(
        "INSERT INTO campaigns (id, version, name, active, priority, definition) \
         VALUES ($1, 1, 'c', $2, 'normal', '{}')",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Bool, _>(active)
    .execute(conn)
    .await
    .expect("campaign");
}

#[tokio::test]
async fn due_rows_fire_once_in_due_order_later_ones_wait_and_dead_campaigns_cancel() {
    use quizflow_store::schedules::{fire_due, FireError};
    let (db, mut conn) = setup().await;
    let (live, dead) = (Uuid::new_v4(), Uuid::new_v4());
    campaign(&mut conn, live, true).await;
    campaign(&mut conn, dead, false).await;
    let sub = Uuid::new_v4();
    let first = (sub, live, "sms".to_owned(), 0u16);
    let second = (sub, live, "sms".to_owned(), 1u16);
    let later = (sub, live, "sms".to_owned(), 2u16);
    let cancelled = (sub, dead, "sms".to_owned(), 0u16);
    scheduled_row(&mut conn, &second, -500).await;
    scheduled_row(&mut conn, &first, -1000).await;
    scheduled_row(&mut conn, &later, 3_600_000).await;
    scheduled_row(&mut conn, &cancelled, -1000).await;

    // A publish that fails commits nothing: the rows are still scheduled.
    let err = fire_due(&mut conn, 100, SMS, |_| async {
        Err("nats away".to_owned())
    })
    .await
    .expect_err("publish failed");
    assert!(matches!(err, FireError::Publish(_)), "{err}");
    assert_eq!(status_of(&mut conn, &first).await, "scheduled");
    assert_eq!(status_of(&mut conn, &cancelled).await, "scheduled");

    // Two firers at once: SKIP LOCKED hands each row to one of them.
    let mut other = AsyncPgConnection::establish(&db.url).await.expect("conn");
    let published = std::sync::Mutex::new(Vec::new());
    let (a, b) = tokio::join!(
        fire_due(&mut conn, 100, SMS, |jobs| async {
            published.lock().expect("lock").extend(jobs);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(())
        }),
        fire_due(&mut other, 100, SMS, |jobs| async {
            published.lock().expect("lock").extend(jobs);
            Ok(())
        })
    );
    let (a, b) = (a.expect("fire a"), b.expect("fire b"));
    let published = published.into_inner().expect("lock");
    let steps: Vec<u16> = published.iter().map(|j| j.step).collect();
    assert_eq!(steps, [0, 1], "due order, each once: {published:?}");
    assert!(published.iter().all(|j| j.due_at.is_none()));
    assert_eq!(a.published + b.published, 2);
    assert_eq!(a.cancelled + b.cancelled, 1);
    assert_eq!(status_of(&mut conn, &first).await, "queued");
    assert_eq!(status_of(&mut conn, &second).await, "queued");
    assert_eq!(status_of(&mut conn, &cancelled).await, "cancelled");
    assert_eq!(status_of(&mut conn, &later).await, "scheduled");
    let next = quizflow_store::schedules::next_due(&mut conn, SMS)
        .await
        .expect("next")
        .expect("one left");
    assert!(next > chrono::Utc::now() + chrono::Duration::minutes(59));

    // A due e-mail row is not this (SMS-only) firer's: it stays for a process serving e-mail.
    let email = (sub, live, "email".to_owned(), 0u16);
    scheduled_row(&mut conn, &email, -1000).await;
    let again = fire_due(&mut conn, 100, SMS, |_| async {
        panic!("nothing to publish")
    })
    .await
    .expect("fire");
    assert_eq!((again.published, again.cancelled, again.skipped), (0, 0, 0));
    assert_eq!(status_of(&mut conn, &email).await, "scheduled");

    // A row of a channel this build does not know (a newer version's, mid rolling upgrade),
    // asked for by name: it stays scheduled, not queued with no job.
    let foreign = (sub, live, "pigeon".to_owned(), 0u16);
    scheduled_row(&mut conn, &foreign, -1000).await;
    let again = fire_due(&mut conn, 100, &["sms", "pigeon"], |_| async {
        panic!("nothing to publish")
    })
    .await
    .expect("fire");
    assert_eq!((again.published, again.cancelled, again.skipped), (0, 0, 1));
    assert_eq!(status_of(&mut conn, &foreign).await, "scheduled");
}

const SMS: &[&str] = &["sms"];

/// A status report names its attempt: a late report of an earlier attempt moves nothing,
/// whether the row was sent by a later attempt or a later attempt is under way.
#[tokio::test]
async fn reports_of_an_earlier_attempt_are_stale() {
    use quizflow_store::reports::{self, Applied, Delivered};
    let (_db, mut conn) = setup().await;
    let row = |status: &str, attempts: i32| {
        let (sub, camp) = (Uuid::new_v4(), Uuid::new_v4());
        (
            sub,
            camp,
            format!(
                "INSERT INTO deliveries (submission_id, campaign_id, channel, campaign_version, priority, status, attempts) \
                 VALUES ('{sub}', '{camp}', 'sms', 1, 'normal', '{status}', {attempts})"
            ),
        )
    };
    let report = |sub, camp, attempt| Delivered {
        submission_id: sub,
        campaign_id: camp,
        channel: "sms".into(),
        step: 0,
        attempt,
        detail: "x".into(),
    };
    // Sent by attempt 2: attempt 1's reports are stale, attempt 2's apply.
    let (sub, camp, sql) = row("sent", 2);
    diesel::sql_query(sql)
        .execute(&mut conn)
        .await
        .expect("row");
    let (a, _) = reports::failed(&mut conn, &report(sub, camp, Some(1)))
        .await
        .expect("failed");
    assert_eq!(a, Applied::Stale);
    let d = reports::delivered(&mut conn, &[report(sub, camp, Some(1))])
        .await
        .expect("delivered");
    assert_eq!(d, vec![Applied::Stale]);
    let d = reports::delivered(&mut conn, &[report(sub, camp, Some(2))])
        .await
        .expect("delivered");
    assert_eq!(d, vec![Applied::Moved]);
    // Attempt 2 under way (the row counts 1 attempt made): attempt 1's failure is old news,
    // attempt 2's applies; a reference without an attempt applies as it always did.
    let (sub, camp, sql) = row("sending", 1);
    diesel::sql_query(sql)
        .execute(&mut conn)
        .await
        .expect("row");
    let (a, _) = reports::failed(&mut conn, &report(sub, camp, Some(1)))
        .await
        .expect("failed");
    assert_eq!(a, Applied::Stale);
    let (a, letter) = reports::failed(&mut conn, &report(sub, camp, Some(2)))
        .await
        .expect("failed");
    assert_eq!(a, Applied::Moved);
    assert!(letter.is_some());
    let (sub, camp, sql) = row("sent", 3);
    diesel::sql_query(sql)
        .execute(&mut conn)
        .await
        .expect("row");
    let d = reports::delivered(&mut conn, &[report(sub, camp, None)])
        .await
        .expect("delivered");
    assert_eq!(d, vec![Applied::Moved]);
}
