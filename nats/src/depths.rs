//! Stream and consumer depths read from JetStream: what `/v1/stats` reports and what the
//! `quizflow_consumer_*` gauges show. A handful of small API requests, whatever the load.

use crate::{subjects, NatsError};
use async_nats::jetstream;
use futures::TryStreamExt;
pub use quizflow_telemetry::ConsumerDepth;

/// One stream's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamDepth {
    pub stream: String,
    pub messages: u64,
    pub bytes: u64,
    /// Sequence of the newest message ever stored (monotonic: deletes and purges keep it).
    pub last_sequence: u64,
}

/// Every quizflow stream and each of its consumers.
#[derive(Debug, Clone, Default)]
pub struct Depths {
    pub streams: Vec<StreamDepth>,
    pub consumers: Vec<ConsumerDepth>,
}

impl Depths {
    pub fn stream(&self, name: &str) -> Option<&StreamDepth> {
        self.streams.iter().find(|s| s.stream == name)
    }
}

/// Reads the state of SUBMISSIONS, DELIVERIES and DEAD_LETTERS and of all their consumers.
pub async fn depths(js: &jetstream::Context) -> Result<Depths, NatsError> {
    let mut out = Depths::default();
    for name in [
        subjects::SUBMISSIONS_STREAM,
        subjects::DELIVERIES_STREAM,
        subjects::DEAD_LETTERS_STREAM,
    ] {
        let mut stream = js
            .get_stream(name)
            .await
            .map_err(|e| NatsError::Api(e.into()))?;
        let info = stream.info().await.map_err(|e| NatsError::Api(e.into()))?;
        out.streams.push(StreamDepth {
            stream: name.to_owned(),
            messages: info.state.messages,
            bytes: info.state.bytes,
            last_sequence: info.state.last_sequence,
        });
        let consumers: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|e| NatsError::Api(e.into()))?;
        for c in consumers {
            out.consumers.push(ConsumerDepth {
                stream: name.to_owned(),
                consumer: c.name,
                pending: c.num_pending,
                ack_pending: c.num_ack_pending as u64,
                redelivered: c.num_redelivered as u64,
            });
        }
    }
    out.consumers
        .sort_by(|a, b| (&a.stream, &a.consumer).cmp(&(&b.stream, &b.consumer)));
    Ok(out)
}
