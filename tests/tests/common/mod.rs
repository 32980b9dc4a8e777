//! The cross-stage harness: a private nats-server, a fresh database, the batcher, the mock
//! provider over real HTTP and SMTP, and worker processes started and stopped per test.
#![allow(dead_code)]

pub use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
pub use poem::listener::{Acceptor, Listener, TcpListener};
pub use quizflow_batcher::{Batcher, BatcherSettings};
pub use quizflow_core::{
    parse_campaign, parse_submission, IdempotencyKey, QuizId, SubmissionEnvelope, SubmissionId,
};
pub use quizflow_mock_provider as mock;
pub use quizflow_nats::{subjects, NatsSettings, TopologyConfig};
pub use quizflow_testkit::{NatsServer, TestDb};
pub use quizflow_workers::{Providers, WorkerSettings};
pub use serde_json::{json, Value};
pub use std::time::{Duration, Instant};

pub struct Env {
    pub _nats: NatsServer,
    pub db: TestDb,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub mock: String,
    pub smtp_port: u16,
    pub http: reqwest::Client,
    pub stops: Vec<tokio::sync::oneshot::Sender<()>>,
    /// The metrics registry of each workers process started, in order.
    pub registries: Vec<prometheus::Registry>,
    /// The batcher every environment runs (its metrics are read by tests).
    pub batcher: Option<std::sync::Arc<Batcher>>,
    /// Submissions go in as the API sends them: packed (group commit), one message per quiz.
    pub packer: quizflow_nats::Packer,
}

impl Env {
    /// The topology the older delivery tests were written for: a 2 s ack wait and a
    /// `max_deliver` of 4, so that the max-deliveries sweeper has something to do.
    pub async fn start() -> Self {
        Self::start_with(|t| {
            t.worker_ack_wait = Duration::from_secs(2);
            t.worker_max_deliver = 4;
        })
        .await
    }

    /// Production topology defaults, tuned by `tune`.
    pub async fn start_with(tune: impl FnOnce(&mut TopologyConfig)) -> Self {
        let nats = NatsServer::start();
        let db = TestDb::create().await;
        quizflow_migrations::run_migrations(&db.url)
            .await
            .expect("migrate");
        let settings = NatsSettings::new(nats.url(), "workers-test");
        let client = quizflow_nats::connect(&settings).await.expect("connect");
        let js = quizflow_nats::jetstream(client.clone(), &settings);
        let mut topology = TopologyConfig::default();
        tune(&mut topology);
        quizflow_nats::ensure_topology(&js, &topology)
            .await
            .expect("topology");
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("bind");
        let addr = acceptor.local_addr()[0]
            .as_socket_addr()
            .copied()
            .expect("addr");
        let state = mock::MockState::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(mock::serve(acceptor, state.clone(), async move {
            let _ = rx.await;
        }));
        let smtp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind smtp");
        let smtp_port = smtp.local_addr().expect("addr").port();
        let (smtp_tx, smtp_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(mock::serve_smtp(smtp, state, async move {
            let _ = smtp_rx.await;
        }));
        let mut env = Self {
            _nats: nats,
            db,
            client,
            js: js.clone(),
            mock: format!("http://{addr}"),
            smtp_port,
            http: reqwest::Client::new(),
            stops: vec![tx, smtp_tx],
            registries: Vec::new(),
            batcher: None,
            packer: quizflow_nats::Packer::spawn(js.clone(), Default::default()),
        };
        let batcher = Batcher::new(
            BatcherSettings {
                batch_wait: Duration::from_millis(20),
                ..Default::default()
            },
            env.client.clone(),
            env.js.clone(),
            quizflow_store::pool(&env.db.url, 2),
        );
        env.batcher = Some(batcher.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(batcher.run(async move {
            let _ = rx.await;
        }));
        env.stops.push(tx);
        env
    }

    pub fn settings(&self, tune: impl FnOnce(&mut WorkerSettings)) -> WorkerSettings {
        let mut s = WorkerSettings::new(Providers::mock(&self.mock));
        s.retry_schedule = vec![Duration::from_millis(400), Duration::from_millis(400)];
        s.ack_wait = Duration::from_secs(2);
        s.send_timeout = Duration::from_secs(5);
        tune(&mut s);
        s
    }

    /// Starts a worker process-equivalent; returns its task so a test can kill it.
    pub fn workers(&mut self, settings: WorkerSettings) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stops.push(tx);
        let (js, pool) = (self.js.clone(), quizflow_store::pool(&self.db.url, 4));
        // Each workers process has a registry of its own, as in production.
        let registry = prometheus::Registry::new();
        self.registries.push(registry.clone());
        tokio::spawn(async move {
            let _ = quizflow_workers::run(settings, js, pool, registry, async move {
                let _ = rx.await;
            })
            .await;
        })
    }

    /// Starts a workers process-equivalent that stops gracefully when the sender fires.
    pub fn workers_stoppable(
        &mut self,
        settings: WorkerSettings,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (js, pool) = (self.js.clone(), quizflow_store::pool(&self.db.url, 4));
        let registry = prometheus::Registry::new();
        self.registries.push(registry.clone());
        let handle = tokio::spawn(async move {
            let _ = quizflow_workers::run(settings, js, pool, registry, async move {
                let _ = rx.await;
            })
            .await;
        });
        (tx, handle)
    }

    /// Creates a campaign matching every lead and waits until the batcher matches with it.
    pub async fn campaign(&self, actions: Value) {
        let spec = parse_campaign(&json!({"name": "Promo", "match": {}, "actions": actions}))
            .expect("valid");
        let mut conn = AsyncPgConnection::establish(&self.db.url)
            .await
            .expect("db");
        let c = quizflow_store::campaigns::insert(&mut conn, &spec)
            .await
            .expect("insert");
        self.client
            .publish(subjects::CAMPAIGNS_CHANGED, "x".into())
            .await
            .expect("notify");
        self.wait_matching(&[&c]).await;
    }

    /// Waits until the batcher matches with these campaigns (after their change was
    /// announced): the state a test means, not a sleep that usually covers it.
    pub async fn wait_matching(&self, campaigns: &[&quizflow_core::Campaign]) {
        if let Some(b) = &self.batcher {
            wait_until(
                "the batcher matches with the campaigns",
                Duration::from_secs(10),
                || async { campaigns.iter().all(|c| b.knows_campaign(c.id, c.version)) },
            )
            .await;
        }
    }

    pub async fn submit(&self, key: &str, respondent: Value) -> SubmissionId {
        let quiz = QuizId::parse("promo").expect("quiz");
        let key = IdempotencyKey::parse(key).expect("key");
        let sub = parse_submission(&json!({"respondent": respondent, "score": 72})).expect("valid");
        let env = SubmissionEnvelope::new(
            SubmissionId::from_key(&quiz, &key),
            quiz,
            chrono::Utc::now(),
            Some(key),
            sub,
        );
        self.packer.publish(&env).await.expect("publish");
        env.submission_id
    }

    pub async fn deliveries(&self, id: SubmissionId) -> Vec<(String, String, i32, Value)> {
        #[derive(diesel::QueryableByName)]
        struct R {
            #[diesel(sql_type = diesel::sql_types::Text)]
            channel: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            status: String,
            #[diesel(sql_type = diesel::sql_types::Integer)]
            attempts: i32,
            #[diesel(sql_type = diesel::sql_types::Jsonb)]
            history: Value,
        }
        let mut conn = AsyncPgConnection::establish(&self.db.url)
            .await
            .expect("db");
        let rows: Vec<R> = diesel::sql_query("SELECT channel, status, attempts, history FROM deliveries WHERE submission_id = $1 ORDER BY channel")
            .bind::<diesel::sql_types::Uuid, _>(id.0)
            .load(&mut conn)
            .await
            .expect("deliveries");
        rows.into_iter()
            .map(|r| (r.channel, r.status, r.attempts, r.history))
            .collect()
    }

    pub async fn wait_status(
        &self,
        id: SubmissionId,
        want: &[(&str, &str)],
        within: Duration,
    ) -> Vec<(String, String, i32, Value)> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.deliveries(id).await;
            let pairs: Vec<(&str, &str)> = got
                .iter()
                .map(|(c, s, _, _)| (c.as_str(), s.as_str()))
                .collect();
            if pairs == want {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "deliveries {pairs:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn mock_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.mock))
            .send()
            .await
            .expect("mock")
            .json()
            .await
            .expect("json")
    }

    pub async fn fault(&self, f: Value) {
        let r = self
            .http
            .put(format!("{}/_mock/faults", self.mock))
            .json(&f)
            .send()
            .await
            .expect("fault");
        assert!(r.status().is_success());
    }

    /// The batcher's consumer as the server sees it now.
    pub async fn batcher_consumer(&self) -> async_nats::jetstream::consumer::Info {
        let mut c: async_nats::jetstream::consumer::PullConsumer = self
            .js
            .get_stream(subjects::SUBMISSIONS_STREAM)
            .await
            .expect("stream")
            .get_consumer(subjects::BATCHER_CONSUMER)
            .await
            .expect("consumer");
        c.info().await.expect("info").clone()
    }

    pub async fn dead_letters(&self) -> u64 {
        let mut s = self.js.get_stream("DEAD_LETTERS").await.expect("stream");
        s.info().await.expect("info").state.messages
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for tx in self.stops.drain(..) {
            let _ = tx.send(());
        }
    }
}

pub const PHONE: &str = "+5511987654321";

/// Polls `cond` every 200 ms until it holds; fails the test after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The stages behind an API the API harness started: the mock provider (with `state`), a
/// batcher and one workers process at production defaults (tuned by `tune`), all against
/// the harness's servers until the test ends. Returns the mock's base URL.
pub async fn pipeline_behind(
    nats_url: &str,
    db_url: &str,
    state: mock::MockState,
    tune: impl FnOnce(&mut WorkerSettings),
) -> String {
    pipeline_and_batcher(nats_url, db_url, state, tune).await.0
}

/// [`pipeline_behind`], and its batcher (to wait until it matches with a new campaign).
#[allow(dead_code)] // not every test binary waits on the batcher
pub async fn pipeline_and_batcher(
    nats_url: &str,
    db_url: &str,
    state: mock::MockState,
    tune: impl FnOnce(&mut WorkerSettings),
) -> (String, std::sync::Arc<Batcher>) {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let addr = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .expect("addr");
    let base = format!("http://{addr}");
    tokio::spawn(mock::serve(acceptor, state, std::future::pending()));
    let nats = async_nats::connect(nats_url).await.expect("nats");
    let js = async_nats::jetstream::new(nats.clone());
    let batcher = Batcher::new(
        BatcherSettings::default(),
        nats,
        js.clone(),
        quizflow_store::pool(db_url, 2),
    );
    tokio::spawn(batcher.clone().run(std::future::pending()));
    let mut settings = WorkerSettings::new(Providers::mock(&base));
    tune(&mut settings);
    tokio::spawn(quizflow_workers::run(
        settings,
        js,
        quizflow_store::pool(db_url, 4),
        prometheus::Registry::new(),
        std::future::pending(),
    ));
    (base, batcher)
}

#[allow(unused_imports)] // not every test binary counts rows
pub use quizflow_testkit::count;

/// The first SMS step of `campaign` for `submission`, as a batcher makes it.
pub fn sms_job(submission: SubmissionId, campaign: uuid::Uuid) -> quizflow_core::DeliveryJob {
    use quizflow_core::{Channel, DeliveryJob, Priority};
    DeliveryJob {
        v: DeliveryJob::VERSION,
        job_id: DeliveryJob::job_id(submission, campaign, Channel::Sms, 0),
        submission_id: submission,
        campaign_id: campaign,
        campaign_version: 1,
        channel: Channel::Sms,
        priority: Priority::Normal,
        created_at: chrono::Utc::now(),
        step: 0,
        due_at: None,
        repeat_until: None,
        cancel_key: None,
    }
}

/// Publishes copies of jobs as redrives would (`redrive:<name>` message ids).
pub async fn publish_job_copies(
    js: &async_nats::jetstream::Context,
    jobs: &[(quizflow_core::DeliveryJob, String)],
) -> Vec<bool> {
    let payloads: Vec<Vec<u8>> = jobs
        .iter()
        .map(|(j, _)| serde_json::to_vec(j).expect("job"))
        .collect();
    let letters: Vec<quizflow_nats::Redrive<'_>> = jobs
        .iter()
        .zip(&payloads)
        .map(|((_, name), payload)| quizflow_nats::Redrive {
            letter_id: name.clone(),
            kind: "delivery",
            payload,
        })
        .collect();
    quizflow_nats::publish_redrives(js, &letters).await
}
