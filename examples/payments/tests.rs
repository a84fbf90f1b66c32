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

/// Settings the simulation would step through for hours (a window of a
/// microsecond, a lag or stall of days) or sleep on forever (a rate of
/// nearly nothing) are refused before anything runs, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_a_run_cannot_step_through_are_refused() {
    use overseer_examples::payments::StallSpec;
    use overseer_examples::payments::delivery::{Lag, MAX_LAG};
    use std::time::Duration;

    let day = Duration::from_secs(24 * 3600);
    let long = Lag {
        min: Duration::ZERO,
        max: day * 2,
    };
    let cases: Vec<(Config, &str)> = vec![
        (
            Config {
                window: Duration::from_micros(1),
                ..config(1, StrategyMode::Freshness)
            },
            "window",
        ),
        (
            Config {
                window: day,
                ..config(1, StrategyMode::Freshness)
            },
            "window",
        ),
        (
            Config {
                heartbeat: day * 2,
                ..config(1, StrategyMode::Freshness)
            },
            "heartbeat",
        ),
        (
            Config {
                lags: [Lag::default_for(0), Lag::default_for(1), long],
                ..config(1, StrategyMode::Freshness)
            },
            "lag of bank",
        ),
        (
            Config {
                stall: StallSpec::Source(2, MAX_LAG * 2),
                ..config(1, StrategyMode::Freshness)
            },
            "stall",
        ),
        (
            Config {
                stall: StallSpec::Source(7, day),
                ..config(1, StrategyMode::Freshness)
            },
            "stalled source",
        ),
        (
            Config {
                max_rate: Some(0.0),
                ..config(1, StrategyMode::Freshness)
            },
            "rate",
        ),
        (
            Config {
                max_rate: Some(1e-300),
                ..config(1, StrategyMode::Freshness)
            },
            "rate",
        ),
        (
            Config {
                max_rate: Some(f64::NAN),
                ..config(1, StrategyMode::Freshness)
            },
            "rate",
        ),
    ];
    for (cfg, what) in cases {
        let error = run(&cfg).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(what), "{what}: {error:?}");
    }
}

/// A report path that cannot be written fails the run before it starts,
/// naming the path, rather than after the whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_report_fails_before_the_run() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("no such directory").join("report.jsonl");
    let cfg = Config {
        report: Some(path.clone()),
        ..config(1, StrategyMode::Freshness)
    };
    let started = std::time::Instant::now();
    let error = run(&cfg).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains(&path.display().to_string()), "{error:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the run did not start"
    );
}

/// Input files from another tool: an unreadable first line (dead-lettered)
/// is delivered with the first readable event, not at time 0 (which made
/// the simulated time start in 1970, and the run take hours); a broken
/// `expected.json` is an error naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_files_with_broken_lines_or_expectations() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let small = Config {
        transfers: 100,
        write_input: Some(dir.path().to_path_buf()),
        ..config(1, StrategyMode::Freshness)
    };
    let generated = run(&small).await.expect("the generated run");
    let ledger = dir.path().join("ledger.wal2json.jsonl");
    let text = std::fs::read_to_string(&ledger).expect("the ledger file");
    std::fs::write(&ledger, format!("nope\n{text}")).expect("rewritten");
    let from_files = Config {
        transfers: 100,
        input: Some(dir.path().to_path_buf()),
        ..config(1, StrategyMode::Freshness)
    };
    // On a thread of its own, so that a run stuck in its (synchronous)
    // preparation fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let cfg = from_files.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let _ = tx.send(runtime.block_on(run(&cfg)).map_err(|e| e.to_string()));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the run ends in minutes, not hours")
        .expect("the run completes");
    assert_eq!(r.summary.events, generated.summary.events + 1);
    assert_eq!(
        r.summary.detected, r.summary.injected,
        "missed {:?}",
        r.score.missed
    );
    assert_eq!(r.summary.false_alarms, Some(0));

    let expected = dir.path().join("expected.json");
    for (content, why) in [
        ("{", "EOF while parsing"),
        (
            r#"{"discrepancies": [{"kind": "amount_mismatch", "transfer_id": "t", "observable_at": 5}]}"#,
            "observable_at of t is 5",
        ),
        (
            r#"{"discrepancies": [{"kind": "amount_mismatch", "transfer_id": "t", "observable_at": "soon"}]}"#,
            "observable_at of t",
        ),
    ] {
        std::fs::write(&expected, content).expect("written");
        let error = run(&from_files)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("expected.json") && error.contains(why),
            "{content}: {error:?}"
        );
    }
}
