//! The deployment files under `deploy/`, checked offline (nothing here can pull an image or
//! reach a cluster): every YAML file parses; every command a manifest or the compose file
//! runs is one the binary accepts; every environment key they set is one the binary knows,
//! with a value it accepts; every KEDA trigger names a stream and a durable consumer the
//! topology really creates, and scales the Deployment that serves that consumer.

use quizflow_core::{Channel, Priority};
use quizflow_nats::subjects;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("deploy dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// Every document of a (multi-document) YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read");
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            <Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn k8s_documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir().join("k8s"), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| !f.ends_with("nats-values.yaml"))
        .flat_map(|f| documents(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

/// `quizflow check <args>` with exactly `env`: the binary parses the command line and builds
/// the role's settings as its start would (unknown keys, bad values and missing settings
/// fail it), without connecting anywhere.
fn assert_role_starts(args: &[String], env: &BTreeMap<String, String>, whence: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_quizflow"))
        .arg("check")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "error")
        .envs(env)
        .output()
        .expect("run quizflow");
    assert!(
        out.status.success(),
        "{whence}: `quizflow {}` would not start: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn container_env(doc: &Value, config: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env = config.clone();
    for c in containers(doc) {
        for e in c["env"].as_sequence().into_iter().flatten() {
            if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    env
}

fn containers(doc: &Value) -> Vec<&Value> {
    let spec = if doc["kind"] == "Job" || doc["kind"] == "Deployment" {
        &doc["spec"]["template"]["spec"]
    } else {
        return Vec::new();
    };
    spec["containers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .collect()
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(files.len() >= 8, "{files:?}");
    for f in files {
        assert!(!documents(&f).is_empty(), "{}: empty", f.display());
    }
}

#[test]
fn kubernetes_commands_env_keys_and_probes_exist_in_the_binary() {
    let docs = k8s_documents();
    let config: BTreeMap<String, String> = docs
        .iter()
        .find(|(_, d)| d["kind"] == "ConfigMap")
        .and_then(|(_, d)| d["data"].as_mapping())
        .expect("a ConfigMap")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().expect("key").to_owned(),
                v.as_str().expect("values are strings").to_owned(),
            )
        })
        .collect();
    // The Secret's keys, with values of the right shape.
    let secrets = [
        ("QUIZFLOW_ADMIN_TOKEN", "0123456789abcdef0123"),
        ("QUIZFLOW_HASH_KEY", "0123456789abcdef0123456789abcdef"),
        (
            "DATABASE_URL",
            "postgres://quizflow:secret@postgres:5432/quizflow",
        ),
        ("QUIZFLOW_TWILIO_AUTH_TOKEN", "secret"),
        ("QUIZFLOW_WHATSAPP_TOKEN", "secret"),
        ("QUIZFLOW_EMAIL_API_KEY", "secret"),
        ("QUIZFLOW_WEBHOOK_SECRET", "secret"),
    ];
    let mut workloads = 0;
    for (file, doc) in &docs {
        for k in ["apiVersion", "kind"] {
            assert!(doc[k].is_string(), "{}: no {k}", file.display());
        }
        assert!(
            str_of(doc, &["metadata", "name"]).is_some(),
            "{}: unnamed",
            file.display()
        );
        for c in containers(doc) {
            workloads += 1;
            let args: Vec<String> = c["args"]
                .as_sequence()
                .expect("args")
                .iter()
                .map(|a| a.as_str().expect("arg").to_owned())
                .collect();
            let mut env = container_env(doc, &config);
            env.extend(
                secrets
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            assert_role_starts(&args, &env, &file.display().to_string());
            if doc["kind"] == "Deployment" {
                let ports: BTreeSet<&str> = c["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
                {
                    assert_eq!(c[probe]["httpGet"]["path"], path, "{}", file.display());
                    let port = c[probe]["httpGet"]["port"].as_str().expect("named port");
                    assert!(
                        ports.contains(port),
                        "{}: probe port {port}",
                        file.display()
                    );
                }
            }
        }
    }
    // migrate, api, batcher and a workers Deployment per channel.
    assert_eq!(workloads, 3 + Channel::ALL.len());
}

#[test]
fn every_keda_trigger_names_a_consumer_the_topology_creates_for_its_deployment() {
    let docs = k8s_documents();
    let mut known: BTreeMap<String, &str> = BTreeMap::new();
    known.insert(
        subjects::BATCHER_CONSUMER.into(),
        subjects::SUBMISSIONS_STREAM,
    );
    for c in Channel::ALL {
        for p in Priority::ALL {
            known.insert(subjects::worker_consumer(c, p), subjects::DELIVERIES_STREAM);
        }
    }
    let deployments: BTreeMap<&str, &Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Deployment")
        .filter_map(|(_, d)| Some((str_of(d, &["metadata", "name"])?, d)))
        .collect();
    let mut covered = BTreeSet::new();
    for (file, doc) in docs.iter().filter(|(_, d)| d["kind"] == "ScaledObject") {
        let target = str_of(doc, &["spec", "scaleTargetRef", "name"]).expect("target");
        let dep = deployments
            .get(target)
            .unwrap_or_else(|| panic!("{}: no Deployment {target}", file.display()));
        let args: Vec<&str> = containers(dep)[0]["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        for t in doc["spec"]["triggers"].as_sequence().expect("triggers") {
            assert_eq!(t["type"], "nats-jetstream");
            let m = &t["metadata"];
            let consumer = m["consumer"].as_str().expect("consumer");
            let stream = known
                .get(consumer)
                .unwrap_or_else(|| panic!("{}: no consumer named {consumer:?}", file.display()));
            assert_eq!(m["stream"].as_str(), Some(*stream), "{consumer}");
            assert!(
                m["natsServerMonitoringEndpoint"]
                    .as_str()
                    .is_some_and(|e| e.ends_with(":8222")),
                "{consumer}: KEDA reads the monitoring port"
            );
            // The Deployment the trigger scales serves that consumer.
            match consumer.strip_prefix("workers-") {
                Some(rest) => {
                    let channel = rest.split('-').next().expect("channel");
                    assert_eq!(args[0], "workers");
                    let served = args
                        .iter()
                        .position(|a| *a == "--channels")
                        .map(|i| args[i + 1].split(',').collect::<Vec<_>>());
                    assert!(
                        served.is_none_or(|s| s.contains(&channel)),
                        "{target} does not serve {channel}"
                    );
                }
                None => assert_eq!(args[0], "batcher"),
            }
            covered.insert(consumer.to_owned());
        }
    }
    let missing: Vec<&String> = known.keys().filter(|k| !covered.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "consumers no ScaledObject watches: {missing:?}"
    );
}

#[test]
fn compose_services_run_real_commands_with_known_keys() {
    let path = deploy_dir().join("compose.yaml");
    let mut doc = documents(&path).remove(0);
    // `<<: *anchor` merge keys, as compose applies them.
    doc.apply_merge().expect("merge keys");
    let services = doc["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for want in [
        "nats1", "nats2", "nats3", "postgres", "api1", "api2", "proxy", "batcher", "workers",
    ] {
        assert!(names.contains(want), "compose has no {want}");
    }
    let mut checked = 0;
    for (name, svc) in services {
        let name = name.as_str().expect("name");
        for dep in svc["depends_on"]
            .as_mapping()
            .map(|m| m.keys().filter_map(|k| k.as_str()).collect::<Vec<_>>())
            .or_else(|| {
                svc["depends_on"]
                    .as_sequence()
                    .map(|s| s.iter().filter_map(|k| k.as_str()).collect())
            })
            .unwrap_or_default()
        {
            assert!(names.contains(dep), "{name} depends on unknown {dep}");
        }
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let v = v.as_str().expect("volume");
            if let Some(local) = v.strip_prefix("./") {
                let file = local.split(':').next().expect("path");
                assert!(
                    deploy_dir().join(file).exists(),
                    "{name}: {file} is missing"
                );
            }
        }
        if svc["image"] != "quizflow" {
            continue;
        }
        let args: Vec<String> = svc["command"]
            .as_sequence()
            .expect("command")
            .iter()
            .map(|a| a.as_str().expect("arg").to_owned())
            .collect();
        let env: BTreeMap<String, String> = svc["environment"]
            .as_mapping()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let v = v.as_str().map(str::to_owned).unwrap_or_else(|| {
                    serde_norway::to_string(v).expect("value").trim().to_owned()
                });
                // `${VAR:?…}` is the operator's to set: a valid stand-in.
                let v = if v.starts_with("${") {
                    "0123456789abcdef0123456789abcdef".to_owned()
                } else {
                    v
                };
                (k.as_str().expect("key").to_owned(), v)
            })
            .collect();
        assert_role_starts(&args, &env, &format!("compose service {name}"));
        checked += 1;
    }
    assert!(checked >= 6, "{checked} quizflow services checked");
}

#[test]
fn the_dockerfile_builds_this_binary_with_the_pinned_toolchain() {
    let root = deploy_dir().join("..");
    let toolchain = std::fs::read_to_string(root.join("rust-toolchain.toml")).expect("toolchain");
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .expect("channel")
        .trim_matches('"');
    let minor = channel.rsplit_once('.').map_or(channel, |(m, _)| m);
    let docker = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("Dockerfile");
    assert!(
        docker.contains(&format!("FROM rust:{minor}-")),
        "the build image is not Rust {minor}"
    );
    assert!(docker.contains("cargo build --release --locked -p quizflow"));
    assert!(docker.contains("ENTRYPOINT [\"quizflow\"]"));
}
