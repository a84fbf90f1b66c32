//! Shared helpers for the cross-crate tests: a scripted test format whose
//! events say exactly which [`Change`] they make, and the store backends
//! every conformance test runs on.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use overseer_core::change::{FieldPath, Patch};
use overseer_core::object_store::ObjectStore;
use overseer_core::object_store::local::LocalFileSystem;
use overseer_core::object_store::memory::InMemory;
use overseer_core::{
    Change, ConsumeError, Consumed, ConsumedRecord, Consumer, Format, Operation, RecordKey, SourcePosition,
    StateBuilder, Timestamp, UpdateDocument,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One event of the scripted format (`"script"`), as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptEvent {
    /// Model.
    pub model: String,
    /// Record id.
    pub id: String,
    /// Commit time, microseconds.
    pub t: i64,
    /// Position (ordered within the source).
    pub pos: u64,
    /// `full`, `merge`, `patch` or `delete`.
    pub op: String,
    /// The state (`full`), the columns (`merge`) or the fields set (`patch`, dotted paths).
    #[serde(default)]
    pub data: Map<String, Value>,
    /// Fields removed (`patch`).
    #[serde(default)]
    pub unset: Vec<String>,
}

impl ScriptEvent {
    /// The event as one JSON line.
    pub fn line(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap().into()
    }

    /// The change this event makes.
    pub fn change(&self) -> Option<Change> {
        Some(match self.op.as_str() {
            "full" => Change::Full(self.data.clone()),
            "merge" => Change::Merge(self.data.clone()),
            "patch" => Change::Patch(Patch {
                truncated: Vec::new(),
                removed: self.unset.iter().map(|p| FieldPath::parse(p)).collect(),
                updated: self
                    .data
                    .iter()
                    .map(|(k, v)| (FieldPath::parse(k), v.clone()))
                    .collect(),
            }),
            "delete" => Change::Delete,
            _ => return None,
        })
    }
}

/// Consumer and builder of [`ScriptEvent`] lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct Script;

fn parse(raw: &[u8]) -> Result<(ScriptEvent, Change), ConsumeError> {
    let e: ScriptEvent =
        serde_json::from_slice(raw).map_err(|e| ConsumeError::new("script", e.to_string()))?;
    let change = e
        .change()
        .ok_or_else(|| ConsumeError::new("script", format!("unknown op {:?}", e.op)))?;
    Ok((e, change))
}

impl Consumer for Script {
    fn format(&self) -> Format {
        Format::new("script").unwrap()
    }

    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        let (e, change) = parse(raw)?;
        let key =
            RecordKey::new(&e.model, &e.id).map_err(|err| ConsumeError::new("script", err.to_string()))?;
        Ok(Consumed::Record(ConsumedRecord {
            key,
            operation: match e.op.as_str() {
                "full" => Operation::Replace,
                "delete" => Operation::Delete,
                _ => Operation::Update,
            },
            commit_time: Timestamp::from_micros(e.t),
            position: SourcePosition::from_numbers(&[e.pos]),
            change,
        }))
    }
}

impl StateBuilder for Script {
    fn format(&self) -> Format {
        Consumer::format(self)
    }

    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        parse(&update.raw).map(|(_, c)| c)
    }
}

/// A named object store backend for the conformance suite.
pub struct Backend {
    /// Its name, for assertion messages.
    pub name: &'static str,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Keeps a temporary directory alive.
    pub _dir: Option<tempfile::TempDir>,
}

/// Every backend the store must work on: Overseer's `MemoryStore`,
/// `object_store`'s InMemory and LocalFileSystem.
pub fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    vec![
        Backend {
            name: "memory",
            store: Arc::new(overseer_core::store::MemoryStore::new()),
            _dir: None,
        },
        Backend {
            name: "inmemory",
            store: Arc::new(InMemory::new()),
            _dir: None,
        },
        Backend {
            name: "local",
            store: Arc::new(fs),
            _dir: Some(dir),
        },
    ]
}

/// The environment variable holding the URL of the Postgres server the tests
/// use (`scripts/test.sh` starts one with `scripts/pg.sh` and sets it).
pub const PG_URL_ENV: &str = "OVERSEER_TEST_PG_URL";

/// When this environment variable is set (to anything), tests that need a
/// server panic if it is not configured instead of skipping (CI sets it).
pub const REQUIRE_SERVERS_ENV: &str = "OVERSEER_REQUIRE_SERVERS";

/// The URL of the test Postgres server, from [`PG_URL_ENV`].
///
/// `None` (with a notice on stderr) when it is not set, so a plain
/// `cargo test` on a laptop skips the Postgres tests; panics instead when
/// [`REQUIRE_SERVERS_ENV`] is set, saying how to get a server.
pub fn pg_server_url(test: &str) -> Option<String> {
    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ if std::env::var_os(REQUIRE_SERVERS_ENV).is_some() => panic!(
            "{test}: {PG_URL_ENV} is not set but {REQUIRE_SERVERS_ENV} is: run the suite with \
             `bash scripts/test.sh` (it starts Postgres), or start a server with \
             `bash scripts/pg.sh start DIR` and export {PG_URL_ENV}=$(cat DIR/url)"
        ),
        _ => {
            eprintln!(
                "{test}: skipped: no Postgres ({PG_URL_ENV} is not set; `bash scripts/test.sh` starts one)"
            );
            None
        }
    }
}

/// Connects to `url`, driving the connection on a spawned tokio task.
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A fresh, uniquely named database on the test server, for one test: tests
/// run in parallel without seeing each other's tables. Dropping it drops the
/// database (forcibly closing connections still open to it).
pub struct PgDatabase {
    name: String,
    url: String,
    server_url: String,
    client: tokio_postgres::Client,
}

impl PgDatabase {
    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client connected to the database.
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// A new connection to the database.
    pub async fn connect(&self) -> tokio_postgres::Client {
        pg_connect(&self.url).await.unwrap()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let server_url = self.server_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime: use a runtime of our own on
        // another thread, and wait for it so the database is gone on return.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&server_url, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                let driver = tokio::spawn(connection);
                let done = client.batch_execute(&sql).await;
                drop(client);
                let _ = driver.await;
                done.ok()
            })
        });
        let _ = cleanup.join();
    }
}

/// A fresh database for the test `name_hint` on the test server (see
/// [`pg_server_url`]): `None` when there is no server and none is required.
///
/// # Panics
///
/// When a server is required but not configured, or cannot be reached.
pub async fn pg_database(name_hint: &str) -> Option<PgDatabase> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);

    let server_url = pg_server_url(name_hint)?;
    let hint: String = name_hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "ot_{hint}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = pg_connect(&server_url)
        .await
        .unwrap_or_else(|e| panic!("{name_hint}: cannot connect to {server_url} ({PG_URL_ENV}): {e}"));
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("{name_hint}: cannot create database {name}: {e}"));
    let url = overseer_builders::migrate::url_with_database(&server_url, &name);
    let client = pg_connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{name_hint}: cannot connect to {url}: {e}"));
    Some(PgDatabase {
        name,
        url,
        server_url,
        client,
    })
}
