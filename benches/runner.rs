//! Runner latency on the wall clock: how long after an update is ingested
//! (immediate strategy), or after its delay has passed (fixed delay), its
//! check has run. Prints one JSON object.
//!
//! ```text
//! cargo bench -p overseer-benches --bench runner
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use overseer_builders::{FormatName, FormatOptions};
use overseer_core::check::{Check, Verdict};
use overseer_core::pipeline::{Overseer, SourceConfig};
use overseer_core::strategy::{FixedDelay, Immediate};
use overseer_core::view::{DataView, ViewContext, ViewError, ViewSpec};
use overseer_core::{Model, Registry, Store, Timestamp};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(serde::Deserialize)]
struct Order {
    n: u64,
}

impl DataView for Order {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: "orders",
            joins: vec![],
        }
    }
    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        ctx.root_as().await
    }
}

async fn even(o: Order) -> Verdict {
    if o.n % 1000 == 999 {
        Verdict::fail("sample failure")
    } else {
        Verdict::pass()
    }
}

fn pipeline(check: Check) -> Overseer {
    let options = FormatOptions {
        model: Some(Model::new("orders").unwrap()),
        ..FormatOptions::default()
    };
    let consumer = overseer_builders::consumer(FormatName::Json, options).unwrap();
    Overseer::builder()
        .store(Store::in_memory())
        .state_builders(overseer_builders::builders())
        .source(
            SourceConfig::with_shared("app", consumer)
                .unwrap()
                .models(["orders"])
                .unwrap(),
        )
        .checks(Registry::new().add(check))
        .build()
        .unwrap()
}

fn batch(start: u64, len: u64) -> Vec<Bytes> {
    let now_ms = Timestamp::now().as_micros() / 1000;
    (start..start + len)
        .map(|n| Bytes::from(json!({"id": format!("o{n}"), "n": n, "updated_at": now_ms}).to_string()))
        .collect()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Immediate: from the start of ingesting a batch to each of its checks
/// having run (ingest, select, schedule, load the view, execute, audit).
async fn immediate() -> (f64, f64, usize) {
    let mut o = pipeline(Check::new("even", even).with_strategy(Immediate));
    let mut latencies = Vec::new();
    for i in 0..300u64 {
        let events = batch(i * 100, 100);
        let start = Instant::now();
        o.ingest("app", &events).await.unwrap();
        let ran = o.tick().await.unwrap();
        let ms = start.elapsed().as_secs_f64() * 1e3;
        latencies.extend(std::iter::repeat_n(ms, ran.len()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let n = latencies.len();
    (percentile(latencies.clone(), 0.5), percentile(latencies, 0.99), n)
}

/// Fixed delay of 200 ms: how late after commit time + 200 ms each check ran,
/// with the pipeline ticking every millisecond.
async fn delayed() -> (f64, f64, usize) {
    let delay = Duration::from_millis(200);
    let mut o = pipeline(Check::new("even", even).with_strategy(FixedDelay(delay)));
    let mut lateness = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut n = 0;
    while Instant::now() < deadline || o.runner().pending() > 0 {
        if Instant::now() < deadline {
            o.ingest("app", &batch(n, 50)).await.unwrap();
            n += 50;
        }
        for e in o.tick().await.unwrap() {
            let due = e.trigger.commit_time.saturating_add(delay);
            let late_us = Timestamp::now().as_micros() - due.as_micros();
            lateness.push(late_us as f64 / 1e3);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let count = lateness.len();
    (
        percentile(lateness.clone(), 0.5),
        percentile(lateness, 0.99),
        count,
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (i50, i99, in_) = immediate().await;
        let (d50, d99, dn) = delayed().await;
        println!(
            "{}",
            json!({
                "immediate_end_to_end_p50_ms": i50, "immediate_end_to_end_p99_ms": i99, "immediate_runs": in_,
                "fixed_delay_lateness_p50_ms": d50, "fixed_delay_lateness_p99_ms": d99, "fixed_delay_runs": dn,
            })
        );
    });
}
