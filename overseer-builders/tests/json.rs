//! The `json` format: whole records as the application wrote them.

use std::path::PathBuf;

use bytes::Bytes;
use overseer_builders::json::Json;
use overseer_builders::{FormatName, FormatOptions};
use overseer_core::{
    BatchReport, Change, Consumed, ConsumedRecord, Consumer, Ingestor, Model, Operation, RecordKey,
    References, SourceId, SourcePosition, StateBuilder, Store, Timestamp, UpdateDocument,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/json")
        .join(name)
}

fn lines(name: &str) -> Vec<Bytes> {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture readable");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Bytes::from(l.to_owned()))
        .collect()
}

fn options(model: &str) -> FormatOptions {
    FormatOptions {
        model: Some(Model::new(model).expect("model")),
        ..FormatOptions::default()
    }
}

fn time(text: &str) -> Timestamp {
    Timestamp::parse(text).expect("time")
}

async fn ingest(store: &Store, options: FormatOptions, batch: &[Bytes]) -> BatchReport {
    let consumer = overseer_builders::consumer(FormatName::Json, options).expect("consumer");
    let ingestor = Ingestor::new(
        store.clone(),
        SourceId::new("app").expect("source"),
        consumer,
        References::new(),
    );
    ingestor.ingest_batch(batch).await.expect("ingest")
}

async fn state(store: &Store, model: &str, id: &str, at: Timestamp) -> Value {
    let key = RecordKey::new(model, id).expect("key");
    overseer_builders::dal(store.clone())
        .state_at(&key, at)
        .await
        .expect("state")
        .map(Value::Object)
        .unwrap_or(Value::Null)
}

fn consume(json: &Json, raw: &str) -> ConsumedRecord {
    match json.consume(raw.as_bytes()) {
        Ok(Consumed::Record(r)) => r,
        other => panic!("expected a record from {raw}, got {other:?}"),
    }
}

#[test]
fn the_json_format_needs_a_model() {
    let err = Json::new(FormatOptions::default()).expect_err("no model");
    assert_eq!(
        err.to_string(),
        "format json: the json format needs a model: pass --model NAME"
    );
    assert!(matches!(
        err,
        overseer_builders::Error::InvalidOption { format: "json", .. }
    ));
    assert!(overseer_builders::consumer(FormatName::Json, FormatOptions::default()).is_err());
    let empty_field = FormatOptions {
        id_field: Some(String::new()),
        ..options("t")
    };
    assert!(Json::new(empty_field).is_err());
    let empty_time = FormatOptions {
        time_field: Some(String::new()),
        ..options("t")
    };
    assert!(Json::new(empty_time).is_err());
    // A builder-only instance does not consume.
    let reason = Json::builder()
        .consume(br#"{"id": 1, "updated_at": 0}"#)
        .expect_err("no model")
        .reason;
    assert!(reason.contains("--model"), "{reason}");
}

#[tokio::test]
async fn records_fixture_golden() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).expect("expected.json"))
            .expect("expected.json is JSON");
    let store = Store::in_memory();
    let batch = lines("records.jsonl");
    let report = ingest(&store, options("transfers"), &batch).await;
    assert_eq!(
        json!({
            "read": report.read,
            "stored": report.stored,
            "duplicates": report.duplicates,
            "dead_lettered": report.dead_lettered,
            "control": report.control,
        }),
        expected["report"]
    );
    assert_eq!(
        report
            .notifications
            .iter()
            .map(|n| (n.key.to_string(), n.operation))
            .collect::<Vec<_>>(),
        [
            ("transfers/t-1".to_owned(), Operation::Replace),
            ("transfers/t-1".to_owned(), Operation::Replace),
            ("transfers/7".to_owned(), Operation::Replace),
            ("transfers/t-1".to_owned(), Operation::Delete),
            ("transfers/t-7".to_owned(), Operation::Replace),
        ]
    );

    for check in expected["states"].as_array().expect("states") {
        let id = check["id"].as_str().expect("id");
        let at = check["at"].as_str().expect("at");
        let got = state(&store, "transfers", id, time(at)).await;
        assert_eq!(got, check["state"], "transfers/{id} at {at}");
        assert_eq!(
            serde_json::to_string(&got).expect("json"),
            serde_json::to_string(&check["state"]).expect("json"),
            "field order of transfers/{id} at {at}"
        );
    }

    let letters = store.dead_letters().await.expect("dead letters");
    let wanted = expected["dead_letters"].as_array().expect("dead_letters");
    assert_eq!(letters.len(), wanted.len());
    for want in wanted {
        let line = want["line"].as_u64().expect("line") as usize;
        let reason = want["reason"].as_str().expect("reason");
        let letter = letters
            .iter()
            .find(|l| l.raw == batch[line - 1])
            .unwrap_or_else(|| panic!("line {line} not dead-lettered"));
        assert!(
            letter.error.starts_with("json event rejected: ") && letter.error.contains(reason),
            "line {line}: {:?} does not say {reason:?}",
            letter.error
        );
        assert_eq!(letter.format, "json");
    }

    // Content-addressed positions: the same lines again store nothing new.
    let again = ingest(&store, options("transfers"), &batch).await;
    assert_eq!((again.stored, again.duplicates), (0, 5));
}

#[test]
fn record_fields() {
    let json = Json::new(options("transfers")).expect("json");
    let raw = r#"{"id": "t-1", "amount": 1, "updated_at": "2024-05-01T12:00:00.5+00:00"}"#;
    let record = consume(&json, raw);
    assert_eq!(record.key.to_string(), "transfers/t-1");
    assert_eq!(record.operation, Operation::Replace);
    assert_eq!(record.commit_time, time("2024-05-01T12:00:00.500Z"));
    assert_eq!(
        record.position,
        SourcePosition::default().with_digest_of(raw.as_bytes())
    );
    assert_eq!(
        record.change,
        Change::Full(
            json!({"id": "t-1", "amount": 1, "updated_at": "2024-05-01T12:00:00.5+00:00"})
                .as_object()
                .cloned()
                .expect("object")
        )
    );

    let deleted = consume(
        &json,
        r#"{"id": 9, "_deleted": true, "updated_at": 1714564800001}"#,
    );
    assert_eq!(deleted.key.to_string(), "transfers/9");
    assert_eq!(deleted.operation, Operation::Delete);
    assert_eq!(deleted.change, Change::Delete);
    assert_eq!(deleted.commit_time, Timestamp::from_millis(1714564800001));

    // Different content, different position.
    let other = consume(
        &json,
        r#"{"id": "t-1", "amount": 2, "updated_at": "2024-05-01T12:00:00.5Z"}"#,
    );
    assert_ne!(other.position, record.position);
}

#[test]
fn custom_id_and_time_fields() {
    let json = Json::new(FormatOptions {
        id_field: Some("uuid".into()),
        time_field: Some("modified".into()),
        ..options("accounts")
    })
    .expect("json");
    let record = consume(
        &json,
        r#"{"id": "ignored", "uuid": "a-1", "modified": "2024-05-01T12:00:00Z", "updated_at": "junk"}"#,
    );
    assert_eq!(record.key.to_string(), "accounts/a-1");
    assert_eq!(record.commit_time, time("2024-05-01T12:00:00Z"));
    let reason = json
        .consume(br#"{"id": "a-2", "modified": "2024-05-01T12:00:00Z"}"#)
        .expect_err("no uuid")
        .reason;
    assert_eq!(reason, r#"the record has no id field "uuid""#);
    let reason = json
        .consume(br#"{"uuid": "a-2", "modified": true}"#)
        .expect_err("bad time")
        .reason;
    assert!(
        reason.contains("must be an RFC 3339 string or integer epoch milliseconds"),
        "{reason}"
    );
}

#[test]
fn builder_needs_no_options() {
    let consumer = Json::new(FormatOptions {
        id_field: Some("key".into()),
        ..options("m")
    })
    .expect("json");
    let builder = Json::builder();
    for raw in [
        r#"{"key": "k", "x": [1, {"y": null}], "updated_at": "2024-05-01T12:00:00Z"}"#,
        r#"{"key": "k", "_deleted": true, "updated_at": "2024-05-01T12:00:01Z"}"#,
    ] {
        let record = consume(&consumer, raw);
        let update = UpdateDocument {
            key: record.key.clone(),
            source: SourceId::new("s").expect("source"),
            position: record.position.clone(),
            commit_time: record.commit_time,
            ingested_at: Timestamp::now(),
            operation: record.operation,
            format: StateBuilder::format(&builder),
            raw: Bytes::from(raw.to_owned()),
            references: Vec::new(),
        };
        assert_eq!(builder.decode(&update), Ok(record.change));
    }
}
