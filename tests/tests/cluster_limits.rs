//! Provider limits are totals for the cluster, not per workers process: the rate and the
//! concurrency cap are split among the live processes serving a channel, and one process's
//! breaker verdict stops the others. Production topology and worker defaults except the
//! limits under test.

mod common;

use common::*;

fn phone(i: usize) -> String {
    format!("+55118{:08}", i)
}

/// When the mock received each SMS call (every status).
async fn sms_times(env: &Env) -> Vec<chrono::DateTime<chrono::Utc>> {
    let r = env.mock_get("/_mock/requests").await;
    let mut out: Vec<chrono::DateTime<chrono::Utc>> = r["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|q| q["channel"] == "sms")
        .filter_map(|q| q["received_at"].as_str()?.parse().ok())
        .collect();
    out.sort();
    out
}

fn gauge(registry: &prometheus::Registry, name: &str, channel: &str) -> Option<f64> {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .and_then(|f| {
            f.get_metric()
                .iter()
                .find(|m| m.get_label().iter().any(|l| l.value() == channel))
                .map(|m| m.get_gauge().get_value())
        })
}

#[tokio::test]
async fn given_four_workers_processes_then_their_sends_together_stay_within_the_channel_rate() {
    const RATE: u32 = 20;
    const JOBS: usize = 300;
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    for i in 0..JOBS {
        env.submit(&format!("r-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    let settings = env.settings(|s| {
        s.channels = vec![quizflow_core::Channel::Sms];
        s.rate_per_sec = RATE;
        s.ack_wait = Duration::from_secs(60);
    });
    for _ in 0..4 {
        env.workers(settings.clone());
    }
    // Every process sees the other three, and takes a quarter of the rate.
    wait_until("four members", Duration::from_secs(20), || async {
        env.registries.iter().all(|r| {
            gauge(r, "quizflow_worker_members", "sms") == Some(4.0)
                && gauge(r, "quizflow_worker_rate_share", "sms") == Some(f64::from(RATE) / 4.0)
        })
    })
    .await;
    wait_until("every job sent", Duration::from_secs(120), || async {
        sms_times(&env).await.len() >= JOBS
    })
    .await;
    let times = sms_times(&env).await;
    assert_eq!(times.len(), JOBS, "each job called the provider once");
    // Over any 3 s, at most the limit (+10 %) and one burst per process: 4 processes at
    // 20 msg/s each would show about 240.
    let window = chrono::Duration::seconds(3);
    let cap = (f64::from(RATE) * 3.0 * 1.1).ceil() as usize + 4;
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let n = times[i..].iter().take_while(|u| **u < *t + window).count();
        worst = worst.max(n);
    }
    let first = times[0];
    let mut per_second = vec![0usize; 40];
    for t in &times {
        let s = ((*t - first).num_milliseconds() / 1000) as usize;
        if s < per_second.len() {
            per_second[s] += 1;
        }
    }
    assert!(
        worst <= cap,
        "{worst} calls in 3 s; the cluster-wide limit allows {cap}; calls per second: {per_second:?}"
    );
}

#[tokio::test]
async fn given_a_killed_workers_process_then_its_share_returns_to_the_others() {
    let mut env = Env::start_with(|_| {}).await;
    let settings = env.settings(|s| {
        s.channels = vec![quizflow_core::Channel::Sms];
        s.rate_per_sec = 30;
        s.concurrency = 9;
    });
    let _a = env.workers(settings.clone());
    let b = env.workers(settings.clone());
    let _c = env.workers(settings);
    wait_until("three members", Duration::from_secs(20), || async {
        env.registries
            .iter()
            .all(|r| gauge(r, "quizflow_worker_members", "sms") == Some(3.0))
    })
    .await;
    // A kill: the task is dropped mid-flight, nothing runs its graceful stop.
    b.abort();
    let killed = Instant::now();
    let survivors = [env.registries[0].clone(), env.registries[2].clone()];
    wait_until(
        "the survivors split the rate",
        Duration::from_secs(15),
        || async {
            survivors
                .iter()
                .all(|r| gauge(r, "quizflow_worker_rate_share", "sms") == Some(15.0))
        },
    )
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "the share came back after {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn given_one_process_opens_the_breaker_then_the_others_stop_calling_too() {
    let mut env = Env::start_with(|_| {}).await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    env.fault(json!({"channel": "sms", "status": 503, "rate": 1.0}))
        .await;
    // A opens after 3 failures; B never would on its own.
    let a = env.settings(|s| {
        s.channels = vec![quizflow_core::Channel::Sms];
        s.breaker_failures = 3;
        s.breaker_cooldown = Duration::from_secs(30);
    });
    let b = env.settings(|s| {
        s.channels = vec![quizflow_core::Channel::Sms];
        s.breaker_failures = 1_000_000;
        s.breaker_cooldown = Duration::from_secs(30);
    });
    env.workers(a);
    env.workers(b);
    wait_until("two members", Duration::from_secs(20), || async {
        env.registries
            .iter()
            .all(|r| gauge(r, "quizflow_worker_members", "sms") == Some(2.0))
    })
    .await;
    for i in 0..200 {
        env.submit(&format!("b-{i}"), json!({"phone": phone(i)}))
            .await;
    }
    // The circuit gauges are refreshed every 2 s.
    wait_until("both circuits open", Duration::from_secs(30), || async {
        env.registries
            .iter()
            .all(|r| gauge(r, "quizflow_circuit_breaker_state", "sms") == Some(1.0))
    })
    .await;
    // Calls already in flight when it opened finish; after that, nothing for the cooldown.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sms_times(&env).await.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = sms_times(&env).await.len();
    assert_eq!(
        after, before,
        "calls while the shared breaker was open ({before} before)"
    );
    assert!(
        before < 200,
        "the breaker stopped the channel before every job was tried ({before} calls)"
    );
}
