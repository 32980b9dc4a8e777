//! Creating the topology on a server with less JetStream storage than the streams' caps.

use quizflow_nats::{NatsError, NatsSettings, TopologyConfig};
use quizflow_testkit::NatsServer;

#[tokio::test]
async fn given_less_storage_than_the_stream_caps_then_the_error_says_so_and_smaller_caps_fit() {
    // The default DELIVERIES cap alone is 8 GiB.
    let nats = NatsServer::with_max_file_store("2GB");
    let settings = NatsSettings::new(nats.url(), "topology-test");
    let client = quizflow_nats::connect(&settings).await.expect("connect");
    let js = quizflow_nats::jetstream(client, &settings);

    let err = quizflow_nats::ensure_topology(&js, &TopologyConfig::default())
        .await
        .expect_err("8 GiB of caps cannot fit in 2 GB");
    assert!(
        matches!(
            err,
            NatsError::StreamStorage {
                stream: "DELIVERIES",
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("max_file_store"), "{text}");
    assert!(text.contains("QUIZFLOW_DELIVERIES_MAX_BYTES"), "{text}");

    let smaller = TopologyConfig {
        deliveries_max_bytes: 512 * 1024 * 1024,
        ..TopologyConfig::default()
    };
    quizflow_nats::ensure_topology(&js, &smaller)
        .await
        .expect("caps that fit are created");
}
