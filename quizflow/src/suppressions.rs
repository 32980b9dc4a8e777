//! `quizflow suppressions import FILE.csv`: an existing opt-out list onto the suppression list
//! (contract §3.2), hashed here with `QUIZFLOW_HASH_KEY` (the file's contacts never reach the
//! database), written in chunks of multi-row inserts.
//!
//! The file: one contact per line, optionally with its channel, reason and purpose —
//! `contact[,channel[,reason[,purpose]]]` — and an optional header line starting `contact`.
//! A phone without a channel is suppressed on sms and WhatsApp, an e-mail address on email.

use crate::config::Config;
use anyhow::Context;
use quizflow_core::consent::{ContactKind, HashKey, Reason, Scope};
use quizflow_core::Channel;
use quizflow_store::consent::NewSuppression;
use std::io::BufRead;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The CSV file (`contact[,channel[,reason[,purpose]]]`).
    file: PathBuf,
    /// Reason of rows that name none (default `admin`).
    #[arg(long, default_value = "admin")]
    reason: String,
    /// Purpose of rows that name none: `all` (default) or `marketing`.
    #[arg(long, default_value = "all")]
    purpose: String,
}

#[derive(clap::Subcommand)]
pub enum SuppressionsCommand {
    /// Add a CSV list of contacts to the suppression list (idempotent: a contact already on
    /// it keeps its first entry).
    Import(ImportArgs),
}

pub async fn run(cfg: Config, cmd: SuppressionsCommand) -> anyhow::Result<()> {
    let SuppressionsCommand::Import(args) = cmd;
    // Beside a `quizflow up` data dir without a configured key: the one `up` derives.
    let mut cfg = cfg;
    if cfg.hash_key.is_none() {
        cfg.hash_key = crate::up::derived_hash_key(&cfg);
    }
    let key = cfg.hash_key()?;
    let default_reason: Reason = args.reason.parse().map_err(anyhow::Error::msg)?;
    let default_scope: Scope = args.purpose.parse().map_err(anyhow::Error::msg)?;
    let rows = Rows {
        path: args.file.clone(),
        key,
        reason: default_reason,
        scope: default_scope,
    };
    let started = std::time::Instant::now();
    // First pass: every line must read, or nothing is imported.
    let mut bad = (0usize, None);
    rows.each(|n, parsed| {
        if let Err(why) = parsed {
            bad.0 += 1;
            bad.1.get_or_insert((n, why));
        }
        Ok(())
    })?;
    if let (count, Some((line, why))) = bad {
        // The contact is not repeated: the line number finds it.
        anyhow::bail!(
            "{}: {count} line(s) cannot be read, the first at line {line}: {why}; nothing imported",
            args.file.display()
        );
    }
    let database_url = match &cfg.database_url {
        Some(url) => url.clone(),
        None => crate::replay::servers(&cfg)?.1,
    };
    let pool = quizflow_store::pool(&database_url, 2);
    crate::roles::check_hash_key(&cfg, &pool).await?;
    // Second pass: written a chunk at a time, so memory stays one chunk whatever the file.
    let (mut read, mut added) = (0u64, 0u64);
    let mut chunk = Vec::with_capacity(quizflow_store::consent::IMPORT_CHUNK);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<NewSuppression>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        rows.each(|_, parsed| {
            chunk.extend(parsed.unwrap_or_default());
            if chunk.len() >= quizflow_store::consent::IMPORT_CHUNK {
                tx.blocking_send(std::mem::take(&mut chunk))?;
            }
            Ok(())
        })?;
        if !chunk.is_empty() {
            tx.blocking_send(chunk)?;
        }
        anyhow::Ok(())
    });
    while let Some(entries) = rx.recv().await {
        read += entries.len() as u64;
        added += quizflow_store::consent::import(&pool, &entries).await?;
    }
    reader.await??;
    if added > 0 {
        quizflow_store::consent::settle(&pool).await?;
    }
    println!(
        "{read} entries read, {added} new, {} already there, in {:.1} s",
        read - added,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The file's rows, read line by line (the header, if any, and blank lines skipped).
struct Rows {
    path: PathBuf,
    key: HashKey,
    reason: Reason,
    scope: Scope,
}

impl Rows {
    /// Calls `f` with each row's line number and its entries (or why it cannot be read).
    fn each(
        &self,
        mut f: impl FnMut(usize, Result<Vec<NewSuppression>, String>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let file = std::fs::File::open(&self.path)
            .with_context(|| format!("open {}", self.path.display()))?;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("read {}", self.path.display()))?;
            let row = line.trim();
            if row.is_empty() || (n == 0 && row.to_ascii_lowercase().starts_with("contact")) {
                continue;
            }
            f(n + 1, parse_row(&self.key, row, self.reason, self.scope))?;
        }
        Ok(())
    }
}

fn parse_row(
    key: &HashKey,
    row: &str,
    reason: Reason,
    scope: Scope,
) -> Result<Vec<NewSuppression>, String> {
    let cols: Vec<&str> = row.split(',').map(|c| c.trim().trim_matches('"')).collect();
    let contact = cols[0];
    let reason = match cols.get(2).filter(|r| !r.is_empty()) {
        Some(r) => r.parse()?,
        None => reason,
    };
    let scope = match cols.get(3).filter(|p| !p.is_empty()) {
        Some(p) => p.parse()?,
        None => scope,
    };
    let channels: Vec<Channel> = match cols.get(1).filter(|c| !c.is_empty()) {
        Some(c) => vec![Channel::parse(c)
            .filter(|c| *c != Channel::Webhook)
            .ok_or_else(|| format!("channel {c:?} is not sms, whatsapp or email"))?],
        None if contact.contains('@') => vec![Channel::Email],
        None => vec![Channel::Sms, Channel::Whatsapp],
    };
    channels
        .into_iter()
        .map(|channel| {
            let kind = ContactKind::of(channel).ok_or("no contact kind")?;
            let normal = kind
                .normalise(contact)
                .ok_or_else(|| format!("not a {} for {channel}", kind.as_str()))?;
            Ok(NewSuppression {
                channel: channel.as_str().to_owned(),
                contact_hash: key.hash_normalised(kind, &normal).to_vec(),
                reason: reason.as_str().to_owned(),
                scope: scope.as_str().to_owned(),
                source: "import".to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_name_their_channels_or_get_them_from_the_contact() {
        let k = HashKey::for_tests();
        let rows = |r| parse_row(&k, r, Reason::Admin, Scope::All);
        let phone = rows("+5511987654321").expect("phone");
        assert_eq!(phone.len(), 2);
        let mail = rows("Ana@Example.com,,complaint").expect("mail");
        assert_eq!((mail.len(), mail[0].reason.as_str()), (1, "complaint"));
        assert_eq!(mail[0].scope, "all");
        assert_eq!(
            rows("+5511987654321,sms,,marketing").expect("sms")[0].scope,
            "marketing"
        );
        assert!(rows("not-a-contact").is_err());
        assert!(rows("+5511987654321,fax").is_err());
        assert!(rows("+5511987654321,sms,whim").is_err());
    }
}
