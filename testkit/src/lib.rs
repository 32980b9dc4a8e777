//! Test harness for quizflow's integration tests: real servers, never mocks.
//!
//! - [`NatsServer`]: a private `nats-server -js` on a free loopback port with a temp store,
//!   killed on drop; it can be stopped and started again on the same port and store to test
//!   outages.
//! - [`TestDb`]: a fresh PostgreSQL database per test, dropped afterwards, on the server named
//!   by `QUIZFLOW_TEST_DATABASE_URL` (the test script starts a private one).
//!
//! This crate is only ever a dev-dependency, so it may panic on set-up failures: a test that
//! cannot get its servers must fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod chromium;
mod db;
mod nats;
mod proxy;

pub use db::{count, TestDb};
pub use nats::{nats_server_binary, NatsCluster, NatsServer};
pub use proxy::CutProxy;

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: &str, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Items a stream holds: submissions or jobs, counted line by line, since one message packs
/// one or more (the API's packs, the batcher's job chunks).
pub async fn items_in(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    let mut s = js.get_stream(stream).await.expect("stream");
    let state = s.info().await.expect("stream info").state.clone();
    if state.messages == 0 {
        return 0;
    }
    let mut n = 0;
    for seq in state.first_sequence..=state.last_sequence {
        // Acked (work queue) or deleted meanwhile: nothing there.
        if let Ok(m) = s.get_raw_message(seq).await {
            n += m
                .payload
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count() as u64;
        }
    }
    n
}
