//! The Prometheus side: rendering a registry, and the gauges of stream and consumer depths
//! that every role polls from JetStream.

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

/// The text exposition of everything registered in `registry`.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec only fails on malformed metric families, which we never build.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    out
}

/// One consumer's depths as JetStream reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerDepth {
    pub stream: String,
    pub consumer: String,
    /// Messages not yet delivered to the consumer (its lag).
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: u64,
}

/// `quizflow_consumer_*` gauges, labelled by stream and consumer (bounded: the topology's).
#[derive(Clone)]
pub struct DepthGauges {
    pending: IntGaugeVec,
    ack_pending: IntGaugeVec,
    redelivered: IntGaugeVec,
    stream_messages: IntGaugeVec,
}

impl DepthGauges {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let labels = &["stream", "consumer"];
        let pending = IntGaugeVec::new(
            Opts::new(
                "quizflow_consumer_pending_messages",
                "Messages in the stream not yet delivered to the consumer (lag)",
            ),
            labels,
        )?;
        let ack_pending = IntGaugeVec::new(
            Opts::new(
                "quizflow_consumer_ack_pending_messages",
                "Messages delivered to the consumer and not yet acknowledged",
            ),
            labels,
        )?;
        let redelivered = IntGaugeVec::new(
            Opts::new(
                "quizflow_consumer_redelivered_messages",
                "Messages delivered more than once and not yet acknowledged",
            ),
            labels,
        )?;
        let stream_messages = IntGaugeVec::new(
            Opts::new("quizflow_stream_messages", "Messages held by the stream"),
            &["stream"],
        )?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(ack_pending.clone()))?;
        registry.register(Box::new(redelivered.clone()))?;
        registry.register(Box::new(stream_messages.clone()))?;
        Ok(Self {
            pending,
            ack_pending,
            redelivered,
            stream_messages,
        })
    }

    pub fn set_consumer(&self, d: &ConsumerDepth) {
        let l = [d.stream.as_str(), d.consumer.as_str()];
        self.pending.with_label_values(&l).set(clamp(d.pending));
        self.ack_pending
            .with_label_values(&l)
            .set(clamp(d.ack_pending));
        self.redelivered
            .with_label_values(&l)
            .set(clamp(d.redelivered));
    }

    pub fn set_stream(&self, stream: &str, messages: u64) {
        self.stream_messages
            .with_label_values(&[stream])
            .set(clamp(messages));
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
