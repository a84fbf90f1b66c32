//! The payments simulation, run in-process: freshness detects every injected
//! discrepancy without false alarms; running every check immediately does
//! raise false alarms on data still in flight.

use overseer_examples::payments::{Config, StrategyMode, run};

fn config(seed: u64, strategy: StrategyMode) -> Config {
    Config {
        transfers: 300,
        seed,
        strategy,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_detects_everything_without_false_alarms() {
    for seed in [1, 2] {
        let r = run(&config(seed, StrategyMode::Freshness))
            .await
            .expect("the run completes");
        let s = &r.summary;
        assert!(s.injected.is_some_and(|n| n >= 5), "seed {seed}: {s:?}");
        assert_eq!(s.detected, s.injected, "seed {seed}: missed {:?}", r.score.missed);
        assert_eq!(
            s.false_alarms,
            Some(0),
            "seed {seed}: {:?}",
            r.score.false_alarms_by_check
        );
        assert_eq!(r.score.other_check, 0, "seed {seed}");
        assert_eq!(
            r.stats.degraded, 0,
            "seed {seed}: no run gave up waiting for a source"
        );
        assert!(s.ttd_p50_ms.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_raises_false_alarms() {
    for seed in [1, 2] {
        let r = run(&config(seed, StrategyMode::Immediate))
            .await
            .expect("the run completes");
        assert!(
            r.summary.false_alarms.is_some_and(|n| n > 0),
            "seed {seed}: {:?}",
            r.summary
        );
    }
}

/// On a single-threaded runtime the driver reads and ingests each window's
/// batches in turn instead of handing them to ingestion threads: every event
/// is still fed and stored once, and the outcome is the same.
#[test]
fn single_and_multi_threaded_runtimes_store_and_detect_the_same() {
    let go = |runtime: std::io::Result<tokio::runtime::Runtime>| {
        runtime
            .expect("a runtime")
            .block_on(run(&config(1, StrategyMode::Freshness)))
            .expect("the run completes")
    };
    let single = go(tokio::runtime::Builder::new_current_thread().enable_all().build());
    let multi = go(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build());
    for r in [&single, &multi] {
        let s = &r.summary;
        assert_eq!(s.events, r.per_source.iter().sum::<usize>());
        assert!(s.injected.is_some_and(|n| n >= 5), "{s:?}");
        assert_eq!(s.detected, s.injected, "missed {:?}", r.score.missed);
        assert_eq!(s.false_alarms, Some(0), "{:?}", r.score.false_alarms_by_check);
    }
    assert_eq!(single.summary.events, multi.summary.events);
    assert_eq!(single.stats.notifications, multi.stats.notifications);
}

#[cfg(target_os = "linux")]
#[test]
fn the_main_job_can_turn_transparent_huge_pages_off() {
    overseer_examples::payments::metrics::disable_transparent_huge_pages()
        .expect("prctl(PR_SET_THP_DISABLE) is allowed to any process");
    assert_eq!(nix::sys::prctl::get_thp_disable(), Ok(true));
}
