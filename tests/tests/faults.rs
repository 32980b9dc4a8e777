//! The ordinary bad day, at production defaults (topology, concurrency, ack waits): poison
//! data, a throttling or hanging provider, SIGTERM mid-send, two workers processes on one
//! consumer, a redrive interrupted between commit and publish, stale campaigns, egress rules.

mod common;

use common::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Production worker settings but for a short retry schedule (tests must end): every wait
/// but the schedule is as deployed.
fn production(env: &Env) -> WorkerSettings {
    let mut s = WorkerSettings::new(Providers::mock(&env.mock));
    s.retry_schedule = vec![Duration::from_secs(1); 8];
    s.providers.webhook =
        quizflow_workers::provider::Sender::alone(quizflow_workers::provider::Provider::Webhook {
            secret: None,
            allow_private: false,
        });
    s
}

fn phone(i: usize) -> String {
    format!("+55119{:08}", i)
}

/// Requests the mock received, per idempotency key (every status, faulted ones included).
async fn requests_per_key(env: &Env) -> HashMap<String, Vec<u16>> {
    let r = env.mock_get("/_mock/requests").await;
    let mut out: HashMap<String, Vec<u16>> = HashMap::new();
    for q in r["requests"].as_array().into_iter().flatten() {
        let key = q["idempotency_key"].as_str().unwrap_or_default().to_owned();
        out.entry(key)
            .or_default()
            .push(q["status"].as_u64().unwrap_or(0) as u16);
    }
    out
}

/// Each of `n` jobs reached the provider and was accepted exactly once.
async fn assert_sent_once_each(env: &Env, n: usize) {
    let per_key = requests_per_key(env).await;
    let accepted: Vec<(&String, usize)> = per_key
        .iter()
        .map(|(k, s)| (k, s.iter().filter(|s| **s == 200).count()))
        .collect();
    assert_eq!(accepted.len(), n, "{per_key:?}");
    for (k, c) in accepted {
        assert_eq!(c, 1, "job {k} accepted {c} times: {:?}", per_key[k]);
    }
}

async fn status_count(env: &Env, status: &str) -> i64 {
    count(
        &env.db.url,
        &format!("SELECT count(*) AS n FROM deliveries WHERE status = '{status}'"),
    )
    .await
}

#[tokio::test]
async fn given_a_lead_that_cannot_be_stored_then_it_alone_is_dead_lettered_and_the_rest_flow() {
    let env = Env::start_with(|_| {}).await;
    // Straight to the subject, past the API's validation: U+0000 in a name and in metadata.
    let quiz = QuizId::parse("promo").expect("quiz");
    for i in 0..3 {
        let key = IdempotencyKey::parse(&format!("bad-{i}")).expect("key");
        let mut sub = parse_submission(&json!({"score": 1})).expect("valid");
        sub.respondent.name = Some(format!("A\u{0}na {i}"));
        sub.metadata.insert("k".into(), json!("v\u{0}"));
        let e = SubmissionEnvelope::new(
            SubmissionId::from_key(&quiz, &key),
            quiz.clone(),
            chrono::Utc::now(),
            Some(key),
            sub,
        );
        quizflow_nats::publish_submission(&env.js, &e)
            .await
            .expect("publish");
    }
    for i in 0..20 {
        env.submit(&format!("clean-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    let published = Instant::now();
    wait_until(
        "the 20 clean leads are stored",
        Duration::from_secs(20),
        || async { count(&env.db.url, "SELECT count(*) AS n FROM submissions").await == 20 },
    )
    .await;
    wait_until(
        "the 3 bad leads are dead letters",
        Duration::from_secs(20),
        || async {
            count(
            &env.db.url,
            "SELECT count(*) AS n FROM dead_letters WHERE kind = 'submission' AND class = 'poison'",
        )
        .await
            == 3
        },
    )
    .await;
    // Nothing left pending or unacked on the batcher's consumer.
    wait_until(
        "the batcher's consumer is drained",
        Duration::from_secs(10),
        || async {
            let info = env.batcher_consumer().await;
            info.num_pending == 0 && info.num_ack_pending == 0
        },
    )
    .await;
    assert!(env.dead_letters().await >= 3);
    eprintln!(
        "measured: 3 unstorable + 20 clean leads; all settled {:?} after publishing",
        published.elapsed()
    );
}

#[tokio::test]
async fn given_a_provider_throttling_longer_than_any_delivery_limit_then_every_job_waits_and_is_sent_once(
) {
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    env.fault(json!({"channel": "sms", "status": 429, "rate": 1.0, "retry_after_s": 1}))
        .await;
    let mut s = production(&env);
    // A budget of 2 attempts: a throttle that spent one would show.
    s.retry_schedule = vec![Duration::from_secs(1)];
    env.workers(s);
    for i in 0..10 {
        env.submit(&format!("t-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    // Longer than any delivery limit: more than 40 throttled calls at `Retry-After: 1`, about
    // 30 s of a channel that answers nothing but 429 (the old `max_deliver` was 30).
    let started = Instant::now();
    let throttled = |per_key: &HashMap<String, Vec<u16>>| -> usize {
        per_key
            .values()
            .map(|s| s.iter().filter(|s| **s == 429).count())
            .sum()
    };
    wait_until("40 throttled calls", Duration::from_secs(150), || async {
        throttled(&requests_per_key(&env).await) > 40
    })
    .await;
    let lasted = started.elapsed();
    env.fault(json!({"channel": "sms", "rate": 0})).await;
    wait_until("all 10 sent", Duration::from_secs(30), || async {
        status_count(&env, "sent").await == 10
    })
    .await;
    assert_sent_once_each(&env, 10).await;
    let calls = throttled(&requests_per_key(&env).await);
    eprintln!(
        "measured: throttled for {lasted:?}: {calls} throttled calls in all (10 jobs), each job then sent once, 0 dead letters"
    );
    // The channel paused for each Retry-After and probed with one job: about one call a
    // second, not one per job per second.
    assert!(
        (calls as f64) < 10.0 + 1.5 * lasted.as_secs_f64(),
        "{calls} throttled calls in {lasted:?}: the provider was hammered"
    );
    assert!(
        lasted > Duration::from_secs(25),
        "throttled long enough: {lasted:?}"
    );
    assert_eq!(env.dead_letters().await, 0, "nothing dead-lettered");
    assert_eq!(
        count(
            &env.db.url,
            "SELECT count(*) AS n FROM deliveries WHERE attempts <> 1"
        )
        .await,
        0,
        "throttles are not attempts"
    );
}

#[tokio::test]
async fn given_a_hanging_then_failing_provider_at_default_concurrency_then_jobs_wait_and_are_sent_once(
) {
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    // Hangs 5 s, then answers 503, for 40 s: longer than the breaker's cooldown several times.
    env.fault(json!({"channel": "sms", "status": 503, "rate": 1.0, "latency_ms": 5000}))
        .await;
    env.workers(production(&env));
    for i in 0..20 {
        env.submit(&format!("h-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(40)).await;
    env.fault(json!({"channel": "sms", "rate": 0})).await;
    wait_until("all 20 sent", Duration::from_secs(60), || async {
        status_count(&env, "sent").await == 20
    })
    .await;
    assert_sent_once_each(&env, 20).await;
    assert_eq!(env.dead_letters().await, 0, "nothing dead-lettered");
    // The open breaker held the jobs back: far fewer calls than 40 s of retries would make.
    let calls: usize = requests_per_key(&env).await.values().map(Vec::len).sum();
    eprintln!("measured: 20 jobs, 40 s hang+503, {calls} provider calls in all, 0 dead letters, each sent once");
    assert!(calls < 20 * 5, "{calls} calls");
}

#[tokio::test]
async fn given_sigterm_with_calls_in_flight_then_each_is_recorded_and_nothing_is_sent_twice() {
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    env.fault(json!({"channel": "sms", "latency_ms": 2000}))
        .await;
    for i in 0..30 {
        env.submit(&format!("g-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    wait_until("30 jobs queued", Duration::from_secs(20), || async {
        status_count(&env, "queued").await == 30
    })
    .await;
    let (stop, first) = env.workers_stoppable(production(&env));
    wait_until("30 calls under way", Duration::from_secs(20), || async {
        status_count(&env, "sending").await == 30
    })
    .await;
    // The rate limiter lets 30 through within ~0.6 s; then SIGTERM lands mid-call.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("graceful stop within the shutdown timeout")
        .expect("workers task");
    let after_stop = status_count(&env, "sent").await;
    assert_eq!(
        status_count(&env, "sending").await,
        0,
        "no claim left behind by a graceful stop"
    );
    env.fault(json!({"channel": "sms", "rate": 0})).await;
    env.workers(production(&env));
    wait_until("all 30 sent", Duration::from_secs(30), || async {
        status_count(&env, "sent").await == 30
    })
    .await;
    assert!(after_stop > 0, "calls in flight were finished and recorded");
    eprintln!("measured: SIGTERM with 30 claimed: {after_stop} finished and recorded by the stopping worker, the rest sent by the next; each once");
    assert_sent_once_each(&env, 30).await;
}

#[tokio::test]
async fn given_two_workers_processes_on_one_consumer_then_each_job_is_sent_once() {
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    for i in 0..150 {
        env.submit(&format!("w-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    wait_until("150 jobs queued", Duration::from_secs(20), || async {
        status_count(&env, "queued").await == 150
    })
    .await;
    // The same jobs twice in the stream, as after a batcher re-publish past the window.
    #[derive(diesel::QueryableByName)]
    struct K {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        submission_id: uuid::Uuid,
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        campaign_id: uuid::Uuid,
    }
    let mut conn = AsyncPgConnection::establish(&env.db.url).await.expect("db");
    let keys: Vec<K> = diesel::sql_query("SELECT submission_id, campaign_id FROM deliveries")
        .load(&mut conn)
        .await
        .expect("keys");
    let copies: Vec<(quizflow_core::DeliveryJob, String)> = keys
        .iter()
        .map(|k| {
            let id = SubmissionId(k.submission_id);
            (
                common::sms_job(id, k.campaign_id),
                format!("copy-{}", k.submission_id),
            )
        })
        .collect();
    assert!(common::publish_job_copies(&env.js, &copies)
        .await
        .iter()
        .all(|ok| *ok));
    env.workers(production(&env));
    env.workers(production(&env));
    wait_until("150 sent", Duration::from_secs(60), || async {
        status_count(&env, "sent").await == 150
    })
    .await;
    wait_until("both copies consumed", Duration::from_secs(30), || async {
        let mut s = env.js.get_stream("DELIVERIES").await.expect("stream");
        s.info().await.expect("info").state.messages == 0
    })
    .await;
    assert_sent_once_each(&env, 150).await;
}

#[tokio::test]
async fn given_a_full_work_queue_then_the_batcher_backs_off_and_every_job_is_sent_once_later() {
    // The bound counts messages; a batch's jobs travel as one chunk. One message fills it.
    let mut env = Env::start_with(|t| t.deliveries_max_msgs = 1).await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    for i in 0..10 {
        env.submit(&format!("f-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    wait_until("DELIVERIES full", Duration::from_secs(20), || async {
        let mut s = env.js.get_stream("DELIVERIES").await.expect("stream");
        s.info().await.expect("info").state.messages == 1
    })
    .await;
    // Later leads find the queue full: the batcher keeps them back (naked, not acked).
    for i in 10..30 {
        env.submit(&format!("f-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    wait_until("the batcher retries", Duration::from_secs(20), || async {
        let info = env.batcher_consumer().await;
        info.num_redelivered > 0 && info.num_ack_pending > 0
    })
    .await;
    env.workers(production(&env));
    wait_until("all 30 sent", Duration::from_secs(60), || async {
        status_count(&env, "sent").await == 30
    })
    .await;
    assert_sent_once_each(&env, 30).await;
    assert_eq!(env.dead_letters().await, 0);
}

#[tokio::test]
async fn given_a_redrive_interrupted_between_commit_and_publish_then_the_relay_delivers_it_once() {
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    env.fault(json!({"channel": "sms", "status": 400, "rate": 1.0}))
        .await;
    let mut s = production(&env);
    s.redrive_relay_after = Duration::from_secs(1);
    env.workers(s);
    env.submit("r-1", json!({"phone": phone(1)})).await;
    wait_until("dead-lettered", Duration::from_secs(20), || async {
        status_count(&env, "dead").await == 1
    })
    .await;
    env.fault(json!({"channel": "sms", "rate": 0})).await;
    // The API's step 1 committed, then it died before publishing.
    let mut conn = AsyncPgConnection::establish(&env.db.url).await.expect("db");
    let taken = quizflow_store::dead_letters::take_for_redrive(&mut conn, None, Some("sms"), 10)
        .await
        .expect("take");
    assert_eq!(taken.len(), 1);
    wait_until(
        "the relay published and it was sent",
        Duration::from_secs(30),
        || async { status_count(&env, "sent").await == 1 },
    )
    .await;
    wait_until("the outbox is empty", Duration::from_secs(10), || async {
        count(
            &env.db.url,
            "SELECT count(*) AS n FROM dead_letters WHERE redriven_at IS NOT NULL AND redrive_published_at IS NULL",
        )
        .await
            == 0
    })
    .await;
    let accepted: usize = requests_per_key(&env)
        .await
        .values()
        .map(|s| s.iter().filter(|s| **s == 200).count())
        .sum();
    assert_eq!(accepted, 1, "sent once");
}

#[tokio::test]
async fn given_a_changed_or_deactivated_campaign_then_queued_jobs_render_their_version_or_are_cancelled(
) {
    let mut env = Env::start_with(|_| {}).await;
    let mut conn = AsyncPgConnection::establish(&env.db.url).await.expect("db");
    let spec = |template: &str, active: bool| {
        quizflow_core::parse_campaign(&json!({"name": "P", "active": active, "match": {},
            "actions": [{"channel": "sms", "template": template}]}))
        .expect("valid")
    };
    let c = quizflow_store::campaigns::insert(&mut conn, &spec("version one", true))
        .await
        .expect("insert");
    env.client
        .publish(subjects::CAMPAIGNS_CHANGED, "x".into())
        .await
        .expect("notify");
    env.wait_matching(&[&c]).await;
    env.submit("v-1", json!({"phone": phone(1)})).await;
    wait_until("queued", Duration::from_secs(20), || async {
        status_count(&env, "queued").await == 1
    })
    .await;
    quizflow_store::campaigns::replace(&mut conn, c.id, &spec("version two", true))
        .await
        .expect("replace");
    let stop_first = env.workers_stoppable(production(&env));
    wait_until("sent", Duration::from_secs(20), || async {
        status_count(&env, "sent").await == 1
    })
    .await;
    let msgs = env.mock_get("/_mock/messages").await;
    assert_eq!(msgs["messages"][0]["body"], "version one", "{msgs}");
    let _ = stop_first.0.send(());
    let _ = stop_first.1.await;

    // Deactivated while its jobs wait: they end as `cancelled`, unsent.
    env.submit("v-2", json!({"phone": phone(2)})).await;
    wait_until("queued again", Duration::from_secs(20), || async {
        status_count(&env, "queued").await == 1
    })
    .await;
    quizflow_store::campaigns::replace(&mut conn, c.id, &spec("version three", false))
        .await
        .expect("deactivate");
    env.workers(production(&env));
    wait_until("cancelled", Duration::from_secs(20), || async {
        status_count(&env, "cancelled").await == 1
    })
    .await;
    let msgs = env.mock_get("/_mock/messages").await;
    assert_eq!(msgs["messages"].as_array().map(Vec::len), Some(1), "{msgs}");
}

#[tokio::test]
async fn given_webhooks_to_internal_addresses_or_redirects_then_they_are_refused_and_not_followed()
{
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([
        {"channel": "webhook", "url": "http://127.0.0.1:9/hook"},
    ]))
    .await;
    let mut conn = AsyncPgConnection::establish(&env.db.url).await.expect("db");
    let mut created = Vec::new();
    for url in [
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://localhost:9/hook".to_owned(),
    ] {
        let spec = quizflow_core::parse_campaign(&json!({"name": "W", "match": {},
            "actions": [{"channel": "webhook", "url": url}]}))
        .expect("valid");
        created.push(
            quizflow_store::campaigns::insert(&mut conn, &spec)
                .await
                .expect("insert"),
        );
    }
    env.client
        .publish(subjects::CAMPAIGNS_CHANGED, "x".into())
        .await
        .expect("notify");
    env.wait_matching(&created.iter().collect::<Vec<_>>()).await;
    env.workers(production(&env)); // webhook_allow_private: false, the default
    env.submit("x-1", json!({"phone": phone(1)})).await;
    wait_until("all three refused", Duration::from_secs(20), || async {
        status_count(&env, "dead").await == 3
    })
    .await;
    assert_eq!(
        count(
            &env.db.url,
            "SELECT count(*) AS n FROM dead_letters WHERE class = 'permanent' AND attempts = 1"
        )
        .await,
        3
    );

    // Private targets allowed (as `up` does for its mock): a redirect is still not followed.
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([
        {"channel": "webhook", "url": format!("{}/_mock/redirect", env.mock)},
    ]))
    .await;
    let mut s = production(&env);
    s.webhook_allow_private = true;
    s.providers.webhook =
        quizflow_workers::provider::Sender::alone(quizflow_workers::provider::Provider::Webhook {
            secret: None,
            allow_private: true,
        });
    env.workers(s);
    env.submit("x-2", json!({"phone": phone(2)})).await;
    wait_until(
        "the redirect answer is a permanent failure",
        Duration::from_secs(20),
        || async { status_count(&env, "dead").await == 1 },
    )
    .await;
    let reqs = env.mock_get("/_mock/requests").await;
    assert!(
        reqs["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["channel"] != "webhook"),
        "the redirect target was never requested: {reqs}"
    );
    let _: Value = reqs;
}

#[tokio::test]
async fn given_a_job_published_straight_to_the_subject_without_a_ledger_row_then_it_alone_is_dead_lettered(
) {
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    let bogus = quizflow_core::DeliveryJob {
        v: quizflow_core::DeliveryJob::VERSION,
        job_id: uuid::Uuid::new_v4(),
        submission_id: SubmissionId(uuid::Uuid::new_v4()),
        campaign_id: uuid::Uuid::new_v4(),
        campaign_version: 1,
        channel: quizflow_core::Channel::Sms,
        priority: quizflow_core::Priority::Normal,
        created_at: chrono::Utc::now(),
        step: 0,
        due_at: None,
        repeat_until: None,
        cancel_key: None,
    };
    assert_eq!(
        common::publish_job_copies(&env.js, &[(bogus, "bogus".into())]).await,
        vec![true]
    );
    env.workers(production(&env));
    for i in 0..10 {
        env.submit(&format!("p-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    wait_until(
        "the 10 real jobs are sent",
        Duration::from_secs(20),
        || async { status_count(&env, "sent").await == 10 },
    )
    .await;
    wait_until(
        "the bogus job is dead-lettered",
        Duration::from_secs(30),
        || async { env.dead_letters().await == 1 },
    )
    .await;
    let mut s = env.js.get_stream("DELIVERIES").await.expect("stream");
    assert_eq!(s.info().await.expect("info").state.messages, 0);
    assert_sent_once_each(&env, 10).await;
}

#[tokio::test]
async fn given_jobs_waiting_for_the_rate_limiter_then_in_progress_acks_keep_them_from_redelivery() {
    // A short ack wait makes a missing in-progress ack visible as a redelivery.
    let mut env = Env::start().await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    for i in 0..8 {
        env.submit(&format!("r-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    wait_until("8 jobs queued", Duration::from_secs(20), || async {
        status_count(&env, "queued").await == 8
    })
    .await;
    // 2 per second: the last job waits ~4 s behind the limiter, twice the ack wait.
    env.workers(env.settings(|s| s.rate_per_sec = 2));
    wait_until("all 8 sent", Duration::from_secs(30), || async {
        status_count(&env, "sent").await == 8
    })
    .await;
    let mut c: async_nats::jetstream::consumer::PullConsumer = env
        .js
        .get_stream("DELIVERIES")
        .await
        .expect("stream")
        .get_consumer("workers-sms-normal")
        .await
        .expect("consumer");
    let info = c.info().await.expect("info").clone();
    let mut s = env.js.get_stream("DELIVERIES").await.expect("stream");
    let messages = s.info().await.expect("info").state.last_sequence;
    // Every delivery, redeliveries included, advances the consumer sequence.
    assert_eq!(
        info.delivered.consumer_sequence, messages,
        "one delivery per message (a chunk of jobs or one): none was redelivered while it waited"
    );
    assert_sent_once_each(&env, 8).await;
}

#[tokio::test]
async fn given_a_chunk_of_jobs_that_fail_then_each_waits_on_its_own_and_is_sent_once() {
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    env.fault(json!({"channel": "sms", "status": 503, "rate": 1.0}))
        .await;
    for i in 0..20 {
        env.submit(&format!("c-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    wait_until("20 jobs queued", Duration::from_secs(20), || async {
        quizflow_testkit::items_in(&env.js, "DELIVERIES").await == 20
    })
    .await;
    let mut s = env.js.get_stream("DELIVERIES").await.expect("stream");
    let published = s.info().await.expect("info").state.last_sequence;
    assert!(published < 20, "20 jobs travel in {published} chunks");
    env.workers(production(&env));
    // Failed attempts (and jobs the opened breaker gave back) wait on their own: each is
    // published again alone, while the rest of its chunk is done and the chunk acked.
    wait_until("attempts failed", Duration::from_secs(30), || async {
        status_count(&env, "failed").await >= 5
    })
    .await;
    env.fault(json!({"channel": "sms", "rate": 0})).await;
    wait_until("all 20 sent", Duration::from_secs(90), || async {
        status_count(&env, "sent").await == 20
    })
    .await;
    assert_sent_once_each(&env, 20).await;
    let mut s = env.js.get_stream("DELIVERIES").await.expect("stream");
    assert!(
        s.info().await.expect("info").state.last_sequence > published,
        "waiting jobs were published again on their own"
    );
    wait_until(
        "the work queue is empty",
        Duration::from_secs(20),
        || async {
            let mut s = env.js.get_stream("DELIVERIES").await.expect("stream");
            s.info().await.expect("info").state.messages == 0
        },
    )
    .await;
    assert_eq!(env.dead_letters().await, 0);
}
