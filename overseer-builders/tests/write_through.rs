//! The contract write-through ingestion relies on
//! ([`Ingestor::with_dal`](overseer_core::Ingestor::with_dal)): for every
//! event of every fixture, the change a format's consumer produces equals
//! the change its state builder decodes from the stored update.

#![allow(clippy::unwrap_used)] // test helpers: a broken fixture should fail loudly

use std::path::Path;

use bytes::Bytes;
use overseer_builders::{FormatName, FormatOptions};
use overseer_core::{Consumed, Model, SourceId, StateBuilder, Store, Timestamp, UpdateDocument};
use serde_json::Value;

fn options_of(dir: &Path, stem: &str) -> FormatOptions {
    let mut options = FormatOptions::default();
    let expected = [format!("{stem}.expected.json"), "expected.json".to_owned()]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| p.exists());
    if let Some(path) = expected {
        let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let model = value
            .pointer("/options/model")
            .or_else(|| value.pointer(&format!("/{stem}/options/model")))
            .and_then(Value::as_str);
        if let Some(model) = model {
            options.model = Some(Model::new(model).unwrap());
        }
        if let Some(columns) = value.pointer("/options/key_columns").and_then(Value::as_array) {
            options.key_columns = columns.iter().map(|c| c.as_str().unwrap().to_owned()).collect();
        }
    }
    if options.model.is_none() {
        options.model = Some(Model::new("records").unwrap());
    }
    options
}

#[test]
fn consumed_changes_equal_decoded_changes_for_every_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let builders = overseer_builders::builders();
    let mut compared = 0;
    for format in ["mongo", "json", "wal2json", "pgoutput", "debezium"] {
        let dir = root.join(format);
        let name: FormatName = format.parse().unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        for file in files {
            let stem = file.file_stem().unwrap().to_str().unwrap().to_owned();
            let consumer = overseer_builders::consumer(name, options_of(&dir, &stem)).unwrap();
            let builder = builders
                .iter()
                .find(|b| b.format() == consumer.format())
                .expect("a builder for every consumer's format");
            for (n, line) in std::fs::read_to_string(&file).unwrap().lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let Ok(Consumed::Record(record)) = consumer.consume(line.as_bytes()) else {
                    continue;
                };
                let doc = UpdateDocument {
                    key: record.key.clone(),
                    source: SourceId::new("fixture").unwrap(),
                    position: record.position.clone(),
                    commit_time: record.commit_time,
                    ingested_at: Timestamp::EPOCH,
                    operation: record.operation,
                    format: consumer.format(),
                    raw: Bytes::from(line.to_owned()),
                    references: Vec::new(),
                };
                let decoded = builder
                    .decode(&doc)
                    .unwrap_or_else(|e| panic!("{}:{}: {e}", file.display(), n + 1));
                assert_eq!(decoded, record.change, "{}:{}", file.display(), n + 1);
                compared += 1;
            }
        }
    }
    assert!(compared > 50, "only {compared} events compared");
}

/// Ingests the Mongo fixtures `files` into `store` through `dal`
/// (write-through); returns the keys of the records stored.
async fn ingest_mongo_fixtures(
    store: &Store,
    dal: &overseer_core::Dal,
    files: &[&str],
) -> Vec<overseer_core::RecordKey> {
    use overseer_core::{Ingestor, References};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mongo");
    let consumer = overseer_builders::consumer(FormatName::Mongo, FormatOptions::default()).unwrap();
    let ingestor = Ingestor::new(
        store.clone(),
        SourceId::new("m").unwrap(),
        consumer,
        References::new(),
    )
    .with_dal(dal);
    let mut keys = Vec::new();
    for file in files {
        let lines: Vec<Bytes> = std::fs::read_to_string(root.join(file))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Bytes::from(l.to_owned()))
            .collect();
        let report = ingestor.ingest_batch(&lines).await.unwrap();
        keys.extend(report.notifications.iter().map(|n| n.key.clone()));
    }
    keys.sort();
    keys.dedup();
    assert!(!keys.is_empty());
    keys
}

type Counting = overseer_core::store::CountingStore<overseer_core::object_store::memory::InMemory>;

/// An in-memory store that counts its requests.
fn counting_store() -> (std::sync::Arc<Counting>, Store) {
    let counting = std::sync::Arc::new(Counting::new(overseer_core::object_store::memory::InMemory::new()));
    let store = Store::new(counting.clone());
    (counting, store)
}

fn states(t: Vec<overseer_core::dal::TimelineEntry>) -> Vec<Option<overseer_core::State>> {
    t.into_iter().map(|t| t.state).collect()
}

/// A DAL primed by write-through ingestion answers exactly what a cold DAL
/// over the same store answers, without fetching a single update.
#[tokio::test]
async fn write_through_reads_equal_cold_reads() {
    let (counting, store) = counting_store();
    let primed = overseer_builders::dal(store.clone());
    let keys = ingest_mongo_fixtures(&store, &primed, &["relaxed.jsonl", "canonical.jsonl"]).await;
    let mut primed_states = Vec::new();
    counting.reset();
    for key in &keys {
        primed_states.push(states(primed.timeline(key).await.unwrap()));
    }
    assert_eq!(counting.counts().gets, 0, "the primed DAL fetched updates");
    let cold = overseer_builders::dal(store.clone());
    for (key, primed) in keys.iter().zip(primed_states) {
        assert_eq!(primed, states(cold.timeline(key).await.unwrap()), "{key}");
    }
    assert!(counting.counts().gets > 0, "the cold DAL fetches updates");
}

/// An indexed DAL keeps the latest states folded as write-through feeds
/// it: reading them makes no store request, and earlier points of the
/// history (read from the store) agree with a cold DAL.
#[tokio::test]
async fn an_indexed_dal_reads_latest_states_fed_by_write_through_without_the_store() {
    let (counting, store) = counting_store();
    let indexed = overseer_builders::dal(store.clone()).indexed();
    let keys = ingest_mongo_fixtures(&store, &indexed, &["relaxed.jsonl"]).await;
    counting.reset();
    let mut latest = Vec::new();
    for key in &keys {
        latest.push(indexed.state_at(key, Timestamp::MAX).await.unwrap());
    }
    let counts = counting.counts();
    assert_eq!(
        (counts.gets, counts.lists),
        (0, 0),
        "latest states came from the store"
    );
    let cold = overseer_builders::dal(store.clone());
    for (key, state) in keys.iter().zip(latest) {
        assert_eq!(state, cold.state_at(key, Timestamp::MAX).await.unwrap(), "{key}");
        assert_eq!(
            states(indexed.timeline(key).await.unwrap()),
            states(cold.timeline(key).await.unwrap()),
            "{key}"
        );
    }
}
