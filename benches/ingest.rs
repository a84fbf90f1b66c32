//! Ingestion and time-travel benchmarks, printing one JSON object per mode.
//!
//! ```text
//! cargo bench -p overseer-benches --bench ingest -- memory [EVENTS]   # default 1,000,000; also stored as received, in the same run
//! cargo bench -p overseer-benches --bench ingest -- local  [EVENTS]   # default 100,000; raw put rate in the same run
//! cargo bench -p overseer-benches --bench ingest -- state  [UPDATES]  # default 1,000
//! cargo bench -p overseer-benches --bench ingest -- objects [OBJECTS] # default 500,000; MemoryStore's and InMemory's memory per object
//! cargo bench -p overseer-benches --bench ingest -- values [EVENTS]   # default 200,000; JSON values read by serde_json and exactly sized, alternated
//! cargo bench -p overseer-benches --bench ingest -- wide [UPDATES]    # default 5,000; one-field updates folded into documents of 10 to 10,000 fields
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, stream};
use overseer_benches::{Rng, mongo_events, one_record_events, peak_rss_mib, record_events};
use overseer_builders::{FormatName, FormatOptions};
use overseer_core::object_store::local::LocalFileSystem;
use overseer_core::object_store::memory::InMemory;
use overseer_core::object_store::path::Path;
use overseer_core::object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use overseer_core::store::{CountingStore, MemoryStore, RequestCounts};
use overseer_core::{
    BatchReport, Compression, Ingestor, RecordKey, ReferenceSpec, References, SourceId, Store, Timestamp,
};
use serde_json::json;

const BATCH: usize = 10_000;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ingestor(store: Store) -> Ingestor {
    let consumer = overseer_builders::consumer(FormatName::Mongo, FormatOptions::default()).unwrap();
    let refs = References::new().with(ReferenceSpec::parse("transfers.user_id -> users").unwrap());
    Ingestor::new(store, SourceId::new("transfers-cdc").unwrap(), consumer, refs)
}

/// Ingests `events` generated on the fly, in batches; returns the report and seconds.
async fn ingest(ing: &Ingestor, events: usize) -> (BatchReport, f64) {
    let mut report = BatchReport::default();
    let mut events_iter = mongo_events(events, 42);
    let mut elapsed = 0.0;
    loop {
        let batch: Vec<Bytes> = events_iter.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            break;
        }
        let start = Instant::now();
        report.absorb(ing.ingest_and_ack(&batch).await.unwrap());
        elapsed += start.elapsed().as_secs_f64();
    }
    (report, elapsed)
}

/// The baseline measured in the same run: serde_json alone parsing the same
/// events into `Value` on every core (what any ingestion must at least do).
fn parse_baseline(events: usize) -> f64 {
    use rayon::prelude::*;
    let mut parsed = 0usize;
    let mut elapsed = 0.0;
    let mut iter = mongo_events(events, 42);
    loop {
        let batch: Vec<Bytes> = iter.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            break;
        }
        let start = Instant::now();
        parsed += batch
            .par_iter()
            .filter(|e| serde_json::from_slice::<serde_json::Value>(e).is_ok())
            .count();
        elapsed += start.elapsed().as_secs_f64();
    }
    assert_eq!(parsed, events);
    events as f64 / elapsed
}

/// Ingests `events` into a fresh counting in-memory store; returns the
/// seconds taken and the store's request counts.
async fn ingest_fresh(events: usize, compression: Compression) -> (f64, RequestCounts) {
    let counting = Arc::new(CountingStore::new(InMemory::new()));
    let store = Store::new(counting.clone()).with_compression(compression);
    let (report, secs) = ingest(&ingestor(store), events).await;
    assert_eq!(report.stored, events, "every event stored: {report:?}");
    (secs, counting.counts())
}

async fn memory(events: usize) {
    let baseline = parse_baseline(events);
    let default = Compression::default();
    let (first_secs, totals) = ingest_fresh(events, default).await;
    // Read now: the runs below hold stores of their own.
    let peak_rss = peak_rss_mib();
    // The same events stored as received: what compression at rest costs
    // in time and saves in bytes. Each is run twice, alternated, and the
    // second runs are compared: the first run of a process also pays for
    // the memory it takes from the system.
    let (_, plain) = ingest_fresh(events, Compression::None).await;
    let (secs, _) = ingest_fresh(events, default).await;
    let (plain_secs, _) = ingest_fresh(events, Compression::None).await;
    // Request cost of 1,000 events, measured on a fresh store.
    let counting_1k = Arc::new(CountingStore::new(InMemory::new()));
    let (r1k, _) = ingest(&ingestor(Store::new(counting_1k.clone())), 1000).await;
    let c = counting_1k.counts();
    println!(
        "{}",
        json!({
            "mode": "memory",
            "events": events,
            "seconds": secs,
            "events_per_sec": events as f64 / secs,
            "first_run_events_per_sec": events as f64 / first_secs,
            "parse_only_events_per_sec": baseline,
            "ratio_to_parse_only": events as f64 / secs / baseline,
            "requests_per_1000_events": {"puts": c.puts, "gets": c.gets, "lists": c.lists, "other": c.other, "stored": r1k.stored},
            "requests_total": {"puts": totals.puts, "gets": totals.gets, "lists": totals.lists},
            "put_bytes_per_event": totals.put_bytes as f64 / events as f64,
            "uncompressed_events_per_sec": events as f64 / plain_secs,
            "uncompressed_put_bytes_per_event": plain.put_bytes as f64 / events as f64,
            "speed_ratio_to_uncompressed": plain_secs / secs,
            "bytes_ratio_to_uncompressed": totals.put_bytes as f64 / plain.put_bytes as f64,
            "peak_rss_mib": peak_rss,
        })
    );
}

/// The raw rate at which this file system takes create-only puts of
/// `sizes` (the physical ceiling for one object per update).
async fn raw_put_rate(fs: Arc<dyn ObjectStore>, sizes: &[usize]) -> f64 {
    let start = Instant::now();
    let results: Vec<_> = stream::iter(sizes.iter().enumerate())
        .map(|(i, &size)| {
            let fs = fs.clone();
            async move {
                let path = Path::from(format!("raw/{:04}/{i:08}.pb", i % 1000));
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                fs.put_opts(&path, PutPayload::from(vec![7u8; size]), opts).await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let secs = start.elapsed().as_secs_f64();
    assert!(results.iter().all(Result::is_ok));
    sizes.len() as f64 / secs
}

async fn local(events: usize) {
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let fs: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    // Envelope sizes of the same events (raw event + ~170 bytes of metadata).
    let sizes: Vec<usize> = mongo_events(events, 42).map(|e| e.len() + 170).collect();
    let raw_rate = raw_put_rate(fs.clone(), &sizes).await;
    let counting = Arc::new(CountingStore::new(
        LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
    ));
    let store = Store::new(counting.clone()).with_prefix("overseer");
    let (report, secs) = ingest(&ingestor(store), events).await;
    assert_eq!(report.stored, events);
    let c = counting.counts();
    let puts_per_event = c.puts as f64 / events as f64;
    let rate = events as f64 / secs;
    let ceiling = raw_rate / puts_per_event;
    println!(
        "{}",
        json!({
            "mode": "local",
            "events": events,
            "seconds": secs,
            "events_per_sec": rate,
            "raw_puts_per_sec": raw_rate,
            "puts_per_event": puts_per_event,
            "gets_per_event": c.gets as f64 / events as f64,
            "lists_per_event": c.lists as f64 / events as f64,
            "ceiling_events_per_sec": ceiling,
            "ratio_to_ceiling": rate / ceiling,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn state(updates: usize) {
    let (start_ms, events) = one_record_events(updates);
    let key = RecordKey::new("transfers", "tr-hot").unwrap();
    let mut rng = Rng::new(7);
    let mut random_t = || Timestamp::from_millis(start_ms + rng.below(updates as u64) as i64);

    // Cached: InMemory, one DAL whose cache is warm after a first read.
    let store = Store::in_memory();
    ingestor(store.clone()).ingest_batch(&events).await.unwrap();
    let dal = overseer_builders::dal(store);
    let full = dal.state_at(&key, Timestamp::MAX).await.unwrap().unwrap();
    assert_eq!(full["n"], json!(updates - 1));
    let mut cached = Vec::new();
    for _ in 0..300 {
        let at = random_t();
        let start = Instant::now();
        let s = dal.state_at(&key, at).await.unwrap();
        cached.push(start.elapsed().as_secs_f64() * 1e3);
        assert!(s.is_some());
    }

    // Cold: LocalFileSystem, a new DAL (empty cache) for every read.
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let local = Store::local(dir.path()).unwrap();
    ingestor(local.clone()).ingest_batch(&events).await.unwrap();
    let mut cold = Vec::new();
    let mut warm_local = Vec::new();
    let warm_dal = overseer_builders::dal(local.clone());
    warm_dal.state_at(&key, Timestamp::MAX).await.unwrap();
    for _ in 0..40 {
        let at = random_t();
        let dal = overseer_builders::dal(local.clone());
        let start = Instant::now();
        let s = dal.state_at(&key, at).await.unwrap();
        cold.push(start.elapsed().as_secs_f64() * 1e3);
        assert!(s.is_some());
        let start = Instant::now();
        warm_dal.state_at(&key, at).await.unwrap();
        warm_local.push(start.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{}",
        json!({
            "mode": "state",
            "updates": updates,
            "memory_cached_median_ms": median(cached),
            "local_cold_median_ms": median(cold),
            "local_cached_median_ms": median(warm_local),
        })
    );
}

/// Resident memory of this process now, in MiB (Linux `VmRSS`).
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What an in-memory store costs per object beyond its payload: `objects`
/// create-only puts of 1-byte objects under keys shaped like an Overseer
/// update's, measured as the growth of resident memory, for Overseer's
/// `MemoryStore` and then (the first kept alive) `object_store`'s `InMemory`.
async fn objects(objects: usize) {
    async fn fill(store: &dyn ObjectStore, objects: usize) -> f64 {
        let before = rss_mib().unwrap_or(0.0);
        for i in 0..objects {
            let path = Path::from(format!(
                "updates/ledger_entries/{i}/{:020}-{:032x}.pb",
                1_700_000_000_000_000u64 + i as u64,
                i as u128 * 0x9e37_79b9_7f4a_7c15
            ));
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            store
                .put_opts(&path, PutPayload::from(vec![7u8]), opts)
                .await
                .unwrap();
        }
        rss_mib().unwrap_or(0.0) - before
    }
    let memory_store = MemoryStore::new();
    let compact = fill(&memory_store, objects).await;
    let in_memory = InMemory::new();
    let baseline = fill(&in_memory, objects).await;
    let per_object = |grown: f64| grown * 1024.0 * 1024.0 / objects as f64;
    println!(
        "{}",
        json!({
            "mode": "objects",
            "objects": objects,
            "payload_bytes": 1,
            "memory_store_rss_growth_mib": compact,
            "memory_store_bytes_per_object": per_object(compact),
            "in_memory_rss_growth_mib": baseline,
            "in_memory_bytes_per_object": per_object(baseline),
            "ratio": compact / baseline,
        })
    );
}

/// The same MongoDB events read into JSON values by `serde_json` and by
/// `overseer_builders::exact` (both as text), in alternated rounds of one
/// run: microseconds per event to parse every event and keep its value, and
/// to drop them all; medians of five rounds each.
fn values(events: usize) {
    let input: Vec<Bytes> = mongo_events(events, 42).collect();
    let read = |raw: &Bytes, exact: bool| -> serde_json::Value {
        if exact {
            overseer_builders::exact::parse(raw).unwrap()
        } else {
            serde_json::from_str(std::str::from_utf8(raw).unwrap()).unwrap()
        }
    };
    let per_event = |secs: f64| secs * 1e6 / events as f64;
    let (mut parse, mut free) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..5 {
        for (side, exact) in [false, true].into_iter().enumerate() {
            let start = Instant::now();
            let kept: Vec<serde_json::Value> = input.iter().map(|raw| read(raw, exact)).collect();
            parse[side].push(per_event(start.elapsed().as_secs_f64()));
            let start = Instant::now();
            drop(kept);
            free[side].push(per_event(start.elapsed().as_secs_f64()));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [serde_parse, exact_parse] = parse.map(median);
    let [serde_drop, exact_drop] = free.map(median);
    println!(
        "{}",
        json!({
            "mode": "values",
            "events": events,
            "serde_json_parse_us": serde_parse,
            "exact_parse_us": exact_parse,
            "parse_ratio": exact_parse / serde_parse,
            "serde_json_drop_us": serde_drop,
            "exact_drop_us": exact_drop,
            "drop_ratio": exact_drop / serde_drop,
        })
    );
}

/// One-field updates of one record, folded by ingestion into the record's
/// memo (write-through to an indexed DAL), for documents of 10 to 10,000
/// fields: what an update costs as its document grows.
async fn wide(updates: usize) {
    let mut results = Vec::new();
    for fields in [10usize, 100, 1_000, 10_000] {
        let document: serde_json::Map<String, serde_json::Value> = (0..fields)
            .map(|f| (format!("field_{f}"), json!(format!("value of field {f}"))))
            .chain([("_id".to_owned(), json!("tr-wide")), ("n".to_owned(), json!(0))])
            .collect();
        let document = serde_json::Value::Object(document).to_string();
        let (_, events) = record_events("tr-wide", updates + 1, &document, |i| format!(r#"{{"n":{i}}}"#));
        let store = Store::in_memory();
        let dal = overseer_builders::dal(store.clone()).indexed();
        let ing = ingestor(store).with_dal(&dal);
        ing.ingest_batch(&events[..1]).await.unwrap();
        let start = Instant::now();
        for batch in events[1..].chunks(500) {
            ing.ingest_batch(batch).await.unwrap();
        }
        let per_update_us = start.elapsed().as_secs_f64() * 1e6 / updates as f64;
        let key = RecordKey::new("transfers", "tr-wide").unwrap();
        let state = dal.shared_state_at(&key, Timestamp::MAX).await.unwrap().unwrap();
        assert_eq!(state["n"], json!(updates));
        assert_eq!(state.len(), fields + 2);
        results.push(json!({"fields": fields, "per_update_us": per_update_us}));
    }
    println!(
        "{}",
        json!({"mode": "wide", "updates": updates, "documents": results})
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mode = args.first().map(String::as_str).unwrap_or("all");
    let n = |default: usize| args.get(1).and_then(|a| a.parse().ok()).unwrap_or(default);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match mode {
            "memory" => memory(n(1_000_000)).await,
            "local" => local(n(100_000)).await,
            "state" => state(n(1000)).await,
            "objects" => objects(n(500_000)).await,
            "values" => values(n(200_000)),
            "wide" => wide(n(5_000)).await,
            _ => {
                memory(n(1_000_000)).await;
                local(100_000).await;
                state(1000).await;
            }
        }
    });
}
