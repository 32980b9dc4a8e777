//! `quizflow respondents export --phone … [--email …] --out FILE`: everything quizflow holds on
//! one person (the LGPD/GDPR access right), the same as `GET /v1/respondents` pages through:
//! submissions with their deliveries and histories, dead letters, suppression-list entries.
//! Written to the file a page at a time (memory stays one page), and audited as the API's
//! export is (`respondent.export`, the person named only by keyed hashes).

use crate::config::Config;
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The person's phone (E.164).
    #[arg(long)]
    phone: Option<String>,
    /// The person's e-mail address.
    #[arg(long)]
    email: Option<String>,
    /// Where the JSON goes (`-`: standard output).
    #[arg(long, default_value = "-")]
    out: PathBuf,
}

#[derive(clap::Subcommand)]
pub enum RespondentsCommand {
    /// Write everything held on one person as JSON (needs DATABASE_URL and QUIZFLOW_HASH_KEY,
    /// or a running `quizflow up`).
    Export(ExportArgs),
}

pub async fn run(cfg: Config, cmd: RespondentsCommand) -> anyhow::Result<()> {
    let RespondentsCommand::Export(args) = cmd;
    if args.phone.is_none() && args.email.is_none() {
        anyhow::bail!("--phone and/or --email is required");
    }
    if args
        .phone
        .as_deref()
        .is_some_and(|p| !quizflow_core::is_e164(p))
    {
        anyhow::bail!("--phone must be an E.164 number (+5511987654321)");
    }
    if args
        .email
        .as_deref()
        .is_some_and(|e| !quizflow_core::is_email(e))
    {
        anyhow::bail!("--email must be an e-mail address");
    }
    let mut cfg = cfg;
    if cfg.hash_key.is_none() {
        cfg.hash_key = crate::up::derived_hash_key(&cfg);
    }
    let key = cfg.hash_key()?;
    let database_url = match &cfg.database_url {
        Some(url) => url.clone(),
        None => crate::replay::servers(&cfg)?.1,
    };
    let pool = quizflow_store::pool(&database_url, 2);
    crate::roles::check_hash_key(&cfg, &pool).await?;
    let mut conn = pool.get().await?;
    let out: Box<dyn Write> = if args.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let f = std::fs::File::create(&args.out)
            .with_context(|| format!("cannot write {}", args.out.display()))?;
        Box::new(std::io::BufWriter::new(f))
    };
    let hashes = key.person_hashes(args.phone.as_deref(), args.email.as_deref());
    let counts = write(&mut conn, &args, &hashes, out).await?;
    // The person only by keyed hashes (the first 16 bytes of each distinct one).
    let mut named: Vec<String> = hashes
        .iter()
        .map(|(_, h)| h[..16].iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    named.dedup();
    quizflow_store::audit::append(
        &mut conn,
        &quizflow_store::audit::NewEntry {
            action: "respondent.export",
            route: "CLI quizflow respondents export".into(),
            outcome: "ok",
            status: 200,
            target: Some(format!("contact:{}", named.join(","))),
            detail: counts.clone(),
        },
    )
    .await?;
    eprintln!("quizflow: exported {counts}");
    Ok(())
}

/// Writes the export as one JSON object, its submissions a page at a time; answers the counts.
async fn write(
    conn: &mut quizflow_store::Conn<'_>,
    args: &ExportArgs,
    hashes: &[(quizflow_core::Channel, [u8; 32])],
    mut out: Box<dyn Write>,
) -> anyhow::Result<serde_json::Value> {
    write!(out, "{{\"submissions\": [")?;
    let (mut after, mut n, mut dead) = (None, 0usize, Vec::new());
    loop {
        let page = quizflow_store::respondents::page(
            conn,
            args.phone.as_deref(),
            args.email.as_deref(),
            after,
            500,
        )
        .await?;
        for s in &page.submissions {
            if n > 0 {
                write!(out, ",")?;
            }
            serde_json::to_writer(&mut out, s)?;
            n += 1;
        }
        dead.extend(page.dead_letters);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let suppressions = quizflow_store::respondents::suppressions(conn, hashes).await?;
    write!(out, "], \"dead_letters\": ")?;
    serde_json::to_writer(&mut out, &dead)?;
    write!(out, ", \"suppressions\": ")?;
    serde_json::to_writer(&mut out, &suppressions)?;
    writeln!(out, "}}")?;
    out.flush()?;
    Ok(
        serde_json::json!({"submissions": n, "dead_letters": dead.len(),
        "suppressions": suppressions.len()}),
    )
}
