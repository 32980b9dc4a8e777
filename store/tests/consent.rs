//! The suppression list against a real PostgreSQL: the last look before a call reads the list
//! for what was added since the job's match, and ends a suppressed row `suppressed`.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use quizflow_store::consent::NewSuppression;
use quizflow_store::deliveries::{start_calls, Call, Key, Start};
use quizflow_testkit::TestDb;
use uuid::Uuid;

async fn sending(conn: &mut AsyncPgConnection, key: &Key, claim: Uuid) {
    diesel::sql_query(
        "INSERT INTO deliveries (submission_id, campaign_id, channel, campaign_version, priority, status, claim) \
         VALUES ($1, $2, $3, 1, 'normal', 'sending', $4)",
    )
    .bind::<diesel::sql_types::Uuid, _>(key.0)
    .bind::<diesel::sql_types::Uuid, _>(key.1)
    .bind::<diesel::sql_types::Text, _>(&key.2)
    .bind::<diesel::sql_types::Uuid, _>(claim)
    .execute(conn)
    .await
    .expect("row");
}

#[tokio::test]
async fn the_last_look_reads_what_was_added_since_the_match_and_never_calls_a_suppressed_row() {
    let db = TestDb::create().await;
    quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    let mut conn = AsyncPgConnection::establish(&db.url).await.expect("conn");
    let claim = Uuid::new_v4();
    let (ana, bia) = ([1u8; 32], [2u8; 32]);
    let now = chrono::Utc::now();
    let call = |contact: [u8; 32], purpose, since| {
        let key: Key = (Uuid::new_v4(), Uuid::new_v4(), "sms".to_owned(), 0);
        Call {
            key,
            claim,
            contact: Some(contact.to_vec()),
            purpose,
            since,
        }
    };
    let entry = |hash: [u8; 32], scope: &str| NewSuppression {
        channel: "sms".into(),
        contact_hash: hash.to_vec(),
        reason: "opt_out_keyword".into(),
        scope: scope.into(),
        source: "test".into(),
    };
    quizflow_store::consent::suppress(&mut conn, &[entry(ana, "all"), entry(bia, "marketing")])
        .await
        .expect("suppress");
    let calls = [
        // Matched before the entries: read, and stopped.
        call(ana, "marketing", Some(now - chrono::Duration::hours(1))),
        // Never checked (a recurring occurrence the firer wrote): read, and stopped.
        call(ana, "transactional", None),
        // A marketing-only entry does not stop a transactional message.
        call(bia, "transactional", Some(now - chrono::Duration::hours(1))),
        // Matched after the newest entry: the match saw it already; not read again.
        call(ana, "marketing", Some(now + chrono::Duration::hours(1))),
    ];
    for c in &calls {
        sending(&mut conn, &c.key, claim).await;
    }
    let found = start_calls(&mut conn, &calls).await.expect("start");
    let of = |i: usize| {
        found
            .iter()
            .find(|(k, _)| *k == calls[i].key)
            .map(|(_, s)| s.clone())
    };
    assert_eq!(of(0), Some(Start::Suppressed("opt_out_keyword".into())));
    assert_eq!(of(1), Some(Start::Suppressed("opt_out_keyword".into())));
    assert_eq!(of(2), Some(Start::Go));
    assert_eq!(of(3), Some(Start::Go));
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query(
        "SELECT count(*) AS n FROM deliveries WHERE status = 'suppressed' AND claim IS NULL \
           AND last_error = 'suppressed: opt_out_keyword'",
    )
    .get_result(&mut conn)
    .await
    .expect("count");
    assert_eq!(n.n, 2);
    // A second look finds them no longer ours: nobody calls.
    let again = start_calls(&mut conn, &calls[..2]).await.expect("again");
    assert!(again.is_empty());
}
