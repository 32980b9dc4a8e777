//! `quizflow respondents export`: the CLI writes everything held on one person as one JSON file —
//! their stored messages with ledger rows, their suppression entries (by keyed hash) — nobody
//! else's, and leaves an audit entry naming them only by hash.

use quizflow_testkit::TestDb;
use std::process::Command;

const KEY: &str = "respondents-test-hash-key-0123456789";
const ANA: &str = "+5511987650303";

fn message(phone: &str) -> quizflow_store::messages::NewMessage {
    let spec = quizflow_core::parse_campaign(&serde_json::json!({"name": "m", "active": true,
        "match": {}, "actions": [{"channel": "sms", "template": "Oi"}]}))
    .expect("spec");
    quizflow_store::messages::NewMessage {
        id: uuid::Uuid::new_v4(),
        phone: Some(phone.into()),
        email: None,
        name: Some("Ana".into()),
        locale: None,
        timezone: None,
        score: None,
        answers: serde_json::json!([]),
        tags: Vec::new(),
        metadata: serde_json::json!({"code": "A7"}),
        idempotency_key: None,
        spec: serde_json::to_value(&spec).expect("json"),
        priority: "high".into(),
        rows: vec![("sms".into(), 0)],
        send_at: None,
    }
}

#[tokio::test]
async fn the_cli_writes_one_persons_data_and_audits_it() {
    let db = TestDb::create().await;
    quizflow_migrations::run_migrations(&db.url)
        .await
        .expect("migrate");
    let pool = quizflow_store::pool(&db.url, 2);
    let mut conn = pool.get().await.expect("conn");
    let mine = [message(ANA), message(ANA)];
    quizflow_store::messages::create(&mut conn, &mine)
        .await
        .expect("store");
    quizflow_store::messages::create(&mut conn, &[message("+5511987650404")])
        .await
        .expect("store");
    let key = quizflow_core::consent::HashKey::new(KEY).expect("key");
    let hash = key.hash(quizflow_core::Channel::Sms, ANA).expect("hash");
    quizflow_store::consent::suppress(
        &mut conn,
        &[quizflow_store::consent::NewSuppression {
            channel: "sms".into(),
            contact_hash: hash.to_vec(),
            reason: "admin".into(),
            scope: "all".into(),
            source: "test".into(),
        }],
    )
    .await
    .expect("suppress");
    drop(conn);

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("ana.json");
    let out = Command::new(env!("CARGO_BIN_EXE_quizflow"))
        .args(["respondents", "export", "--phone", ANA, "--out"])
        .arg(&file)
        .env_remove("QUIZFLOW_CONFIG")
        .env("DATABASE_URL", &db.url)
        .env("QUIZFLOW_HASH_KEY", KEY)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("file")).expect("one JSON document");
    let subs = v["submissions"].as_array().expect("submissions");
    assert_eq!(subs.len(), 2, "{v}");
    for s in subs {
        assert_eq!(s["respondent"]["phone"], ANA);
        assert_eq!(s["metadata"]["code"], "A7");
        assert_eq!(s["deliveries"][0]["status"], "scheduled", "{s}");
    }
    assert_eq!(v["suppressions"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["suppressions"][0]["contact_hash"], hex(&hash));

    let mut conn = pool.get().await.expect("conn");
    let audit = quizflow_store::audit::page(&mut conn, None, 10)
        .await
        .expect("audit");
    let entry = serde_json::to_value(&audit).expect("json").to_string();
    assert!(entry.contains("respondent.export"), "{entry}");
    assert!(
        !entry.contains(&ANA[1..]),
        "no phone in the audit log: {entry}"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
