//! The `mongo` format: golden tests over change streams written from
//! MongoDB's documentation (relaxed and canonical Extended JSON v2), the
//! simplified Toy example, and rejection of malformed events.

use std::path::PathBuf;

use bytes::Bytes;
use overseer_builders::mongo::{Mongo, id_text, to_relaxed};
use overseer_builders::{FormatName, FormatOptions};
use overseer_core::change::{FieldPath, MAX_PATH_SEGMENTS, Patch};
use overseer_core::store::layout::short_digest;
use overseer_core::{
    BatchReport, Change, Consumed, ConsumedRecord, Consumer, Ingestor, Model, Operation, RecordKey,
    References, SourceId, SourcePosition, StateBuilder, Store, Timestamp, UpdateDocument,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mongo")
        .join(name)
}

/// The lines of a JSONL fixture, exactly as written (without the newline).
fn lines(name: &str) -> Vec<Bytes> {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture readable");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Bytes::from(l.to_owned()))
        .collect()
}

fn with_model(model: &str) -> FormatOptions {
    FormatOptions {
        model: Some(Model::new(model).expect("model")),
        ..FormatOptions::default()
    }
}

async fn ingest(store: &Store, options: FormatOptions, batch: &[Bytes]) -> BatchReport {
    let consumer = overseer_builders::consumer(FormatName::Mongo, options).expect("consumer");
    let ingestor = Ingestor::new(
        store.clone(),
        SourceId::new("mongo-test").expect("source"),
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

fn time(text: &str) -> Timestamp {
    Timestamp::parse(text).expect("time")
}

fn consume(mongo: &Mongo, raw: &str) -> ConsumedRecord {
    match mongo.consume(raw.as_bytes()) {
        Ok(Consumed::Record(r)) => r,
        other => panic!("expected a record from {raw}, got {other:?}"),
    }
}

fn rejection(mongo: &Mongo, raw: &str) -> String {
    match mongo.consume(raw.as_bytes()) {
        Err(e) => {
            assert_eq!(e.format, "mongo");
            e.reason
        }
        Ok(other) => panic!("expected {raw} to be rejected, got {other:?}"),
    }
}

fn obj(value: Value) -> overseer_core::State {
    match value {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// Ingests a fixture change stream and compares every state listed in
/// `expected.json`, values and field order.
async fn golden(events: &str) {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).expect("expected.json"))
            .expect("expected.json is JSON");
    let store = Store::in_memory();
    let report = ingest(&store, FormatOptions::default(), &lines(events)).await;
    let dead = store.dead_letters().await.expect("dead letters");
    let counts = &expected["report"];
    assert_eq!(
        json!({
            "read": report.read,
            "stored": report.stored,
            "duplicates": report.duplicates,
            "dead_lettered": report.dead_lettered,
            "control": report.control,
        }),
        *counts,
        "{events}: dead letters: {:?}",
        dead.iter().map(|d| &d.error).collect::<Vec<_>>()
    );
    let watermark = expected["watermark"].as_str().expect("watermark");
    assert_eq!(report.watermark, Some(time(watermark)));

    let checks = expected["states"].as_array().expect("states");
    assert!(checks.len() >= 10);
    for check in checks {
        let model = check["model"].as_str().expect("model");
        let id = check["id"].as_str().expect("id");
        let at = check["at"].as_str().expect("at");
        let want = &check["state"];
        let got = state(&store, model, id, time(at)).await;
        assert_eq!(&got, want, "{events}: {model}/{id} at {at} ({})", check["why"]);
        // Value equality ignores field order; the text does not.
        assert_eq!(
            serde_json::to_string(&got).expect("json"),
            serde_json::to_string(want).expect("json"),
            "{events}: field order of {model}/{id} at {at}"
        );
    }

    // Re-delivering the whole stream stores nothing new.
    let again = ingest(&store, FormatOptions::default(), &lines(events)).await;
    assert_eq!((again.stored, again.duplicates), (0, report.stored));
}

#[tokio::test]
async fn relaxed_change_stream_golden() {
    golden("relaxed.jsonl").await;
}

#[tokio::test]
async fn canonical_change_stream_golden() {
    golden("canonical.jsonl").await;
}

#[tokio::test]
async fn relaxed_and_canonical_streams_decode_to_the_same_changes() {
    let mongo = Mongo::default();
    let relaxed = lines("relaxed.jsonl");
    let canonical = lines("canonical.jsonl");
    assert_eq!(relaxed.len(), canonical.len());
    for (r, c) in relaxed.iter().zip(&canonical) {
        assert_ne!(r, c);
        match (mongo.consume(r), mongo.consume(c)) {
            (Ok(Consumed::Record(r)), Ok(Consumed::Record(c))) => {
                assert_eq!(
                    (&r.key, r.operation, r.commit_time, &r.change),
                    (&c.key, c.operation, c.commit_time, &c.change)
                );
                // Same cluster time and resume token; the digest differs.
                let prefix = |p: &SourcePosition| p.as_str().rsplit_once('.').map(|(a, _)| a.to_owned());
                assert_eq!(prefix(&r.position), prefix(&c.position));
            }
            (Ok(Consumed::Control { commit_time: a, .. }), Ok(Consumed::Control { commit_time: b, .. })) => {
                assert_eq!(a, b)
            }
            other => panic!("relaxed and canonical differ: {other:?}"),
        }
    }
}

#[test]
fn transaction_events_sharing_cluster_time_are_ordered_by_resume_token() {
    let mongo = Mongo::default();
    for file in ["relaxed.jsonl", "canonical.jsonl"] {
        let events = lines(file);
        // Lines 6 to 8: insert order 42, update order 42, insert its invoice,
        // all in one transaction.
        let txn: Vec<(ConsumedRecord, &Bytes)> = events[5..8]
            .iter()
            .map(|raw| (consume(&mongo, std::str::from_utf8(raw).expect("utf-8")), raw))
            .collect();
        let (insert, update, invoice) = (&txn[0].0, &txn[1].0, &txn[2].0);
        assert_eq!(insert.operation, Operation::Insert);
        assert_eq!(update.operation, Operation::Update);
        assert_eq!(insert.key, update.key);
        assert_eq!(invoice.key.to_string(), r#"invoices/{"order":42,"n":1}"#);
        for (record, _) in &txn {
            assert_eq!(record.commit_time, time("2022-06-10T16:36:40.250Z"));
            let prefix = SourcePosition::from_numbers(&[1654879000, 3]);
            assert!(record.position.as_str().starts_with(prefix.as_str()));
        }
        assert!(insert.position < update.position, "{file}");
        assert!(update.position < invoice.position, "{file}");
        // The fixture is chosen so that a digest alone would order the update
        // before the insert: only the resume token gets this right.
        assert!(short_digest(txn[1].1) < short_digest(txn[0].1), "{file}");
    }
}

#[tokio::test]
async fn toy_example_from_the_simplified_seed() {
    let store = Store::in_memory();
    let batch = [
        Bytes::from_static(
            br#"{"_id": "22914ec8-4687-4428-8cab-e0fd21c6b3b6", "fullDocument": {"type": "watergun", "color": "blue"}, "clusterTime": 1658224073}"#,
        ),
        Bytes::from_static(
            br#"{"_id": "22914ec8-4687-4428-8cab-e0fd21c6b3b6", "updateDescription": {"updatedFields": {"type": "balloon"}}, "clusterTime": 1658224074}"#,
        ),
    ];
    let report = ingest(&store, with_model("toys"), &batch).await;
    assert_eq!((report.stored, report.dead_lettered), (2, 0));
    assert_eq!(
        report
            .notifications
            .iter()
            .map(|n| n.operation)
            .collect::<Vec<_>>(),
        [Operation::Insert, Operation::Update]
    );
    let id = "22914ec8-4687-4428-8cab-e0fd21c6b3b6";
    let at = Timestamp::from_secs;

    assert_eq!(state(&store, "toys", id, at(1658224072)).await, Value::Null);
    let first = state(&store, "toys", id, at(1658224073)).await;
    assert_eq!(
        first,
        json!({"_id": "22914ec8-4687-4428-8cab-e0fd21c6b3b6", "type": "watergun", "color": "blue"})
    );
    // `_id` is inserted as the first field.
    assert_eq!(
        serde_json::to_string(&first).expect("json"),
        r#"{"_id":"22914ec8-4687-4428-8cab-e0fd21c6b3b6","type":"watergun","color":"blue"}"#
    );
    let balloon = json!({"_id": "22914ec8-4687-4428-8cab-e0fd21c6b3b6", "type": "balloon", "color": "blue"});
    assert_eq!(state(&store, "toys", id, at(1658224074)).await, balloon);
    assert_eq!(state(&store, "toys", id, at(1758224074)).await, balloon);
    assert_eq!(state(&store, "toys", id, Timestamp::MAX).await, balloon);
}

#[test]
fn simplified_events_need_a_model() {
    let toy = r#"{"_id": "t1", "fullDocument": {"type": "watergun"}, "clusterTime": 1658224073}"#;
    let reason = rejection(&Mongo::default(), toy);
    assert!(reason.contains("--model"), "{reason}");

    // ns.coll is enough.
    let with_ns =
        r#"{"_id": "t1", "ns": {"db": "shop", "coll": "toys"}, "fullDocument": {}, "clusterTime": 5}"#;
    let record = consume(&Mongo::default(), with_ns);
    assert_eq!(record.key.to_string(), "toys/t1");
    assert_eq!(record.commit_time, Timestamp::from_secs(5));
    assert_eq!(record.change, Change::Full(obj(json!({"_id": "t1"}))));

    // No operation to infer.
    let reason = rejection(
        &Mongo::new(with_model("toys")),
        r#"{"_id": "t1", "clusterTime": 5}"#,
    );
    assert!(reason.contains("operationType"), "{reason}");
    // Milliseconds are not seconds.
    let reason = rejection(
        &Mongo::new(with_model("toys")),
        r#"{"_id": "t1", "fullDocument": {}, "clusterTime": 1658224073000}"#,
    );
    assert!(reason.contains("milliseconds"), "{reason}");
}

#[test]
fn model_option_overrides_the_collection() {
    let event = r#"{"_id": {"_data": "82"}, "operationType": "delete", "clusterTime": {"$timestamp": {"t": 10, "i": 2}}, "ns": {"db": "app", "coll": "users"}, "documentKey": {"_id": {"$numberLong": "7"}}}"#;
    let record = consume(&Mongo::new(with_model("people")), event);
    assert_eq!(record.key.to_string(), "people/7");
    let record = consume(&Mongo::default(), event);
    assert_eq!(record.key.to_string(), "users/7");
    assert_eq!(record.operation, Operation::Delete);
    assert_eq!(record.change, Change::Delete);
}

#[test]
fn commit_time_is_wall_time_else_cluster_time_and_position_orders_by_cluster_time() {
    let mongo = Mongo::default();
    let base = r#""operationType": "delete", "ns": {"db": "app", "coll": "c"}, "documentKey": {"_id": "x"}"#;
    let relaxed_wall = consume(
        &mongo,
        &format!(
            r#"{{{base}, "clusterTime": {{"$timestamp": {{"t": 1658224073, "i": 1}}}}, "wallTime": {{"$date": "2022-07-19T09:47:53.123Z"}}}}"#
        ),
    );
    assert_eq!(relaxed_wall.commit_time, time("2022-07-19T09:47:53.123Z"));
    let canonical_wall = consume(
        &mongo,
        &format!(
            r#"{{{base}, "clusterTime": {{"$timestamp": {{"t": 1658224073, "i": 1}}}}, "wallTime": {{"$date": {{"$numberLong": "1658224073123"}}}}}}"#
        ),
    );
    assert_eq!(canonical_wall.commit_time, time("2022-07-19T09:47:53.123Z"));
    let no_wall = consume(
        &mongo,
        &format!(r#"{{{base}, "clusterTime": {{"$timestamp": {{"t": 1658224073, "i": 2}}}}}}"#),
    );
    assert_eq!(no_wall.commit_time, Timestamp::from_secs(1658224073));

    // No resume token: (t, i) then the digest of the event.
    let pos = no_wall.position.as_str();
    assert_eq!(pos.len(), 16 + 1 + 16 + 1 + 32, "{pos}");
    assert!(pos.starts_with("0000000062d67dc9.0000000000000002."), "{pos}");
    assert!(relaxed_wall.position < no_wall.position);
    // Re-delivery: the same bytes, the same position.
    assert_eq!(
        consume(
            &mongo,
            &format!(r#"{{{base}, "clusterTime": {{"$timestamp": {{"t": 1658224073, "i": 2}}}}}}"#)
        )
        .position,
        no_wall.position
    );
    // A later i orders later even with a "smaller" token.
    let later = consume(
        &mongo,
        &format!(
            r#"{{"_id": {{"_data": "00"}}, {base}, "clusterTime": {{"$timestamp": {{"t": 1658224073, "i": 10}}}}}}"#
        ),
    );
    assert!(no_wall.position < later.position);
}

#[test]
fn record_ids_of_every_id_type() {
    let cases = [
        (json!("abc"), "abc"),
        (
            json!({"$oid": "62d67dc9a1b2c3d4e5f60718"}),
            "62d67dc9a1b2c3d4e5f60718",
        ),
        (json!(42), "42"),
        (json!({"$numberInt": "-3"}), "-3"),
        (json!({"$numberLong": "9007199254740993"}), "9007199254740993"),
        (json!({"$numberDouble": "1.5"}), "1.5"),
        (json!({"$numberDecimal": "10.50"}), "10.50"),
        (json!({"b": {"$numberInt": "2"}, "a": "x"}), r#"{"b":2,"a":"x"}"#),
        (
            json!({"$binary": {"base64": "AQID", "subType": "04"}}),
            r#"{"$binary":{"base64":"AQID","subType":"04"}}"#,
        ),
        (json!(true), "true"),
    ];
    let mongo = Mongo::default();
    for (id, text) in cases {
        assert_eq!(id_text(&id).as_deref(), Some(text), "{id}");
        let event = json!({
            "operationType": "delete",
            "clusterTime": {"$timestamp": {"t": 1, "i": 1}},
            "ns": {"db": "d", "coll": "c"},
            "documentKey": {"_id": id},
        });
        assert_eq!(consume(&mongo, &event.to_string()).key.id.as_str(), text);
    }
    assert_eq!(id_text(&json!("")), None);
    let empty = r#"{"operationType": "delete", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": ""}}"#;
    assert!(rejection(&mongo, empty).contains("empty"));
    let missing = r#"{"operationType": "delete", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "d", "coll": "c"}, "documentKey": {"shard": 1}}"#;
    assert!(rejection(&mongo, missing).contains("documentKey has no _id"));
}

#[test]
fn canonical_extended_json_becomes_relaxed() {
    let canonical = json!({
        "int": {"$numberInt": "-5"},
        "long": {"$numberLong": "9223372036854775807"},
        "double": {"$numberDouble": "-0.25"},
        "whole": {"$numberDouble": "2.0"},
        "exp": {"$numberDouble": "1.0E+300"},
        "inf": {"$numberDouble": "-Infinity"},
        "nan": {"$numberDouble": "NaN"},
        "date": {"$date": {"$numberLong": "0"}},
        "old": {"$date": {"$numberLong": "-1"}},
        "far": {"$date": {"$numberLong": "253402300800000"}},
        "last": {"$date": {"$numberLong": "253402300799999"}},
        "oid": {"$oid": "62d67dc9a1b2c3d4e5f60718"},
        "dec": {"$numberDecimal": "1E-2"},
        "ts": {"$timestamp": {"t": 1, "i": 2}},
        "re": {"$regularExpression": {"pattern": "^a", "options": "i"}},
        "nested": [{"x": {"$numberInt": "1"}}, [{"$numberLong": "2"}]],
        "not_a_wrapper": {"$numberInt": "1", "other": true},
        "bad": {"$numberInt": "one"},
    });
    let relaxed = to_relaxed(&canonical);
    let want = json!({
        "int": -5,
        "long": 9223372036854775807_i64,
        "double": -0.25,
        "whole": 2.0,
        "exp": 1e300,
        "inf": {"$numberDouble": "-Infinity"},
        "nan": {"$numberDouble": "NaN"},
        "date": {"$date": "1970-01-01T00:00:00.000Z"},
        "old": {"$date": {"$numberLong": "-1"}},
        "far": {"$date": {"$numberLong": "253402300800000"}},
        "last": {"$date": "9999-12-31T23:59:59.999Z"},
        "oid": {"$oid": "62d67dc9a1b2c3d4e5f60718"},
        "dec": {"$numberDecimal": "1E-2"},
        "ts": {"$timestamp": {"t": 1, "i": 2}},
        "re": {"$regularExpression": {"pattern": "^a", "options": "i"}},
        "nested": [{"x": 1}, [2]],
        "not_a_wrapper": {"$numberInt": "1", "other": true},
        "bad": {"$numberInt": "one"},
    });
    assert_eq!(relaxed, want);
    assert_eq!(
        serde_json::to_string(&relaxed).expect("json"),
        serde_json::to_string(&want).expect("json")
    );
    // Doubles stay doubles, integers stay integers.
    assert!(relaxed["whole"].is_f64());
    assert!(relaxed["int"].is_i64());
    // Relaxed input is a fixed point.
    assert_eq!(to_relaxed(&relaxed), relaxed);
}

#[test]
fn update_description_becomes_a_patch() {
    let event = json!({
        "_id": {"_data": "8262A3714F000000012B022C0100296E5A1004"},
        "operationType": "update",
        "clusterTime": {"$timestamp": {"t": {"$numberLong": "1654878543"}, "i": 1}},
        "ns": {"db": "engineering", "coll": "users"},
        "documentKey": {"_id": {"$oid": "58a4eb4a30c75625e00d2820"}},
        "updateDescription": {
            "updatedFields": {"meta.region": "eu", "status_history.2": {"$numberInt": "3"}, "a.b": 1},
            "removedFields": ["phoneNumber", "x.y"],
            "truncatedArrays": [{"field": "vacation_time", "newSize": {"$numberInt": "36"}}],
            "disambiguatedPaths": {"a.b": ["a.b"], "x.y": ["x", "y"]},
        },
    });
    let record = consume(&Mongo::default(), &event.to_string());
    assert_eq!(record.operation, Operation::Update);
    assert_eq!(record.commit_time, Timestamp::from_secs(1654878543));
    assert_eq!(
        record.change,
        Change::Patch(Patch {
            truncated: vec![(FieldPath::parse("vacation_time"), 36)],
            removed: vec![FieldPath::parse("phoneNumber"), FieldPath::parse("x.y")],
            updated: vec![
                (FieldPath::parse("meta.region"), json!("eu")),
                (FieldPath::parse("status_history.2"), json!(3)),
                (FieldPath::field("a.b"), json!(1)),
            ],
        })
    );

    // A path through a dotted field name below the top level cannot be
    // represented by a FieldPath: rejected rather than applied elsewhere.
    let mut deep = event.clone();
    deep["updateDescription"]["disambiguatedPaths"] = json!({"a.b": ["a.b"], "x.y": ["x", "y.z"]});
    let reason = rejection(&Mongo::default(), &deep.to_string());
    assert!(reason.contains("contains a dot"), "{reason}");
}

/// A path deeper than any MongoDB document nests (updated, removed or
/// truncated) is a typed rejection, which ingestion dead-letters, not a
/// state nested too deep to drop; a path at the limit is read as usual.
#[test]
fn a_path_deeper_than_any_document_is_rejected() {
    let deep = vec!["a"; 200_000].join(".");
    let at_limit = vec!["b"; MAX_PATH_SEGMENTS].join(".");
    let update = |description: Value| {
        json!({
            "_id": {"_data": "8262A3714F000000012B022C0100296E5A1004"},
            "operationType": "update",
            "clusterTime": {"$timestamp": {"t": 1654878543, "i": 1}},
            "ns": {"db": "engineering", "coll": "users"},
            "documentKey": {"_id": "u1"},
            "updateDescription": description,
        })
        .to_string()
    };
    let mongo = Mongo::default();
    for description in [
        json!({"updatedFields": {deep.clone(): 1}, "removedFields": []}),
        json!({"updatedFields": {}, "removedFields": [deep.clone()]}),
        json!({"updatedFields": {}, "removedFields": [], "truncatedArrays": [{"field": deep.clone(), "newSize": 0}]}),
    ] {
        let reason = rejection(&mongo, &update(description));
        assert!(
            reason.contains("has 200000 levels") && reason.contains("nest at most 100"),
            "{reason}"
        );
        assert!(
            reason.len() < 300,
            "the reason quotes the path's start only: {reason}"
        );
    }
    // The same through `disambiguatedPaths`.
    let listed = json!({
        "updatedFields": {"k": 1},
        "removedFields": [],
        "disambiguatedPaths": {"k": vec!["a"; MAX_PATH_SEGMENTS + 1]},
    });
    let reason = rejection(&mongo, &update(listed));
    assert!(reason.contains("has 101 levels"), "{reason}");
    let record = consume(
        &mongo,
        &update(json!({"updatedFields": {at_limit.clone(): 1}, "removedFields": []})),
    );
    assert_eq!(
        record.change,
        Change::Patch(Patch {
            updated: vec![(FieldPath::parse(&at_limit), json!(1))],
            ..Patch::default()
        })
    );
}

#[test]
fn full_document_without_id_gets_the_document_key_first() {
    let event = r#"{"operationType": "replace", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": {"$numberLong": "9"}}, "fullDocument": {"n": {"$numberInt": "1"}}}"#;
    let record = consume(&Mongo::default(), event);
    assert_eq!(record.operation, Operation::Replace);
    let Change::Full(doc) = record.change else {
        panic!("not a full document");
    };
    assert_eq!(serde_json::to_string(&doc).expect("json"), r#"{"_id":9,"n":1}"#);
}

#[test]
fn ddl_and_stream_events_are_control_events() {
    let mongo = Mongo::default();
    let drop = r#"{"_id": {"_data": "8262"}, "operationType": "drop", "clusterTime": {"$timestamp": {"t": 1654879100, "i": 1}}, "wallTime": {"$date": "2022-06-10T16:38:20.000Z"}, "ns": {"db": "engineering", "coll": "users"}}"#;
    match mongo.consume(drop.as_bytes()) {
        Ok(Consumed::Control {
            commit_time,
            position,
        }) => {
            assert_eq!(commit_time, Some(time("2022-06-10T16:38:20Z")));
            let position = position.expect("position");
            assert!(
                position
                    .as_str()
                    .starts_with("0000000062a3737c.0000000000000001.8262.")
            );
        }
        other => panic!("{other:?}"),
    }
    for op in [
        "rename",
        "dropDatabase",
        "invalidate",
        "createIndexes",
        "endOfTransaction",
    ] {
        let event =
            format!(r#"{{"operationType": "{op}", "clusterTime": {{"$timestamp": {{"t": 7, "i": 1}}}}}}"#);
        assert_eq!(
            mongo.consume(event.as_bytes()).map(|c| matches!(
                c,
                Consumed::Control {
                    commit_time: Some(t),
                    position: Some(_)
                } if t == Timestamp::from_secs(7)
            )),
            Ok(true),
            "{op}"
        );
    }
    // Without a cluster time a control event proves nothing, but is not an error.
    assert_eq!(
        mongo.consume(br#"{"operationType": "invalidate"}"#),
        Ok(Consumed::Control {
            commit_time: None,
            position: None
        })
    );
}

#[test]
fn builder_decodes_what_the_consumer_read_without_options() {
    let consumer = Mongo::new(with_model("toys"));
    let builder = Mongo::default();
    for raw in lines("relaxed.jsonl").into_iter().chain([Bytes::from_static(
        br#"{"_id": "t1", "updateDescription": {"updatedFields": {"type": "balloon"}}, "clusterTime": 1658224074}"#,
    )]) {
        let Ok(Consumed::Record(record)) = consumer.consume(&raw) else {
            continue;
        };
        let update = UpdateDocument {
            key: record.key.clone(),
            source: SourceId::new("s").expect("source"),
            position: record.position.clone(),
            commit_time: record.commit_time,
            ingested_at: Timestamp::now(),
            operation: record.operation,
            format: StateBuilder::format(&builder),
            raw,
            references: Vec::new(),
        };
        assert_eq!(builder.decode(&update), Ok(record.change));
    }
}

#[tokio::test]
async fn malformed_lines_are_dead_lettered_and_the_valid_ones_stored() {
    let store = Store::in_memory();
    let batch = lines("malformed.jsonl");
    let report = ingest(&store, FormatOptions::default(), &batch).await;
    assert_eq!(report.read, 12);
    assert_eq!((report.stored, report.dead_lettered, report.control), (2, 10, 0));
    assert_eq!(
        state(&store, "users", "u1", Timestamp::MAX).await,
        json!({"_id": "u1", "name": "Bob", "email": "bob@10gen.com"})
    );
    assert_eq!(
        state(&store, "users", "u1", time("2023-11-14T22:13:29Z")).await,
        json!({"_id": "u1", "name": "Bob", "email": "bob@example.com"})
    );

    let letters = store.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 10);
    let expected = [
        (1, "not valid JSON: EOF while parsing"),
        (2, "updateDescription must be an object, found a string"),
        (3, r#"unknown operationType "upsert""#),
        (4, "event has no clusterTime"),
        (5, "event has no documentKey"),
        (6, "expected a JSON object (one change event), found an array"),
        (7, "fullDocument must be an object, found an array"),
        (8, "updateDescription.removedFields holds a number"),
        (10, r#"clusterTime must be a Timestamp"#),
        (11, "wallTime must be a date"),
    ];
    for (line, reason) in expected {
        let letter = letters
            .iter()
            .find(|l| l.raw == batch[line])
            .unwrap_or_else(|| panic!("line {} not dead-lettered", line + 1));
        assert!(
            letter.error.starts_with("mongo event rejected: ") && letter.error.contains(reason),
            "line {}: {:?} does not say {reason:?}",
            line + 1,
            letter.error
        );
        assert_eq!(letter.format, "mongo");
    }
}

#[test]
fn wrong_types_are_rejected_precisely() {
    let mongo = Mongo::default();
    let cases = [
        (r#"{"operationType": 1}"#, "operationType must be a string"),
        (
            r#"{"operationType": "insert", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 1}}"#,
            "insert event has no fullDocument",
        ),
        (
            r#"{"operationType": "update", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 1}}"#,
            "update event has no updateDescription",
        ),
        (
            r#"{"operationType": "update", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 1}, "updateDescription": {"updatedFields": [1]}}"#,
            "updateDescription.updatedFields must be an object, found an array",
        ),
        (
            r#"{"operationType": "update", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 1}, "updateDescription": {"truncatedArrays": [{"field": "a", "newSize": -1}]}}"#,
            "no non-negative integer newSize",
        ),
        (
            r#"{"operationType": "delete", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": "d.c", "documentKey": {"_id": 1}}"#,
            "ns must be an object",
        ),
        (
            r#"{"operationType": "delete", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "d"}, "documentKey": {"_id": 1}}"#,
            "--model",
        ),
        (
            r#"{"operationType": "delete", "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"db": "d", "coll": "c"}, "documentKey": [1]}"#,
            "documentKey must be an object",
        ),
        (
            r#"{"operationType": "delete", "clusterTime": {"$timestamp": {"t": -1, "i": 1}}, "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 1}}"#,
            "clusterTime must be a Timestamp",
        ),
        ("", "not valid JSON"),
        ("\u{feff}{}", "not valid JSON"),
        ("42", "found a number"),
    ];
    for (raw, reason) in cases {
        let got = rejection(&mongo, raw);
        assert!(got.contains(reason), "{raw}: {got:?} does not say {reason:?}");
    }
    assert!(mongo.consume(&[0xff, 0xfe, b'{']).is_err());
}
