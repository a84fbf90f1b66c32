//! `overseer audit` on a store written by a real pipeline run.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use overseer_core::check::{Check, Verdict};
use overseer_core::clock::ManualClock;
use overseer_core::pipeline::{Overseer, SourceConfig};
use overseer_core::strategy::Immediate;
use overseer_core::testing::LinesConsumer;
use overseer_core::view::{DataView, ViewContext, ViewError, ViewSpec};
use overseer_core::{Registry, Store, Timestamp};

#[derive(serde::Deserialize)]
struct Line {
    n: i64,
}

impl DataView for Line {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: "lines",
            joins: vec![],
        }
    }
    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        ctx.root_as().await
    }
}

async fn small(line: Line) -> Verdict {
    // Fails in [500, 1000): commit times are N seconds, so a later fix has a larger N.
    if (500..1000).contains(&line.n) {
        Verdict::fail_with("too big", line.n)
    } else {
        Verdict::pass()
    }
}

/// A pipeline running `small` at once over the lines of source `app`,
/// storing in `dir`.
fn pipeline(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Overseer {
    Overseer::builder()
        .store(Store::local(dir).unwrap())
        .state_builder(LinesConsumer)
        .source(
            SourceConfig::new("app", LinesConsumer)
                .unwrap()
                .models(["lines"])
                .unwrap(),
        )
        .checks(Registry::new().add(Check::new("small", small).with_strategy(Immediate)))
        .manual_clock(clock.clone())
        .build()
        .unwrap()
}

async fn write_store(dir: &std::path::Path) {
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000)));
    let mut overseer = pipeline(dir, &clock);
    overseer
        .ingest("app", &["a 5".into(), "b 500".into()])
        .await
        .unwrap();
    overseer.tick().await.unwrap();
    clock.advance_to(Timestamp::from_secs(2_000));
    // b is fixed: its incident resolves; c fails and stays open.
    overseer
        .ingest("app", &["b 1000".into(), "c 900".into()])
        .await
        .unwrap();
    overseer.tick().await.unwrap();
}

fn overseer(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_overseer"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lists_executions_and_incidents_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path()).await;
    let store = dir.path().to_str().unwrap();

    let (code, out, _) = overseer(&["audit", "--store", store]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("lines/b\tfail") && l.ends_with("too big")),
        "{out}"
    );

    let (_, out, _) = overseer(&[
        "audit", "--store", store, "--check", "small", "--model", "lines", "--id", "b", "--json",
    ]);
    let runs: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let outcomes: Vec<&str> = runs.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["fail", "pass"]);
    assert_eq!(runs[0]["details"], 500);

    let (_, out, _) = overseer(&["audit", "--store", store, "--outcome", "fail"]);
    assert_eq!(out.lines().count(), 2, "{out}");

    let (_, out, _) = overseer(&["audit", "--store", store, "--incidents"]);
    let open: Vec<&str> = out.lines().collect();
    assert_eq!(open.len(), 1, "{out}");
    assert!(open[0].contains("\topen\tsmall\tlines/c\t"), "{out}");

    let (_, out, _) = overseer(&["audit", "--store", store, "--incidents", "--all", "--json"]);
    let all: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(all.len(), 2);
    let b = all.iter().find(|i| i["root"]["id"] == "b").unwrap();
    assert_eq!(b["resolved_at"], "1970-01-01T00:33:20Z");

    // A record's executions across every check.
    let (code, out, _) = overseer(&["audit", "--store", store, "--model", "lines", "--id", "b"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().all(|l| l.contains("lines/b\t")), "{out}");

    let (code, _, err) = overseer(&["audit", "--store", store, "--model", "lines"]);
    assert_eq!(code, 2);
    assert!(err.contains("--id"), "{err}");
}

/// An incident line names how many runs have failed and when the latest
/// did, and carries the latest failure's message and details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_show_their_failure_count_and_latest_failure() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000)));
    let mut running = pipeline(dir.path(), &clock);
    for (at, line) in [(1_000, "c 500"), (2_000, "c 600"), (3_000, "c 700")] {
        clock.advance_to(Timestamp::from_secs(at));
        running.ingest("app", &[line.into()]).await.unwrap();
        running.tick().await.unwrap();
    }
    let store = dir.path().to_str().unwrap();

    let (code, out, _) = overseer(&["audit", "--store", store, "--incidents"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "1970-01-01T00:16:40Z\topen\tsmall\tlines/c\t3\t1970-01-01T00:50:00Z\ttoo big\n"
    );
    let (_, out, _) = overseer(&["audit", "--store", store, "--incidents", "--json"]);
    let open: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(open["failures"], 3);
    assert_eq!(open["updated_at"], "1970-01-01T00:50:00Z");
    assert_eq!(open["details"], 700);
}

/// A `--check` that never ran (a typo) is "not found", naming the checks
/// that have run, and so is a `--model`/`--id` record with no updates,
/// rather than an empty answer; a known check and record with nothing
/// matching the other filters is an empty answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_of_a_check_that_never_ran_or_an_unknown_record_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path()).await;
    let store = dir.path().to_str().unwrap();

    for extra in [&[][..], &["--incidents"], &["--incidents", "--all"], &["--json"]] {
        let mut args = vec!["audit", "--store", store, "--check", "smal"];
        args.extend_from_slice(extra);
        let (code, out, err) = overseer(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(
            err.trim_end(),
            "overseer: check \"smal\" has no executions or incidents in this store \
             (checks that have run: small)"
        );
    }
    // Known check and record, nothing matching the other filters: empty, exit 0.
    let (code, out, err) = overseer(&[
        "audit",
        "--store",
        store,
        "--check",
        "small",
        "--model",
        "lines",
        "--id",
        "a",
        "--outcome",
        "fail",
    ]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("no executions"), "{err}");
    let (code, out, err) = overseer(&[
        "audit",
        "--store",
        store,
        "--incidents",
        "--model",
        "lines",
        "--id",
        "a",
    ]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("no open incidents"), "{err}");

    // A record with no updates at all (a typo) is "not found", as in `history`.
    for extra in [&[][..], &["--incidents"], &["--check", "small"]] {
        let mut args = vec!["audit", "--store", store, "--model", "lines", "--id", "zz"];
        args.extend_from_slice(extra);
        let (code, out, err) = overseer(&args);
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}: {err}");
        assert_eq!(
            err.trim_end(),
            "overseer: record lines/zz not found: no updates are stored for it"
        );
    }

    // An empty store: no check has run yet.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = overseer(&[
        "audit",
        "--store",
        empty.path().to_str().unwrap(),
        "--check",
        "small",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no check has run in this store"), "{err}");
}
