//! Dual-write / dual-read on unusual results: records too deep for the
//! store, results that cannot be serialized, a hung comparator, and the
//! comparator's number and null rules.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use overseer_core::migration::{
    Comparator, Compare, Comparison, DiscrepancyRecorder, DualRouter, Phase, PhaseSwitch,
};
use overseer_core::{SourceId, Store, Timestamp};
use serde_json::{Value, json};

fn router(store: &Store, phase: Phase, c: impl Compare) -> DualRouter {
    let rec = DiscrepancyRecorder::new(store.clone(), SourceId::new("mig").unwrap());
    DualRouter::builder(rec)
        .phase(PhaseSwitch::new(phase))
        .comparator(c)
        .build()
        .unwrap()
}

fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!({ "n": v });
    }
    v
}

/// A deeply (but not hugely) nested record that differs: the discrepancy is
/// counted as recorded, but the store rejects it (dead letter) and the
/// record is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_record_discrepancy_is_really_stored_or_counted_as_failed() {
    let store = Store::in_memory();
    let r = router(&store, Phase::Shadow, Comparator::new());
    let (l, n) = (nested(200), json!(2));
    let got = r
        .read(
            "get",
            "k",
            move || async move { Ok::<_, String>(l) },
            move || async move { Ok::<_, String>(n) },
        )
        .await;
    assert!(got.is_ok());
    r.flush().await;
    let st = r.stats();
    let key = r.recorder().key_of("get", "k").unwrap();
    let stored = store.list_updates(&key, Timestamp::MAX).await.unwrap().len();
    let dead = store.dead_letters().await.unwrap().len();
    assert_eq!(st.mismatches, 1);
    assert_eq!(
        st.discrepancies_recorded as usize, stored,
        "discrepancies_recorded={} but {} stored ({} dead-lettered), record_failures={}",
        st.discrepancies_recorded, stored, dead, st.record_failures
    );
}

/// Two results that cannot be serialized (a map with non-string keys) and
/// that differ are counted as a *match*.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserializable_differing_results_are_not_a_match() {
    let store = Store::in_memory();
    let r = router(&store, Phase::Shadow, Comparator::new());
    let l: HashMap<(i32, i32), i32> = HashMap::from([((1, 2), 1)]);
    let n: HashMap<(i32, i32), i32> = HashMap::from([((1, 2), 999)]);
    let _ = r
        .read(
            "get",
            "k",
            move || async move { Ok::<_, String>(l) },
            move || async move { Ok::<_, String>(n) },
        )
        .await;
    r.flush().await;
    let st = r.stats();
    assert_eq!(
        st.matches, 0,
        "differing (unserializable) results counted as a match: {st:?}"
    );
}

/// A new-side write whose result cannot be serialized (but did not fail)
/// is recorded as a failed write: write_failures_recorded > write_failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failure_counters_stay_consistent() {
    let store = Store::in_memory();
    let r = router(&store, Phase::Shadow, Comparator::new());
    let l: HashMap<(i32, i32), i32> = HashMap::new(); // serializes as {}
    let n: HashMap<(i32, i32), i32> = HashMap::from([((1, 2), 1)]); // cannot serialize
    let got = r
        .write(
            "put",
            "k",
            move || async move { Ok::<_, String>(l) },
            move || async move { Ok::<_, String>(n) },
        )
        .await;
    assert!(got.is_ok());
    r.flush().await;
    let st = r.stats();
    assert!(
        st.write_failures_recorded <= st.write_failures,
        "write_failures_recorded={} > write_failures={}",
        st.write_failures_recorded,
        st.write_failures
    );
}

/// A hanging comparator must not hold back the recording of failed
/// new-side writes ("they must not wait behind comparisons").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_comparator_does_not_block_failed_write_records() {
    let store = Store::in_memory();
    let slow = |_: &str, _: &Value, _: &Value| -> Comparison {
        std::thread::sleep(Duration::from_secs(5));
        Comparison::matched()
    };
    let r = router(&store, Phase::Shadow, slow);
    let _ = r
        .read(
            "get",
            "a",
            || async { Ok::<_, String>(json!(1)) },
            || async { Ok::<_, String>(json!(1)) },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // comparator now hangs
    let got = r
        .write(
            "put",
            "b",
            || async { Ok::<_, String>(json!(1)) },
            || async { Err::<Value, _>("down".to_string()) },
        )
        .await;
    assert_eq!(got, Ok(json!(1)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = r.stats();
    assert_eq!(
        st.write_failures_recorded, 1,
        "failed write still unrecorded 2s later: {st:?}"
    );
}

fn diffs(c: &Comparator, l: Value, n: Value) -> Vec<String> {
    c.compare("op", &l, &n)
        .differences
        .into_iter()
        .map(|d| d.path)
        .collect()
}

#[test]
fn key_order_and_number_forms_are_equal() {
    let c = Comparator::new();
    let l: Value = serde_json::from_str(r#"{"a":1,"b":{"x":[1,2],"y":2.50}}"#).unwrap();
    let n: Value = serde_json::from_str(r#"{"b":{"y":2.5,"x":[1.0,2e0]},"a":1.0}"#).unwrap();
    assert!(diffs(&c, l, n).is_empty());
    assert!(diffs(&c, json!({"a": -0.0}), json!({"a": 0})).is_empty());
}

#[test]
fn nested_changes_and_missing_fields_are_reported() {
    let c = Comparator::new();
    assert_eq!(
        diffs(&c, json!({"a": {"b": {"c": 1}}}), json!({"a": {"b": {"c": 2}}})),
        ["a.b.c"]
    );
    assert_eq!(diffs(&c, json!({"a": {"b": 1}}), json!({"a": {}})), ["a.b"]);
    assert_eq!(diffs(&c, json!({"a": {}}), json!({"a": {"b": null}})), ["a.b"]);
}

/// An integer and a float that differ by one unit beyond 2^53 are a real
/// difference, but they compare equal through f64.
#[test]
fn big_integer_vs_float_is_a_difference() {
    let c = Comparator::new();
    let l = json!(9_007_199_254_740_993_u64);
    let n: Value = serde_json::from_str("9007199254740992.0").unwrap();
    assert_eq!(diffs(&c, l, n), [""]);
}

/// null_equals_missing is about fields; an array that lost a trailing
/// element ([1, null] vs [1]) is a real difference.
#[test]
fn null_equals_missing_does_not_hide_array_length_changes() {
    let c = Comparator::new().null_equals_missing();
    assert_eq!(diffs(&c, json!({"a": [1, null]}), json!({"a": [1]})), ["a.1"]);
}
