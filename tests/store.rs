//! The store conformance suite: every test runs on every backend
//! (InMemory and LocalFileSystem).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

use futures::TryStreamExt;
use overseer_core::object_store::{ObjectStore, ObjectStoreExt};
use overseer_core::{
    Compression, Dal, Ingestor, Model, RecordKey, Reference, ReferenceSpec, References, SourceId, Store,
    Timestamp, ZstdOptions,
};
use overseer_tests::{Script, ScriptEvent, backends};
use prost::Message;
use serde_json::{Value, json};

fn ev(model: &str, id: &str, t: i64, pos: u64, op: &str, data: Value) -> ScriptEvent {
    ScriptEvent {
        model: model.into(),
        id: id.into(),
        t,
        pos,
        op: op.into(),
        data: data.as_object().cloned().unwrap_or_default(),
        unset: Vec::new(),
    }
}

fn ingestor(store: &Store, refs: References) -> Ingestor {
    Ingestor::new(store.clone(), SourceId::new("src").unwrap(), Script, refs)
}

fn dal(store: &Store) -> Dal {
    Dal::new(store.clone()).with_builder(Script)
}

async fn all_keys(store: &dyn ObjectStore) -> BTreeSet<String> {
    store
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn hostile_ids_are_stored_found_again_and_stay_inside_the_prefix() {
    let hostile: Vec<String> = vec![
        "a/b".into(),
        "..".into(),
        ".".into(),
        "../../escape".into(),
        "%2F%2E%2E".into(),
        "with space".into(),
        "ctl\u{0}\u{1}\n\r\t".into(),
        "emoji 🦀💸".into(),
        "x".repeat(1024),
        "é".repeat(600),
        "+H1234".into(),
        "C:\\windows\\system32".into(),
        "*?<>|\"#[]{}~^`".into(),
    ];
    for backend in backends() {
        let store = Store::new(backend.store.clone()).with_prefix("tenant");
        let events: Vec<_> = hostile
            .iter()
            .enumerate()
            .map(|(i, id)| ev("m/../x", id, 10, i as u64, "full", json!({"n": i})).line())
            .collect();
        let report = ingestor(&store, References::new())
            .ingest_batch(&events)
            .await
            .unwrap();
        assert_eq!(report.stored, hostile.len(), "{}", backend.name);
        assert_eq!(report.dead_lettered, 0, "{}", backend.name);
        let dal = dal(&store);
        for (i, id) in hostile.iter().enumerate() {
            let key = RecordKey::new("m/../x", id).unwrap();
            let state = dal.state_at(&key, Timestamp::MAX).await.unwrap();
            assert_eq!(
                state.map(Value::Object),
                Some(json!({"n": i})),
                "{} {id:?}",
                backend.name
            );
        }
        for key in all_keys(backend.store.as_ref()).await {
            assert!(
                key.starts_with("tenant/"),
                "{}: {key} escaped the prefix",
                backend.name
            );
        }
        if let Some(dir) = &backend._dir {
            // Nothing was written beside the store's directory either.
            let entries: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                entries,
                vec![std::ffi::OsString::from("tenant")],
                "{}",
                backend.name
            );
        }
    }
}

#[tokio::test]
async fn an_empty_id_is_a_clear_error_and_dead_lettered() {
    assert!(
        RecordKey::new("m", "")
            .unwrap_err()
            .to_string()
            .contains("record id")
    );
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let events = vec![
            ev("m", "ok", 1, 1, "full", json!({})).line(),
            ev("m", "", 1, 2, "full", json!({})).line(),
        ];
        let report = ingestor(&store, References::new())
            .ingest_batch(&events)
            .await
            .unwrap();
        assert_eq!((report.stored, report.dead_lettered), (1, 1), "{}", backend.name);
        let letters = store.dead_letters().await.unwrap();
        assert!(
            letters[0].error.contains("record id"),
            "{}: {}",
            backend.name,
            letters[0].error
        );
    }
}

#[tokio::test]
async fn reingesting_stores_nothing_new_whatever_the_batch_boundaries() {
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let events: Vec<_> = (0..50u64)
            .map(|i| ev("m", &format!("r{}", i % 7), i as i64, i, "merge", json!({"i": i})).line())
            .collect();
        let ing = ingestor(&store, References::new());
        let first = ing.ingest_batch(&events).await.unwrap();
        assert_eq!((first.stored, first.duplicates), (50, 0), "{}", backend.name);
        let keys = all_keys(backend.store.as_ref()).await;
        // Same events, cut into other batches, in another "run" (a new ingestor).
        let again = ingestor(&store, References::new());
        let mut dup = 0;
        for chunk in events.chunks(13) {
            let r = again.ingest_batch(chunk).await.unwrap();
            assert_eq!(r.stored, 0, "{}", backend.name);
            assert!(r.notifications.is_empty());
            dup += r.duplicates;
        }
        assert_eq!(dup, 50, "{}", backend.name);
        assert_eq!(all_keys(backend.store.as_ref()).await, keys, "{}", backend.name);
    }
}

#[tokio::test]
async fn malformed_events_are_dead_lettered_once_and_the_rest_is_stored() {
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let events = vec![
            ev("m", "a", 1, 1, "full", json!({"v": 1})).line(),
            bytes::Bytes::from_static(b"{\"model\": \"m\", \"id\": \"b\", \"t\": 2"),
            bytes::Bytes::from_static(
                b"{\"model\": \"m\", \"id\": 5, \"t\": 2, \"pos\": 2, \"op\": \"full\"}",
            ),
            ev("m", "c", 3, 3, "explode", json!({})).line(),
            ev("m", "d", 4, 4, "full", json!({"v": 4})).line(),
        ];
        let ing = ingestor(&store, References::new());
        let r = ing.ingest_batch(&events).await.unwrap();
        assert_eq!((r.read, r.stored, r.dead_lettered), (5, 2, 3), "{}", backend.name);
        let letters = store.dead_letters().await.unwrap();
        assert_eq!(letters.len(), 3, "{}", backend.name);
        let reasons: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
        assert!(reasons.iter().any(|e| e.contains("EOF")), "{reasons:?}");
        assert!(reasons.iter().any(|e| e.contains("invalid type")), "{reasons:?}");
        assert!(
            reasons.iter().any(|e| e.contains("unknown op \"explode\"")),
            "{reasons:?}"
        );
        assert!(
            letters
                .iter()
                .all(|l| l.source.as_str() == "src" && l.format == "script")
        );
        assert!(
            letters.iter().any(|l| l.raw == events[1]),
            "raw bytes kept exactly"
        );
        // The same input again adds no dead letter.
        ing.ingest_batch(&events).await.unwrap();
        assert_eq!(store.dead_letters().await.unwrap().len(), 3, "{}", backend.name);
    }
}

/// A store holding record `m/a` at position 7 (`{"v": 1}`), and the
/// ingestor that stored it.
async fn with_a_stored_at_position_7(backend: std::sync::Arc<dyn ObjectStore>) -> (Store, Ingestor) {
    let store = Store::new(backend);
    let ing = ingestor(&store, References::new());
    ing.ingest_batch(&[ev("m", "a", 1, 7, "full", json!({"v": 1})).line()])
        .await
        .unwrap();
    (store, ing)
}

/// Dead letters are listed in the order their events arrived in, batch by
/// batch and, within a batch, by position in it: rejected by the consumer
/// or, later, as a position conflict when storing.
#[tokio::test]
async fn dead_letters_are_listed_in_arrival_order() {
    for backend in backends() {
        let (store, ing) = with_a_stored_at_position_7(backend.store.clone()).await;
        let bad = |n: u32| bytes::Bytes::from(format!("not an event {n}"));
        let first = vec![
            bad(0),
            ev("m", "b", 2, 8, "full", json!({})).line(),
            // Rejected when stored, after every consumer rejection.
            ev("m", "a", 1, 7, "full", json!({"v": 2})).line(),
            bad(3),
            bad(4),
            ev("m", "c", 3, 9, "full", json!({})).line(),
            bad(6),
            bad(7),
        ];
        let r = ing.ingest_batch(&first).await.unwrap();
        assert_eq!((r.stored, r.dead_lettered), (2, 6), "{}", backend.name);
        let second = vec![bad(10), bad(11)];
        ing.ingest_batch(&second).await.unwrap();

        let letters = store.dead_letters().await.unwrap();
        let got: Vec<(&[u8], u32)> = letters.iter().map(|l| (l.raw.as_ref(), l.batch_index)).collect();
        let expected: Vec<(&[u8], u32)> = [(&first, 0), (&first, 2), (&first, 3), (&first, 4)]
            .into_iter()
            .chain([(&first, 6), (&first, 7), (&second, 0), (&second, 1)])
            .map(|(batch, i)| (batch[i].as_ref(), i as u32))
            .collect();
        assert_eq!(got, expected, "{}", backend.name);
        assert!(letters[1].error.contains("position conflict"), "{}", backend.name);
    }
}

#[tokio::test]
async fn a_different_event_at_a_stored_position_is_a_conflict_not_a_duplicate() {
    for backend in backends() {
        let (store, ing) = with_a_stored_at_position_7(backend.store.clone()).await;
        let r = ing
            .ingest_batch(&[ev("m", "a", 1, 7, "full", json!({"v": 2})).line()])
            .await
            .unwrap();
        assert_eq!(
            (r.stored, r.duplicates, r.dead_lettered),
            (0, 0, 1),
            "{}",
            backend.name
        );
        assert!(
            store.dead_letters().await.unwrap()[0]
                .error
                .contains("position conflict")
        );
        let state = dal(&store)
            .state_at(&RecordKey::new("m", "a").unwrap(), Timestamp::MAX)
            .await
            .unwrap();
        assert_eq!(
            state.map(Value::Object),
            Some(json!({"v": 1})),
            "the first event stays the truth"
        );
    }
}

#[tokio::test]
async fn concurrent_writers_lose_no_reference() {
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let target = RecordKey::new("transfers", "t1").unwrap();
        let mut tasks = Vec::new();
        // 16 tasks, each its own store handle (no shared cache), each adding
        // references to the same master document and the same target.
        for task in 0..16 {
            let store = Store::new(backend.store.clone());
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let from = RecordKey::new("ledger", "shared").unwrap();
                for j in 0..8 {
                    let r = Reference {
                        field: format!("f{task}_{j}"),
                        target: target.clone(),
                    };
                    store
                        .add_references(&from, &[r], Timestamp::from_secs(1))
                        .await
                        .unwrap();
                    let other = RecordKey::new("ledger", format!("e{task}_{j}")).unwrap();
                    let r = Reference {
                        field: "transfer_id".into(),
                        target: target.clone(),
                    };
                    store
                        .add_references(&other, &[r], Timestamp::from_secs(1))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let master = store
            .references(&RecordKey::new("ledger", "shared").unwrap())
            .await
            .unwrap();
        assert_eq!(master.len(), 16 * 8, "{}", backend.name);
        let referrers = store.referrers(&target).await.unwrap();
        assert_eq!(referrers.len(), 16 * 8 * 2, "{}", backend.name);
    }
}

#[tokio::test]
async fn joins_follow_references_as_of_the_requested_time() {
    // Read by listing the store; by an indexed DAL fed by write-through; and
    // by an indexed DAL started on a store that already held the first
    // events (a restart).
    for (backend, reads) in ["listing", "indexed", "restart"]
        .into_iter()
        .flat_map(|r| backends().into_iter().map(move |b| (b, r)))
    {
        let store = Store::new(backend.store.clone());
        let refs = References::new().with(ReferenceSpec::parse("ledger.transfer_id -> transfers").unwrap());
        let events = [
            ev("transfers", "t1", 10, 1, "full", json!({"amount": 5})),
            ev("transfers", "t2", 10, 2, "full", json!({"amount": 7})),
            ev(
                "ledger",
                "e1",
                20,
                3,
                "full",
                json!({"transfer_id": "t1", "amount": -5}),
            ),
            ev(
                "ledger",
                "e2",
                30,
                4,
                "full",
                json!({"transfer_id": "t1", "amount": 5}),
            ),
            // e2 was booked against the wrong transfer and is moved at t=40.
            ev("ledger", "e2", 40, 5, "patch", json!({"transfer_id": "t2"})),
            ev("ledger", "e1", 50, 6, "delete", json!({})),
        ];
        let lines: Vec<_> = events.iter().map(ScriptEvent::line).collect();
        let dal = match reads {
            "listing" => {
                ingestor(&store, refs).ingest_batch(&lines).await.unwrap();
                dal(&store)
            }
            _ => {
                let before = if reads == "restart" { 4 } else { 0 };
                ingestor(&store, refs.clone())
                    .ingest_batch(&lines[..before])
                    .await
                    .unwrap();
                let dal = dal(&store).indexed();
                let ing = ingestor(&store, refs).with_dal(&dal);
                for line in &lines[before..] {
                    ing.ingest_batch(std::slice::from_ref(line)).await.unwrap();
                }
                dal
            }
        };
        let ledger = Model::new("ledger").unwrap();
        let t1 = RecordKey::new("transfers", "t1").unwrap();
        let t2 = RecordKey::new("transfers", "t2").unwrap();
        let ids = |v: Vec<(RecordKey, std::sync::Arc<overseer_core::State>)>| {
            v.into_iter().map(|(k, _)| k.id.to_string()).collect::<Vec<_>>()
        };
        let at = |s| Timestamp::from_micros(s);
        assert_eq!(
            ids(dal.referrers(&t1, &ledger, "transfer_id", at(15)).await.unwrap()),
            Vec::<String>::new()
        );
        assert_eq!(
            ids(dal.referrers(&t1, &ledger, "transfer_id", at(35)).await.unwrap()),
            ["e1", "e2"]
        );
        assert_eq!(
            ids(dal.referrers(&t1, &ledger, "transfer_id", at(45)).await.unwrap()),
            ["e1"]
        );
        assert_eq!(
            ids(dal.referrers(&t2, &ledger, "transfer_id", at(45)).await.unwrap()),
            ["e2"]
        );
        assert_eq!(
            ids(dal.referrers(&t1, &ledger, "transfer_id", at(55)).await.unwrap()),
            Vec::<String>::new()
        );
        let e2 = RecordKey::new("ledger", "e2").unwrap();
        let transfers = Model::new("transfers").unwrap();
        assert_eq!(
            ids(dal
                .referenced(&e2, "transfer_id", &transfers, at(35))
                .await
                .unwrap()),
            ["t1"]
        );
        assert_eq!(
            ids(dal
                .referenced(&e2, "transfer_id", &transfers, at(45))
                .await
                .unwrap()),
            ["t2"]
        );
        // The master document keeps both references e2 ever had.
        let master = dal.references(&e2, Timestamp::MAX).await.unwrap();
        let targets: Vec<String> = master.iter().map(|r| r.reference.target.to_string()).collect();
        assert_eq!(targets.len(), 2, "{} {reads}: {targets:?}", backend.name);
    }
}

#[tokio::test]
async fn a_batch_is_acknowledged_with_its_last_position_and_watermark() {
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let ing = ingestor(&store, References::new());
        let source = SourceId::new("src").unwrap();
        assert_eq!(store.checkpoint(&source).await.unwrap(), None);
        let events: Vec<_> = (1..=3u64)
            .map(|i| ev("m", "a", i as i64 * 10, i, "full", json!({})).line())
            .collect();
        ing.ingest_and_ack(&events).await.unwrap();
        let cp = store.checkpoint(&source).await.unwrap().unwrap();
        assert_eq!(
            cp.position,
            overseer_core::SourcePosition::from_numbers(&[3]),
            "{}",
            backend.name
        );
        assert_eq!(cp.watermark, Timestamp::from_micros(30), "{}", backend.name);
    }
}

#[tokio::test]
async fn typed_reads_and_time_travel() {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Row {
        status: String,
        #[serde(default)]
        note: Option<String>,
    }
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let ing = ingestor(&store, References::new());
        let events = vec![
            ev(
                "m",
                "a",
                100,
                1,
                "full",
                json!({"status": "created", "note": "x"}),
            )
            .line(),
            ScriptEvent {
                unset: vec!["note".into()],
                ..ev("m", "a", 200, 2, "patch", json!({"status": "done"}))
            }
            .line(),
        ];
        ing.ingest_batch(&events).await.unwrap();
        let dal = dal(&store);
        let key = RecordKey::new("m", "a").unwrap();
        let get = |t| {
            let dal = dal.clone();
            let key = key.clone();
            async move { dal.get::<Row>(&key, Timestamp::from_micros(t)).await.unwrap() }
        };
        assert_eq!(get(99).await, None);
        assert_eq!(
            get(100).await,
            Some(Row {
                status: "created".into(),
                note: Some("x".into())
            })
        );
        assert_eq!(
            get(199).await,
            Some(Row {
                status: "created".into(),
                note: Some("x".into())
            })
        );
        assert_eq!(
            get(200).await,
            Some(Row {
                status: "done".into(),
                note: None
            })
        );
        let timeline = dal.timeline(&key).await.unwrap();
        assert_eq!(timeline[1].changed_fields, ["status", "note"]);
        // A type that does not fit names the record.
        let err = dal
            .get::<Vec<u8>>(&key, Timestamp::MAX)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("m/a"), "{err}");
    }
}

/// A consumer with a bug: it panics on one event.
struct Buggy;

impl overseer_core::Consumer for Buggy {
    fn format(&self) -> overseer_core::Format {
        overseer_core::Consumer::format(&Script)
    }
    fn consume(&self, raw: &[u8]) -> Result<overseer_core::Consumed, overseer_core::ConsumeError> {
        if raw.windows(5).any(|w| w == b"boom!") {
            panic!("consumer bug");
        }
        if raw.windows(5).any(|w| w == b"bomb!") {
            std::panic::panic_any(PanicsOnDrop);
        }
        Script.consume(raw)
    }
}

/// A panic payload whose `Drop` panics in turn.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("payload drop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_consumer_rejects_only_its_event() {
    let store = Store::in_memory();
    let ing = Ingestor::new(
        store.clone(),
        SourceId::new("src").unwrap(),
        Buggy,
        References::new(),
    );
    // Large enough to be consumed on several threads.
    let mut events: Vec<bytes::Bytes> = (0..2000u64)
        .map(|i| ev("m", &format!("r{i}"), 1, i, "full", json!({})).line())
        .collect();
    events[1234] = ev("m", "boom!", 1, 99_999, "full", json!({})).line();
    // A payload that panics again when dropped is contained too.
    events[42] = ev("m", "bomb!", 1, 99_998, "full", json!({})).line();
    let r = ing.ingest_batch(&events).await.unwrap();
    assert_eq!((r.stored, r.dead_lettered), (1998, 2));
    let letters = store.dead_letters().await.unwrap();
    let letter = |raw: &bytes::Bytes| letters.iter().find(|l| l.raw == *raw).unwrap();
    let boom = letter(&events[1234]);
    assert!(
        boom.error.contains("panicked") && boom.error.contains("consumer bug"),
        "{}",
        boom.error
    );
    let bomb = letter(&events[42]);
    assert!(
        bomb.error.contains("panicked") && bomb.error.contains("non-string panic payload"),
        "{}",
        bomb.error
    );
}

#[tokio::test]
async fn references_of_a_redelivered_batch_are_stored_even_if_the_first_attempt_stopped_before_them() {
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let lines = [ev(
            "ledger",
            "e1",
            20,
            3,
            "full",
            json!({"transfer_id": "t1", "amount": -5}),
        )
        .line()];
        // The first attempt stored the update, then stopped before its
        // references (here: an ingestor that extracts none).
        ingestor(&store, References::new())
            .ingest_batch(&lines)
            .await
            .unwrap();
        let t1 = RecordKey::new("transfers", "t1").unwrap();
        assert!(store.referrers(&t1).await.unwrap().is_empty());
        // The source delivers the unacknowledged batch again.
        let refs = References::new().with(ReferenceSpec::parse("ledger.transfer_id -> transfers").unwrap());
        let report = ingestor(&store, refs).ingest_batch(&lines).await.unwrap();
        assert_eq!((report.stored, report.duplicates), (0, 1), "{}", backend.name);
        let referrers: Vec<String> = store
            .referrers(&t1)
            .await
            .unwrap()
            .iter()
            .map(|e| e.from.to_string())
            .collect();
        assert_eq!(referrers, ["ledger/e1"], "{}", backend.name);
        let e1 = RecordKey::new("ledger", "e1").unwrap();
        assert_eq!(store.references(&e1).await.unwrap().len(), 1, "{}", backend.name);
    }
}

#[tokio::test]
async fn an_indexed_dal_after_a_restart_lists_a_reference_stored_again_once() {
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let refs = References::new().with(ReferenceSpec::parse("ledger.transfer_id -> transfers").unwrap());
        let e1_at = |t, pos| {
            ev(
                "ledger",
                "e1",
                t,
                pos,
                "full",
                json!({"transfer_id": "t1", "amount": t}),
            )
            .line()
        };
        ingestor(&store, refs.clone())
            .ingest_batch(&[e1_at(10, 1)])
            .await
            .unwrap();
        // A new process: the index reads t1's referrers from the store, then
        // e1 is updated again, carrying the same reference.
        let dal = dal(&store).indexed();
        let t1 = RecordKey::new("transfers", "t1").unwrap();
        assert_eq!(dal.referrer_entries(&t1, Timestamp::MAX).await.unwrap().len(), 1);
        let ing = ingestor(&store, refs).with_dal(&dal);
        ing.ingest_batch(&[e1_at(20, 2)]).await.unwrap();
        let entries = dal.referrer_entries(&t1, Timestamp::MAX).await.unwrap();
        let seen: Vec<(String, i64)> = entries
            .iter()
            .map(|e| (e.from.to_string(), e.first_seen.as_micros()))
            .collect();
        assert_eq!(seen, [("ledger/e1".to_owned(), 10)], "{}", backend.name);
        let ledger = Model::new("ledger").unwrap();
        let joined = dal
            .referrers(&t1, &ledger, "transfer_id", Timestamp::MAX)
            .await
            .unwrap();
        assert_eq!(joined.len(), 1, "{}", backend.name);
        assert_eq!(joined[0].1.get("amount"), Some(&json!(20)), "{}", backend.name);
    }
}

/// The bytes of a single `ReferenceEntry`: how the layout before lists
/// stored each master-document and reverse-index entry.
fn legacy_entry(from: &RecordKey, field: &str, target: &RecordKey, first_seen_secs: i64) -> bytes::Bytes {
    use overseer_core::proto;
    let key = |k: &RecordKey| proto::RecordKey {
        model: k.model.to_string(),
        id: k.id.to_string(),
    };
    let entry = proto::ReferenceEntry {
        from: Some(key(from)),
        reference: Some(proto::Reference {
            field: field.into(),
            target: Some(key(target)),
        }),
        first_seen_micros: first_seen_secs * 1_000_000,
    };
    entry.encode_to_vec().into()
}

#[tokio::test]
async fn an_update_s_references_are_one_master_document_object_read_once_each() {
    for backend in backends() {
        let e1 = RecordKey::new("ledger", "e1").unwrap();
        let to = |field: &str, model: &str, id: &str| Reference {
            field: field.into(),
            target: RecordKey::new(model, id).unwrap(),
        };
        let refs = [
            to("transfer_id", "transfers", "t1"),
            to("account", "accounts", "a1"),
        ];
        let store = Store::new(backend.store.clone());
        let added = store
            .add_references(&e1, &refs, Timestamp::from_secs(5))
            .await
            .unwrap();
        assert_eq!(added, 2, "{}", backend.name);
        let keys = all_keys(backend.store.as_ref()).await;
        let forward = keys.iter().filter(|k| k.starts_with("refs/")).count();
        let reverse = keys.iter().filter(|k| k.starts_with("referrers/")).count();
        assert_eq!((forward, reverse), (1, 2), "{}: {keys:?}", backend.name);

        // After a restart (a new handle remembers nothing), the same
        // reference stored with an earlier update is listed once, as first
        // seen at the earlier time.
        let restarted = Store::new(backend.store.clone());
        restarted
            .add_references(&e1, &refs[..1], Timestamp::from_secs(3))
            .await
            .unwrap();
        // A master-document entry of the layout before lists (one object
        // per reference) is read too.
        let notes = RecordKey::new("notes", "n1").unwrap();
        let legacy = "refs/ledger/e1/note/notes/n1".into();
        backend
            .store
            .put(&legacy, legacy_entry(&e1, "note", &notes, 9).into())
            .await
            .unwrap();

        let master = restarted.references(&e1).await.unwrap();
        let listed: Vec<(String, String, i64)> = master
            .iter()
            .map(|e| {
                (
                    e.reference.field.clone(),
                    e.reference.target.to_string(),
                    e.first_seen.as_micros() / 1_000_000,
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("account".to_owned(), "accounts/a1".to_owned(), 5),
                ("note".to_owned(), "notes/n1".to_owned(), 9),
                ("transfer_id".to_owned(), "transfers/t1".to_owned(), 3),
            ],
            "{}",
            backend.name
        );
        let referrers = restarted
            .referrers(&RecordKey::new("transfers", "t1").unwrap())
            .await
            .unwrap();
        assert_eq!(referrers.len(), 1, "{}", backend.name);
        assert_eq!(
            referrers[0].first_seen,
            Timestamp::from_secs(3),
            "{}",
            backend.name
        );
    }
}

#[tokio::test]
async fn a_batch_s_references_to_one_target_are_one_reverse_index_object() {
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let t1 = RecordKey::new("transfers", "t1").unwrap();
        let omnibus = RecordKey::new("accounts", "omnibus").unwrap();
        let entry = |i: u32| RecordKey::new("ledger", format!("e{i}")).unwrap();
        let reference = |field: &str, target: &RecordKey| Reference {
            field: field.into(),
            target: target.clone(),
        };
        // Ten entries of one batch, all on the same account, five on t1;
        // e0 is updated twice in the batch.
        let mut batch: Vec<(RecordKey, Vec<Reference>, Timestamp)> = (0..10u32)
            .map(|i| {
                let mut refs = vec![reference("account", &omnibus)];
                if i < 5 {
                    refs.push(reference("transfer_id", &t1));
                }
                (entry(i), refs, Timestamp::from_secs(10 + i64::from(i)))
            })
            .collect();
        batch.push((
            entry(0),
            vec![reference("account", &omnibus)],
            Timestamp::from_secs(30),
        ));
        let added = store.add_batch_references(&batch).await.unwrap();
        assert_eq!(added, 15, "{}", backend.name);
        let keys = all_keys(backend.store.as_ref()).await;
        let under = |prefix: &str| keys.iter().filter(|k| k.starts_with(prefix)).count();
        assert_eq!(
            under("referrers/accounts/omnibus/"),
            1,
            "{}: {keys:?}",
            backend.name
        );
        assert_eq!(under("referrers/transfers/t1/"), 1, "{}: {keys:?}", backend.name);
        assert_eq!(under("refs/"), 10, "{}: {keys:?}", backend.name);

        // The same batch again (a re-delivery) adds nothing, even through
        // a new handle: the same lists address the same objects.
        let again = Store::new(backend.store.clone());
        assert_eq!(
            again.add_batch_references(&batch).await.unwrap(),
            0,
            "{}",
            backend.name
        );
        assert_eq!(
            all_keys(backend.store.as_ref()).await.len(),
            keys.len(),
            "{}",
            backend.name
        );

        // A reverse entry of the layout before lists (one object per
        // referencing record and field) is read too, and a reference held
        // twice is listed once, as first seen at the earlier time.
        backend
            .store
            .put(
                &"referrers/accounts/omnibus/ledger/e3/account".into(),
                legacy_entry(&entry(3), "account", &omnibus, 2).into(),
            )
            .await
            .unwrap();
        backend
            .store
            .put(
                &"referrers/accounts/omnibus/ledger/old/account".into(),
                legacy_entry(&entry(99), "account", &omnibus, 1).into(),
            )
            .await
            .unwrap();
        let found: Vec<(String, i64)> = again
            .referrers(&omnibus)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.from.id.to_string(), e.first_seen.as_micros() / 1_000_000))
            .collect();
        let mut expected: Vec<(String, i64)> = (0..10).map(|i| (format!("e{i}"), 10 + i)).collect();
        expected[3].1 = 2;
        expected.push(("e99".into(), 1));
        assert_eq!(found, expected, "{}", backend.name);
        let on_t1 = again.referrers(&t1).await.unwrap();
        assert_eq!(on_t1.len(), 5, "{}", backend.name);
        assert!(on_t1.iter().all(|e| e.reference.field == "transfer_id"));
    }
}

/// zstd that trains on `training_bytes` of samples (tests feed far less
/// than the default MiB).
fn eager_zstd(training_bytes: usize, dictionary_bytes: usize) -> Compression {
    Compression::Zstd(ZstdOptions {
        training_bytes,
        dictionary_bytes,
        ..ZstdOptions::default()
    })
}

/// The event index a script position stands for.
fn pos(position: &str) -> usize {
    usize::from_str_radix(position, 16).unwrap()
}

/// Every object of `store`, with its bytes.
async fn all_objects(store: &dyn ObjectStore) -> std::collections::BTreeMap<String, bytes::Bytes> {
    let mut out = std::collections::BTreeMap::new();
    for key in all_keys(store).await {
        let bytes = store
            .get(&key.as_str().into())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.insert(key, bytes);
    }
    out
}

/// The store's update objects, by key.
async fn update_objects(store: &dyn ObjectStore) -> Vec<(String, overseer_core::proto::UpdateEnvelope)> {
    all_objects(store)
        .await
        .into_iter()
        .filter(|(key, _)| key.starts_with("updates/"))
        .map(|(key, bytes)| (key, overseer_core::proto::UpdateEnvelope::decode(bytes).unwrap()))
        .collect()
}

#[tokio::test]
async fn raw_events_are_compressed_after_training_and_read_back_exactly_by_any_later_store() {
    use overseer_core::Error;
    let zstd = eager_zstd(32 * 1024, 4 * 1024);
    let event = |i: u64| {
        let currency = ["EUR", "USD"][i as usize % 2];
        let state = ["pending", "settled", "rejected"][i as usize % 3];
        ev(
            "payments",
            &format!("p{}", i % 97),
            i as i64,
            i,
            "full",
            json!({"amount_minor": i * 37 % 10_000, "currency": currency, "state": state,
                   "note": format!("attempt {i}")}),
        )
        .line()
    };
    let events: Vec<_> = (0..1200u64).map(event).collect();
    for backend in backends() {
        let store = Store::new(backend.store.clone()).with_compression(zstd);
        let ing = ingestor(&store, References::new());
        for chunk in events[..1000].chunks(100) {
            assert_eq!(ing.ingest_batch(chunk).await.unwrap().stored, chunk.len());
            // Training runs in the background; waiting for it makes which
            // batches are compressed deterministic.
            store.settle_compression().await;
        }
        let dictionaries: Vec<String> = all_keys(backend.store.as_ref())
            .await
            .into_iter()
            .filter(|k| k.starts_with("dictionaries/src/") && k.ends_with(".zdict"))
            .collect();
        assert_eq!(
            dictionaries.len(),
            1,
            "{}: one dictionary for the source",
            backend.name
        );

        // The first events (the training samples) are stored as received,
        // the later ones sealed: the event and the metadata read from it
        // compressed together, less than half the size.
        let objects = update_objects(backend.store.as_ref()).await;
        let (compressed, plain): (Vec<_>, Vec<_>) = objects.iter().partition(|(_, e)| e.raw_dictionary != 0);
        assert!(
            !plain.is_empty() && compressed.len() >= 600,
            "{}: {}",
            backend.name,
            compressed.len()
        );
        assert!(compressed.iter().all(|(_, e)| e.version == 3
            && e.key.is_none()
            && e.position.is_empty()
            && e.raw.is_empty()
            && !e.sealed.is_empty()));
        assert!(plain.iter().all(|(_, e)| e.version == 1 && e.raw_dictionary == 0));

        // The same events stored as received, for their sizes.
        let uncompressed = std::sync::Arc::new(overseer_core::object_store::memory::InMemory::new());
        ingestor(
            &Store::new(uncompressed.clone()).with_compression(Compression::None),
            References::new(),
        )
        .ingest_batch(&events[..1000])
        .await
        .unwrap();
        let as_received: HashMap<String, usize> = update_objects(uncompressed.as_ref())
            .await
            .into_iter()
            .map(|(key, e)| (key, e.encoded_len()))
            .collect();

        // A later store (a restart, or the CLI) reads every event back
        // exactly; the position of each object comes from what it holds.
        let later = Store::new(backend.store.clone());
        let mut position_of = HashMap::new();
        let (mut stored, mut original) = (0, 0);
        for (key, e) in &objects {
            let doc = later.get_update(key).await.unwrap();
            let i = pos(doc.position.as_str());
            assert_eq!(doc.raw, events[i], "{key}");
            if e.raw_dictionary != 0 {
                stored += e.encoded_len();
                original += as_received[key];
            }
            position_of.insert(key.clone(), i);
        }
        assert!(
            stored * 2 < original,
            "{}: {stored} of {original} bytes",
            backend.name
        );
        // Re-delivered events are duplicates, a different event at a stored
        // position a conflict, against compressed objects too.
        let again = ingestor(&later.clone().with_compression(zstd), References::new());
        let r = again.ingest_batch(&events[900..1000]).await.unwrap();
        assert_eq!((r.stored, r.duplicates), (0, 100), "{}", backend.name);
        let mut changed = ev(
            "payments",
            &format!("p{}", 999 % 97),
            999,
            999,
            "full",
            json!({"other": true}),
        )
        .line();
        if let Some((_, e)) = objects.iter().find(|(key, _)| position_of[key] == 999) {
            assert_ne!(e.raw_dictionary, 0, "position 999 is stored compressed");
        }
        let r = again
            .ingest_batch(std::slice::from_mut(&mut changed))
            .await
            .unwrap();
        assert_eq!((r.stored, r.dead_lettered), (0, 1), "{}", backend.name);
        // A restarted writer reuses the stored dictionary: no second one,
        // and new events are compressed at once.
        let r = again.ingest_batch(&events[1000..]).await.unwrap();
        assert_eq!(r.stored, 200);
        let keys = all_keys(backend.store.as_ref()).await;
        assert_eq!(keys.iter().filter(|k| k.starts_with("dictionaries/")).count(), 1);
        let newest = update_objects(backend.store.as_ref()).await;
        let fresh: Vec<_> = newest
            .iter()
            .filter(|(key, _)| !position_of.contains_key(key))
            .collect();
        assert_eq!(fresh.len(), 200, "{}", backend.name);
        assert!(
            fresh.iter().all(|(_, e)| e.raw_dictionary != 0),
            "{}",
            backend.name
        );
        assert_eq!(
            dal(&later)
                .state_at(&RecordKey::new("payments", "p3").unwrap(), Timestamp::MAX)
                .await
                .unwrap(),
            dal(&store)
                .state_at(&RecordKey::new("payments", "p3").unwrap(), Timestamp::MAX)
                .await
                .unwrap()
        );

        // With a broken dictionary, or without it, a compressed update is a
        // clear error.
        let (key, _) = compressed[0];
        let dictionary_path = dictionaries[0].as_str().into();
        backend
            .store
            .put(
                &dictionary_path,
                bytes::Bytes::from_static(b"not a dictionary").into(),
            )
            .await
            .unwrap();
        // A new store, which has to fetch the dictionary.
        let cold_read = || async {
            Store::new(backend.store.clone())
                .get_update(key)
                .await
                .unwrap_err()
        };
        let err = cold_read().await;
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("not a zstd dictionary"), "{err}");
        backend.store.delete(&dictionary_path).await.unwrap();
        let err = cold_read().await;
        assert!(matches!(err, Error::Store { .. }), "{err}");
        assert!(err.to_string().contains("dictionaries/src/"), "{err}");
    }
}

#[tokio::test]
async fn without_compression_raw_events_are_stored_as_received() {
    for backend in backends() {
        let store = Store::new(backend.store.clone()).with_compression(Compression::None);
        let events: Vec<_> = (0..400u64)
            .map(|i| {
                ev(
                    "m",
                    "r",
                    i as i64,
                    i,
                    "full",
                    json!({"padding": "x".repeat(4000), "i": i}),
                )
                .line()
            })
            .collect();
        ingestor(&store, References::new())
            .ingest_batch(&events)
            .await
            .unwrap();
        let objects = update_objects(backend.store.as_ref()).await;
        assert_eq!(objects.len(), 400);
        assert!(
            objects
                .iter()
                .all(|(_, e)| e.raw_dictionary == 0 && e.raw == events[pos(&e.position)])
        );
        assert!(
            !all_keys(backend.store.as_ref())
                .await
                .iter()
                .any(|k| k.starts_with("dictionaries/"))
        );
    }
}

#[tokio::test]
async fn a_source_whose_events_cannot_train_a_dictionary_is_stored_as_received() {
    // Two samples are too few for zstd to train on: training fails, and the
    // events are stored (and read) as received.
    let zstd = eager_zstd(64, ZstdOptions::default().dictionary_bytes);
    for backend in backends() {
        let store = Store::new(backend.store.clone()).with_compression(zstd);
        let events: Vec<_> = (0..40u64)
            .map(|i| ev("m", &format!("r{i}"), i as i64, i, "full", json!({"i": i})).line())
            .collect();
        let ing = ingestor(&store, References::new());
        let first = ing.ingest_batch(&events[..2]).await.unwrap();
        store.settle_compression().await;
        let rest = ing.ingest_batch(&events[2..]).await.unwrap();
        assert_eq!(first.stored + rest.stored, 40, "{}", backend.name);
        let keys = all_keys(backend.store.as_ref()).await;
        assert!(
            !keys.iter().any(|k| k.starts_with("dictionaries/")),
            "{}",
            backend.name
        );
        for (key, e) in update_objects(backend.store.as_ref()).await {
            assert_eq!(e.raw_dictionary, 0);
            assert_eq!(
                store.get_update(&key).await.unwrap().raw,
                events[pos(&e.position)]
            );
        }
    }
}

#[tokio::test]
async fn compression_cuts_the_bytes_sent_to_the_store() {
    use overseer_core::object_store::memory::InMemory;
    use overseer_core::store::CountingStore;
    use std::sync::Arc;
    let events: Vec<_> = (0..2000u64)
        .map(|i| {
            let state = ["pending", "settled", "rejected"][i as usize % 3];
            ev(
                "payments",
                &format!("p{i}"),
                i as i64,
                i,
                "full",
                json!({"state": state, "amount_minor": i * 7}),
            )
            .line()
        })
        .collect();
    let raw: u64 = events.iter().map(|e| e.len() as u64).sum();
    let mut sent = Vec::new();
    for compression in [Compression::None, eager_zstd(16 * 1024, 2 * 1024)] {
        let counting = Arc::new(CountingStore::new(InMemory::new()));
        let store = Store::new(counting.clone()).with_compression(compression);
        let ing = ingestor(&store, References::new());
        for chunk in events.chunks(200) {
            ing.ingest_batch(chunk).await.unwrap();
            store.settle_compression().await;
        }
        sent.push(counting.counts().put_bytes);
    }
    assert!(
        sent[0] > raw,
        "every envelope holds its raw event: {} vs {raw}",
        sent[0]
    );
    // The metadata of each envelope stays as it is; the raw events, after
    // the training samples, shrink to well under half.
    let saved = sent[0] - sent[1];
    assert!(
        saved * 2 > raw,
        "saved {saved} of {raw} raw bytes ({} vs {})",
        sent[1],
        sent[0]
    );
}

#[tokio::test]
async fn a_store_under_a_prefix_keeps_its_own_references_and_dictionaries() {
    let zstd = eager_zstd(8 * 1024, 2 * 1024);
    let refs = References::new().with(ReferenceSpec::parse("child.parent -> parent").unwrap());
    let events: Vec<_> = (0..600u64)
        .map(|i| {
            ev(
                "child",
                &format!("c{i}"),
                i as i64,
                i,
                "full",
                json!({"parent": "p1", "n": i}),
            )
            .line()
        })
        .collect();
    for backend in backends() {
        let root = Store::new(backend.store.clone()).with_compression(zstd);
        let ing = ingestor(&root, refs.clone());
        for chunk in events.chunks(100) {
            ing.ingest_batch(chunk).await.unwrap();
            root.settle_compression().await;
        }
        // The same events under a prefix, through a clone of the same store.
        let tenant = root.clone().with_prefix("tenant");
        let ing = ingestor(&tenant, refs.clone());
        for chunk in events.chunks(100) {
            ing.ingest_batch(chunk).await.unwrap();
            tenant.settle_compression().await;
        }
        let keys = all_keys(backend.store.as_ref()).await;
        let tenant_keys: Vec<&String> = keys.iter().filter(|k| k.starts_with("tenant/")).collect();
        assert!(
            tenant_keys
                .iter()
                .any(|k| k.starts_with("tenant/dictionaries/src/")),
            "{}: the prefixed store stores its own dictionary",
            backend.name
        );
        assert!(
            tenant_keys
                .iter()
                .any(|k| k.starts_with("tenant/referrers/parent/p1/"))
        );
        // A reader that only knows the prefix reads every event and reference.
        let reader = Store::new(backend.store.clone()).with_prefix("tenant");
        for key in tenant_keys.iter().filter(|k| k.starts_with("tenant/updates/")) {
            let doc = reader.get_update(key).await.unwrap();
            assert_eq!(doc.raw, events[pos(doc.position.as_str())], "{key}");
        }
        let parent = RecordKey::new("parent", "p1").unwrap();
        assert_eq!(
            reader.referrers(&parent).await.unwrap().len(),
            600,
            "{}",
            backend.name
        );
    }
}

/// The `i`-th execution of `check` in the audit tests.
fn audit_entry(check: &str, i: u64) -> overseer_core::store::AuditEntry {
    overseer_core::store::AuditEntry {
        check: check.into(),
        root: RecordKey::new("transfers", format!("t{i}")).unwrap(),
        trigger_key: RecordKey::new("ledger_entries", format!("l{i}")).unwrap(),
        trigger_source: SourceId::new("ledger").unwrap(),
        trigger_commit_time: Timestamp::from_micros(1_000 + i as i64),
        as_of: Timestamp::from_micros(2_000 + i as i64),
        executed_at: Timestamp::from_micros(3_000),
        outcome: overseer_core::store::OutcomeKind::Pass,
        message: String::new(),
        details: Value::Null,
        duration: std::time::Duration::from_micros(40 + i),
        lagging_sources: Vec::new(),
        coalesced: 1,
    }
}

#[tokio::test]
async fn audit_batches_are_compressed_and_read_back_with_older_uncompressed_ones() {
    use overseer_core::store::AuditEntry;
    let entry = audit_entry;
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let batch: Vec<AuditEntry> = (0..50).map(|i| entry("paid", i)).collect();
        store.put_audit_batch(&batch).await.unwrap();
        // A batch written as received (compression off, or an older version).
        let plain = Store::new(backend.store.clone()).with_compression(Compression::None);
        let older: Vec<AuditEntry> = (50..60).map(|i| entry("paid", i)).collect();
        plain.put_audit_batch(&older).await.unwrap();
        let keys: Vec<String> = all_keys(backend.store.as_ref()).await.into_iter().collect();
        assert_eq!(
            keys.iter().filter(|k| k.ends_with(".pb.zst")).count(),
            1,
            "{keys:?}"
        );
        assert_eq!(keys.iter().filter(|k| k.ends_with(".pb")).count(), 1, "{keys:?}");
        let read = Store::new(backend.store.clone())
            .audit(Some("paid"), None)
            .await
            .unwrap();
        assert_eq!(read.len(), 60, "{}", backend.name);
        let mut expected = batch.clone();
        expected.extend(older.clone());
        let key = |e: &AuditEntry| e.root.clone();
        let mut read_roots: Vec<_> = read.iter().map(key).collect();
        let mut expected_roots: Vec<_> = expected.iter().map(key).collect();
        read_roots.sort();
        expected_roots.sort();
        assert_eq!(read_roots, expected_roots);
        assert!(read.iter().all(|e| expected.contains(e)));
        // A broken compressed batch is a clear error, naming the object.
        let zst = keys.iter().find(|k| k.ends_with(".pb.zst")).unwrap();
        backend
            .store
            .put(&zst.as_str().into(), bytes::Bytes::from_static(b"garbage").into())
            .await
            .unwrap();
        let err = store.audit(Some("paid"), None).await.unwrap_err();
        assert!(matches!(err, overseer_core::Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(".pb.zst"), "{err}");
    }
}

#[tokio::test]
async fn audit_batches_are_compressed_at_the_audit_level_of_the_options() {
    use overseer_core::store::MemoryStore;
    // The same executions, stored by two stores that differ only in the
    // audit level: the stronger level writes the smaller object, and both
    // read back the same.
    let batch: Vec<_> = (0..400).map(|i| audit_entry("paid", i)).collect();
    let mut sizes = Vec::new();
    for audit_level in [19, -7] {
        let backend = std::sync::Arc::new(MemoryStore::new());
        let store = Store::new(backend.clone()).with_compression(Compression::Zstd(ZstdOptions {
            audit_level,
            ..ZstdOptions::default()
        }));
        store.put_audit_batch(&batch).await.unwrap();
        let objects: Vec<_> = backend.list(None).try_collect().await.unwrap();
        assert_eq!(objects.len(), 1, "{objects:?}");
        assert!(objects[0].location.as_ref().ends_with(".pb.zst"), "{objects:?}");
        sizes.push(objects[0].size);
        let read = store.audit(Some("paid"), None).await.unwrap();
        assert_eq!(read.len(), batch.len());
        assert!(read.iter().all(|e| batch.contains(e)));
    }
    assert!(
        sizes[0] < sizes[1],
        "level 19: {} bytes, level -7: {} bytes",
        sizes[0],
        sizes[1]
    );
    assert_eq!(ZstdOptions::default().audit_level, -1);
}

#[tokio::test]
async fn the_in_memory_store_writes_what_a_store_over_any_memory_backend_writes() {
    use overseer_core::store::{MemoryStore, PutOutcome};
    use overseer_core::{Format, Operation, SourcePosition, UpdateDocument};
    // `Store::in_memory` writes updates and reference lists a batch at a
    // time under one lock; a store over a `MemoryStore` handed to it writes
    // each through `put`. The same writes leave the same objects and the
    // same outcomes: created, duplicate, position conflict.
    let doc = |i: u64, raw: &str| UpdateDocument {
        key: RecordKey::new(
            "ledger_entries",
            ["l-1", "../x", "a/b", "ü ß"][i as usize % 4].to_owned() + &i.to_string(),
        )
        .unwrap(),
        source: SourceId::new("ledger").unwrap(),
        position: SourcePosition::from_numbers(&[i]),
        commit_time: Timestamp::from_micros(1_000_000 + i as i64),
        ingested_at: Timestamp::from_micros(2_000_000),
        operation: Operation::Insert,
        format: Format::new("json").unwrap(),
        raw: bytes::Bytes::from(format!(
            "{{\"id\":{i},\"note\":\"{raw}\",\"account\":\"a{}\"}}",
            i % 7
        )),
        references: vec![Reference {
            field: "account".into(),
            target: RecordKey::new("accounts", format!("a{}", i % 7)).unwrap(),
        }],
    };
    let first: Vec<UpdateDocument> = (0..300).map(|i| doc(i, "first")).collect();
    // Re-delivered (the same bytes), then at the same positions with other bytes.
    let again: Vec<UpdateDocument> = (290..310)
        .map(|i| doc(i, "first"))
        .chain((0..3).map(|i| doc(i, "other")))
        .collect();
    // Raw events as received, so that both stores hold byte-identical
    // objects; then compressed (a dictionary trains while events arrive, so
    // which ones are compressed depends on timing): the same updates read back.
    let zstd = eager_zstd(4096, ZstdOptions::default().dictionary_bytes);
    for compression in [Compression::None, zstd] {
        let own = Store::in_memory().with_compression(compression);
        let backend = std::sync::Arc::new(MemoryStore::new());
        let handed = Store::new(backend.clone()).with_compression(compression);
        let mut outcomes = Vec::new();
        for store in [&own, &handed] {
            let mut seen = Vec::new();
            for batch in [&first, &again] {
                for (doc, key, outcome) in store.put_updates(batch.clone()).await {
                    let outcome = match outcome {
                        Ok(o) => format!("{o:?}"),
                        Err(e @ overseer_core::Error::PositionConflict { .. }) => format!("conflict: {e}"),
                        Err(e) => panic!("{key}: {e}"),
                    };
                    seen.push((doc.position.as_str().to_owned(), key, outcome));
                }
                let refs: Vec<_> = batch
                    .iter()
                    .map(|d| (&d.key, d.references.as_slice(), d.commit_time))
                    .collect();
                store.add_batch_references(&refs).await.unwrap();
            }
            outcomes.push(seen);
        }
        assert_eq!(outcomes[0], outcomes[1]);
        let count = |what: &str| outcomes[0].iter().filter(|(_, _, o)| o.starts_with(what)).count();
        assert_eq!(count(&format!("{:?}", PutOutcome::Created)), 310);
        assert_eq!(count(&format!("{:?}", PutOutcome::Duplicate)), 10);
        assert_eq!(count("conflict"), 3);
        let own_objects = all_objects(own.object_store().as_ref()).await;
        let handed_objects = all_objects(backend.as_ref()).await;
        let keys = |o: &std::collections::BTreeMap<String, bytes::Bytes>| {
            o.keys()
                .filter(|k| !k.starts_with("dictionaries/"))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&own_objects), keys(&handed_objects));
        assert!(own_objects.keys().any(|k| k.starts_with("referrers/accounts/")));
        for key in keys(&own_objects) {
            if key.starts_with("updates/") {
                assert_eq!(
                    own.get_update(&key).await.unwrap(),
                    handed.get_update(&key).await.unwrap()
                );
            }
            if compression == Compression::None || !key.starts_with("updates/") {
                assert!(own_objects[&key] == handed_objects[&key], "{key}");
            }
        }
        let account = RecordKey::new("accounts", "a3").unwrap();
        assert_eq!(
            own.referrers(&account).await.unwrap(),
            handed.referrers(&account).await.unwrap()
        );
    }
}

#[tokio::test]
async fn memory_store_passes_object_store_s_own_conformance_suite() {
    use object_store::integration::*;
    let store = overseer_core::store::MemoryStore::new();
    put_get_delete_list(&store).await;
    list_with_offset_exclusivity(&store).await;
    get_opts(&store).await;
    list_uses_directories_correctly(&store).await;
    list_with_delimiter(&store).await;
    rename_and_copy(&store).await;
    copy_if_not_exists(&store).await;
    copy_rename_nonexistent_object(&store).await;
    stream_get(&store).await;
    put_opts(&store, true).await;
    put_get_attributes(&store).await;
}

#[tokio::test]
async fn updates_of_one_source_committed_at_the_same_time_fold_in_position_order() {
    // Twelve updates of one record in one transaction (one commit time):
    // the last by position wins, whatever order object keys and the index
    // keep them in, however they are ingested and read in between.
    let events: Vec<ScriptEvent> = (1..=12u64)
        .map(|i| {
            ev(
                "ledger",
                "e1",
                10,
                i,
                "patch",
                json!({"n": i, format!("f{i}"): true}),
            )
        })
        .collect();
    let later = ev("ledger", "e1", 20, 13, "patch", json!({"n": 13}));
    let key = RecordKey::new("ledger", "e1").unwrap();
    let lines: Vec<_> = events.iter().map(ScriptEvent::line).collect();
    // In position order one by one, reading after each; in reverse; as one
    // batch; and read by listing the store.
    for (name, order) in [("one by one", 0), ("reverse", 1), ("batch", 2), ("listing", 3)] {
        let store = Store::in_memory();
        let dal = if order == 3 {
            dal(&store)
        } else {
            dal(&store).indexed()
        };
        let ing = ingestor(&store, References::new()).with_dal(&dal);
        match order {
            0 => {
                for (i, line) in lines.iter().enumerate() {
                    ing.ingest_batch(std::slice::from_ref(line)).await.unwrap();
                    let state = dal.state_at(&key, Timestamp::MAX).await.unwrap().unwrap();
                    assert_eq!(state.get("n"), Some(&json!(i + 1)), "{name}, after {}", i + 1);
                }
            }
            1 => {
                for (i, line) in lines.iter().enumerate().rev() {
                    ing.ingest_batch(std::slice::from_ref(line)).await.unwrap();
                    // Each earlier position is folded before the twelfth.
                    let state = dal.state_at(&key, Timestamp::MAX).await.unwrap().unwrap();
                    assert_eq!(state.get("n"), Some(&json!(12)), "{name}, with {}", i + 1);
                }
            }
            _ => {
                ing.ingest_batch(&lines).await.unwrap();
            }
        }
        let state = dal.state_at(&key, Timestamp::MAX).await.unwrap().unwrap();
        assert_eq!(state.get("n"), Some(&json!(12)), "{name}");
        assert_eq!(state.len(), 13, "{name}: {state:?}");
        let positions: Vec<String> = dal
            .history(&key, Timestamp::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.update.position.to_string())
            .collect();
        let expected: Vec<String> = events
            .iter()
            .map(|e| overseer_core::SourcePosition::from_numbers(&[e.pos]).to_string())
            .collect();
        assert_eq!(positions, expected, "{name}");
        // A later update extends the state folded in position order.
        ing.ingest_batch(&[later.line()]).await.unwrap();
        let state = dal.state_at(&key, Timestamp::MAX).await.unwrap().unwrap();
        assert_eq!(state.get("n"), Some(&json!(13)), "{name}");
        let before = dal
            .state_at(&key, Timestamp::from_micros(15))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(before.get("n"), Some(&json!(12)), "{name}");
    }
}

/// Every incident has a directory of its own, named by its opening time:
/// incidents of one (check, record) opened at different times before the
/// Unix epoch are two incidents, not one directory holding both.
#[tokio::test]
async fn incidents_opened_before_the_epoch_are_kept_apart() {
    use overseer_core::store::IncidentEntry;
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let incident = |opened: i64, resolved: Option<i64>| IncidentEntry {
            check: "positive".into(),
            root: RecordKey::new("transfers", "t1").unwrap(),
            dedup_key: format!("positive/transfers/t1/{opened}"),
            opened_at: Timestamp::from_micros(opened),
            updated_at: Timestamp::from_micros(opened),
            resolved_at: resolved.map(Timestamp::from_micros),
            failures: 1,
            message: "not positive".into(),
            details: Value::Null,
            trigger_commit_time: Timestamp::from_micros(opened),
        };
        store.put_incident(&incident(-5, None)).await.unwrap();
        store.put_incident(&incident(-5, Some(-4))).await.unwrap();
        store.put_incident(&incident(-3, None)).await.unwrap();
        store.put_incident(&incident(0, None)).await.unwrap();
        let stored: Vec<(i64, Option<i64>)> = store
            .incidents()
            .await
            .unwrap()
            .iter()
            .map(|i| (i.opened_at.as_micros(), i.resolved_at.map(Timestamp::as_micros)))
            .collect();
        assert_eq!(
            stored,
            [(-5, Some(-4)), (-3, None), (0, None)],
            "{}",
            backend.name
        );
    }
}

/// An incident's repeated failures are kept (`failed-<n>.pb`), and the
/// listing gives each incident its latest one, whatever order the backend
/// lists them in; a record written before the count was kept reads as one
/// failure at the opening.
#[tokio::test]
async fn incidents_are_listed_with_their_latest_failure() {
    use overseer_core::store::IncidentEntry;
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        let root = RecordKey::new("transfers", "t1").unwrap();
        let at = |failures: u32, secs: i64, resolved: Option<i64>| IncidentEntry {
            check: "paid".into(),
            root: root.clone(),
            dedup_key: "paid/transfers/t1/10000000".into(),
            opened_at: Timestamp::from_secs(10),
            updated_at: Timestamp::from_secs(secs),
            resolved_at: resolved.map(Timestamp::from_secs),
            failures,
            message: format!("failure {failures}"),
            details: json!({ "n": failures }),
            trigger_commit_time: Timestamp::from_secs(9),
        };
        for entry in [at(1, 10, None), at(3, 30, None), at(2, 20, None)] {
            store.put_incident(&entry).await.unwrap();
        }
        assert_eq!(
            store.incidents().await.unwrap(),
            [at(3, 30, None)],
            "{}",
            backend.name
        );
        store.put_incident(&at(3, 30, Some(40))).await.unwrap();
        assert_eq!(
            store.incidents().await.unwrap(),
            [at(3, 30, Some(40))],
            "{}",
            backend.name
        );
        let keys = all_keys(backend.store.as_ref()).await;
        let names: Vec<&str> = keys
            .iter()
            .filter(|k| k.starts_with("incidents/"))
            .filter_map(|k| k.rsplit('/').next())
            .collect();
        assert_eq!(
            names,
            [
                "failed-0000000002.pb",
                "failed-0000000003.pb",
                "opened.pb",
                "resolved.pb"
            ],
            "{}",
            backend.name
        );

        // As written before `failures` and `updated_at_micros` existed.
        let legacy = overseer_core::proto::IncidentRecord {
            check: "legacy".into(),
            root: Some(overseer_core::proto::RecordKey {
                model: "transfers".into(),
                id: "t2".into(),
            }),
            dedup_key: "legacy/transfers/t2/5000000".into(),
            opened_at_micros: 5_000_000,
            message: "old".into(),
            ..Default::default()
        };
        backend
            .store
            .put(
                &"incidents/legacy/transfers/t2/00000000000005000000/opened.pb".into(),
                legacy.encode_to_vec().into(),
            )
            .await
            .unwrap();
        let listed = store.incidents().await.unwrap();
        let old = listed.iter().find(|i| i.check == "legacy").unwrap();
        assert_eq!(
            (old.failures, old.updated_at, old.message.as_str()),
            (1, Timestamp::from_secs(5), "old"),
            "{}",
            backend.name
        );
    }
}

/// A `failed-<n>.pb` cut short (its count or time lost) or holding another
/// count than its name is a typed `Corrupt` error naming it, not an
/// incident silently listed with fewer failures (which a restarted runner
/// would then count on from).
#[tokio::test]
async fn a_truncated_or_mismatched_failure_record_is_corrupt() {
    use overseer_core::store::IncidentEntry;
    let at = |failures: u32| IncidentEntry {
        check: "paid".into(),
        root: RecordKey::new("transfers", "t1").unwrap(),
        dedup_key: "paid/transfers/t1/10000000".into(),
        opened_at: Timestamp::from_secs(10),
        updated_at: Timestamp::from_secs(10 + i64::from(failures)),
        resolved_at: None,
        failures,
        message: format!("failure {failures}"),
        details: Value::Null,
        trigger_commit_time: Timestamp::from_secs(9),
    };
    let record = |failures: u32, updated: Option<i64>| overseer_core::proto::IncidentRecord {
        check: "paid".into(),
        root: Some(overseer_core::proto::RecordKey {
            model: "transfers".into(),
            id: "t1".into(),
        }),
        dedup_key: "paid/transfers/t1/10000000".into(),
        opened_at_micros: 10_000_000,
        message: "failure 3".into(),
        trigger_commit_time_micros: 9_000_000,
        failures,
        updated_at_micros: updated,
        ..Default::default()
    };
    let key = "incidents/paid/transfers/t1/00000000000010000000/failed-0000000003.pb";
    // Cut before the count (fields 9-10), before the time (field 10), and
    // a whole record of another failure copied there.
    for bad in [record(0, None), record(3, None), record(2, Some(12_000_000))] {
        for backend in backends() {
            let store = Store::new(backend.store.clone());
            for failures in 1..=2 {
                store.put_incident(&at(failures)).await.unwrap();
            }
            backend
                .store
                .put(&key.into(), bad.encode_to_vec().into())
                .await
                .unwrap();
            let err = store.incidents().await.unwrap_err();
            assert!(
                matches!(&err, overseer_core::Error::Corrupt { path, .. } if path == key),
                "{}: {bad:?}: {err}",
                backend.name
            );
        }
    }
}

/// Listing incidents reads an incident's opening, its latest failure and
/// its resolution, not every failure: a restart after an incident failed
/// thousands of times reads three objects for it, not thousands.
#[tokio::test]
async fn listing_incidents_reads_only_their_latest_failure() {
    use overseer_core::store::{CountingStore, IncidentEntry};
    let counting = std::sync::Arc::new(CountingStore::new(overseer_core::store::MemoryStore::new()));
    let store = Store::new(counting.clone());
    let at = |failures: u32, resolved: Option<i64>| IncidentEntry {
        check: "paid".into(),
        root: RecordKey::new("transfers", "t1").unwrap(),
        dedup_key: "paid/transfers/t1/10000000".into(),
        opened_at: Timestamp::from_secs(10),
        updated_at: Timestamp::from_secs(10 + i64::from(failures)),
        resolved_at: resolved.map(Timestamp::from_secs),
        failures,
        message: format!("failure {failures}"),
        details: Value::Null,
        trigger_commit_time: Timestamp::from_secs(9),
    };
    for failures in 1..=121 {
        store.put_incident(&at(failures, None)).await.unwrap();
    }
    store.put_incident(&at(121, Some(200))).await.unwrap();
    let before = counting.counts().gets;
    let listed = store.incidents().await.unwrap();
    assert_eq!(listed, [at(121, Some(200))]);
    assert_eq!(
        counting.counts().gets - before,
        3,
        "opened, failed-121 and resolved"
    );
}

/// `Store::checks` names every check with audit records or incidents,
/// including one whose name is too long for its key (hashed).
#[tokio::test]
async fn checks_lists_audited_and_incident_checks_by_name() {
    let long = format!("my_service::checks::{}", "deeply_nested::".repeat(10));
    for backend in backends() {
        let store = Store::new(backend.store.clone());
        assert!(store.checks().await.unwrap().is_empty(), "{}", backend.name);
        store
            .put_audit_batch(&[
                audit_entry("paid", 1),
                audit_entry("a/b c", 2),
                audit_entry(&long, 3),
            ])
            .await
            .unwrap();
        store
            .put_incident(&overseer_core::store::IncidentEntry {
                check: "only_incidents".into(),
                root: RecordKey::new("transfers", "t1").unwrap(),
                dedup_key: "k".into(),
                opened_at: Timestamp::from_secs(10),
                updated_at: Timestamp::from_secs(10),
                resolved_at: None,
                failures: 1,
                message: "m".into(),
                details: Value::Null,
                trigger_commit_time: Timestamp::from_secs(9),
            })
            .await
            .unwrap();
        let keys = all_keys(backend.store.as_ref()).await;
        assert!(keys.iter().any(|k| k.starts_with("audit/+H")), "{keys:?}");
        let mut expected = vec![
            "a/b c".to_owned(),
            long.clone(),
            "only_incidents".into(),
            "paid".into(),
        ];
        expected.sort();
        assert_eq!(store.checks().await.unwrap(), expected, "{}", backend.name);
    }
}
