//! Golden tests of the wal2json and pgoutput formats (fixtures in
//! `tests/fixtures/{wal2json,pgoutput}`), the cross-format test (the same
//! history in wal2json, pgoutput and Debezium gives identical states), and
//! robustness against malformed input.

#![allow(clippy::unwrap_used)]

#[path = "fixtures/harness.rs"]
mod harness;

use overseer_builders::FormatOptions;
use overseer_builders::postgres::{
    PgColumn, PgOperation, PgOutput, PgRelation, PgRowChange, PgValue, Wal2Json,
};
use overseer_core::{Change, Consumed, Consumer, Operation, SourcePosition, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};

use harness::{check_builder_agrees, check_golden, consume_every_prefix, lines, time};

// ---------------------------------------------------------------------------
// wal2json golden fixtures
// ---------------------------------------------------------------------------

#[tokio::test]
async fn wal2json_include_pk_transactions_toast_delete_message_truncate() {
    check_golden("wal2json", "accounts").await;
}

#[tokio::test]
async fn wal2json_composite_key_and_key_change() {
    check_golden("wal2json", "composite").await;
}

#[tokio::test]
async fn wal2json_without_pk_or_lsn_keys_by_id() {
    check_golden("wal2json", "no_pk").await;
}

#[tokio::test]
async fn wal2json_key_columns_and_model_from_options() {
    check_golden("wal2json", "key_columns").await;
}

#[tokio::test]
async fn wal2json_malformed_lines_are_dead_lettered_and_valid_ones_stored() {
    check_golden("wal2json", "malformed").await;
}

// ---------------------------------------------------------------------------
// pgoutput golden fixtures
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pgoutput_type_mapping_unchanged_toast_and_deletes() {
    check_golden("pgoutput", "types").await;
}

#[tokio::test]
async fn pgoutput_malformed_lines_are_dead_lettered_and_valid_ones_stored() {
    check_golden("pgoutput", "malformed").await;
}

// ---------------------------------------------------------------------------
// Cross-format
// ---------------------------------------------------------------------------

#[tokio::test]
async fn same_history_in_wal2json_pgoutput_and_debezium_gives_identical_states() {
    let wal2json = check_golden("wal2json", "cross").await;
    let pgoutput = check_golden("pgoutput", "cross").await;
    let debezium = check_golden("debezium", "cross").await;
    // Every format is probed at the same (record, time) points; compare the
    // states pairwise as well as against the golden file.
    let probes = &wal2json.expected;
    let a = harness::probe_states(&wal2json.store, probes).await;
    let b = harness::probe_states(&pgoutput.store, probes).await;
    let c = harness::probe_states(&debezium.store, probes).await;
    assert!(a.len() >= 18, "too few probes: {}", a.len());
    assert_eq!(a, b, "wal2json and pgoutput differ");
    assert_eq!(a, c, "wal2json and debezium differ");
    // The TOAST column survived the update that did not carry it.
    let after_update = a
        .iter()
        .find(|(probe, _)| probe == "accounts/1 at 2024-03-01T12:05:00.5Z")
        .and_then(|(_, state)| state.as_ref())
        .and_then(|s| s.get("bio"));
    assert_eq!(
        after_update,
        Some(&json!("Ann's long biography, stored out of line by TOAST"))
    );
}

// ---------------------------------------------------------------------------
// wal2json events, one by one
// ---------------------------------------------------------------------------

fn wal2json() -> Wal2Json {
    Wal2Json::new(FormatOptions::default())
}

fn record(consumed: Consumed) -> overseer_core::ConsumedRecord {
    match consumed {
        Consumed::Record(r) => r,
        other => panic!("expected a record, got {other:?}"),
    }
}

#[test]
fn wal2json_transaction_records_are_control_with_time_and_lsn() {
    let begin =
        br#"{"action":"B","xid":501,"timestamp":"2024-03-01 12:00:00.5+00","lsn":"0/16B3748","nextlsn":"0/16B3A10"}"#;
    assert_eq!(
        wal2json().consume(begin),
        Ok(Consumed::Control {
            commit_time: Some(time("2024-03-01T12:00:00.5Z")),
            position: Some(SourcePosition::from_numbers(&[0x16B_3748])),
        })
    );
    // Without include-timestamp / include-lsn: still control, without either.
    assert_eq!(
        wal2json().consume(br#"{"action":"C"}"#),
        Ok(Consumed::Control {
            commit_time: None,
            position: None
        })
    );
    // A non-transactional message has a null timestamp.
    let message = br#"{"action":"M","xid":null,"timestamp":null,"lsn":"0/1","transactional":false,"prefix":"p","content":"c"}"#;
    assert_eq!(
        wal2json().consume(message),
        Ok(Consumed::Control {
            commit_time: None,
            position: Some(SourcePosition::from_numbers(&[1])),
        })
    );
    let truncate = br#"{"action":"T","timestamp":"2024-03-01 12:00:00+00","schema":"public","table":"t"}"#;
    assert!(matches!(
        wal2json().consume(truncate),
        Ok(Consumed::Control {
            commit_time: Some(_),
            position: None
        })
    ));
}

#[test]
fn wal2json_row_changes_map_to_full_merge_and_delete() {
    let insert = br#"{"action":"I","timestamp":"2024-03-01 12:00:00+00","lsn":"0/10","schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":1},{"name":"n","type":"numeric","value":2.50}]}"#;
    let r = record(wal2json().consume(insert).unwrap());
    assert_eq!(r.key.to_string(), "t/1");
    assert_eq!(r.operation, Operation::Insert);
    assert_eq!(r.commit_time, time("2024-03-01T12:00:00Z"));
    assert_eq!(
        r.change,
        Change::Full(json!({"id": 1, "n": 2.5}).as_object().unwrap().clone())
    );

    let update = br#"{"action":"U","timestamp":"2024-03-01 12:00:01+00","lsn":"0/20","schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":1}],"identity":[{"name":"id","type":"integer","value":1}]}"#;
    let r = record(wal2json().consume(update).unwrap());
    assert_eq!(r.operation, Operation::Update);
    assert_eq!(
        r.change,
        Change::Merge(json!({"id": 1}).as_object().unwrap().clone())
    );

    let delete = br#"{"action":"D","timestamp":"2024-03-01 12:00:02+00","lsn":"0/30","schema":"public","table":"t","identity":[{"name":"id","type":"integer","value":1}]}"#;
    let r = record(wal2json().consume(delete).unwrap());
    assert_eq!(
        (r.key.to_string(), r.operation, r.change),
        ("t/1".into(), Operation::Delete, Change::Delete)
    );
}

#[test]
fn wal2json_positions_follow_the_lsn_and_differ_per_event() {
    let at = |lsn: &str, id: u32| {
        let line = format!(
            r#"{{"action":"I","timestamp":"2024-03-01 12:00:00+00","lsn":"{lsn}","table":"t","columns":[{{"name":"id","type":"integer","value":{id}}}]}}"#
        );
        record(wal2json().consume(line.as_bytes()).unwrap()).position
    };
    let (a, b, c) = (at("0/FF", 1), at("0/FF", 2), at("1/0", 1));
    assert_ne!(a, b, "events sharing an LSN get distinct positions");
    assert!(a < c && b < c, "positions order by LSN: {a} {b} {c}");
    assert!(
        a.as_str()
            .starts_with(SourcePosition::from_numbers(&[0xFF]).as_str())
    );
    assert_eq!(at("0/FF", 1), a, "a re-delivered event keeps its position");
    // No LSN: a digest-only position.
    let no_lsn = br#"{"action":"D","timestamp":"2024-03-01 12:00:00+00","table":"t","identity":[{"name":"id","type":"integer","value":1}]}"#;
    let position = record(wal2json().consume(no_lsn).unwrap()).position;
    assert!(
        !position.is_empty() && !position.as_str().contains('.'),
        "{position}"
    );
}

#[test]
fn wal2json_rejections_say_what_to_fix() {
    let reason = |line: &[u8]| wal2json().consume(line).unwrap_err().reason;
    assert!(reason(br#"{"action":"Z"}"#).contains(r#"unknown action "Z""#));
    assert!(
        reason(br#"{"action":"I","table":"t","columns":[{"name":"id","type":"integer","value":1}]}"#)
            .contains("include-timestamp=1")
    );
    assert!(reason(b"").contains("empty event"));
    assert!(reason(b"{\"action\":").contains("not valid JSON"));
    let format = wal2json().consume(b"nope").unwrap_err().format;
    assert_eq!(format, "wal2json");
}

// ---------------------------------------------------------------------------
// pgoutput events, one by one
// ---------------------------------------------------------------------------

fn column(name: &str, type_oid: u32, value: PgValue) -> PgColumn {
    PgColumn {
        name: name.into(),
        type_oid,
        value,
    }
}

#[test]
fn pgoutput_row_change_serialized_by_a_producer_is_consumed() {
    let change = PgRowChange {
        relation: PgRelation {
            schema: "public".into(),
            table: "accounts".into(),
            key_columns: vec!["id".into()],
        },
        op: PgOperation::Update,
        commit_time: Timestamp::from_micros(1_709_294_400_123_456),
        lsn: Some(0x1_0000_0010),
        new: vec![
            column("id", 20, PgValue::Text("9".into())),
            column("bio", 25, PgValue::UnchangedToast),
            column("note", 25, PgValue::Null),
        ],
        old: None,
    };
    let line = serde_json::to_vec(&change).unwrap();
    let text = String::from_utf8(line.clone()).unwrap();
    assert!(text.contains(r#""lsn":"1/10""#), "{text}");
    assert!(
        text.contains(r#""commit_time":"2024-03-01T12:00:00.123456Z""#),
        "{text}"
    );
    let r = record(PgOutput::new(FormatOptions::default()).consume(&line).unwrap());
    assert_eq!(r.key.to_string(), "accounts/9");
    assert_eq!(r.operation, Operation::Update);
    assert_eq!(r.commit_time, change.commit_time);
    assert!(r.position > SourcePosition::from_numbers(&[0x1_0000_0010]));
    assert_eq!(
        r.change,
        Change::Merge(json!({"id": 9, "note": null}).as_object().unwrap().clone())
    );

    // Without unchanged TOAST columns an update is the whole row.
    let full = PgRowChange {
        new: vec![column("id", 20, PgValue::Text("9".into()))],
        ..change.clone()
    };
    let r = record(
        PgOutput::new(FormatOptions::default())
            .consume(&serde_json::to_vec(&full).unwrap())
            .unwrap(),
    );
    assert_eq!(
        r.change,
        Change::Full(json!({"id": 9}).as_object().unwrap().clone())
    );

    // A delete without `old` uses the key columns of `new`.
    let delete = PgRowChange {
        op: PgOperation::Delete,
        new: vec![column("id", 20, PgValue::Text("9".into()))],
        ..change
    };
    let r = record(
        PgOutput::new(FormatOptions::default())
            .consume(&serde_json::to_vec(&delete).unwrap())
            .unwrap(),
    );
    assert_eq!(
        (r.key.to_string(), r.change),
        ("accounts/9".into(), Change::Delete)
    );
}

// ---------------------------------------------------------------------------
// Builders agree with consumers; nothing panics
// ---------------------------------------------------------------------------

const WAL2JSON_FIXTURES: [&str; 6] = [
    "accounts",
    "composite",
    "no_pk",
    "key_columns",
    "malformed",
    "cross",
];
const PGOUTPUT_FIXTURES: [&str; 3] = ["types", "malformed", "cross"];

#[test]
fn builders_decode_stored_updates_like_the_consumers() {
    let options = FormatOptions {
        key_columns: vec!["code".into()],
        ..FormatOptions::default()
    };
    let mut records = 0;
    for name in WAL2JSON_FIXTURES {
        records += check_builder_agrees(&wal2json(), &lines("wal2json", name));
        // The builder needs none of the consumer's options.
        records += check_builder_agrees(&Wal2Json::new(options.clone()), &lines("wal2json", name));
    }
    for name in PGOUTPUT_FIXTURES {
        records += check_builder_agrees(&PgOutput::new(FormatOptions::default()), &lines("pgoutput", name));
    }
    assert!(records > 30, "only {records} records checked");
}

#[test]
fn truncated_and_corrupted_lines_never_panic() {
    let mut rejected = 0;
    for name in WAL2JSON_FIXTURES {
        rejected += consume_every_prefix(&wal2json(), &lines("wal2json", name));
    }
    for name in PGOUTPUT_FIXTURES {
        rejected += consume_every_prefix(&PgOutput::new(FormatOptions::default()), &lines("pgoutput", name));
    }
    assert!(rejected > 1000, "only {rejected} rejections");
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-zA-Z0-9 /:.+-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("I"),
            Just("U"),
            Just("D"),
            Just("B"),
            Just("insert"),
            Just("delete")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("action".to_owned()),
                        Just("op".to_owned()),
                        Just("table".to_owned()),
                        Just("columns".to_owned()),
                        Just("identity".to_owned()),
                        Just("timestamp".to_owned()),
                        Just("lsn".to_owned()),
                        Just("name".to_owned()),
                        Just("value".to_owned()),
                        Just("relation".to_owned()),
                        Just("new".to_owned()),
                        Just("old".to_owned()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                ),
                0..5
            )
            .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_input_is_consumed_or_rejected_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = wal2json().consume(&bytes);
        let _ = PgOutput::new(FormatOptions::default()).consume(&bytes);
    }

    #[test]
    fn arbitrary_json_is_consumed_or_rejected_without_panic(value in json_value()) {
        let raw = serde_json::to_vec(&value).unwrap();
        for consumer in [&wal2json() as &dyn Consumer, &PgOutput::new(FormatOptions::default())] {
            if let Err(e) = consumer.consume(&raw) {
                prop_assert!(!e.reason.is_empty());
            }
        }
    }
}
