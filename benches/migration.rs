//! The caller's read latency through a `DualRouter`: legacy only versus
//! shadow (both stores read, legacy returned, compared off the caller's
//! path). Shadow reads must add under 5 % to the caller's p50.
//!
//! Two simulated stores, each for both sides:
//! * `sleep`: a store call waits on a Tokio timer (200 µs asked; the timer
//!   wheel's 1 ms resolution makes it about 1 ms): I/O-bound stores;
//! * `spin`: a store call is 100 µs of CPU work on the calling thread.
//!
//! The phases alternate in blocks on the same router (switched at run time),
//! so machine noise hits both alike. Prints one JSON object.
//!
//! ```text
//! cargo bench -p overseer-benches --bench migration
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use overseer_core::migration::{Comparator, DiscrepancyRecorder, DualRouter, Phase, PhaseSwitch};
use overseer_core::{SourceId, Store};
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WARMUP: usize = 300;
const BLOCK: usize = 250;
const ROUNDS: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Latency {
    Sleep(Duration),
    Spin(Duration),
}

impl Latency {
    fn name(self) -> &'static str {
        match self {
            Latency::Sleep(_) => "sleep",
            Latency::Spin(_) => "spin",
        }
    }

    async fn wait(self) {
        match self {
            Latency::Sleep(d) => tokio::time::sleep(d).await,
            Latency::Spin(d) => {
                let start = Instant::now();
                while start.elapsed() < d {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

/// An account as a store returns it.
fn account(id: u64, new_side: bool) -> Value {
    // One read in a hundred disagrees, so the recorder works too.
    let balance = if new_side && id % 100 == 7 { 1 } else { 0 } + 10_000 + id as i64;
    json!({
        "id": format!("acct-{id}"),
        "owner": "customer-1234",
        "currency": "USD",
        "balance_minor": balance,
        "available_minor": balance - 50,
        "status": "active",
        "flags": ["kyc_passed", "card"],
        "limits": {"daily_minor": 500_000, "monthly_minor": 5_000_000},
        "updated_at": if new_side { "2026-11-29T09:00:00.000001Z" } else { "2026-11-29T09:00:00Z" },
        "version": 17
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn summary(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    json!({
        "samples": samples.len(),
        "p50_us": percentile(&samples, 0.50),
        "p90_us": percentile(&samples, 0.90),
        "p99_us": percentile(&samples, 0.99),
    })
}

async fn read(router: &DualRouter, latency: Latency, id: u64) -> Duration {
    let start = Instant::now();
    let value = router
        .read(
            "get_account",
            &id.to_string(),
            move || async move {
                latency.wait().await;
                Ok::<Value, String>(account(id, false))
            },
            move || async move {
                latency.wait().await;
                Ok::<Value, String>(account(id, true))
            },
        )
        .await
        .unwrap();
    let elapsed = start.elapsed();
    std::hint::black_box(value);
    elapsed
}

async fn scenario(latency: Latency) -> Value {
    let store = Store::in_memory();
    let phase = PhaseSwitch::new(Phase::LegacyOnly);
    let router = DualRouter::builder(DiscrepancyRecorder::new(store, SourceId::new("bench").unwrap()))
        .phase(phase.clone())
        .comparator(Comparator::new().ignore("updated_at"))
        .build()
        .unwrap();
    let mut id = 0u64;
    for p in [Phase::LegacyOnly, Phase::Shadow] {
        phase.set(p);
        for _ in 0..WARMUP {
            id += 1;
            read(&router, latency, id).await;
        }
    }
    router.flush().await;
    let before = router.stats();
    let (mut legacy_only, mut shadow) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which phase goes first in each round.
        let order = if round % 2 == 0 {
            [Phase::LegacyOnly, Phase::Shadow]
        } else {
            [Phase::Shadow, Phase::LegacyOnly]
        };
        for p in order {
            phase.set(p);
            for _ in 0..BLOCK {
                id += 1;
                let took = read(&router, latency, id).await;
                if p == Phase::Shadow {
                    shadow.push(took);
                } else {
                    legacy_only.push(took);
                }
            }
        }
    }
    router.flush().await;
    let after = router.stats();
    let legacy_only = summary(legacy_only);
    let shadow = summary(shadow);
    let ratio = shadow["p50_us"].as_f64().unwrap() / legacy_only["p50_us"].as_f64().unwrap();
    json!({
        "store": latency.name(),
        "store_latency_us": match latency { Latency::Sleep(d) | Latency::Spin(d) => d.as_micros() as u64 },
        "legacy_only": legacy_only,
        "shadow": shadow,
        "p50_ratio": ratio,
        "p50_overhead_percent": (ratio - 1.0) * 100.0,
        "shadow_compared": (after.matches + after.mismatches) - (before.matches + before.mismatches),
        "shadow_mismatches_recorded": after.discrepancies_recorded - before.discrepancies_recorded,
        "shadow_sampled_away": after.sampled_away - before.sampled_away,
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results = runtime.block_on(async {
        let mut results = Vec::new();
        for latency in [
            Latency::Sleep(Duration::from_micros(200)),
            Latency::Spin(Duration::from_micros(100)),
        ] {
            results.push(scenario(latency).await);
        }
        results
    });
    let out = json!({
        "bench": "migration_shadow_read",
        "threads": 2,
        "rounds": ROUNDS,
        "block": BLOCK,
        "scenarios": results,
    });
    println!("{out}");
}
