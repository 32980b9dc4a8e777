//! Frequency caps under a race (contract §3.2): several workers processes claiming sends to
//! one person at the same moment count them one after another, so the cap holds exactly.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use quizflow_store::deliveries::{claim_capped, Cap, Capped, Key};
use quizflow_testkit::TestDb;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(60);

async fn queued(conn: &mut AsyncPgConnection, key: &Key) {
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

fn capped(key: &Key, contact: &[u8], caps: &[Cap]) -> Capped {
    Capped {
        key: key.clone(),
        contact: contact.to_vec(),
        caps: caps.to_vec(),
    }
}

async fn statuses(db: &TestDb) -> Vec<(String, i64)> {
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(&db.url).await.expect("conn");
    let rows: Vec<S> = diesel::sql_query(
        "SELECT status, count(*) AS n FROM deliveries GROUP BY status ORDER BY status",
    )
    .load(&mut conn)
    .await
    .expect("statuses");
    rows.into_iter().map(|s| (s.status, s.n)).collect()
}

#[tokio::test]
async fn a_cap_holds_exactly_when_many_processes_claim_for_one_person_at_once() {
    let db = TestDb::create().await;
    quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    let mut conn = AsyncPgConnection::establish(&db.url).await.expect("conn");
    let contact = [7u8; 32];
    let other = [9u8; 32];
    let cap = Cap {
        count: 3,
        window_s: 86_400.0,
        campaign: None,
    };
    // 24 sends to one person and 4 to another, from different campaigns, claimed by 8
    // "processes" (connections) at once, 3 or 4 each.
    let keys: Vec<(Key, [u8; 32])> = (0..28)
        .map(|i| {
            let who = if i < 24 { contact } else { other };
            ((Uuid::new_v4(), Uuid::new_v4(), "sms".to_owned(), 0), who)
        })
        .collect();
    for (k, _) in &keys {
        queued(&mut conn, k).await;
    }
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for part in keys
        .chunks(4)
        .map(<[_]>::to_vec)
        .collect::<Vec<_>>()
        .into_iter()
        .take(7)
    {
        let (url, start) = (db.url.clone(), start.clone());
        tasks.spawn(async move {
            let mut conn = AsyncPgConnection::establish(&url).await.expect("conn");
            let ks: Vec<Key> = part.iter().map(|(k, _)| k.clone()).collect();
            let cs: Vec<Capped> = part.iter().map(|(k, c)| capped(k, c, &[cap])).collect();
            start.wait().await;
            claim_capped(&mut conn, &ks, Uuid::new_v4(), LEASE, &cs)
                .await
                .expect("claim")
        });
    }
    // The eighth claims every row again: none is claimed twice, nothing counted twice.
    let (url, again, all) = (db.url.clone(), start.clone(), keys.clone());
    tasks.spawn(async move {
        let mut conn = AsyncPgConnection::establish(&url).await.expect("conn");
        let ks: Vec<Key> = all.iter().map(|(k, _)| k.clone()).collect();
        let cs: Vec<Capped> = all.iter().map(|(k, c)| capped(k, c, &[cap])).collect();
        again.wait().await;
        claim_capped(&mut conn, &ks, Uuid::new_v4(), LEASE, &cs)
            .await
            .expect("claim")
    });
    let (mut claimed, mut over) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("task");
        claimed.extend(r.claimed);
        over.extend(r.capped);
    }
    let of = |ks: &[Key], who: [u8; 32]| {
        ks.iter()
            .filter(|k| keys.iter().any(|(x, c)| x == *k && *c == who))
            .count()
    };
    assert_eq!(of(&claimed, contact), 3, "exactly the cap for the person");
    assert_eq!(of(&over, contact), 21);
    assert_eq!(
        of(&claimed, other),
        3,
        "the other person has their own count"
    );
    assert_eq!(of(&over, other), 1);
    assert_eq!(
        statuses(&db).await,
        [("capped".to_owned(), 22), ("sending".to_owned(), 6)]
    );

    // A retry of a counted send is not counted again; a campaign cap counts that campaign's.
    let retry = claimed
        .iter()
        .find(|k| keys.iter().any(|(x, c)| x == *k && *c == contact))
        .expect("a claimed send")
        .clone();
    diesel::sql_query("UPDATE deliveries SET status = 'failed' WHERE submission_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(retry.0)
        .execute(&mut conn)
        .await
        .expect("fail it");
    let r = claim_capped(
        &mut conn,
        std::slice::from_ref(&retry),
        Uuid::new_v4(),
        LEASE,
        &[capped(&retry, &contact, &[cap])],
    )
    .await
    .expect("retry");
    assert_eq!((r.claimed.len(), r.capped.len()), (1, 0));
    let campaign = Uuid::new_v4();
    let fresh: Vec<Key> = (0..2)
        .map(|_| (Uuid::new_v4(), campaign, "sms".to_owned(), 0))
        .collect();
    for k in &fresh {
        queued(&mut conn, k).await;
    }
    let per_campaign = Cap {
        count: 1,
        window_s: 3_600.0,
        campaign: Some(campaign),
    };
    let stranger = [3u8; 32];
    let cs: Vec<Capped> = fresh
        .iter()
        .map(|k| capped(k, &stranger, &[cap, per_campaign]))
        .collect();
    let r = claim_capped(&mut conn, &fresh, Uuid::new_v4(), LEASE, &cs)
        .await
        .expect("campaign cap");
    assert_eq!((r.claimed.len(), r.capped.len()), (1, 1));
}
