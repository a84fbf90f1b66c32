//! Property tests of ingestion and time travel: for random sequences of
//! updates, the state at T is the plain fold of the updates up to T,
//! history is ordered by (commit time, position), and ingesting the same
//! events again stores nothing new.
#![allow(clippy::unwrap_used)]

use overseer_core::change::apply;
use overseer_core::{Dal, Ingestor, RecordKey, References, SourceId, Store, Timestamp};
use overseer_tests::{Script, ScriptEvent, backends};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn event_strategy() -> impl Strategy<Value = (u8, i64, u8, u8, u8)> {
    // (record, commit time, op, field, value)
    (0u8..3, 0i64..40, 0u8..4, 0u8..4, 0u8..5)
}

fn build(raw: &[(u8, i64, u8, u8, u8)]) -> Vec<ScriptEvent> {
    raw.iter()
        .enumerate()
        .map(|(pos, &(rec, t, op, field, value))| {
            let field = ["a", "b", "c.d", "c.e"][usize::from(field)];
            let mut data = Map::new();
            let mut unset = Vec::new();
            let op = match op {
                0 => {
                    data.insert("a".into(), json!(value));
                    data.insert("c".into(), json!({"d": value}));
                    "full"
                }
                1 => {
                    data.insert(field.split('.').next().unwrap().into(), json!(value));
                    "merge"
                }
                2 => {
                    data.insert(field.into(), json!(value));
                    if value % 2 == 0 {
                        unset.push(["a", "b", "c.d", "c.e"][usize::from(value % 4)].into());
                    }
                    "patch"
                }
                _ => "delete",
            };
            ScriptEvent {
                model: "m".into(),
                id: format!("r{rec}"),
                t,
                // Positions are unique per event, in an order unrelated to time.
                pos: (pos as u64 * 7919) % 1_000_003,
                op: op.into(),
                data,
                unset,
            }
        })
        .collect()
}

/// The reference semantics: sort a record's events by (time, position),
/// keep those at or before T, fold.
fn expected_state(events: &[ScriptEvent], id: &str, at: i64) -> Option<Value> {
    let mut mine: Vec<&ScriptEvent> = events.iter().filter(|e| e.id == id && e.t <= at).collect();
    mine.sort_by_key(|e| (e.t, e.pos));
    mine.iter()
        .fold(None, |s, e| apply(s, &e.change().unwrap()))
        .map(Value::Object)
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn state_at_t_is_the_fold_of_updates_up_to_t(raw in prop::collection::vec(event_strategy(), 1..40), split in 1usize..8) {
        let events = build(&raw);
        for backend in backends() {
            let store = Store::new(backend.store.clone());
            let ing = Ingestor::new(store.clone(), SourceId::new("s").unwrap(), Script, References::new());
            let dal = Dal::new(store.clone()).with_builder(Script);
            let lines: Vec<_> = events.iter().map(ScriptEvent::line).collect();
            run(async {
                // Ingest in batches of a random size.
                let mut stored = 0;
                for chunk in lines.chunks(split) {
                    stored += ing.ingest_batch(chunk).await.unwrap().stored;
                }
                assert_eq!(stored, events.len());
                for rec in 0..3 {
                    let id = format!("r{rec}");
                    let key = RecordKey::new("m", &id).unwrap();
                    // History is ordered by (commit time, position).
                    let history = dal.history(&key, Timestamp::MAX).await.unwrap();
                    let order: Vec<_> = history.iter().map(|h| (h.update.commit_time, h.update.position.clone())).collect();
                    let mut sorted = order.clone();
                    sorted.sort();
                    assert_eq!(&order, &sorted, "{}", backend.name);
                    for at in [-1, 0, 5, 13, 20, 27, 39, 40] {
                        let got = dal.state_at(&key, Timestamp::from_micros(at)).await.unwrap().map(Value::Object);
                        assert_eq!(got, expected_state(&events, &id, at), "{} {id} at {at}", backend.name);
                    }
                }
                // Ingesting the same events again, cut differently, stores nothing new.
                let again = Ingestor::new(store.clone(), SourceId::new("s").unwrap(), Script, References::new());
                let mut report = overseer_core::BatchReport::default();
                for chunk in lines.chunks(split + 3) {
                    report.absorb(again.ingest_batch(chunk).await.unwrap());
                }
                assert_eq!((report.stored, report.duplicates), (0, events.len()), "{}", backend.name);
            });
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// An indexed DAL fed by write-through answers exactly like the fold of
    /// what is stored, read after every batch (its memo of a record's latest
    /// state is extended, or rebuilt when an update commits before others);
    /// and when the store already held updates before (a restart), it reads
    /// those once and answers the same.
    #[test]
    fn an_indexed_dal_reads_like_the_store(
        raw in prop::collection::vec(event_strategy(), 1..40),
        split in 1usize..8,
        before_restart in 0usize..4,
    ) {
        let events = build(&raw);
        let lines: Vec<_> = events.iter().map(ScriptEvent::line).collect();
        // With the default caches, and with none (every read folds from the store).
        for (backend, cache) in [None, Some(0)].into_iter().flat_map(|c| backends().into_iter().map(move |b| (b, c))) {
            let store = Store::new(backend.store.clone());
            let source = SourceId::new("s").unwrap();
            run(async {
                let chunks: Vec<_> = lines.chunks(split).collect();
                let restart = before_restart.min(chunks.len());
                let plain = Ingestor::new(store.clone(), source.clone(), Script, References::new());
                for chunk in &chunks[..restart] {
                    plain.ingest_batch(chunk).await.unwrap();
                }
                let dal = Dal::new(store.clone()).with_builder(Script).indexed();
                let dal = match cache {
                    Some(bytes) => dal.with_cache_bytes(bytes),
                    None => dal,
                };
                let ing = Ingestor::new(store.clone(), source.clone(), Script, References::new()).with_dal(&dal);
                let mut ingested = restart * split;
                for chunk in &chunks[restart..] {
                    ing.ingest_batch(chunk).await.unwrap();
                    ingested = (ingested + chunk.len()).min(events.len());
                    let so_far = &events[..ingested];
                    for rec in 0..3 {
                        let id = format!("r{rec}");
                        let key = RecordKey::new("m", &id).unwrap();
                        for at in [5, 20, 40] {
                            let got = dal.state_at(&key, Timestamp::from_micros(at)).await.unwrap().map(Value::Object);
                            assert_eq!(got, expected_state(so_far, &id, at), "{} cache {cache:?} {id} at {at} after {ingested}", backend.name);
                        }
                        let history = dal.history(&key, Timestamp::MAX).await.unwrap();
                        let mut want: Vec<_> = so_far.iter().filter(|e| e.id == id).map(|e| (e.t, e.pos)).collect();
                        want.sort();
                        let got: Vec<_> = history.iter().map(|h| (h.update.commit_time.as_micros(), u64::from_str_radix(h.update.position.as_str(), 16).unwrap())).collect();
                        assert_eq!(got, want, "{} {id} history", backend.name);
                    }
                }
            });
        }
    }
}
