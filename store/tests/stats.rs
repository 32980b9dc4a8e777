//! The stats counters against a real PostgreSQL: after concurrent inserts, status changes,
//! deletes and compactions, every counter equals a full count of its table.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use quizflow_store::stats;
use quizflow_testkit::TestDb;
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(diesel::QueryableByName)]
struct Group {
    #[diesel(sql_type = diesel::sql_types::Text)]
    key: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn full_count(conn: &mut AsyncPgConnection) -> BTreeMap<String, i64> {
    diesel::sql_query(
        "SELECT 'deliveries/' || campaign_id || '/' || channel || '/' || status AS key, count(*) AS n \
           FROM deliveries GROUP BY 1 \
         UNION ALL SELECT 'submissions_stored', count(*) FROM submission_ids HAVING count(*) > 0 \
         UNION ALL SELECT 'dead_letters/' || coalesce(channel, kind), count(*) FROM dead_letters \
           WHERE redriven_at IS NULL GROUP BY 1",
    )
    .load::<Group>(conn)
    .await
    .expect("full count")
    .into_iter()
    .map(|g| (g.key, g.n))
    .collect()
}

fn as_map(counters: Vec<stats::Counter>) -> BTreeMap<String, i64> {
    counters
        .into_iter()
        .filter(|c| !c.metric.starts_with("submissions_") || c.metric == "submissions_stored")
        .map(|c| {
            let key = match c.metric.as_str() {
                "deliveries" => format!("deliveries/{}/{}/{}", c.campaign_id, c.channel, c.status),
                "dead_letters" => format!("dead_letters/{}", c.channel),
                m => m.to_owned(),
            };
            (key, c.n)
        })
        .collect()
}

/// One writer's share of the workload: bulk inserts like the batcher, batched status moves like
/// the workers, dead letters, a redrive and a delete.
async fn writer(url: String, campaigns: Vec<Uuid>, seed: u64) {
    let mut conn = AsyncPgConnection::establish(&url).await.expect("conn");
    for round in 0..20u64 {
        let subs: Vec<Uuid> = (0..25).map(|_| Uuid::new_v4()).collect();
        diesel::sql_query(
            "INSERT INTO submission_ids (id, received_at) SELECT unnest($1::uuid[]), now()",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&subs)
        .execute(&mut conn)
        .await
        .expect("ids");
        let campaign = campaigns[((seed + round) % campaigns.len() as u64) as usize];
        diesel::sql_query(
            "INSERT INTO deliveries (submission_id, campaign_id, channel, campaign_version, priority, status) \
             SELECT s, $2, ch, 1, 'normal', 'queued' FROM unnest($1::uuid[]) s, \
                    unnest(ARRAY['sms', 'email']) ch",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&subs)
        .bind::<diesel::sql_types::Uuid, _>(campaign)
        .execute(&mut conn)
        .await
        .expect("ledger");
        // Workers: some sent, some failed, some dead; a no-op update moves nothing.
        diesel::sql_query(
            "UPDATE deliveries SET status = CASE WHEN channel = 'sms' THEN 'sent' ELSE 'failed' END \
             WHERE submission_id = ANY($1::uuid[])",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&subs[..10])
        .execute(&mut conn)
        .await
        .expect("settle");
        diesel::sql_query(
            "UPDATE deliveries SET updated_at = now() WHERE submission_id = ANY($1::uuid[])",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&subs)
        .execute(&mut conn)
        .await
        .expect("touch");
        diesel::sql_query(
            "INSERT INTO dead_letters (id, kind, channel, class, reason) \
             SELECT gen_random_uuid(), 'delivery', 'email', 'permanent', 'x' FROM generate_series(1, 3) \
             UNION ALL SELECT gen_random_uuid(), 'submission', NULL, 'poison', 'y'",
        )
        .execute(&mut conn)
        .await
        .expect("letters");
        diesel::sql_query(
            "UPDATE dead_letters SET redriven_at = now() WHERE id IN \
             (SELECT id FROM dead_letters WHERE redriven_at IS NULL AND kind = 'delivery' LIMIT 1)",
        )
        .execute(&mut conn)
        .await
        .expect("redrive");
        diesel::sql_query("DELETE FROM deliveries WHERE submission_id = $1")
            .bind::<diesel::sql_types::Uuid, _>(subs[24])
            .execute(&mut conn)
            .await
            .expect("delete");
        if round % 5 == 0 {
            stats::compact(&mut conn).await.expect("compact");
        }
    }
}

#[tokio::test]
async fn counters_equal_full_counts_after_concurrent_writes_and_compactions() {
    let db = TestDb::create().await;
    quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    let campaigns: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let writers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(writer(db.url.clone(), campaigns.clone(), i)))
        .collect();
    let mut conn = AsyncPgConnection::establish(&db.url).await.expect("conn");
    // Compactions race the writers too.
    for _ in 0..10 {
        stats::compact(&mut conn).await.expect("compact");
    }
    for w in writers {
        w.await.expect("writer");
    }
    let expected = full_count(&mut conn).await;
    assert!(expected.len() > 6, "the workload made groups: {expected:?}");
    assert_eq!(
        as_map(stats::read(&mut conn).await.expect("read")),
        expected
    );
    // Exact after a compaction too, and nothing left to fold.
    assert!(stats::compact(&mut conn).await.expect("compact") > 0);
    assert_eq!(
        as_map(stats::read(&mut conn).await.expect("read")),
        expected
    );
    assert_eq!(stats::compact(&mut conn).await.expect("compact"), 0);
}

#[tokio::test]
async fn process_counts_and_instance_reports_round_trip() {
    let db = TestDb::create().await;
    quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    let mut conn = AsyncPgConnection::establish(&db.url).await.expect("conn");
    let d = |status, n| stats::Delta {
        metric: "submissions_rejected",
        status,
        n,
    };
    stats::add(&mut conn, &[d("invalid", 3), d("too_large", 0)])
        .await
        .expect("add");
    stats::add(&mut conn, &[d("invalid", 2)])
        .await
        .expect("add");
    let rejected: Vec<_> = stats::read(&mut conn)
        .await
        .expect("read")
        .into_iter()
        .filter(|c| c.metric == "submissions_rejected")
        .map(|c| (c.status, c.n))
        .collect();
    assert_eq!(rejected, vec![("invalid".to_owned(), 5)]);

    let report = serde_json::json!({"circuits": {"sms": "open"}});
    stats::report_instance(&mut conn, "w-1", "workers", &report)
        .await
        .expect("report");
    stats::report_instance(&mut conn, "w-1", "workers", &report)
        .await
        .expect("again");
    diesel::sql_query(
        "INSERT INTO instance_reports (instance, role, report, seen_at) \
         VALUES ('w-old', 'workers', '{}', now() - interval '2 minutes')",
    )
    .execute(&mut conn)
    .await
    .expect("old");
    let live = stats::live_instances(&mut conn, 30).await.expect("live");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].instance, "w-1");
    assert_eq!(live[0].report, report);
}
