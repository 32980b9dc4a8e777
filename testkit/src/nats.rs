//! [`NatsServer`]: a private `nats-server -js` (>= 2.10) per test on a free loopback port,
//! killed on drop, and restartable on the same port and store to test outages.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The nats-server binary tests use: `QUIZFLOW_NATS_SERVER_BIN`, else the one the test script
/// installs under `.tools/`, else `nats-server` on `PATH` (which must be >= 2.10).
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("QUIZFLOW_NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let local = root.join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// Writes a config for a test server storing under `store` and returns its path.
///
/// Without `max_file_store` nats-server offers 75 % of the disk's free space, and stream
/// creation fails ("insufficient storage resources") once the streams' `max_bytes` caps add up
/// to more: on a machine short of disk every test would fail before sending a byte. Tests
/// write a few MiB, so a fixed ceiling keeps them independent of the machine's free space.
fn store_config(store: &std::path::Path, max_file_store: &str) -> PathBuf {
    let conf = store.join("test-server.conf");
    std::fs::write(
        &conf,
        format!("jetstream {{\n  store_dir: {store:?}\n  max_file_store: {max_file_store}\n}}\n"),
    )
    .expect("write the test server's config");
    conf
}

/// A private JetStream server for one test.
pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    max_file_store: String,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::with_max_file_store("1TB")
    }

    /// A server whose JetStream offers only `max_file_store` (e.g. "1GB") of disk.
    pub fn with_max_file_store(max_file_store: &str) -> Self {
        let mut s = Self {
            port: crate::free_port(),
            store: tempfile::tempdir().expect("temp store"),
            max_file_store: max_file_store.to_owned(),
            child: None,
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-c"])
            .arg(store_config(self.store.path(), &self.max_file_store))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (run scripts/dev.sh test, or set QUIZFLOW_NATS_SERVER_BIN)");
        self.child = Some(child);
        assert!(
            crate::wait_for_port(&format!("127.0.0.1:{}", self.port), Duration::from_secs(10)),
            "nats-server did not come up on port {}",
            self.port
        );
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A JetStream cluster of `n` nats-servers on loopback (each with its own store and client,
/// cluster and monitoring ports), for tests of replicated streams and node failures.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    port: u16,
    cluster_port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsCluster {
    pub fn start(n: usize) -> Self {
        let nodes = (0..n)
            .map(|_| ClusterNode {
                port: crate::free_port(),
                cluster_port: crate::free_port(),
                store: tempfile::tempdir().expect("temp store"),
                child: None,
            })
            .collect();
        let mut c = Self { nodes };
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every node, comma-separated, starting with node `first` (a `NATS_URL` seed list).
    pub fn seeds(&self, first: usize) -> String {
        (0..self.nodes.len())
            .map(|k| self.url((first + k) % self.nodes.len()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, n)| format!("nats-route://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let node = &mut self.nodes[i];
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &node.port.to_string(), "-js"])
            .args(["-n", &format!("qf-node-{i}"), "--cluster_name", "qf-test"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.cluster_port),
                "--routes",
                &routes,
            ])
            .arg("-c")
            .arg(store_config(node.store.path(), "1TB"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (run scripts/dev.sh test, or set QUIZFLOW_NATS_SERVER_BIN)");
        node.child = Some(child);
        assert!(
            crate::wait_for_port(&format!("127.0.0.1:{}", node.port), Duration::from_secs(10)),
            "nats-server node {i} did not come up"
        );
    }

    /// Kills node `i` with SIGKILL: a crash, not a shutdown.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again with the same ports and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
