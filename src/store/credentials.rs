//! Each forge's runner credentials.

use std::time::SystemTime;

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, to_ms};
use crate::secret::Secret;

/// A forge's runner credentials, as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsRow {
    /// The forge URL they were registered at.
    pub url: String,
    pub uuid: String,
    pub token: Secret,
    pub runner_id: i64,
    /// The labels last declared (or registered) with the forge.
    pub declared_labels: Vec<String>,
}

impl Store {
    /// The stored credentials of a forge (by its config name).
    pub fn get_credentials(&self, forge: &str) -> Result<Option<CredentialsRow>, StoreError> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(
                "SELECT url, uuid, token, runner_id, declared_labels FROM credentials WHERE forge = ?1",
            )
            .and_then(|mut st| {
                st.query_row([forge], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .optional()
            })
            .map_err(self.err("read credentials"))?;
        let Some((url, uuid, token, runner_id, labels)) = row else {
            return Ok(None);
        };
        let declared_labels: Vec<String> = serde_json::from_str(&labels)
            .map_err(|e| self.bad(format!("declared labels of forge {forge}: {e}")))?;
        Ok(Some(CredentialsRow {
            url,
            uuid,
            token: Secret::new(token),
            runner_id,
            declared_labels,
        }))
    }

    /// Stores (replacing) the credentials of a forge.
    pub fn save_credentials(&self, forge: &str, row: &CredentialsRow) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&row.declared_labels)
            .map_err(|e| self.bad(format!("declared labels: {e}")))?;
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO credentials (forge, url, uuid, token, runner_id, declared_labels, saved_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(forge) DO UPDATE SET url = excluded.url, uuid = excluded.uuid,
                 token = excluded.token, runner_id = excluded.runner_id,
                 declared_labels = excluded.declared_labels, saved_at_ms = excluded.saved_at_ms",
        )
        .and_then(|mut st| {
            st.execute(params![
                forge,
                row.url,
                row.uuid,
                row.token.expose(),
                row.runner_id,
                labels,
                to_ms(SystemTime::now())
            ])
        })
        .map_err(self.err("save credentials"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_the_token() {
        let c = CredentialsRow {
            url: "https://f.example".into(),
            uuid: "u".into(),
            token: Secret::new("tok-123"),
            runner_id: 1,
            declared_labels: vec![],
        };
        assert!(!format!("{c:?}").contains("tok-123"));
    }
}
