//! Frequency caps (contract §3.2): a claim that counts each recipient's sends per channel in a
//! rolling window, and ends a send over its cap as `capped`. Exact under concurrency: the
//! claim takes a transaction-scoped advisory lock per (channel, contact) before it counts, so
//! two workers processes claiming for the same person count one after the other.

use super::{claim, unzip, Key};
use crate::StoreError;
use diesel::sql_types::{Array, Bytea, Double, SmallInt, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// One limit on a job: at most `count` sends per `window_s` seconds to its contact on its
/// channel, across campaigns (`campaign: None`) or of one campaign.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cap {
    pub count: u32,
    pub window_s: f64,
    pub campaign: Option<Uuid>,
}

/// A job the caps apply to: its contact's keyed hash and its limits.
#[derive(Debug, Clone)]
pub struct Capped {
    pub key: Key,
    pub contact: Vec<u8>,
    pub caps: Vec<Cap>,
}

#[derive(diesel::QueryableByName)]
struct Sent {
    #[diesel(sql_type = SqlUuid)]
    submission_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    campaign_id: Uuid,
    #[diesel(sql_type = SmallInt)]
    step: i16,
    #[diesel(sql_type = Bytea)]
    contact_hash: Vec<u8>,
    #[diesel(sql_type = Double)]
    age_s: f64,
}

/// What a capped claim did: the keys claimed to send, and those ended `capped`.
#[derive(Debug, Default)]
pub struct CapClaim {
    pub claimed: Vec<Key>,
    pub capped: Vec<Key>,
}

/// [`claim`], with `capped` jobs counted against their caps in the same transaction (in the
/// order given: the first ones of a fetch go first). A job already counted (a retry) is not
/// counted again. Transactional jobs never come here: they are exempt.
pub async fn claim_capped(
    conn: &mut AsyncPgConnection,
    keys: &[Key],
    claim_id: Uuid,
    lease: std::time::Duration,
    capped: &[Capped],
) -> Result<CapClaim, StoreError> {
    if capped.is_empty() {
        return Ok(CapClaim {
            claimed: claim(conn, keys, claim_id, lease).await?,
            capped: Vec::new(),
        });
    }
    conn.transaction::<CapClaim, StoreError, _>(async move |conn| {
        let channel = capped[0].key.2.clone();
        // One lock per contact, taken in a fixed order (no deadlock between two claims).
        let mut contacts: Vec<&[u8]> = capped.iter().map(|c| c.contact.as_slice()).collect();
        contacts.sort_unstable();
        contacts.dedup();
        diesel::sql_query(
            "SELECT count(pg_advisory_xact_lock(hashtextextended($1 || encode(h, 'hex'), 24))) \
             FROM (SELECT h FROM UNNEST($2::bytea[]) WITH ORDINALITY AS u(h, o) ORDER BY o) s",
        )
        .bind::<Text, _>(&channel)
        .bind::<Array<Bytea>, _>(&contacts)
        .execute(conn)
        .await?;
        let claimed = claim(conn, keys, claim_id, lease).await?;
        let longest = capped
            .iter()
            .flat_map(|c| c.caps.iter().map(|cap| cap.window_s))
            .fold(0.0, f64::max);
        let recent: Vec<Sent> = diesel::sql_query(
            "SELECT submission_id, campaign_id, step, contact_hash, \
                    EXTRACT(EPOCH FROM now() - claimed_at)::float8 AS age_s \
             FROM contact_sends WHERE channel = $1 AND contact_hash = ANY($2) \
               AND claimed_at > now() - make_interval(secs => $3)",
        )
        .bind::<Text, _>(&channel)
        .bind::<Array<Bytea>, _>(&contacts)
        .bind::<Double, _>(longest)
        .load(conn)
        .await?;
        let (counted, ended) = count(&claimed, capped, &recent);
        record(conn, &channel, &counted).await?;
        let ended_keys: Vec<Key> = ended.iter().map(|(k, _)| k.clone()).collect();
        end_capped(conn, &ended, claim_id).await?;
        let ended: HashSet<&Key> = ended_keys.iter().collect();
        Ok(CapClaim {
            claimed: claimed
                .iter()
                .filter(|k| !ended.contains(k))
                .cloned()
                .collect(),
            capped: ended_keys,
        })
    })
    .await
}

/// The jobs counted now (key and contact) and those over a cap (key and the cap hit).
type Counted<'a> = (Vec<(&'a Key, &'a [u8])>, Vec<(Key, Cap)>);

/// Which claimed jobs are counted now (with their contact) and which are over a cap (with
/// the cap they hit), given the sends already counted.
fn count<'a>(claimed: &[Key], capped: &'a [Capped], recent: &[Sent]) -> Counted<'a> {
    let claimed: HashSet<&Key> = claimed.iter().collect();
    let already: HashSet<(Uuid, Uuid, i16)> = recent
        .iter()
        .map(|s| (s.submission_id, s.campaign_id, s.step))
        .collect();
    // Per contact: (campaign, age in seconds) of each send counted, this batch's at age 0.
    let mut sends: HashMap<&[u8], Vec<(Uuid, f64)>> = HashMap::new();
    for s in recent {
        sends
            .entry(s.contact_hash.as_slice())
            .or_default()
            .push((s.campaign_id, s.age_s));
    }
    let (mut counted, mut ended) = (Vec::new(), Vec::new());
    for c in capped.iter().filter(|c| claimed.contains(&c.key)) {
        let step = i16::try_from(c.key.3).unwrap_or(i16::MAX);
        if already.contains(&(c.key.0, c.key.1, step)) {
            continue;
        }
        let mine = sends.entry(c.contact.as_slice()).or_default();
        let over = c.caps.iter().find(|cap| {
            let n = mine
                .iter()
                .filter(|(camp, age)| {
                    *age < cap.window_s && cap.campaign.is_none_or(|want| want == *camp)
                })
                .count();
            n >= cap.count as usize
        });
        match over {
            Some(cap) => ended.push((c.key.clone(), *cap)),
            None => {
                mine.push((c.key.1, 0.0));
                counted.push((&c.key, c.contact.as_slice()));
            }
        }
    }
    (counted, ended)
}

async fn record(
    conn: &mut AsyncPgConnection,
    channel: &str,
    counted: &[(&Key, &[u8])],
) -> Result<(), StoreError> {
    if counted.is_empty() {
        return Ok(());
    }
    let keys: Vec<Key> = counted.iter().map(|(k, _)| (*k).clone()).collect();
    let (subs, camps, _, steps) = unzip(&keys);
    let hashes: Vec<&[u8]> = counted.iter().map(|(_, h)| *h).collect();
    diesel::sql_query(
        "INSERT INTO contact_sends (submission_id, campaign_id, channel, step, contact_hash) \
         SELECT u.sub, u.camp, $3, u.step, u.hash \
         FROM UNNEST($1::uuid[], $2::uuid[], $4::int2[], $5::bytea[]) AS u(sub, camp, step, hash)",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Text, _>(channel)
    .bind::<Array<SmallInt>, _>(&steps)
    .bind::<Array<Bytea>, _>(&hashes)
    .execute(conn)
    .await?;
    Ok(())
}

async fn end_capped(
    conn: &mut AsyncPgConnection,
    ended: &[(Key, Cap)],
    claim_id: Uuid,
) -> Result<(), StoreError> {
    if ended.is_empty() {
        return Ok(());
    }
    let keys: Vec<Key> = ended.iter().map(|(k, _)| k.clone()).collect();
    let why: Vec<String> = ended
        .iter()
        .map(|(_, cap)| {
            let scope = if cap.campaign.is_some() {
                "campaign"
            } else {
                "channel"
            };
            format!(
                "capped: {} per {}s ({scope} frequency cap)",
                cap.count, cap.window_s
            )
        })
        .collect();
    let (subs, camps, channels, steps) = unzip(&keys);
    diesel::sql_query(
        "UPDATE deliveries d SET status = 'capped', claim = NULL, lease_until = NULL, \
                last_error = k.why, updated_at = now() \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int2[], $6::text[]) AS k(sub, camp, channel, step, why) \
         WHERE d.submission_id = k.sub AND d.campaign_id = k.camp AND d.channel = k.channel AND d.step = k.step \
           AND d.status = 'sending' AND d.claim = $5",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<SmallInt>, _>(&steps)
    .bind::<SqlUuid, _>(claim_id)
    .bind::<Array<Text>, _>(&why)
    .execute(conn)
    .await?;
    Ok(())
}
