//! `NATS_URL` as a seed list: a process starts while any one seed is up.

use quizflow_nats::{NatsSettings, TopologyConfig};
use quizflow_testkit::{free_port, NatsServer};
use std::time::Duration;

#[tokio::test]
async fn given_a_seed_list_with_a_dead_seed_then_the_client_connects_through_a_live_one() {
    let nats = NatsServer::start();
    // Nothing listens on the first seed; the second is up.
    let dead = format!("nats://127.0.0.1:{}", free_port());
    for url in [
        format!("{dead},{}", nats.url()),
        format!("{}, {dead}", nats.url()),
    ] {
        let settings = NatsSettings::new(url.clone(), "seed-test");
        let client =
            tokio::time::timeout(Duration::from_secs(20), quizflow_nats::connect(&settings))
                .await
                .expect("connects within 20 s")
                .expect("connect");
        let js = quizflow_nats::jetstream(client, &settings);
        tokio::time::timeout(
            Duration::from_secs(20),
            quizflow_nats::ensure_topology(&js, &TopologyConfig::default()),
        )
        .await
        .expect("within 20 s")
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}
