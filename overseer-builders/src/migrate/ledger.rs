//! The ledger schema the repair and verification work on, their
//! configuration, their error type and the Postgres plumbing they share.
//!
//! The defaults describe
//! `ledger_entries(id bigint primary key, tx_id text, account text,
//! amount_minor bigint, currency text, balance_after bigint, prev_id bigint
//! null, created_at timestamptz)`; every name can be changed. Names are
//! always quoted as SQL identifiers, never spliced raw.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls};

/// Errors of repair and verification, with what was being done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The configuration cannot work (a name is empty, a column is missing
    /// or has an unusable type, the mapping lacks `id`, ...).
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The configuration file could not be read.
    #[error("cannot read configuration {}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration file is not valid JSON of the expected shape.
    #[error("invalid configuration {}: {source}", path.display())]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        source: serde_json::Error,
    },
    /// A server could not be reached.
    #[error("cannot connect to the {side} database: {source}")]
    Connect {
        /// `legacy` or `new`.
        side: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("{step} on the {side} database failed: {source}")]
    Query {
        /// `legacy` or `new`.
        side: &'static str,
        /// What was being done.
        step: String,
        /// The driver's error (the server's message and SQLSTATE).
        source: tokio_postgres::Error,
    },
    /// A value read back cannot be interpreted (a sum beyond 128 bits, ...).
    #[error("{step} on the {side} database returned an unusable value: {reason}")]
    Value {
        /// `legacy` or `new`.
        side: &'static str,
        /// What was being done.
        step: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where the ledger lives in the new store: the table and its column names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerSchema {
    /// The schema of the table (default: the search path).
    pub schema: Option<String>,
    /// The table (default `ledger_entries`).
    pub table: String,
    /// The primary key, an integer ordering an account's entries (default `id`).
    pub id: String,
    /// The transaction an entry belongs to (default `tx_id`).
    pub tx_id: String,
    /// The account (default `account`).
    pub account: String,
    /// The signed amount in minor units, an integer (default `amount_minor`).
    pub amount: String,
    /// The currency (default `currency`).
    pub currency: String,
    /// The account's cumulative balance after the entry (default `balance_after`).
    pub balance_after: String,
    /// The id of the account's previous entry, `NULL` for its first (default `prev_id`).
    pub prev_id: String,
    /// When the entry was created (default `created_at`).
    pub created_at: String,
}

impl Default for LedgerSchema {
    fn default() -> Self {
        Self {
            schema: None,
            table: "ledger_entries".into(),
            id: "id".into(),
            tx_id: "tx_id".into(),
            account: "account".into(),
            amount: "amount_minor".into(),
            currency: "currency".into(),
            balance_after: "balance_after".into(),
            prev_id: "prev_id".into(),
            created_at: "created_at".into(),
        }
    }
}

/// `name` as a quoted SQL identifier: `"name"`, inner quotes doubled.
///
/// ```
/// use overseer_builders::migrate::ledger::quote_ident;
/// assert_eq!(quote_ident("ledger"), "\"ledger\"");
/// assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
/// ```
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl LedgerSchema {
    /// Every problem with the names at once: empty names, NUL characters,
    /// one column configured for two roles.
    pub fn validate(&self) -> Result<(), LedgerError> {
        let mut problems = Vec::new();
        let mut seen: HashMap<&str, &str> = HashMap::new();
        if let Some(schema) = &self.schema {
            check_name("schema", schema, &mut problems);
        }
        check_name("table", &self.table, &mut problems);
        for (role, name) in self.columns() {
            check_name(role, name, &mut problems);
            if let Some(other) = seen.insert(name, role) {
                problems.push(format!(
                    "column {name:?} is configured both as {other} and as {role}"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LedgerError::Config {
                reason: format!("ledger schema: {}", problems.join("; ")),
            })
        }
    }

    /// The configured columns by role.
    fn columns(&self) -> [(&'static str, &str); 8] {
        [
            ("id", &self.id),
            ("tx_id", &self.tx_id),
            ("account", &self.account),
            ("amount", &self.amount),
            ("currency", &self.currency),
            ("balance_after", &self.balance_after),
            ("prev_id", &self.prev_id),
            ("created_at", &self.created_at),
        ]
    }

    /// The quoted, schema-qualified table name.
    pub(crate) fn table_sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.table)),
            None => quote_ident(&self.table),
        }
    }

    /// The table name for messages.
    pub(crate) fn table_name(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.table),
            None => self.table.clone(),
        }
    }
}

fn check_name(role: &str, name: &str, problems: &mut Vec<String>) {
    if name.trim().is_empty() {
        problems.push(format!("{role} is empty"));
    } else if name.contains('\0') {
        problems.push(format!("{role} {name:?} contains a NUL character"));
    }
}

/// The configuration of `overseer migrate repair` and `overseer migrate
/// verify`: one JSON file. Unknown top-level keys are ignored, so the same
/// file can carry the backfill's settings; the sections reject unknown keys.
///
/// ```
/// use overseer_builders::migrate::ledger::LedgerMigrationConfig;
/// let config: LedgerMigrationConfig = serde_json::from_str(r#"{
///     "new_url": "postgres://postgres@127.0.0.1:5432/ledger",
///     "legacy": {
///         "url": "postgres://postgres@127.0.0.1:5432/monolith",
///         "query": "SELECT id, tx_id, account, amount_minor, currency FROM old_entries"
///     },
///     "schema": { "table": "ledger_entries" },
///     "repair": { "batch_rows": 20000 },
///     "verify": { "max_listed": 100, "diff": { "leaf_rows": 2000 } }
/// }"#)?;
/// assert_eq!(config.repair.batch_rows, 20_000);
/// assert_eq!(config.schema.amount, "amount_minor");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerMigrationConfig {
    /// The new store's connection URL.
    pub new_url: String,
    /// The legacy store and the mapping (verification compares only when set).
    #[serde(default)]
    pub legacy: Option<super::verify::LegacySource>,
    /// The new table and its columns.
    #[serde(default)]
    pub schema: LedgerSchema,
    /// Repair settings.
    #[serde(default)]
    pub repair: super::repair::RepairOptions,
    /// Verification settings.
    #[serde(default)]
    pub verify: super::verify::VerifyOptions,
}

/// Reads a JSON configuration file into `T`.
pub fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LedgerError> {
    let text = std::fs::read_to_string(path).map_err(|source| LedgerError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| LedgerError::ParseConfig {
        path: path.to_owned(),
        source,
    })
}

/// A connection to one side, with its name for error messages.
pub(crate) struct Conn {
    pub(crate) side: &'static str,
    pub(crate) client: Client,
}

impl Conn {
    /// Connects to `url`, driving the connection on a tokio task, with the
    /// session settings the comparisons rely on (UTC, ISO dates).
    pub(crate) async fn open(side: &'static str, url: &str) -> Result<Self, LedgerError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|source| LedgerError::Connect { side, source })?;
        tokio::spawn(async move {
            // The connection ends when the client is dropped; an error here
            // surfaces on the client's next statement.
            let _ = connection.await;
        });
        let conn = Self { side, client };
        conn.batch(
            "session setup",
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
             SET extra_float_digits = 3; SET application_name = 'overseer-migrate'",
        )
        .await?;
        Ok(conn)
    }

    pub(crate) fn err(&self, step: &str, source: tokio_postgres::Error) -> LedgerError {
        LedgerError::Query {
            side: self.side,
            step: step.to_owned(),
            source,
        }
    }

    pub(crate) async fn batch(&self, step: &str, sql: &str) -> Result<(), LedgerError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| self.err(step, e))
    }

    pub(crate) async fn query(
        &self,
        step: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, LedgerError> {
        self.client
            .query(sql, params)
            .await
            .map_err(|e| self.err(step, e))
    }

    /// The SQL types (`format_type`) of the table's columns, by name; a
    /// missing table is a configuration error.
    pub(crate) async fn column_types(
        &self,
        schema: &LedgerSchema,
    ) -> Result<HashMap<String, String>, LedgerError> {
        let regclass = schema.table_sql();
        let rows = self
            .query(
                "reading the table's columns",
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&regclass],
            )
            .await?;
        if rows.is_empty() {
            return Err(LedgerError::Config {
                reason: format!(
                    "table {} does not exist on the {} database",
                    schema.table_name(),
                    self.side
                ),
            });
        }
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Checks that every configured column exists and that the id, prev_id,
    /// amount and balance columns are integers; returns the column types.
    pub(crate) async fn check_schema(
        &self,
        schema: &LedgerSchema,
    ) -> Result<HashMap<String, String>, LedgerError> {
        schema.validate()?;
        let types = self.column_types(schema).await?;
        let mut problems = Vec::new();
        for (role, name) in schema.columns() {
            match types.get(name) {
                None => problems.push(format!(
                    "{role} column {name:?} does not exist in {} (columns: {})",
                    schema.table_name(),
                    sorted_keys(&types)
                )),
                Some(ty)
                    if matches!(role, "id" | "prev_id" | "amount" | "balance_after") && !is_integer(ty) =>
                {
                    problems.push(format!("{role} column {name:?} is {ty}, not an integer type"))
                }
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(types)
        } else {
            Err(LedgerError::Config {
                reason: problems.join("; "),
            })
        }
    }
}

pub(crate) fn sorted_keys(types: &HashMap<String, String>) -> String {
    let mut names: Vec<&str> = types.keys().map(String::as_str).collect();
    names.sort_unstable();
    names.join(", ")
}

fn is_integer(ty: &str) -> bool {
    matches!(ty, "bigint" | "integer" | "smallint")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_validation_reports_every_problem() {
        let schema = LedgerSchema {
            table: " ".into(),
            account: "id".into(),
            prev_id: "a\0".into(),
            ..LedgerSchema::default()
        };
        let err = schema.validate().unwrap_err().to_string();
        assert!(err.contains("table is empty"), "{err}");
        assert!(err.contains("configured both as id and as account"), "{err}");
        assert!(err.contains("NUL"), "{err}");
        assert!(LedgerSchema::default().validate().is_ok());
    }

    #[test]
    fn table_names_are_quoted() {
        let schema = LedgerSchema {
            schema: Some("led\"ger".into()),
            ..LedgerSchema::default()
        };
        assert_eq!(schema.table_sql(), "\"led\"\"ger\".\"ledger_entries\"");
    }
}
