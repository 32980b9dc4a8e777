//! An https collector: the OTLP exporter speaks TLS to it (a build without a TLS backend would
//! fail every export before connecting). Its own test binary: `init` installs process globals.

use std::io::Read;
use std::time::Duration;

#[test]
fn spans_go_to_an_https_collector_over_tls() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    // The first byte the exporter sends, or None if it never connects within 10 s.
    let first = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match listener.accept() {
                Ok((mut sock, _)) => {
                    sock.set_nonblocking(false).expect("blocking socket");
                    sock.set_read_timeout(Some(Duration::from_secs(10)))
                        .expect("timeout");
                    let mut b = [0u8; 1];
                    return sock.read_exact(&mut b).ok().map(|_| b[0]);
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return None,
            }
        }
    });
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("https://127.0.0.1:{port}"),
    );
    let telemetry = quizflow_telemetry::init(quizflow_telemetry::LogFormat::Text, "tls-test")
        .expect("telemetry");
    assert!(telemetry.exporting());
    tracing::info_span!(target: "quizflow_tls_test", "exported").in_scope(|| {});
    // Shutdown flushes the batch: the export connects now.
    telemetry.shutdown();
    assert_eq!(
        first.join().expect("join"),
        Some(0x16),
        "a TLS handshake record"
    );
}
