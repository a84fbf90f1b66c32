//! Golden tests of the Debezium format (fixtures in
//! `tests/fixtures/debezium`) and its handling of tombstones, control events
//! and malformed input. The cross-format test is in `tests/postgres.rs`.

#![allow(clippy::unwrap_used)]

#[path = "fixtures/harness.rs"]
mod harness;

use overseer_builders::FormatOptions;
use overseer_builders::debezium::Debezium;
use overseer_core::{Change, Consumed, Consumer, Operation, SourcePosition, Timestamp};
use proptest::prelude::*;
use serde_json::json;

use harness::{check_builder_agrees, check_golden, consume_every_prefix, lines, time};

fn debezium() -> Debezium {
    Debezium::new(FormatOptions::default())
}

fn record(consumed: Consumed) -> overseer_core::ConsumedRecord {
    match consumed {
        Consumed::Record(r) => r,
        other => panic!("expected a record, got {other:?}"),
    }
}

#[tokio::test]
async fn debezium_snapshot_create_update_delete_with_and_without_wrapper() {
    check_golden("debezium", "events").await;
}

#[tokio::test]
async fn debezium_composite_key_and_model_from_options() {
    check_golden("debezium", "key_columns").await;
}

#[tokio::test]
async fn debezium_same_history_as_wal2json_and_pgoutput() {
    check_golden("debezium", "cross").await;
}

#[tokio::test]
async fn debezium_malformed_lines_are_dead_lettered_and_valid_ones_stored() {
    check_golden("debezium", "malformed").await;
}

#[test]
fn tombstones_are_control_without_time() {
    let none = Ok(Consumed::Control {
        commit_time: None,
        position: None,
    });
    assert_eq!(debezium().consume(b"null"), none);
    assert_eq!(
        debezium().consume(b""),
        none,
        "a Kafka null value read as an empty message"
    );
    assert_eq!(debezium().consume(br#"{"schema":null,"payload":null}"#), none);
}

#[test]
fn truncate_and_message_are_control_with_source_time_and_lsn() {
    let truncate = br#"{"before":null,"after":null,"source":{"connector":"postgresql","ts_ms":1709294400000,"ts_us":1709294400000123,"table":"t","lsn":4096},"op":"t","ts_ms":1709294400100}"#;
    assert_eq!(
        debezium().consume(truncate),
        Ok(Consumed::Control {
            commit_time: Some(Timestamp::from_micros(1_709_294_400_000_123)),
            position: Some(SourcePosition::from_numbers(&[4096])),
        })
    );
    let message = br#"{"op":"m","ts_ms":1709294400100,"source":{"connector":"postgresql","ts_ms":1709294400000},"message":{"prefix":"p","content":"Yw=="}}"#;
    assert_eq!(
        debezium().consume(message),
        Ok(Consumed::Control {
            commit_time: Some(time("2024-03-01T12:00:00Z")),
            position: None,
        })
    );
}

#[test]
fn operations_and_changes() {
    let event = |op: &str, before: &str, after: &str| {
        format!(
            r#"{{"before":{before},"after":{after},"source":{{"connector":"postgresql","ts_ms":1709294400000,"schema":"public","table":"t","lsn":100}},"op":"{op}","ts_ms":1709294400100}}"#
        )
    };
    let row = r#"{"id":"a-1","n":1,"big":"__debezium_unavailable_value"}"#;
    let full = r#"{"id":"a-1","n":1,"big":"x"}"#;

    let r = record(debezium().consume(event("c", "null", full).as_bytes()).unwrap());
    assert_eq!(
        (r.key.to_string(), r.operation),
        ("t/a-1".into(), Operation::Insert)
    );
    assert_eq!(r.commit_time, time("2024-03-01T12:00:00Z"));
    assert_eq!(
        r.change,
        Change::Full(
            json!({"id": "a-1", "n": 1, "big": "x"})
                .as_object()
                .unwrap()
                .clone()
        )
    );

    let r = record(debezium().consume(event("r", "null", full).as_bytes()).unwrap());
    assert_eq!(r.operation, Operation::Snapshot);

    let r = record(debezium().consume(event("u", "null", full).as_bytes()).unwrap());
    assert_eq!(r.operation, Operation::Update);
    assert!(
        matches!(r.change, Change::Full(_)),
        "an update with every column is the whole row"
    );

    let r = record(debezium().consume(event("u", "null", row).as_bytes()).unwrap());
    assert_eq!(
        r.change,
        Change::Merge(json!({"id": "a-1", "n": 1}).as_object().unwrap().clone())
    );

    let r = record(
        debezium()
            .consume(event("d", r#"{"id":"a-1","n":null,"big":null}"#, "null").as_bytes())
            .unwrap(),
    );
    assert_eq!(
        (r.key.to_string(), r.operation, r.change),
        ("t/a-1".into(), Operation::Delete, Change::Delete)
    );
}

#[test]
fn snapshot_rows_sharing_an_lsn_get_distinct_ordered_positions() {
    let events = lines("debezium", "events");
    let (a, b) = (
        record(debezium().consume(&events[0]).unwrap()),
        record(debezium().consume(&events[1]).unwrap()),
    );
    assert_ne!(a.position, b.position);
    let lsn = SourcePosition::from_numbers(&[33_226_800]);
    assert!(a.position > lsn && a.position.as_str().starts_with(lsn.as_str()));
    let later = record(debezium().consume(&events[2]).unwrap());
    assert!(later.position > a.position && later.position > b.position);
}

#[test]
fn rejections_name_the_problem() {
    let reason = |line: &str| debezium().consume(line.as_bytes()).unwrap_err().reason;
    assert!(reason(r#"{"op":"h","source":{"ts_ms":1}}"#).contains(r#"unknown op "h""#));
    assert!(reason(r#"{"ts_ms":1709294400000}"#).contains("heartbeat"));
    assert!(reason(r#"{"op":"c","after":{"id":1},"source":{"table":"t"}}"#).contains("source.ts_ms"));
    assert_eq!(debezium().consume(b"[").unwrap_err().format, "debezium");
}

const FIXTURES: [&str; 4] = ["events", "key_columns", "malformed", "cross"];

#[test]
fn builder_decodes_stored_updates_like_the_consumer() {
    let mut records = 0;
    for name in FIXTURES {
        records += check_builder_agrees(&debezium(), &lines("debezium", name));
        let options = FormatOptions {
            key_columns: vec!["order_id".into(), "line_no".into()],
            ..FormatOptions::default()
        };
        records += check_builder_agrees(&Debezium::new(options), &lines("debezium", name));
    }
    assert!(records > 15, "only {records} records checked");
}

#[test]
fn truncated_and_corrupted_lines_never_panic() {
    let mut rejected = 0;
    for name in FIXTURES {
        rejected += consume_every_prefix(&debezium(), &lines("debezium", name));
    }
    assert!(rejected > 1000, "only {rejected} rejections");
}

proptest! {
    #[test]
    fn arbitrary_input_is_consumed_or_rejected_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = debezium().consume(&bytes);
    }

    #[test]
    fn arbitrary_envelopes_are_consumed_or_rejected_without_panic(
        op in "[a-z]{0,2}",
        ts in any::<i64>(),
        lsn in any::<i64>(),
        id in prop_oneof![Just(json!(null)), any::<i64>().prop_map(|n| json!(n)), ".{0,5}".prop_map(|s| json!(s))],
        wrapped in any::<bool>(),
    ) {
        let payload = json!({
            "before": {"id": id.clone()},
            "after": {"id": id, "v": "__debezium_unavailable_value"},
            "source": {"ts_ms": ts, "ts_us": ts, "lsn": lsn, "table": "t"},
            "op": op,
        });
        let value = if wrapped { json!({"schema": {}, "payload": payload}) } else { payload };
        let raw = serde_json::to_vec(&value).unwrap();
        if let Err(e) = debezium().consume(&raw) {
            prop_assert!(!e.reason.is_empty());
        }
    }
}
