//! Dual write / dual read (`overseer_core::migration`): routing and
//! fallback in every phase, containment of the new side, the off-path
//! comparison queue, comparator options, and discrepancy records read back
//! through the DAL and checked by the pipeline.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overseer_builders::FormatOptions;
use overseer_builders::json::Json;
use overseer_core::check::{Check, Verdict};
use overseer_core::migration::{
    Access, Comparator, Comparison, Discrepancy, DiscrepancyKind, DiscrepancyRecorder, DualRouter, Phase,
    PhaseSwitch,
};
use overseer_core::pipeline::{Overseer, SourceConfig};
use overseer_core::topic::{InProcessTopic, Topic};
use overseer_core::view::{DataView, ViewContext, ViewError, ViewSpec};
use overseer_core::{Dal, Ingestor, Model, References, Registry, SourceId, Store, Timestamp};
use serde_json::{Value, json};

const SOURCE: &str = "ledger-migration";

/// A fake store: a map, a call log shared with the other store, and
/// switches for failures, panics and slowness.
#[derive(Clone)]
struct Fake {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    data: Arc<Mutex<HashMap<String, Value>>>,
    fail: Arc<AtomicBool>,
    panic: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
}

impl Fake {
    fn pair() -> (Fake, Fake, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let make = |name| Fake {
            name,
            log: log.clone(),
            data: Arc::default(),
            fail: Arc::default(),
            panic: Arc::default(),
            hang: Arc::default(),
        };
        (make("legacy"), make("new"), log)
    }

    fn set(&self, key: &str, value: Value) {
        self.data.lock().unwrap().insert(key.to_owned(), value);
    }

    async fn enter(&self, what: String) -> Result<(), String> {
        self.log.lock().unwrap().push(format!("{}:{what}", self.name));
        if self.hang.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        if self.panic.load(Ordering::SeqCst) {
            panic!("{} store exploded", self.name);
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(format!("{} store is down", self.name));
        }
        Ok(())
    }

    fn get(&self, key: &str) -> impl Future<Output = Result<Value, String>> + Send + use<> {
        let me = self.clone();
        let key = key.to_owned();
        async move {
            me.enter(format!("get:{key}")).await?;
            Ok(me.data.lock().unwrap().get(&key).cloned().unwrap_or(Value::Null))
        }
    }

    fn put(&self, key: &str, value: Value) -> impl Future<Output = Result<Value, String>> + Send + use<> {
        let me = self.clone();
        let key = key.to_owned();
        async move {
            me.enter(format!("put:{key}")).await?;
            me.set(&key, value.clone());
            Ok(json!({"stored": value, "by": me.name}))
        }
    }
}

struct Setup {
    router: DualRouter,
    phase: PhaseSwitch,
    legacy: Fake,
    new: Fake,
    log: Arc<Mutex<Vec<String>>>,
    store: Store,
}

impl Setup {
    fn new(phase: Phase) -> Self {
        Self::with(phase, |b| b)
    }

    fn with(
        phase: Phase,
        configure: impl FnOnce(
            overseer_core::migration::DualRouterBuilder,
        ) -> overseer_core::migration::DualRouterBuilder,
    ) -> Self {
        let store = Store::in_memory();
        let phase = PhaseSwitch::new(phase);
        let recorder = DiscrepancyRecorder::new(store.clone(), SourceId::new(SOURCE).unwrap());
        let builder = DualRouter::builder(recorder).phase(phase.clone());
        let router = configure(builder).build().unwrap();
        let (legacy, new, log) = Fake::pair();
        Self {
            router,
            phase,
            legacy,
            new,
            log,
            store,
        }
    }

    async fn read(&self, key: &str) -> Result<Value, String> {
        let (l, n) = (self.legacy.clone(), self.new.clone());
        let (lk, nk) = (key.to_owned(), key.to_owned());
        self.router
            .read("get_balance", key, move || l.get(&lk), move || n.get(&nk))
            .await
    }

    async fn write(&self, key: &str, value: Value) -> Result<Value, String> {
        let (l, n) = (self.legacy.clone(), self.new.clone());
        let lv = value.clone();
        self.router
            .write("post_balance", key, || l.put(key, lv), || n.put(key, value))
            .await
    }

    fn calls(&self) -> Vec<String> {
        let mut log = self.log.lock().unwrap();
        std::mem::take(&mut *log)
    }

    fn sorted_calls(&self) -> Vec<String> {
        let mut calls = self.calls();
        calls.sort();
        calls
    }

    fn dal(&self) -> Dal {
        overseer_builders::dal(self.store.clone())
    }

    /// The latest discrepancy of `operation` on `key`, read through the DAL.
    async fn discrepancy(&self, operation: &str, key: &str) -> Option<Discrepancy> {
        let record = self.router.recorder().key_of(operation, key).unwrap();
        self.dal()
            .get::<Discrepancy>(&record, Timestamp::MAX)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_only_calls_only_legacy() {
    let s = Setup::new(Phase::LegacyOnly);
    s.legacy.set("a", json!(1));
    s.new.set("a", json!(2));
    assert_eq!(s.read("a").await, Ok(json!(1)));
    assert_eq!(s.calls(), ["legacy:get:a"]);
    let written = s.write("a", json!(5)).await.unwrap();
    assert_eq!(written["by"], "legacy");
    assert_eq!(s.calls(), ["legacy:put:a"]);
    s.legacy.fail.store(true, Ordering::SeqCst);
    assert_eq!(s.read("a").await, Err("legacy store is down".into()));
    s.router.flush().await;
    let stats = s.router.stats();
    assert_eq!((stats.reads, stats.writes), (2, 1));
    assert_eq!(stats.matches + stats.mismatches + stats.sampled_away, 0);
    assert_eq!(s.discrepancy("get_balance", "a").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_only_calls_only_new_and_contains_nothing() {
    let s = Setup::new(Phase::NewOnly);
    s.legacy.set("a", json!(1));
    s.new.set("a", json!(2));
    assert_eq!(s.read("a").await, Ok(json!(2)));
    assert_eq!(s.calls(), ["new:get:a"]);
    assert_eq!(s.write("a", json!(5)).await.unwrap()["by"], "new");
    assert_eq!(s.calls(), ["new:put:a"]);
    // The new side is the production path now: its errors are the caller's.
    s.new.fail.store(true, Ordering::SeqCst);
    assert_eq!(s.read("a").await, Err("new store is down".into()));
    assert_eq!(s.write("a", json!(1)).await, Err("new store is down".into()));
    s.router.flush().await;
    assert_eq!(s.router.stats().new_errors, 0, "not a migration failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reads_both_returns_legacy_and_records_the_mismatch() {
    let s = Setup::new(Phase::Shadow);
    s.legacy.set("a", json!({"cents": 100}));
    s.new.set("a", json!({"cents": 101}));
    s.legacy.set("b", json!({"cents": 7}));
    s.new.set("b", json!({"cents": 7}));
    assert_eq!(s.read("a").await, Ok(json!({"cents": 100})));
    assert_eq!(s.read("b").await, Ok(json!({"cents": 7})));
    s.router.flush().await;
    assert_eq!(
        s.sorted_calls(),
        ["legacy:get:a", "legacy:get:b", "new:get:a", "new:get:b"]
    );
    let stats = s.router.stats();
    assert_eq!((stats.reads, stats.matches, stats.mismatches), (2, 1, 1));
    assert_eq!(stats.discrepancies_recorded, 1);

    let d = s.discrepancy("get_balance", "a").await.unwrap();
    assert_eq!(d.kind, DiscrepancyKind::Mismatch);
    assert_eq!((d.access, d.phase), (Access::Read, Phase::Shadow));
    assert_eq!((d.operation.as_str(), d.key.as_str()), ("get_balance", "a"));
    assert_eq!(d.legacy, Some(json!({"cents": 100})));
    assert_eq!(d.new, Some(json!({"cents": 101})));
    assert_eq!(d.differences.len(), 1);
    assert_eq!(d.differences[0].path, "cents");
    assert_eq!(s.discrepancy("get_balance", "b").await, None);

    // A legacy failure is the caller's; a successful new side makes it a
    // discrepancy of its own kind.
    s.legacy.fail.store(true, Ordering::SeqCst);
    assert_eq!(s.read("b").await, Err("legacy store is down".into()));
    s.router.flush().await;
    let d = s.discrepancy("get_balance", "b").await.unwrap();
    assert_eq!(d.kind, DiscrepancyKind::LegacyFailed);
    assert_eq!(d.legacy_error.as_deref(), Some("legacy store is down"));
    assert_eq!(d.new, Some(json!({"cents": 7})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_writes_legacy_first_then_new_and_returns_legacy() {
    let s = Setup::new(Phase::Shadow);
    let written = s.write("a", json!(5)).await.unwrap();
    assert_eq!(written["by"], "legacy");
    assert_eq!(s.calls(), ["legacy:put:a", "new:put:a"]);
    assert_eq!(s.new.data.lock().unwrap()["a"], json!(5));
    s.router.flush().await;
    let stats = s.router.stats();
    // The two write results differ in `by`: compared off the path.
    assert_eq!((stats.writes, stats.mismatches, stats.write_failures), (1, 1, 0));
    let d = s.discrepancy("post_balance", "a").await.unwrap();
    assert_eq!((d.kind, d.access), (DiscrepancyKind::Mismatch, Access::Write));
    assert_eq!(d.differences[0].path, "by");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_legacy_write_fails_the_caller_and_skips_new() {
    for phase in [Phase::Shadow, Phase::PreferNew] {
        let s = Setup::new(phase);
        s.legacy.fail.store(true, Ordering::SeqCst);
        assert_eq!(s.write("a", json!(5)).await, Err("legacy store is down".into()));
        assert_eq!(s.calls(), ["legacy:put:a"], "{phase}");
        assert!(s.new.data.lock().unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_never_fails_the_caller_on_a_new_write_failure_and_records_it() {
    let s = Setup::new(Phase::Shadow);
    s.new.fail.store(true, Ordering::SeqCst);
    let written = s.write("acct-1", json!(42)).await.unwrap();
    assert_eq!(written["by"], "legacy");
    assert_eq!(s.calls(), ["legacy:put:acct-1", "new:put:acct-1"]);
    s.router.flush().await;
    let stats = s.router.stats();
    assert_eq!((stats.write_failures, stats.write_failures_recorded), (1, 1));
    assert_eq!((stats.new_errors, stats.record_failures), (1, 0));

    // The failure is a record in the store, read back through the DAL.
    let d = s.discrepancy("post_balance", "acct-1").await.unwrap();
    assert_eq!(d.kind, DiscrepancyKind::WriteFailed);
    assert_eq!((d.access, d.phase), (Access::Write, Phase::Shadow));
    assert_eq!(d.legacy, Some(json!({"stored": 42, "by": "legacy"})));
    assert_eq!(d.new, None);
    assert_eq!(d.new_error.as_deref(), Some("new store is down"));
    assert_eq!(d.id, "post_balance:acct-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_new_returns_new_and_still_compares_legacy() {
    let s = Setup::new(Phase::PreferNew);
    s.legacy.set("a", json!(1));
    s.new.set("a", json!(2));
    assert_eq!(s.read("a").await, Ok(json!(2)));
    s.router.flush().await;
    // New on the caller's path, then legacy off it.
    assert_eq!(s.calls(), ["new:get:a", "legacy:get:a"]);
    let d = s.discrepancy("get_balance", "a").await.unwrap();
    assert_eq!((d.kind, d.phase), (DiscrepancyKind::Mismatch, Phase::PreferNew));
    assert_eq!((d.legacy, d.new), (Some(json!(1)), Some(json!(2))));

    // Writes: legacy first (it stays complete), the new result returned.
    let written = s.write("a", json!(3)).await.unwrap();
    assert_eq!(written["by"], "new");
    assert_eq!(s.calls(), ["legacy:put:a", "new:put:a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_new_falls_back_to_legacy_on_a_new_error() {
    let s = Setup::new(Phase::PreferNew);
    s.legacy.set("a", json!(1));
    s.new.set("a", json!(2));
    s.new.fail.store(true, Ordering::SeqCst);
    assert_eq!(s.read("a").await, Ok(json!(1)));
    assert_eq!(s.calls(), ["new:get:a", "legacy:get:a"]);
    // A write falls back to the legacy result too, and is recorded.
    assert_eq!(s.write("a", json!(3)).await.unwrap()["by"], "legacy");
    assert_eq!(s.calls(), ["legacy:put:a", "new:put:a"]);
    s.router.flush().await;
    let stats = s.router.stats();
    assert_eq!((stats.fallbacks, stats.new_errors, stats.new_panics), (2, 2, 0));
    assert_eq!(stats.write_failures_recorded, 1);
    let d = s.discrepancy("get_balance", "a").await.unwrap();
    assert_eq!(d.kind, DiscrepancyKind::NewFailed);
    assert_eq!(d.new_error.as_deref(), Some("new store is down"));
    assert_eq!(d.legacy, Some(json!(1)));
    let d = s.discrepancy("post_balance", "a").await.unwrap();
    assert_eq!(d.kind, DiscrepancyKind::WriteFailed);

    // Both failing: the legacy error is the caller's.
    s.legacy.fail.store(true, Ordering::SeqCst);
    assert_eq!(s.read("a").await, Err("legacy store is down".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_new_side_is_contained_and_counted() {
    let s = Setup::new(Phase::Shadow);
    s.legacy.set("a", json!(1));
    s.new.panic.store(true, Ordering::SeqCst);
    assert_eq!(s.read("a").await, Ok(json!(1)));
    assert_eq!(s.write("a", json!(2)).await.unwrap()["by"], "legacy");
    s.phase.set(Phase::PreferNew);
    assert_eq!(s.read("a").await, Ok(json!(2)));
    s.router.flush().await;
    let stats = s.router.stats();
    assert_eq!((stats.new_panics, stats.new_errors), (3, 3));
    assert_eq!((stats.fallbacks, stats.write_failures_recorded), (1, 1));
    let d = s.discrepancy("get_balance", "a").await.unwrap();
    assert_eq!(d.kind, DiscrepancyKind::NewFailed);
    assert_eq!(d.new_error.as_deref(), Some("panicked: new store exploded"));
    let d = s.discrepancy("post_balance", "a").await.unwrap();
    assert_eq!(d.new_error.as_deref(), Some("panicked: new store exploded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_new_side_times_out() {
    let s = Setup::with(Phase::PreferNew, |b| {
        b.new_side_timeout(Duration::from_millis(50))
    });
    s.legacy.set("a", json!(1));
    s.new.hang.store(true, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(s.read("a").await, Ok(json!(1)));
    assert_eq!(s.write("a", json!(2)).await.unwrap()["by"], "legacy");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    s.router.flush().await;
    let d = s.discrepancy("get_balance", "a").await.unwrap();
    assert_eq!(d.new_error.as_deref(), Some("timed out after 50ms"));
    assert_eq!(s.router.stats().new_errors, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_never_blocks_the_caller() {
    // A comparator that takes 50 ms, a queue of one: comparisons cannot
    // keep up, and must be sampled away rather than waited for.
    let slow = |_: &str, _: &Value, _: &Value| {
        std::thread::sleep(Duration::from_millis(50));
        Comparison::matched()
    };
    let s = Setup::with(Phase::Shadow, |b| b.comparator(slow).queue_capacity(1));
    s.legacy.set("a", json!(1));
    s.new.set("a", json!(1));
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let t = Instant::now();
        assert_eq!(s.read("a").await, Ok(json!(1)));
        slowest = slowest.max(t.elapsed());
    }
    let elapsed = started.elapsed();
    // Waiting for the comparator would take 200 × 50 ms = 10 s.
    assert!(elapsed < Duration::from_secs(3), "200 reads took {elapsed:?}");
    assert!(slowest < Duration::from_millis(500), "slowest read {slowest:?}");
    s.router.flush().await;
    let stats = s.router.stats();
    assert!(stats.sampled_away > 0, "{stats:?}");
    assert!(stats.matches > 0, "{stats:?}");
    // Every read was either compared or sampled away.
    assert_eq!(stats.matches + stats.sampled_away, 200, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_samples_away_off_path_reads() {
    let s = Setup::with(Phase::Shadow, |b| b.max_in_flight(1));
    s.new.hang.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(s.read("a").await, Ok(Value::Null));
    }
    let stats = s.router.stats();
    assert_eq!(stats.sampled_away, 2, "{stats:?}");
    // Only the first read reached the (hanging) new store.
    let new_calls = || {
        s.log
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("new:"))
            .count()
    };
    let started = Instant::now();
    while new_calls() == 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(new_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparator_options_apply_to_routed_calls() {
    let comparator = Comparator::new()
        .ignore("updated_at")
        .tolerance_at("fx_rate", 1e-6)
        .numeric_strings()
        .rename("balance_cents", "balance.minor");
    let s = Setup::with(Phase::Shadow, |b| b.comparator(comparator));
    s.legacy.set(
        "a",
        json!({"balance_cents": "1050", "fx_rate": 1.0000001, "updated_at": 1}),
    );
    s.new.set(
        "a",
        json!({"balance": {"minor": 1050}, "fx_rate": 1.0, "updated_at": 2}),
    );
    s.legacy.set("b", json!({"balance_cents": 1050, "fx_rate": 1.0}));
    s.new
        .set("b", json!({"balance": {"minor": 1049}, "fx_rate": 1.01}));
    s.read("a").await.unwrap();
    s.read("b").await.unwrap();
    s.router.flush().await;
    let stats = s.router.stats();
    assert_eq!((stats.matches, stats.mismatches), (1, 1));
    let d = s.discrepancy("get_balance", "b").await.unwrap();
    let paths: Vec<&str> = d.differences.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["fx_rate", "balance.minor"]);
    // The record keeps the raw legacy value, not the mapped one.
    assert_eq!(d.legacy.unwrap()["balance_cents"], 1050);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_comparator_is_contained() {
    let boom = |_: &str, _: &Value, _: &Value| -> Comparison { panic!("comparator bug") };
    let s = Setup::with(Phase::Shadow, |b| b.comparator(boom));
    assert_eq!(s.read("a").await, Ok(Value::Null));
    assert_eq!(s.read("a").await, Ok(Value::Null));
    s.router.flush().await;
    assert_eq!(s.router.stats().comparator_panics, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discrepancies_form_one_record_history_per_operation_and_key() {
    let s = Setup::new(Phase::Shadow);
    s.legacy.set("a", json!(1));
    s.new.set("a", json!(2));
    s.legacy.set("b", json!(1));
    s.new.set("b", json!(3));
    s.read("a").await.unwrap();
    s.router.flush().await;
    s.new.set("a", json!(4));
    s.read("a").await.unwrap();
    s.read("b").await.unwrap();
    s.router.flush().await;

    let dal = s.dal();
    let key = s.router.recorder().key_of("get_balance", "a").unwrap();
    assert_eq!(key.to_string(), "migration_discrepancies/get_balance:a");
    let history = dal.history(&key, Timestamp::MAX).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].update.source.as_str(), SOURCE);
    assert_eq!(history[0].update.format.as_str(), "json");
    assert_ne!(history[0].update.position, history[1].update.position);
    // The state is the latest occurrence.
    let state = dal.state_at(&key, Timestamp::MAX).await.unwrap().unwrap();
    assert_eq!(state["new"], 4);
    assert_eq!(state["kind"], "mismatch");
    let first: Discrepancy = serde_json::from_slice(&history[0].update.raw).unwrap();
    assert_eq!(first.new, Some(json!(2)));
    assert_eq!(
        history[0].update.commit_time,
        first.observed_at().unwrap(),
        "the commit time is the observation time"
    );
    // Another key is another record.
    let b = s.router.recorder().key_of("get_balance", "b").unwrap();
    assert_eq!(dal.history(&b, Timestamp::MAX).await.unwrap().len(), 1);

    // The source is acknowledged like any other: checkpoint and watermark.
    let checkpoint = s
        .store
        .checkpoint(&SourceId::new(SOURCE).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        checkpoint.watermark,
        history[1].update.commit_time.max(checkpoint.watermark)
    );

    // The records are exactly what the json consumer makes of the same
    // events: ingesting them again that way stores nothing new.
    let json = Json::new(FormatOptions {
        model: Some(Model::new("migration_discrepancies").unwrap()),
        ..FormatOptions::default()
    })
    .unwrap();
    let ingestor = Ingestor::new(
        s.store.clone(),
        SourceId::new(SOURCE).unwrap(),
        json,
        References::new(),
    );
    let raw: Vec<_> = history.iter().map(|h| h.update.raw.clone()).collect();
    let report = ingestor.ingest_batch(&raw).await.unwrap();
    assert_eq!(
        (report.stored, report.duplicates, report.dead_lettered),
        (0, 2, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phase_switches_at_run_time_without_rebuilding() {
    let s = Setup::new(Phase::LegacyOnly);
    s.legacy.set("a", json!("old"));
    s.new.set("a", json!("new"));
    let admin = s.router.phase();
    let mut seen = Vec::new();
    for phase in Phase::ALL {
        admin.set(phase);
        let value = s.read("a").await.unwrap();
        s.router.flush().await;
        seen.push((phase, value, s.sorted_calls()));
    }
    assert_eq!(
        seen,
        [
            (Phase::LegacyOnly, json!("old"), vec!["legacy:get:a".to_owned()]),
            (
                Phase::Shadow,
                json!("old"),
                vec!["legacy:get:a".to_owned(), "new:get:a".to_owned()]
            ),
            (
                Phase::PreferNew,
                json!("new"),
                vec!["legacy:get:a".to_owned(), "new:get:a".to_owned()]
            ),
            (Phase::NewOnly, json!("new"), vec!["new:get:a".to_owned()]),
        ]
    );
    // And back, for a rollback.
    admin.set(Phase::Shadow);
    assert_eq!(s.read("a").await, Ok(json!("old")));
    assert_eq!(s.phase.get(), Phase::Shadow);
}

#[test]
fn building_outside_a_runtime_or_without_timers_is_an_error() {
    let recorder = || DiscrepancyRecorder::new(Store::in_memory(), SourceId::new(SOURCE).unwrap());
    let err = DualRouter::builder(recorder()).build().unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
    // A runtime without the time driver: an error, not a later panic.
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let err = runtime
        .block_on(async { DualRouter::builder(recorder()).build() })
        .unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime_and_calls_are_send() {
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    let s = Setup::new(Phase::Shadow);
    s.legacy.set("a", json!(1));
    s.new.set("a", json!(2));
    // The futures of `read` and `write` can be spawned.
    let (l, n) = (s.legacy.clone(), s.new.clone());
    let router = s.router.clone();
    let read = assert_send(async move {
        router
            .read("get_balance", "a", move || l.get("a"), move || n.get("a"))
            .await
    });
    assert_eq!(tokio::spawn(read).await.unwrap(), Ok(json!(1)));
    let (l, n) = (s.legacy.clone(), s.new.clone());
    let router = s.router.clone();
    let write = assert_send(async move {
        router
            .write(
                "post_balance",
                "a",
                || l.put("a", json!(3)),
                || n.put("a", json!(3)),
            )
            .await
    });
    assert_eq!(tokio::spawn(write).await.unwrap().unwrap()["by"], "legacy");
    s.router.flush().await;
    assert_eq!(s.router.stats().mismatches, 2);
}

#[derive(serde::Deserialize)]
struct DiscrepancyView {
    kind: String,
    key: String,
}

impl DataView for DiscrepancyView {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: "migration_discrepancies",
            joins: vec![],
        }
    }
    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        ctx.root_as().await
    }
}

async fn no_failed_writes(d: DiscrepancyView) -> Verdict {
    if d.kind == "write_failed" {
        Verdict::fail(format!("{} is missing a write in the new store", d.key))
    } else {
        Verdict::pass()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discrepancies_trigger_checks_and_incidents() {
    let store = Store::in_memory();
    let topic: Arc<dyn Topic> = Arc::new(InProcessTopic::new());
    let json = Json::new(FormatOptions {
        model: Some(Model::new("migration_discrepancies").unwrap()),
        ..FormatOptions::default()
    })
    .unwrap();
    let mut overseer = Overseer::builder()
        .store(store.clone())
        .topic(topic.clone())
        .state_builder(Json::builder())
        .source(
            SourceConfig::new(SOURCE, json)
                .unwrap()
                .models(["migration_discrepancies"])
                .unwrap(),
        )
        .checks(Registry::new().add(Check::new("no_failed_writes", no_failed_writes)))
        .build()
        .unwrap();
    let recorder = DiscrepancyRecorder::new(store, SourceId::new(SOURCE).unwrap()).with_topic(topic);
    let router = DualRouter::builder(recorder)
        .phase(PhaseSwitch::new(Phase::Shadow))
        .build()
        .unwrap();
    let (legacy, new, _) = Fake::pair();
    new.fail.store(true, Ordering::SeqCst);
    router
        .write(
            "post_balance",
            "acct-9",
            || legacy.put("acct-9", json!(1)),
            || new.put("acct-9", json!(1)),
        )
        .await
        .unwrap();
    router.flush().await;
    overseer.drain().await.unwrap();
    assert_eq!(overseer.runner().stats().incidents_opened, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discrepancies_are_queried_with_the_cli() {
    use clap::Parser;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path()).unwrap();
    let recorder = DiscrepancyRecorder::new(store, SourceId::new(SOURCE).unwrap());
    let router = DualRouter::builder(recorder)
        .phase(PhaseSwitch::new(Phase::Shadow))
        .build()
        .unwrap();
    for new_value in [101, 102] {
        router
            .read(
                "get_balance",
                "acct-1",
                || async { Ok::<Value, String>(json!({"cents": 100})) },
                move || async move { Ok::<Value, String>(json!({"cents": new_value})) },
            )
            .await
            .unwrap();
        router.flush().await;
    }
    let cli = |args: &[&str]| {
        let mut argv = vec!["overseer"];
        argv.extend_from_slice(args);
        overseer_cli::Cli::try_parse_from(argv).unwrap()
    };
    let store_dir = dir.path().to_str().unwrap();
    let mut out = Vec::new();
    overseer_cli::run_with_output(
        cli(&[
            "history",
            "--store",
            store_dir,
            "migration_discrepancies",
            "get_balance:acct-1",
        ]),
        &mut out,
    )
    .await
    .unwrap();
    let history = String::from_utf8(out).unwrap();
    assert_eq!(history.lines().count(), 2, "{history}");
    assert!(history.lines().all(|l| l.contains(SOURCE)), "{history}");

    let mut out = Vec::new();
    overseer_cli::run_with_output(
        cli(&[
            "view",
            "--store",
            store_dir,
            "--compact",
            "migration_discrepancies",
            "get_balance:acct-1",
        ]),
        &mut out,
    )
    .await
    .unwrap();
    let state: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(state["kind"], "mismatch");
    assert_eq!(state["new"], json!({"cents": 102}));
    assert_eq!(state["differences"][0]["path"], "cents");
}
