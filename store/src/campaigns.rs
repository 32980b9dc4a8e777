//! The `campaigns` table: the only code that reads or writes it.

use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use quizflow_core::{Campaign, CampaignSpec};
use uuid::Uuid;

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Integer)]
    version: i32,
    #[diesel(sql_type = Jsonb)]
    definition: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
}

impl Row {
    fn into_campaign(self) -> Option<Campaign> {
        match serde_json::from_value::<CampaignSpec>(self.definition) {
            Ok(spec) => Some(Campaign {
                id: self.id,
                version: self.version,
                spec,
                created_at: self.created_at,
                updated_at: self.updated_at,
            }),
            Err(e) => {
                tracing::error!(campaign = %self.id, error = %e, "stored campaign does not parse; skipped");
                None
            }
        }
    }
}

const COLUMNS: &str = "id, version, definition, created_at, updated_at";

pub async fn list(conn: &mut AsyncPgConnection) -> Result<Vec<Campaign>, StoreError> {
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM campaigns ORDER BY created_at, id"
    ))
    .load(conn)
    .await?;
    Ok(rows.into_iter().filter_map(Row::into_campaign).collect())
}

pub async fn get(conn: &mut AsyncPgConnection, id: Uuid) -> Result<Option<Campaign>, StoreError> {
    let rows: Vec<Row> =
        diesel::sql_query(format!("SELECT {COLUMNS} FROM campaigns WHERE id = $1"))
            .bind::<SqlUuid, _>(id)
            .load(conn)
            .await?;
    Ok(rows.into_iter().next().and_then(Row::into_campaign))
}

fn definition(spec: &CampaignSpec) -> serde_json::Value {
    serde_json::to_value(spec).unwrap_or(serde_json::Value::Null)
}

pub async fn insert(
    conn: &mut AsyncPgConnection,
    spec: &CampaignSpec,
) -> Result<Campaign, StoreError> {
    let rows: Vec<Row> = diesel::sql_query(format!(
        "WITH c AS (INSERT INTO campaigns (id, version, name, active, quiz_id, priority, definition, starts_at, ends_at) \
         VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}), \
         v AS (INSERT INTO campaign_versions (campaign_id, version, definition) SELECT id, version, definition FROM c) \
         SELECT {COLUMNS} FROM c"
    ))
    .bind::<SqlUuid, _>(Uuid::new_v4())
    .bind::<Text, _>(&spec.name)
    .bind::<Bool, _>(spec.active)
    .bind::<Nullable<Text>, _>(spec.quiz_id.as_ref().map(|q| q.as_str()))
    .bind::<Text, _>(spec.priority.as_str())
    .bind::<Jsonb, _>(definition(spec))
    .bind::<Nullable<Timestamptz>, _>(spec.starts_at)
    .bind::<Nullable<Timestamptz>, _>(spec.ends_at)
    .load(conn)
    .await?;
    rows.into_iter()
        .next()
        .and_then(Row::into_campaign)
        .ok_or_else(|| StoreError::data("stored campaign does not parse"))
}

/// Replaces a campaign, bumping its version. `None` if it does not exist.
pub async fn replace(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    spec: &CampaignSpec,
) -> Result<Option<Campaign>, StoreError> {
    let rows: Vec<Row> = diesel::sql_query(format!(
        "WITH c AS (UPDATE campaigns SET version = version + 1, name = $2, active = $3, quiz_id = $4, priority = $5, \
         definition = $6, starts_at = $7, ends_at = $8, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}), \
         v AS (INSERT INTO campaign_versions (campaign_id, version, definition) SELECT id, version, definition FROM c) \
         SELECT {COLUMNS} FROM c"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(&spec.name)
    .bind::<Bool, _>(spec.active)
    .bind::<Nullable<Text>, _>(spec.quiz_id.as_ref().map(|q| q.as_str()))
    .bind::<Text, _>(spec.priority.as_str())
    .bind::<Jsonb, _>(definition(spec))
    .bind::<Nullable<Timestamptz>, _>(spec.starts_at)
    .bind::<Nullable<Timestamptz>, _>(spec.ends_at)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next().and_then(Row::into_campaign))
}

/// Deletes a campaign; false if it did not exist.
/// Its versions stay: jobs matched under them still render (or are cancelled) with them.
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> Result<bool, StoreError> {
    use crate::schema::campaigns::dsl;
    use diesel::{ExpressionMethods, QueryDsl};
    let n = diesel::delete(dsl::campaigns.filter(dsl::id.eq(id)))
        .execute(conn)
        .await?;
    Ok(n > 0)
}

/// Campaign names by id (the stats' cost per campaign).
pub async fn names(
    conn: &mut AsyncPgConnection,
) -> Result<std::collections::HashMap<Uuid, String>, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Text)]
        name: String,
    }
    let rows: Vec<Name> = diesel::sql_query("SELECT id, name FROM campaigns")
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.name)).collect())
}
