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
