//! The deployment as it scales out: three nats-servers clustered on loopback (R3 streams), two
//! `quizflow api`, two `batcher` and two `workers` processes, every process given the seed
//! list. Under a steady load, one NATS node is killed -9 and restarted, then one process of
//! each role. Every 202 is stored exactly once, every expected SMS is sent (more than once
//! only for a call cut off by the workers kill), no 5xx comes outside the moments a node is
//! down, and both APIs, whose first seed is the killed node, keep answering through the
//! others.
//!
//! `cargo test -p quizflow --test cluster` (a few minutes; needs nats-server ≥ 2.10 and a
//! PostgreSQL, as `scripts/dev.sh test` provides).

use poem::listener::{Acceptor, Listener};
use quizflow_testkit::{free_port, NatsCluster, TestDb};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "cluster-test-admin-token-0123";
const LEADS: usize = 1500;
/// Leads per second, spread over both APIs.
const RATE: f64 = 50.0;

/// A role process; killed with -9 when dropped (the test ends, or the role is "crashed").
struct Role {
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Role {
    fn start(args: &[&str], env: Vec<(String, String)>) -> Self {
        let mut r = Self {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_quizflow"));
        c.args(&self.args)
            .env_remove("QUIZFLOW_CONFIG")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("QUIZFLOW_METRICS_ADDR", "")
            .stdout(Stdio::null());
        // QUIZFLOW_TEST_LOGS=dir keeps each role's log there.
        match std::env::var("QUIZFLOW_TEST_LOGS") {
            Ok(dir) => {
                let name = format!("{dir}/{}-{}.log", self.args[0], std::process::id());
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(name)
                    .expect("log file");
                c.stderr(file);
            }
            Err(_) => {
                c.stderr(Stdio::null());
            }
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        self.child = Some(c.spawn().expect("spawn role"));
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Idempotency key → submission id, for every 202.
    accepted: HashMap<String, String>,
    /// (when, what) of every answer that was not a 202: 5xx statuses and refused connections.
    failures: Vec<(Instant, String)>,
}

async fn post_lead(http: &reqwest::Client, apis: &[String], i: usize, seen: &Arc<Mutex<Seen>>) {
    let key = format!("cluster-{i}");
    let body = serde_json::json!({
        "score": i % 100,
        "answers": [{"question": "q1", "value": "b"}],
        "respondent": {"phone": format!("+55117{:08}", i)}
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    for attempt in 0.. {
        // Retries go to the other API, as a load balancer's would.
        let api = &apis[(i + attempt) % apis.len()];
        let r = http
            .post(format!("{api}/v1/quizzes/cq/submissions"))
            .header("Idempotency-Key", &key)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let failure = match r {
            Ok(r) if r.status().as_u16() == 202 => {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                let id = v["submission_id"].as_str().unwrap_or_default().to_owned();
                if let Ok(mut s) = seen.lock() {
                    s.accepted.insert(key.clone(), id);
                }
                return;
            }
            Ok(r) if r.status().is_server_error() => {
                let status = r.status();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                format!("{status} {} from {api}", body["error"]["message"])
            }
            Ok(r) => panic!(
                "lead {i}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(e) => format!("{api}: {e}"),
        };
        if let Ok(mut s) = seen.lock() {
            s.failures.push((Instant::now(), failure));
        }
        assert!(Instant::now() < deadline, "lead {i} never accepted");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_ready(http: &reqwest::Client, api: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{api}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{api} never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

use quizflow_testkit::count;

/// 200 answers of the mock per idempotency key (the job id).
async fn sent_per_job(http: &reqwest::Client, mock: &str) -> HashMap<String, usize> {
    let r: serde_json::Value = http
        .get(format!("{mock}/_mock/requests"))
        .send()
        .await
        .expect("mock")
        .json()
        .await
        .expect("json");
    let mut out = HashMap::new();
    for q in r["requests"].as_array().into_iter().flatten() {
        if q["status"] == 200 {
            *out.entry(q["idempotency_key"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_three_node_cluster_and_two_of_each_role_then_kills_lose_and_duplicate_nothing() {
    let mut nats = NatsCluster::start(3);
    let db = TestDb::create().await;
    quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    // The mock provider, in this process, so its record can be read.
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
    let http = reqwest::Client::new();
    let env = |first_seed: usize| {
        vec![
            ("NATS_URL".to_owned(), nats.seeds(first_seed)),
            ("DATABASE_URL".to_owned(), db.url.clone()),
            ("QUIZFLOW_STREAM_REPLICAS".to_owned(), "3".to_owned()),
            ("QUIZFLOW_ADMIN_TOKEN".to_owned(), TOKEN.to_owned()),
            (
                "QUIZFLOW_HASH_KEY".to_owned(),
                "cluster-test-hash-key-0123456789".to_owned(),
            ),
        ]
    };
    // Both APIs connect to node 0 first: its kill makes them fail over.
    let ports = [free_port(), free_port()];
    let mut apis: Vec<Role> = ports
        .iter()
        .map(|p| {
            let mut e = env(0);
            e.push(("QUIZFLOW_HTTP_ADDR".into(), format!("127.0.0.1:{p}")));
            Role::start(&["api"], e)
        })
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    for u in &urls {
        wait_ready(&http, u).await;
    }
    let mut batchers: Vec<Role> = (0..2)
        .map(|i| Role::start(&["batcher"], env(i + 1)))
        .collect();
    let mut workers: Vec<Role> = (0..2)
        .map(|i| {
            Role::start(
                &["workers", "--channels", "sms", "--mock-provider", &mock],
                env(i + 1),
            )
        })
        .collect();
    let r = http
        .post(format!("{}/v1/campaigns", urls[0]))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({
            "name": "cluster", "match": {"all": [{"field": "answers.q1", "op": "eq", "value": "b"}]},
            "actions": [{"channel": "sms", "template": "hello {{ submission_id }}"}]
        }))
        .send()
        .await
        .expect("campaign");
    assert_eq!(
        r.status().as_u16(),
        201,
        "{}",
        r.text().await.unwrap_or_default()
    );

    // Steady load, each lead retried on the other API until it gets its 202.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let load = {
        let (http, urls, seen) = (http.clone(), urls.clone(), seen.clone());
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let start = Instant::now();
            for i in 0..LEADS {
                let due = start + Duration::from_secs_f64(i as f64 / RATE);
                tokio::time::sleep_until(due.into()).await;
                let (http, urls, seen) = (http.clone(), urls.clone(), seen.clone());
                tasks.spawn(async move { post_lead(&http, &urls, i, &seen).await });
            }
            while let Some(r) = tasks.join_next().await {
                r.expect("lead task");
            }
        })
    };
    // The faults, one after another, each for a few seconds. NATS-node windows are where
    // 5xx may come; API windows where the killed API refuses connections.
    let started = Instant::now();
    let at = |s: u64| tokio::time::sleep_until((started + Duration::from_secs(s)).into());
    let mut nats_down = Vec::new();
    let mut api_down = Vec::new();
    at(4).await;
    let t = Instant::now();
    nats.kill(0);
    at(9).await;
    nats.restart(0);
    nats_down.push((t, Instant::now() + Duration::from_secs(5)));
    at(13).await;
    let t = Instant::now();
    apis[0].kill();
    at(16).await;
    apis[0].spawn();
    wait_ready(&http, &urls[0]).await;
    api_down.push((t, Instant::now()));
    batchers[0].kill();
    at(20).await;
    batchers[0].spawn();
    workers[0].kill();
    at(24).await;
    workers[0].spawn();
    load.await.expect("load");

    let (accepted, failures) = {
        let s = seen.lock().expect("seen");
        (s.accepted.clone(), s.failures.clone())
    };
    assert_eq!(accepted.len(), LEADS, "every lead got its 202");
    let within = |t: Instant, w: &[(Instant, Instant)]| w.iter().any(|(a, b)| t >= *a && t <= *b);
    let stray: Vec<&(Instant, String)> = failures
        .iter()
        .filter(|(t, what)| {
            let api_refused = what.contains("error sending request") || what.contains("connect");
            !(within(*t, &nats_down) || (api_refused && within(*t, &api_down)))
        })
        .collect();
    assert!(
        stray.is_empty(),
        "failures outside the fault windows: {:?}",
        stray.iter().map(|(_, w)| w).collect::<Vec<_>>()
    );
    let mut by_second: std::collections::BTreeMap<(u64, String), usize> = Default::default();
    for (t, what) in &failures {
        let kind = what
            .split(" from ")
            .next()
            .unwrap_or(what)
            .chars()
            .take(90)
            .collect();
        *by_second
            .entry((t.duration_since(started).as_secs(), kind))
            .or_default() += 1;
    }
    println!("failed answers by second of the run: {by_second:?}");
    println!(
        "{} accepted; {} failed answers (all while a node or an API was down)",
        accepted.len(),
        failures.len()
    );

    // Every 202 stored exactly once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = count(&db.url, "SELECT count(*) AS n FROM submissions").await;
        if n as usize == LEADS {
            break;
        }
        assert!(n as usize <= LEADS, "{n} rows for {LEADS} leads");
        assert!(Instant::now() < deadline, "{n} of {LEADS} stored");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ids: HashSet<&String> = accepted.values().collect();
    assert_eq!(ids.len(), LEADS);
    let list = ids
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        count(
            &db.url,
            &format!("SELECT count(*) AS n FROM submissions WHERE id IN ({list})")
        )
        .await as usize,
        LEADS,
        "every acknowledged id is a stored row"
    );

    // Every expected SMS sent; twice only for calls cut off by the workers kill.
    let deadline = Instant::now() + Duration::from_secs(180);
    let sent = loop {
        let sent = sent_per_job(&http, &mock).await;
        if sent.len() >= LEADS {
            break sent;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {LEADS} messages sent",
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(sent.len(), LEADS, "one job per lead");
    let twice: usize = sent.values().map(|n| n - 1).sum();
    // At most the calls one workers process had in flight (its share of the concurrency cap).
    assert!(twice <= 32, "{twice} messages sent twice");
    println!("{LEADS} SMS sent; {twice} sent twice (cut off by the workers kill)");
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) AS n FROM deliveries WHERE status = 'sent'"
        )
        .await as usize,
        LEADS
    );
    drop((apis, batchers, workers));
}
