//! Behaviour of the runner through the testkit: selection, strategies,
//! coalescing, isolation of failing checks, indeterminate views, incidents,
//! audit and registry validation.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use overseer_core::check::{Check, Verdict};
use overseer_core::escalation::{FnEscalation, Incident, IncidentChange};
use overseer_core::runner::{Outcome, RunnerConfig};
use overseer_core::store::OutcomeKind;
use overseer_core::strategy::{ExecutionStrategy, FixedDelay, Freshness, Immediate};
use overseer_core::testing::Scenario;
use overseer_core::view::{DataView, ViewContext, ViewError, ViewSpec};
use overseer_core::view::{JoinDirection, JoinSpec};
use overseer_core::{RecordKey, Registry, Timestamp};
use overseer_tests::{Script, ScriptEvent};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Debug)]
struct Transfer {
    amount: i64,
}

#[derive(Deserialize, Debug)]
struct Payment {
    amount: i64,
}

/// A transfer and the payments that reference it.
struct Paid {
    transfer: Transfer,
    payments: Vec<Payment>,
}

impl DataView for Paid {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: "transfers",
            joins: vec![JoinSpec {
                model: "payments",
                on: "transfer_id",
                direction: JoinDirection::Referrers,
            }],
        }
    }

    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        Ok(Self {
            transfer: ctx.root_as().await?,
            payments: ctx.referrers_as("payments", "transfer_id").await?,
        })
    }
}

async fn paid_in_full(v: Paid) -> Verdict {
    let paid: i64 = v.payments.iter().map(|p| p.amount).sum();
    if paid == v.transfer.amount {
        Verdict::pass()
    } else {
        Verdict::fail_with(
            "paid amount differs",
            json!({"transfer": v.transfer.amount, "paid": paid}),
        )
    }
}

/// A transfer must have exactly one payment (a plain `T` join: none is indeterminate).
struct OnePayment {
    payment: Payment,
}

impl DataView for OnePayment {
    fn spec() -> ViewSpec {
        Paid::spec()
    }

    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        let found = ctx.referrers_as("payments", "transfer_id").await?;
        Ok(Self {
            payment: ctx.one("payments", found)?,
        })
    }
}

async fn positive_payment(v: OnePayment) -> Verdict {
    if v.payment.amount > 0 {
        Verdict::pass()
    } else {
        Verdict::fail("not positive")
    }
}

fn ev(model: &str, id: &str, secs: i64, pos: u64, data: Value) -> Vec<u8> {
    ScriptEvent {
        model: model.into(),
        id: id.into(),
        t: secs * 1_000_000,
        pos,
        op: "full".into(),
        data: data.as_object().cloned().unwrap_or_default(),
        unset: Vec::new(),
    }
    .line()
    .to_vec()
}

type Log = Arc<Mutex<Vec<(IncidentChange, Incident)>>>;

/// The scenario of `checks` on the sources `core` (transfers) and `bank`
/// (payments referencing them), with `escalation` registered as `pager`.
fn scenario_escalating_to(
    checks: Registry,
    escalation: impl overseer_core::escalation::Escalation,
) -> Scenario {
    Scenario::builder(checks)
        .source("core", Script, &["transfers"])
        .source("bank", Script, &["payments"])
        .state_builder(Script)
        .reference("payments.transfer_id -> transfers")
        .escalation("pager", escalation)
        .start(Timestamp::from_secs(0))
        .unwrap()
}

fn scenario(checks: Registry) -> (Scenario, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let log_it =
        FnEscalation::new(move |c: IncidentChange, i: &Incident| sink.lock().unwrap().push((c, i.clone())));
    (scenario_escalating_to(checks, log_it), log)
}

fn secs(s: i64) -> Timestamp {
    Timestamp::from_secs(s)
}

#[tokio::test]
async fn freshness_waits_for_the_lagging_source_where_a_fixed_delay_raises_a_false_alarm() {
    let checks = Registry::new()
        .add(Check::new("fresh", paid_in_full).escalate_to("pager"))
        .add(
            Check::new("delayed", paid_in_full)
                .with_strategy(FixedDelay(Duration::from_secs(10)))
                .escalate_to("pager"),
        );
    let (mut s, log) = scenario(checks);
    // The bank has delivered up to t=0 only.
    s.heartbeat("bank", secs(0)).await.unwrap();
    s.advance_to(secs(101)).await.unwrap();
    s.feed("core", [ev("transfers", "t1", 100, 1, json!({"amount": 5}))])
        .await
        .unwrap();
    // The bank's payment committed at t=101 but is delivered late, at t=150.
    s.advance_to(secs(149)).await.unwrap();
    assert!(
        s.executions().iter().all(|e| e.check == "delayed"),
        "fresh must still wait"
    );
    let delayed: Vec<_> = s.executions().iter().filter(|e| e.check == "delayed").collect();
    assert_eq!(delayed.len(), 1);
    assert!(
        delayed[0].outcome.kind() == OutcomeKind::Fail,
        "the fixed delay ran on incomplete data"
    );
    s.advance_to(secs(150)).await.unwrap();
    // The core system is idle and says so with a heartbeat.
    s.heartbeat("core", secs(150)).await.unwrap();
    s.feed(
        "bank",
        [ev(
            "payments",
            "p1",
            101,
            1,
            json!({"transfer_id": "t1", "amount": 5}),
        )],
    )
    .await
    .unwrap();
    let fresh: Vec<_> = s.executions().iter().filter(|e| e.check == "fresh").collect();
    assert_eq!(fresh.len(), 1, "{:?}", s.executions());
    assert_eq!(fresh[0].outcome, Outcome::Verdict(Verdict::Pass));
    assert!(fresh[0].lagging_sources.is_empty());
    // The view was loaded as of a time both sources are complete to.
    assert!(fresh[0].as_of >= secs(100));
    let opened: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, _)| *c == IncidentChange::Opened)
        .map(|(_, i)| i.check.clone())
        .collect();
    assert_eq!(opened, ["delayed"], "only the fixed delay raised an alarm");
}

#[tokio::test]
async fn a_capped_wait_runs_degraded_and_names_the_lagging_source() {
    let checks = Registry::new().add(Check::new("fresh", paid_in_full).with_strategy(Freshness {
        max_wait: Duration::from_secs(30),
    }));
    let (mut s, _) = scenario(checks);
    s.feed("core", [ev("transfers", "t1", 100, 1, json!({"amount": 0}))])
        .await
        .unwrap();
    s.advance_to(secs(129)).await.unwrap();
    assert!(s.executions().is_empty(), "the bank has never reported: wait");
    s.advance_to(secs(130)).await.unwrap();
    let e = &s.executions()[0];
    assert_eq!(
        e.lagging_sources
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        ["bank"]
    );
    assert_eq!(s.overseer().runner().stats().degraded, 1);
}

#[tokio::test]
async fn repeated_triggers_coalesce_into_one_run() {
    let checks = Registry::new()
        .add(Check::new("sla", paid_in_full).with_strategy(FixedDelay(Duration::from_secs(60))));
    let (mut s, _) = scenario(checks);
    for (i, t) in [10, 20, 30].into_iter().enumerate() {
        s.advance_to(secs(t)).await.unwrap();
        s.feed(
            "core",
            [ev("transfers", "t1", t, i as u64 + 1, json!({"amount": 0}))],
        )
        .await
        .unwrap();
    }
    // An update of a joined record triggers the check for its root too.
    s.feed(
        "bank",
        [ev(
            "payments",
            "p1",
            31,
            1,
            json!({"transfer_id": "t1", "amount": 0}),
        )],
    )
    .await
    .unwrap();
    s.finish().await.unwrap();
    assert_eq!(s.executions().len(), 1, "{:?}", s.executions());
    let e = &s.executions()[0];
    assert_eq!(e.coalesced, 4);
    assert_eq!(e.trigger.updated, RecordKey::new("payments", "p1").unwrap());
    // The delay is measured from the latest trigger's commit time.
    assert_eq!(e.executed_at, secs(91));
    assert_eq!(s.overseer().runner().stats().coalesced, 3);
}

#[tokio::test]
async fn incidents_open_once_update_then_resolve_and_are_audited() {
    let checks = Registry::new().add(
        Check::new("paid", paid_in_full)
            .with_strategy(Immediate)
            .escalate_to("pager"),
    );
    let (mut s, log) = scenario(checks);
    s.feed("core", [ev("transfers", "t1", 1, 1, json!({"amount": 10}))])
        .await
        .unwrap();
    s.feed(
        "bank",
        [ev(
            "payments",
            "p1",
            2,
            1,
            json!({"transfer_id": "t1", "amount": 4}),
        )],
    )
    .await
    .unwrap();
    s.feed(
        "bank",
        [ev(
            "payments",
            "p2",
            3,
            2,
            json!({"transfer_id": "t1", "amount": 6}),
        )],
    )
    .await
    .unwrap();
    let changes: Vec<IncidentChange> = log.lock().unwrap().iter().map(|(c, _)| *c).collect();
    assert_eq!(
        changes,
        [
            IncidentChange::Opened,
            IncidentChange::Updated,
            IncidentChange::Resolved
        ]
    );
    let opened = log.lock().unwrap()[0].1.clone();
    assert_eq!(opened.details, json!({"transfer": 10, "paid": 0}));
    assert!(s.open_incidents().is_empty());
    let store = s.overseer().store();
    let incidents = store.incidents().await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert!(incidents[0].resolved_at.is_some());
    let root = RecordKey::new("transfers", "t1").unwrap();
    let audit = store.audit(Some("paid"), Some(&root)).await.unwrap();
    let kinds: Vec<OutcomeKind> = audit.iter().map(|a| a.outcome).collect();
    assert_eq!(kinds, [OutcomeKind::Fail, OutcomeKind::Fail, OutcomeKind::Pass]);
    assert_eq!(audit[1].trigger_key, RecordKey::new("payments", "p1").unwrap());
}

#[tokio::test]
async fn a_round_audits_each_check_in_one_object_and_reads_back_by_record() {
    let checks = Registry::new()
        .add(Check::new("paid", paid_in_full).with_strategy(Immediate))
        .add(Check::new("positive", positive_payment).with_strategy(Immediate));
    let (mut s, _log) = scenario(checks);
    let transfers: Vec<Vec<u8>> = (1..=3)
        .map(|i| ev("transfers", &format!("t{i}"), 1, i, json!({"amount": 10})))
        .collect();
    s.feed("core", transfers).await.unwrap();
    assert_eq!(s.executions().len(), 6, "{:?}", s.executions());
    let store = s.overseer().store();
    let objects = store.object_store().list(Some(&"audit".into())).count().await;
    assert_eq!(objects, 2, "one object per check for the round");
    // A per-execution object of an earlier layout is skipped, not misread.
    store
        .object_store()
        .put(
            &"audit/paid/transfers/t2/00000000000001000000-old.pb".into(),
            bytes::Bytes::from_static(b"\x0a\x04paid").into(),
        )
        .await
        .unwrap();
    let t2 = RecordKey::new("transfers", "t2").unwrap();
    let of_t2 = store.audit(None, Some(&t2)).await.unwrap();
    let checks: Vec<&str> = of_t2.iter().map(|a| a.check.as_str()).collect();
    assert_eq!(of_t2.len(), 2, "{of_t2:?}");
    assert!(
        checks.contains(&"paid") && checks.contains(&"positive"),
        "{checks:?}"
    );
    assert!(of_t2.iter().all(|a| a.root == t2));
    let paid = store.audit(Some("paid"), None).await.unwrap();
    assert_eq!(paid.len(), 3);
    assert!(paid.iter().all(|a| a.outcome == OutcomeKind::Fail), "{paid:?}");
    let positive = store.audit(Some("positive"), None).await.unwrap();
    assert!(
        positive.iter().all(|a| a.outcome == OutcomeKind::Indeterminate),
        "{positive:?}"
    );
}

async fn panics(_v: Paid) -> Verdict {
    panic!("bug in check")
}

async fn hangs(_v: Paid) -> Verdict {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Verdict::pass()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_or_hanging_check_affects_only_its_own_execution() {
    let checks = Registry::new()
        .add(Check::new("panics", panics).with_strategy(Immediate))
        .add(
            Check::new("hangs", hangs)
                .with_strategy(Immediate)
                .with_timeout(Duration::from_millis(50)),
        )
        .add(Check::new("paid", paid_in_full).with_strategy(Immediate));
    let (mut s, _) = scenario(checks);
    s.feed("core", [ev("transfers", "t1", 1, 1, json!({"amount": 0}))])
        .await
        .unwrap();
    let mut by_check: Vec<(String, OutcomeKind, String)> = s
        .executions()
        .iter()
        .map(|e| {
            let msg = match &e.outcome {
                Outcome::Error(m) => m.clone(),
                _ => String::new(),
            };
            (e.check.clone(), e.outcome.kind(), msg)
        })
        .collect();
    by_check.sort();
    assert_eq!(by_check[0].0, "hangs");
    assert_eq!(by_check[0].1, OutcomeKind::Error);
    assert!(by_check[0].2.contains("timed out"), "{}", by_check[0].2);
    assert_eq!(
        (by_check[1].0.as_str(), by_check[1].1),
        ("paid", OutcomeKind::Pass)
    );
    assert_eq!(by_check[2].1, OutcomeKind::Error);
    assert!(by_check[2].2.contains("bug in check"), "{}", by_check[2].2);
    assert!(s.open_incidents().is_empty(), "errors are not disagreements");
    // The pipeline goes on.
    s.feed("core", [ev("transfers", "t2", 2, 2, json!({"amount": 0}))])
        .await
        .unwrap();
    assert_eq!(s.executions().len(), 6);
}

/// Transfers `t00` to `t59`, all committed at 1 s: of amount 13 where
/// `unlucky` says so, else `100 + i`.
fn sixty_transfers(unlucky: impl Fn(i64) -> bool) -> Vec<Vec<u8>> {
    (0..60)
        .map(|i| {
            let amount = if unlucky(i) { 13 } else { 100 + i };
            ev(
                "transfers",
                &format!("t{i:02}"),
                1,
                i as u64 + 1,
                json!({ "amount": amount }),
            )
        })
        .collect()
}

/// Fails (panics) for transfers whose amount is 13; sleeps a little, and
/// records how many executions are in flight at once.
async fn unlucky_thirteen(v: Paid) -> Verdict {
    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    assert_ne!(v.transfer.amount, 13, "unlucky");
    Verdict::pass()
}

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MAX_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_of_many_runs_keeps_each_panic_to_its_run_and_at_most_concurrency_in_flight() {
    let checks = Registry::new().add(Check::new("thirteen", unlucky_thirteen).with_strategy(Immediate));
    let mut s = Scenario::builder(checks)
        .source("core", Script, &["transfers"])
        .source("bank", Script, &["payments"])
        .state_builder(Script)
        .reference("payments.transfer_id -> transfers")
        .runner_config(RunnerConfig {
            concurrency: 3,
            ..RunnerConfig::default()
        })
        .start(Timestamp::from_secs(0))
        .unwrap();
    // One round of 60 runs; every tenth transfer's check panics.
    s.feed("core", sixty_transfers(|i| i % 10 == 3)).await.unwrap();
    let mut outcomes: Vec<(String, OutcomeKind)> = s
        .executions()
        .iter()
        .map(|e| (e.root.id.as_str().to_owned(), e.outcome.kind()))
        .collect();
    outcomes.sort();
    let expected: Vec<(String, OutcomeKind)> = (0..60)
        .map(|i| {
            let kind = if i % 10 == 3 {
                OutcomeKind::Error
            } else {
                OutcomeKind::Pass
            };
            (format!("t{i:02}"), kind)
        })
        .collect();
    assert_eq!(outcomes, expected);
    let max = MAX_IN_FLIGHT.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&max),
        "{max} executions were in flight at once (concurrency 3)"
    );
}

/// Blocks its thread (a synchronous call that does not return in time)
/// for the transfer of amount 13.
async fn blocks_on_thirteen(v: Paid) -> Verdict {
    if v.transfer.amount == 13 {
        std::thread::sleep(Duration::from_secs(2));
    }
    Verdict::pass()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_blocking_its_thread_does_not_stall_the_runner() {
    let checks = Registry::new().add(
        Check::new("blocks", blocks_on_thirteen)
            .with_strategy(Immediate)
            .with_timeout(Duration::from_millis(100)),
    );
    let (mut s, _) = scenario(checks);
    s.feed("core", sixty_transfers(|i| i == 30)).await.unwrap();
    fn outcomes_of(s: &Scenario, id: &str) -> Vec<(OutcomeKind, String)> {
        s.executions()
            .iter()
            .filter(|e| e.root.id.as_str() == id)
            .map(|e| {
                let msg = match &e.outcome {
                    Outcome::Error(m) | Outcome::Indeterminate(m) => m.clone(),
                    _ => String::new(),
                };
                (e.outcome.kind(), msg)
            })
            .collect()
    }
    // The runner gave up on the blocked run after the timeout plus a
    // second's grace, not after the 2 s it blocks for.
    let blocked = outcomes_of(&s, "t30");
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].0, OutcomeKind::Error);
    assert!(blocked[0].1.contains("blocks its thread"), "{}", blocked[0].1);
    // The other runs passed, or (those queued behind the blocking one in
    // its task) are indeterminate and retried: none failed, none is lost.
    let mut retried = Vec::new();
    for i in (0..60).filter(|i| *i != 30) {
        let id = format!("t{i:02}");
        match outcomes_of(&s, &id).as_slice() {
            [(OutcomeKind::Pass, _)] => {}
            [(OutcomeKind::Indeterminate, m)] if m.contains("not run") => retried.push(id),
            [(OutcomeKind::Error, m)] if m.contains("blocks its thread") => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    let passed = s
        .executions()
        .iter()
        .filter(|e| e.outcome.kind() == OutcomeKind::Pass)
        .count();
    assert!(
        passed >= 30,
        "only {passed} runs passed: a blocked task held up others"
    );
    // The retries run (the first retry waits 5 s) and pass.
    s.advance_to(secs(10)).await.unwrap();
    for id in &retried {
        assert_eq!(
            outcomes_of(&s, id).last().map(|o| o.0),
            Some(OutcomeKind::Pass),
            "{id}"
        );
    }
    assert!(s.open_incidents().is_empty(), "errors are not disagreements");
}

#[tokio::test]
async fn an_indeterminate_view_is_retried_and_never_escalated() {
    let checks = Registry::new().add(
        Check::new("one", positive_payment)
            .with_strategy(Immediate)
            .escalate_to("pager"),
    );
    let (mut s, log) = scenario(checks);
    s.feed("core", [ev("transfers", "t1", 1, 1, json!({"amount": 5}))])
        .await
        .unwrap();
    assert_eq!(s.executions()[0].outcome.kind(), OutcomeKind::Indeterminate);
    // Retries back off: 5 s, 10 s, ...
    s.advance_to(secs(4)).await.unwrap();
    assert_eq!(s.executions().len(), 1);
    s.advance_to(secs(6)).await.unwrap();
    assert_eq!(s.executions().len(), 2);
    s.feed(
        "bank",
        [ev(
            "payments",
            "p1",
            6,
            1,
            json!({"transfer_id": "t1", "amount": -1}),
        )],
    )
    .await
    .unwrap();
    s.finish().await.unwrap();
    let last = s.executions().last().unwrap();
    assert_eq!(last.outcome.kind(), OutcomeKind::Fail);
    let stats = s.overseer().runner().stats().clone();
    assert_eq!(stats.indeterminate, 2);
    assert_eq!(stats.incidents_opened, 1);
    let opened = log.lock().unwrap().len();
    assert_eq!(opened, 1, "only the real disagreement was escalated");
}

#[tokio::test]
async fn an_indeterminate_run_is_abandoned_after_its_last_attempt() {
    let checks = Registry::new().add(Check::new("one", positive_payment).with_strategy(Immediate));
    let (mut s, _) = scenario(checks);
    s.feed("core", [ev("transfers", "t1", 1, 1, json!({"amount": 5}))])
        .await
        .unwrap();
    s.finish().await.unwrap();
    let stats = s.overseer().runner().stats().clone();
    assert_eq!(
        (stats.indeterminate, stats.abandoned, stats.incidents_opened),
        (5, 1, 0)
    );
    assert_eq!(s.overseer().runner().pending(), 0);
}

#[test]
fn the_registry_is_validated_at_once_with_every_problem() {
    struct Ghost;
    impl DataView for Ghost {
        fn spec() -> ViewSpec {
            ViewSpec {
                root: "ghosts",
                joins: vec![],
            }
        }
        async fn load(_: &ViewContext<'_>) -> Result<Self, ViewError> {
            Ok(Ghost)
        }
    }
    async fn ghostly(_: Ghost) -> Verdict {
        Verdict::pass()
    }
    let registry = Registry::new()
        .add(Check::new("paid", paid_in_full))
        .add(Check::new("paid", paid_in_full).escalate_to("nowhere"))
        .add(Check::new("ghostly", ghostly))
        // Its audit would go under an empty key segment.
        .add(Check::new(" ", paid_in_full))
        // Payments reach this view's transfer never: it would never run.
        .add(Check::new("positive", positive).on(&["payments"]));
    let err = registry
        .validate(&["transfers", "payments"], &["log"])
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.problems.len(), 5, "{text}");
    assert!(text.contains("has an empty name"), "{text}");
    assert!(
        text.contains(
            "check \"positive\" is triggered on model \"payments\", which its view does not read \
             (it reads: transfers)"
        ),
        "{text}"
    );
    assert!(text.contains("duplicate check name \"paid\""), "{text}");
    assert!(
        text.contains(
            "unknown escalation \"nowhere\" (known: log): register it under that name \
             (OverseerBuilder::escalation), or correct the name"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "unknown model \"ghosts\" (known models: payments, transfers): list it in the models \
             of the source that delivers it (SourceConfig::models), or correct the view's model name"
        ),
        "{text}"
    );
    let empty = Registry::new().validate(&["transfers"], &["log"]).unwrap_err();
    assert!(empty.to_string().contains("no checks"));
    // A scenario refuses to start with such a registry.
    let result = Scenario::builder(Registry::new().add(Check::new("ghostly", ghostly)))
        .source("core", Script, &["transfers"])
        .start(secs(0));
    assert!(result.is_err());
}

#[test]
fn strategies_compose() {
    use overseer_core::strategy::Trigger;
    let t = Trigger {
        root: RecordKey::new("transfers", "t").unwrap(),
        updated: RecordKey::new("transfers", "t").unwrap(),
        source: overseer_core::SourceId::new("core").unwrap(),
        commit_time: secs(100),
        received_at: secs(105),
    };
    let p = Immediate.plan(&t);
    assert_eq!((p.not_before, p.await_sources), (secs(105), false));
    let p = FixedDelay(Duration::from_secs(60)).plan(&t);
    assert_eq!(
        (p.as_of, p.not_before, p.await_sources),
        (secs(160), secs(160), false)
    );
    let p = Freshness::default().plan(&t);
    assert_eq!((p.as_of, p.await_sources), (secs(100), true));
    let p = FixedDelay(Duration::from_secs(60))
        .then(Freshness {
            max_wait: Duration::from_secs(5),
        })
        .plan(&t);
    assert_eq!(
        (p.as_of, p.not_before, p.await_sources, p.max_wait),
        (secs(160), secs(160), true, Duration::from_secs(5))
    );
}

/// A source over fixed batches that records what it was acknowledged.
struct VecSource {
    id: overseer_core::SourceId,
    batches: std::collections::VecDeque<Vec<bytes::Bytes>>,
    acks: Arc<Mutex<Vec<Option<overseer_core::SourcePosition>>>>,
    endless: bool,
}

#[async_trait::async_trait]
impl overseer_core::pipeline::Source for VecSource {
    fn id(&self) -> &overseer_core::SourceId {
        &self.id
    }
    async fn next_batch(&mut self) -> Result<Option<Vec<bytes::Bytes>>, overseer_core::BoxError> {
        match self.batches.pop_front() {
            Some(b) => Ok(Some(b)),
            // A live source with nothing new waits (forever, here).
            None if self.endless => std::future::pending().await,
            None => Ok(None),
        }
    }
    async fn ack(
        &mut self,
        position: Option<&overseer_core::SourcePosition>,
    ) -> Result<(), overseer_core::BoxError> {
        self.acks.lock().unwrap().push(position.cloned());
        Ok(())
    }
}

/// A pipeline of the two sources `core` (transfers) and `bank` (payments
/// referencing them), in memory, before its checks.
fn two_sources() -> overseer_core::pipeline::OverseerBuilder {
    two_sources_on(overseer_core::pipeline::Overseer::builder().state_builder(Script))
}

/// [`two_sources`] on `builder`, whose state builders are left as they are.
fn two_sources_on(
    builder: overseer_core::pipeline::OverseerBuilder,
) -> overseer_core::pipeline::OverseerBuilder {
    use overseer_core::pipeline::SourceConfig;
    builder
        .store(overseer_core::Store::in_memory())
        .source(
            SourceConfig::new("core", Script)
                .unwrap()
                .models(["transfers"])
                .unwrap(),
        )
        .source(
            SourceConfig::new("bank", Script)
                .unwrap()
                .models(["payments"])
                .unwrap(),
        )
        .reference(overseer_core::ReferenceSpec::parse("payments.transfer_id -> transfers").unwrap())
}

fn pipeline_for_run() -> overseer_core::pipeline::Overseer {
    two_sources()
        .checks(Registry::new().add(Check::new("paid", paid_in_full).with_strategy(Immediate)))
        .build()
        .unwrap()
}

fn bytes_of(v: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reads_every_source_acknowledges_stored_batches_and_stops_when_they_end() {
    let core_acks = Arc::default();
    let bank_acks = Arc::default();
    let core = VecSource {
        id: overseer_core::SourceId::new("core").unwrap(),
        batches: [
            vec![bytes_of(ev("transfers", "t1", 1, 1, json!({"amount": 5})))],
            vec![bytes_of(ev("transfers", "t2", 2, 2, json!({"amount": 7})))],
        ]
        .into(),
        acks: Arc::clone(&core_acks),
        endless: false,
    };
    let bank = VecSource {
        id: overseer_core::SourceId::new("bank").unwrap(),
        batches: [vec![bytes_of(ev(
            "payments",
            "p1",
            3,
            1,
            json!({"transfer_id": "t1", "amount": 5}),
        ))]]
        .into(),
        acks: Arc::clone(&bank_acks),
        endless: false,
    };
    let sources: Vec<Box<dyn overseer_core::pipeline::Source>> = vec![Box::new(core), Box::new(bank)];
    let done = pipeline_for_run()
        .run(sources, std::future::pending())
        .await
        .unwrap();
    let positions: Vec<_> = core_acks.lock().unwrap().clone();
    assert_eq!(
        positions,
        [
            Some(overseer_core::SourcePosition::from_numbers(&[1])),
            Some(overseer_core::SourcePosition::from_numbers(&[2]))
        ]
    );
    assert_eq!(bank_acks.lock().unwrap().len(), 1);
    let stats = done.runner().stats();
    assert!(stats.executions >= 2, "{stats:?}");
    // Every update is stored, and t1 (paid) has no open incident while t2 (unpaid) has.
    let open: Vec<String> = done
        .runner()
        .open_incidents()
        .map(|i| i.root.id.to_string())
        .collect();
    assert_eq!(open, ["t2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_gracefully_on_shutdown_even_with_a_live_source() {
    let acks = Arc::default();
    let live = VecSource {
        id: overseer_core::SourceId::new("core").unwrap(),
        batches: [vec![bytes_of(ev("transfers", "t1", 1, 1, json!({"amount": 0})))]].into(),
        acks: Arc::clone(&acks),
        endless: true,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        pipeline_for_run()
            .run(vec![Box::new(live)], async {
                let _ = rx.await;
            })
            .await
    });
    // The batch is stored and acknowledged while the pipeline runs.
    for _ in 0..200 {
        if !acks.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(acks.lock().unwrap().len(), 1);
    tx.send(()).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("run stops on shutdown");
    let overseer = done.unwrap().unwrap();
    assert_eq!(overseer.runner().stats().executions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_ingests_from_other_tasks_while_the_runner_checks() {
    let mut overseer = pipeline_for_run();
    let intake = overseer.intake();
    let unknown = intake.ingest("nope", &[]).await.unwrap_err().to_string();
    assert!(
        unknown.contains("unknown source") && unknown.contains("bank, core"),
        "{unknown}"
    );
    // Each transfer, then its payment, in batches of ten, from another task.
    let feeding = tokio::spawn(async move {
        for batch in 0..20u64 {
            let ids = batch * 10..batch * 10 + 10;
            let transfers: Vec<_> = ids
                .clone()
                .map(|i| {
                    bytes_of(ev(
                        "transfers",
                        &format!("t{i}"),
                        i as i64,
                        i + 1,
                        json!({"amount": i}),
                    ))
                })
                .collect();
            intake.ingest("core", &transfers).await?;
            let payments: Vec<_> = ids
                .map(|i| {
                    let data = json!({"transfer_id": format!("t{i}"), "amount": i});
                    bytes_of(ev("payments", &format!("p{i}"), i as i64, i + 1, data))
                })
                .collect();
            intake.ingest("bank", &payments).await?;
            tokio::task::yield_now().await;
        }
        Ok::<_, overseer_core::pipeline::PipelineError>(())
    });
    while !feeding.is_finished() {
        overseer.tick().await.unwrap();
        tokio::task::yield_now().await;
    }
    feeding.await.unwrap().unwrap();
    overseer.drain().await.unwrap();
    let stats = overseer.runner().stats();
    assert_eq!(stats.notifications, 400, "{stats:?}");
    // A transfer checked before its payment arrived failed, and passed once
    // the payment was stored: every incident opened was resolved.
    assert_eq!(overseer.runner().open_incidents().count(), 0, "{stats:?}");
    assert_eq!(stats.incidents_opened, stats.incidents_resolved, "{stats:?}");
}

/// Taking the topic in between ticks (`absorb`, as the payments example
/// does while a window's batches are being stored) splits the runner's
/// work, not what it does: with the clock where the tick would find it, the
/// same checks run on the same records, as of the same times, with the
/// same outcomes and coalescing, and `absorb` itself runs nothing.
#[tokio::test]
async fn absorbing_between_ticks_runs_what_ticking_alone_runs() {
    use overseer_core::clock::ManualClock;

    type Run = (String, RecordKey, Timestamp, Timestamp, OutcomeKind, u32);
    async fn run(absorb: bool) -> Vec<Run> {
        let clock = Arc::new(ManualClock::new(secs(0)));
        let mut overseer = two_sources()
            .manual_clock(clock.clone())
            .checks(
                Registry::new()
                    .add(Check::new("fresh", paid_in_full))
                    .add(
                        Check::new("delayed", paid_in_full)
                            .with_strategy(FixedDelay(Duration::from_secs(12))),
                    )
                    .add(Check::new("now", paid_in_full).with_strategy(Immediate)),
            )
            .build()
            .unwrap();
        let mut runs = Vec::new();
        for step in 0..24u64 {
            let t = step as i64 * 5;
            clock.advance_to(secs(t));
            // Four transfers, each amended every fourth step; the bank pays
            // each amendment ten seconds (two steps) later.
            let transfer = format!("t{}", step % 4);
            let amount = json!({"amount": 10 + step});
            let core = [ev("transfers", &transfer, t, step + 1, amount)];
            overseer.ingest("core", &core.map(bytes_of)).await.unwrap();
            if absorb {
                let taken = overseer.absorb().await.unwrap();
                assert!(taken >= 1, "the batch's notification is taken");
            }
            if step >= 2 {
                let paid = json!({"transfer_id": format!("t{}", (step - 2) % 4), "amount": 10 + step - 2});
                let bank = [ev("payments", &format!("p{step}"), t - 10, step + 1, paid)];
                overseer.ingest("bank", &bank.map(bytes_of)).await.unwrap();
                if absorb {
                    let before = overseer.runner().stats().executions;
                    overseer.absorb().await.unwrap();
                    assert_eq!(
                        overseer.runner().stats().executions,
                        before,
                        "absorb runs nothing"
                    );
                }
            }
            runs.extend(overseer.tick().await.unwrap());
        }
        runs.extend(overseer.drain().await.unwrap());
        let mut runs: Vec<Run> = runs
            .into_iter()
            .map(|e| {
                (
                    e.check,
                    e.root,
                    e.as_of,
                    e.executed_at,
                    e.outcome.kind(),
                    e.coalesced,
                )
            })
            .collect();
        runs.sort();
        runs
    }
    let (ticked, absorbed) = (run(false).await, run(true).await);
    for check in ["fresh", "delayed", "now"] {
        for kind in [OutcomeKind::Pass, OutcomeKind::Fail] {
            assert!(
                ticked.iter().any(|r| r.0 == check && r.4 == kind),
                "{check} has a {kind:?} to compare: {ticked:?}"
            );
        }
    }
    assert_eq!(ticked, absorbed);
}

/// An escalation that panics (a bug in it) fails that one transition,
/// counted as an escalation error: the transitions queued behind it and
/// every later one are still delivered.
#[tokio::test]
async fn a_panicking_escalation_loses_no_other_transition_and_is_counted() {
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = calls.clone();
    let buggy = FnEscalation::new(move |_c: IncidentChange, i: &Incident| {
        let first = {
            let mut calls = seen.lock().unwrap();
            calls.push(i.root.id.as_str().to_owned());
            calls.len() == 1
        };
        assert!(!first, "a bug in the escalation");
    });
    let paid_now = Check::new("paid", paid_in_full)
        .with_strategy(Immediate)
        .escalate_to("pager");
    let mut s = scenario_escalating_to(Registry::new().add(paid_now), buggy);
    // Three unpaid transfers in one batch (queued together), then one per batch.
    let together: Vec<Vec<u8>> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, id)| ev("transfers", id, 1, i as u64 + 1, json!({"amount": 10})))
        .collect();
    s.feed("core", together).await.unwrap();
    for (i, id) in ["d", "e", "f"].iter().enumerate() {
        s.feed(
            "core",
            [ev("transfers", id, 2, i as u64 + 4, json!({"amount": 10}))],
        )
        .await
        .unwrap();
    }
    let mut delivered = calls.lock().unwrap().clone();
    delivered.sort();
    assert_eq!(delivered, ["a", "b", "c", "d", "e", "f"]);
    let stats = s.overseer().runner().stats();
    assert_eq!(stats.incidents_opened, 6, "{stats:?}");
    assert_eq!(stats.escalation_errors, 1, "the panic is counted: {stats:?}");
}

/// The two-source pipeline of `builder` with one check, `paid` run
/// immediately, escalating to `escalation`.
fn paid_now_escalating_to(
    builder: overseer_core::pipeline::OverseerBuilder,
    escalation: impl overseer_core::escalation::Escalation,
) -> overseer_core::pipeline::Overseer {
    builder
        .checks(
            Registry::new().add(
                Check::new("paid", paid_in_full)
                    .with_strategy(Immediate)
                    .escalate_to("pager"),
            ),
        )
        .escalation("pager", escalation)
        .build()
        .unwrap()
}

/// A gate an escalation function waits at until the test opens it (once
/// per wait), for at most `bound`, so that a regression fails instead of
/// hanging.
fn gate(bound: Duration) -> (std::sync::mpsc::Sender<()>, impl Fn() + Send + Sync + 'static) {
    let (open, opened) = std::sync::mpsc::channel::<()>();
    let opened = Mutex::new(opened);
    let wait = move || {
        let _ = opened.lock().unwrap().recv_timeout(bound);
    };
    (open, wait)
}

/// A plain-function escalation that blocks its thread does not hold up the
/// pipeline, even on a current-thread runtime (whose one thread runs the
/// checks and the escalation worker alike): it runs on the blocking pool.
#[tokio::test]
async fn a_blocking_escalation_function_does_not_stop_the_pipeline() {
    let (release, wait) = gate(Duration::from_secs(2));
    let returned = Arc::new(AtomicUsize::new(0));
    let done = returned.clone();
    let blocking = FnEscalation::new(move |_c: IncidentChange, _i: &Incident| {
        wait();
        done.fetch_add(1, Ordering::SeqCst);
    });
    let mut overseer = paid_now_escalating_to(two_sources(), blocking);
    let unpaid = |id: &str, pos| bytes_of(ev("transfers", id, 1, pos, json!({"amount": 10})));
    overseer.ingest("core", &[unpaid("t1", 1)]).await.unwrap();
    overseer.tick().await.unwrap();
    // The escalation worker gets the thread, and the function blocks.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    overseer.ingest("core", &[unpaid("t2", 2)]).await.unwrap();
    let ran = overseer.tick().await.unwrap();
    assert_eq!(ran.len(), 1, "the pipeline went on: {ran:?}");
    assert_eq!(
        returned.load(Ordering::SeqCst),
        0,
        "checked while the function still blocks"
    );
    release.send(()).unwrap();
    release.send(()).unwrap();
    overseer.flush_escalations().await;
    assert_eq!(returned.load(Ordering::SeqCst), 2);
    assert_eq!(overseer.runner().stats().escalation_errors, 0);
}

/// Flushing escalations waits for a paging system that hangs no longer than
/// the runner's `flush_timeout`, and says that not everything was
/// delivered; once it answers, a flush says everything was.
#[tokio::test]
async fn a_flush_waits_for_a_hung_escalation_no_longer_than_its_timeout() {
    let (release, wait) = gate(Duration::from_secs(30));
    let hung = FnEscalation::new(move |_c: IncidentChange, _i: &Incident| wait());
    let mut overseer = paid_now_escalating_to(
        two_sources().runner_config(RunnerConfig {
            flush_timeout: Duration::from_millis(100),
            ..RunnerConfig::default()
        }),
        hung,
    );
    let unpaid = bytes_of(ev("transfers", "t1", 1, 1, json!({"amount": 10})));
    overseer.ingest("core", &[unpaid]).await.unwrap();
    overseer.tick().await.unwrap();
    assert_eq!(overseer.runner().stats().incidents_opened, 1);
    assert!(!overseer.flush_escalations().await, "the escalation still hangs");
    release.send(()).unwrap();
    assert!(overseer.flush_escalations().await, "delivered once released");
    assert_eq!(overseer.runner().stats().escalation_errors, 0);
}

/// A flush timeout past what a clock can hold waits without a deadline
/// (it used to overflow the deadline's arithmetic).
#[tokio::test]
async fn a_flush_timeout_of_any_length_is_taken() {
    let delivered = Arc::new(AtomicUsize::new(0));
    let count = delivered.clone();
    let counting = FnEscalation::new(move |_c: IncidentChange, _i: &Incident| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    let mut overseer = paid_now_escalating_to(
        two_sources().runner_config(RunnerConfig {
            flush_timeout: Duration::MAX,
            ..RunnerConfig::default()
        }),
        counting,
    );
    let unpaid = bytes_of(ev("transfers", "t1", 1, 1, json!({"amount": 10})));
    overseer.ingest("core", &[unpaid]).await.unwrap();
    overseer.tick().await.unwrap();
    assert!(overseer.flush_escalations().await);
    assert_eq!(delivered.load(Ordering::SeqCst), 1);
}

/// While an escalation is slow, an incident's `Updated` transitions waiting
/// in its queue are merged into the latest: a record failing again and
/// again queues one update, not one per failure, and the update delivered
/// carries the latest failure count.
#[tokio::test]
async fn queued_updates_of_an_incident_merge_into_the_latest() {
    let (release, wait) = gate(Duration::from_secs(30));
    let calls: Arc<Mutex<Vec<(IncidentChange, u32)>>> = Arc::default();
    let seen = calls.clone();
    let slow = FnEscalation::new(move |c: IncidentChange, i: &Incident| {
        if c == IncidentChange::Opened {
            wait();
        }
        seen.lock().unwrap().push((c, i.failures));
    });
    let mut overseer = paid_now_escalating_to(two_sources(), slow);
    // An unpaid transfer, amended 20 times: every run fails.
    for pos in 1..=20u64 {
        let amended = bytes_of(ev(
            "transfers",
            "t1",
            pos as i64,
            pos,
            json!({"amount": 10 + pos}),
        ));
        overseer.ingest("core", &[amended]).await.unwrap();
        overseer.tick().await.unwrap();
    }
    assert_eq!(overseer.runner().stats().failures, 20);
    release.send(()).unwrap();
    assert!(overseer.flush_escalations().await);
    assert_eq!(
        *calls.lock().unwrap(),
        [(IncidentChange::Opened, 1), (IncidentChange::Updated, 20)]
    );
}

// ---------------------------------------------------------------------------
// Unusual input and timing (from a probe of the runner): incidents reopened at
// one clock time, a hot record behind a stalled source, waits of different
// caps, records that do not fit their view, hostile ids, a panic payload that
// panics when dropped, a registry that could never run a check.
// ---------------------------------------------------------------------------

/// A view of a transfer alone, read as `T`.
struct Root<T> {
    record: T,
}

impl<T: serde::de::DeserializeOwned + Send + 'static> DataView for Root<T> {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: "transfers",
            joins: vec![],
        }
    }
    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        Ok(Self {
            record: ctx.root_as().await?,
        })
    }
}

async fn positive(v: Root<Transfer>) -> Verdict {
    if v.record.amount > 0 {
        Verdict::pass()
    } else {
        Verdict::fail("not positive")
    }
}

/// An incident that resolves and reopens for the same (check, record) at
/// the same runner time must be kept in the store as two incidents: the
/// store must agree with the runner that the record is failing.
/// Feeds transfer `t1` with each amount in turn, the `n`-th committed at
/// `n` seconds, each in its own batch.
async fn feed_amounts(s: &mut Scenario, amounts: &[i64]) {
    for (t, amount) in (1i64..).zip(amounts) {
        s.feed(
            "core",
            [ev("transfers", "t1", t, t as u64, json!({ "amount": amount }))],
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn an_incident_reopened_at_the_same_clock_time_is_stored() {
    let checks = Registry::new().add(Check::new("positive", positive).with_strategy(Immediate));
    let (mut s, _) = scenario(checks);
    s.advance_to(secs(100)).await.unwrap();
    // Fail, pass, fail, pass, fail: three incidents, the clock never moves.
    feed_amounts(&mut s, &[-1, 1, -2, 2, -3]).await;
    let kinds: Vec<_> = s.executions().iter().map(|e| e.outcome.kind()).collect();
    use OutcomeKind::{Fail, Pass};
    assert_eq!(kinds, [Fail, Pass, Fail, Pass, Fail]);
    assert_eq!(
        s.open_incidents().len(),
        1,
        "the runner has the reopened incident open"
    );
    let stats = s.overseer().runner().stats().clone();
    assert_eq!((stats.incidents_opened, stats.incidents_resolved), (3, 2));
    let stored = s.overseer().store().incidents().await.unwrap();
    let open: Vec<_> = stored.iter().filter(|i| i.resolved_at.is_none()).collect();
    assert_eq!(
        (stored.len(), open.len()),
        (3, 1),
        "the store lost reopened incidents: {stored:#?}"
    );
    let mut keys: Vec<_> = stored.iter().map(|i| i.dedup_key.clone()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 3, "each incident has its own dedup key: {keys:?}");
    for i in &stored {
        assert!(i.resolved_at.is_none_or(|r| r >= i.opened_at), "{i:?}");
    }
}

/// A reopened incident (opened past the clock, the clock not having moved)
/// that fails again in that tick is not updated before it opened: its
/// latest failure, as held and stored, is at its opening or later.
#[tokio::test]
async fn a_reopened_incident_failing_again_in_its_tick_is_not_updated_before_it_opened() {
    let checks = Registry::new().add(Check::new("positive", positive).with_strategy(Immediate));
    let (mut s, _) = scenario(checks);
    s.advance_to(secs(100)).await.unwrap();
    feed_amounts(&mut s, &[-1, 1, -2, -3]).await;
    let open = s.open_incidents();
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(
        (open[0].failures, open[0].opened_at, open[0].updated_at),
        (
            2,
            Timestamp::from_micros(100_000_001),
            Timestamp::from_micros(100_000_001)
        )
    );
    let stored = s.overseer().store().incidents().await.unwrap();
    let last = stored.last().unwrap();
    assert_eq!(
        (last.failures, last.opened_at, last.updated_at),
        (2, open[0].opened_at, open[0].updated_at),
        "{stored:#?}"
    );
}

/// Dedup keys join the check, the record's model and id and the opening
/// time with `/`: names holding a `/` must not make two incidents share a
/// key (a paging system would merge them, and one's resolve would close
/// the other).
#[tokio::test]
async fn dedup_keys_stay_distinct_when_names_hold_slashes() {
    let checks = Registry::new()
        .add(Check::new("p", positive).with_strategy(Immediate))
        .add(Check::new("p/transfers", positive).with_strategy(Immediate));
    let (mut s, _) = scenario(checks);
    s.advance_to(secs(100)).await.unwrap();
    // Written naively, check `p` on record `transfers/q` and check
    // `p/transfers` on record `q` would both be `p/transfers/transfers/q/..`.
    s.feed(
        "core",
        [
            ev("transfers", "transfers/q", 1, 1, json!({ "amount": -1 })),
            ev("transfers", "q", 1, 2, json!({ "amount": -1 })),
        ],
    )
    .await
    .unwrap();
    let mut keys: Vec<String> = s.open_incidents().iter().map(|i| i.dedup_key.clone()).collect();
    keys.sort();
    let at = secs(100).as_micros();
    assert_eq!(
        keys,
        [
            format!("p%2Ftransfers/transfers/q/{at}"),
            format!("p%2Ftransfers/transfers/transfers%2Fq/{at}"),
            format!("p/transfers/q/{at}"),
            format!("p/transfers/transfers%2Fq/{at}"),
        ]
    );
}

#[derive(Deserialize, Debug)]
#[allow(dead_code)]
struct Strict {
    amount: i64,
    currency: String,
}
async fn strict(_v: Root<Strict>) -> Verdict {
    Verdict::pass()
}

/// Records whose state does not fit the view's type: indeterminate, not
/// escalated, abandoned after the attempts; the message names the record
/// and the field.
#[tokio::test]
async fn records_that_do_not_fit_the_view_are_indeterminate_and_named() {
    let checks = Registry::new().add(Check::new("strict", strict).with_strategy(Immediate));
    let (mut s, _) = scenario(checks);
    let bad = [
        ("wrong_type", json!({"amount": "12", "currency": "EUR"})),
        ("missing", json!({"amount": 12})),
        ("null", json!({"amount": null, "currency": "EUR"})),
        (
            "huge",
            json!({"amount": 18446744073709551615u64, "currency": "EUR"}),
        ),
        ("float", json!({"amount": 1.5, "currency": "EUR"})),
    ];
    for (i, (id, data)) in bad.iter().enumerate() {
        s.feed("core", [ev("transfers", id, 1, i as u64 + 1, data.clone())])
            .await
            .unwrap();
    }
    s.finish().await.unwrap();
    assert!(!s.executions().is_empty());
    for e in s.executions() {
        let Outcome::Indeterminate(message) = &e.outcome else {
            panic!("{}: {:?}", e.root, e.outcome);
        };
        // The record and the type it does not fit are named.
        assert!(message.contains(&e.root.to_string()), "{message}");
        assert!(message.contains("Strict"), "{message}");
        // And the field, when one does not fit.
        if e.root.id.as_str() == "wrong_type" {
            assert!(message.contains("at amount: invalid type: string"), "{message}");
        }
    }
    // Never escalated as a disagreement; given up after the attempts.
    assert!(s.open_incidents().is_empty());
    assert_eq!(s.overseer().runner().stats().abandoned, 5);
}

/// Hostile ids round-trip through execution, audit and incidents.
#[tokio::test]
async fn hostile_ids_are_checked_and_audited() {
    let checks = Registry::new().add(Check::new("positive", positive).with_strategy(Immediate));
    let (mut s, _) = scenario(checks);
    let long = "x".repeat(1 << 20);
    let ids = [
        "a/b",
        "..",
        ".",
        "nul\0nul",
        "🦀 ünï",
        "+2F",
        "+H00",
        long.as_str(),
        "a\\..\\b",
    ];
    for (i, id) in ids.iter().enumerate() {
        s.feed(
            "core",
            [ev("transfers", id, 1, i as u64 + 1, json!({"amount": -1}))],
        )
        .await
        .unwrap();
    }
    assert_eq!(s.executions().len(), ids.len());
    assert_eq!(s.open_incidents().len(), ids.len());
    let audit = s.overseer().store().audit(Some("positive"), None).await.unwrap();
    assert_eq!(audit.len(), ids.len());
    let stored = s.overseer().store().incidents().await.unwrap();
    assert_eq!(stored.len(), ids.len());
    for id in ids {
        let key = overseer_core::RecordKey::new("transfers", id).unwrap();
        let a = s
            .overseer()
            .store()
            .audit(Some("positive"), Some(&key))
            .await
            .unwrap();
        assert_eq!(a.len(), 1, "{}", &id[..id.len().min(20)]);
    }
    for hostile in ["", "..", "../positive", "/", "positive/..", "\0", "*"] {
        let a = s.overseer().store().audit(Some(hostile), None).await;
        if let Ok(a) = a {
            assert!(
                a.is_empty(),
                "filter {hostile:?} returned {} entries of other checks",
                a.len()
            );
        }
    }
}

/// A record updated more often than Freshness's max_wait while another
/// source the view reads is stalled: the capped (degraded) run still
/// happens.
#[tokio::test]
async fn a_hot_record_with_a_stalled_source_still_runs_degraded() {
    let checks = Registry::new().add(Check::new("paid", paid_in_full));
    let (mut s, _) = scenario(checks);
    // The bank reported once, at t=0, then stalled.
    s.heartbeat("bank", secs(0)).await.unwrap();
    for i in 0..40i64 {
        let t = 1 + 60 * i;
        s.advance_to(secs(t)).await.unwrap();
        s.feed(
            "core",
            [ev("transfers", "hot", t, i as u64 + 1, json!({"amount": 5}))],
        )
        .await
        .unwrap();
    }
    // 40 minutes, max_wait 5 minutes.
    for e in s.executions() {
        let lagging: Vec<_> = e.lagging_sources.iter().map(|s| s.as_str()).collect();
        assert_eq!(lagging, ["bank"], "{e:?}");
        assert_eq!(e.outcome.kind(), OutcomeKind::Fail);
    }
    // At least one degraded run per max_wait (5 min) of the 39 minutes.
    assert!(
        s.executions().len() >= 7,
        "no execution in {} s (pending: {}, coalesced: {})",
        s.now().as_micros() / 1_000_000,
        s.overseer().runner().pending(),
        s.overseer().runner().stats().coalesced
    );
}

/// Waits for freshness for an hour for the record `slow`, not at all for
/// any other.
#[derive(Debug)]
struct PerRecordWait;

impl overseer_core::strategy::ExecutionStrategy for PerRecordWait {
    fn plan(&self, trigger: &overseer_core::strategy::Trigger) -> overseer_core::strategy::Plan {
        let wait = if trigger.root.id.as_str() == "slow" {
            3600
        } else {
            0
        };
        overseer_core::strategy::Plan {
            as_of: trigger.commit_time,
            not_before: trigger.received_at,
            await_sources: true,
            max_wait: Duration::from_secs(wait),
        }
    }
}

/// A run whose capped wait has ended runs, even behind a run of an
/// earlier as-of time that may wait longer.
#[tokio::test]
async fn a_capped_wait_is_not_held_behind_a_longer_one() {
    let checks = Registry::new().add(Check::new("paid", paid_in_full).with_strategy(PerRecordWait));
    let (mut s, _) = scenario(checks);
    s.heartbeat("bank", secs(0)).await.unwrap();
    s.advance_to(secs(2)).await.unwrap();
    s.feed("core", [ev("transfers", "slow", 1, 1, json!({"amount": 5}))])
        .await
        .unwrap();
    s.feed("core", [ev("transfers", "fast", 2, 2, json!({"amount": 5}))])
        .await
        .unwrap();
    s.advance_to(secs(10)).await.unwrap();
    let ran: Vec<_> = s
        .executions()
        .iter()
        .map(|e| e.root.id.as_str().to_owned())
        .collect();
    assert_eq!(
        ran,
        ["fast"],
        "at t=10 s (next deadline {:?})",
        s.overseer().runner().next_deadline()
    );
}

struct Bomb;
impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("payload drop");
    }
}

async fn panics_with_a_bomb(v: Root<Transfer>) -> Verdict {
    if v.record.amount == 13 {
        std::panic::panic_any(Bomb);
    }
    if v.record.amount == 7 {
        std::panic::panic_any(42u64);
    }
    Verdict::pass()
}

/// A panic payload that panics when dropped affects only its execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_payload_that_panics_on_drop_affects_only_its_run() {
    let checks = Registry::new().add(Check::new("bomb", panics_with_a_bomb).with_strategy(Immediate));
    let (mut s, _) = scenario(checks);
    let batch: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            let amount = match i {
                0 => 13,
                1 => 7,
                _ => 100,
            };
            ev(
                "transfers",
                &format!("t{i:02}"),
                1,
                i as u64 + 1,
                json!({ "amount": amount }),
            )
        })
        .collect();
    s.feed("core", batch).await.unwrap();
    let mut kinds = std::collections::BTreeMap::new();
    for e in s.executions() {
        *kinds.entry(format!("{:?}", e.outcome.kind())).or_insert(0) += 1;
        if e.root.id.as_str() < "t02" {
            let Outcome::Error(message) = &e.outcome else {
                panic!("{}: {:?}", e.root, e.outcome);
            };
            assert!(
                message.contains("panicked: non-string panic payload"),
                "{message}"
            );
        }
    }
    assert_eq!(kinds.get("Pass"), Some(&62), "{kinds:?}");
}

#[derive(Debug)]
struct Never;
impl overseer_core::strategy::ExecutionStrategy for Never {
    fn plan(&self, _t: &overseer_core::strategy::Trigger) -> overseer_core::strategy::Plan {
        overseer_core::strategy::Plan {
            as_of: Timestamp::from_micros(i64::MIN),
            not_before: Timestamp::MAX,
            await_sources: true,
            max_wait: Duration::MAX,
        }
    }
}

/// Plans and timeouts at the ends of their ranges run without overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_plans_and_timeouts() {
    let checks = Registry::new()
        .add(Check::new("never", positive).with_strategy(Never))
        .add(
            Check::new("forever", positive)
                .with_strategy(Immediate)
                .with_timeout(Duration::MAX),
        )
        .add(
            Check::new("zero", positive)
                .with_strategy(Immediate)
                .with_timeout(Duration::ZERO),
        )
        .add(Check::new("late", positive).with_strategy(FixedDelay(Duration::MAX)));
    let (mut s, _) = scenario(checks);
    s.feed("core", [ev("transfers", "t1", 1, 1, json!({"amount": -1}))])
        .await
        .unwrap();
    s.finish().await.unwrap();
    // Every check ran once, none overflowed the clock, nothing is left.
    let mut ran: Vec<_> = s.executions().iter().map(|e| e.check.as_str()).collect();
    ran.sort_unstable();
    assert_eq!(ran, ["forever", "late", "never", "zero"]);
    for e in s.executions() {
        assert_eq!(e.outcome.kind(), OutcomeKind::Fail, "{e:?}");
    }
    assert_eq!(s.overseer().runner().pending(), 0);
}

/// A pipeline whose sources' format has no state builder could never load a
/// record of them: every check over them would stay indeterminate, retried
/// and never escalated. Building it is an error saying what to add.
#[test]
fn a_source_without_a_state_builder_is_a_build_error() {
    use overseer_core::pipeline::{Overseer, OverseerBuilder};
    let registry = || Registry::new().add(Check::new("paid", paid_in_full).with_strategy(Immediate));
    let sources = |builder: OverseerBuilder| two_sources_on(builder).checks(registry());
    let without = sources(Overseer::builder()).build().unwrap_err();
    assert_eq!(
        without.to_string(),
        "pipeline configuration: source core delivers format \"script\", which no state builder \
         reads, so no record of it could be loaded: add .state_builders(overseer_builders::builders()) \
         or .state_builder(..) for it (state builders: none)"
    );
    // The builder of another format does not read it either.
    let other = sources(Overseer::builder().state_builder(overseer_core::testing::LinesConsumer))
        .build()
        .unwrap_err();
    assert!(other.to_string().contains("(state builders: lines)"), "{other}");
    // The scenario runner refuses it too.
    let scenario = Scenario::builder(registry())
        .source("core", Script, &["transfers"])
        .source("bank", Script, &["payments"])
        .reference("payments.transfer_id -> transfers")
        .start(secs(0));
    assert!(scenario.is_err());
    // With it, the same pipeline builds.
    assert!(sources(Overseer::builder().state_builder(Script)).build().is_ok());
}

/// The scenario's clock only moves forward: asking for an earlier time is an
/// error, not a silent no-op after which a test asserts on a time it never
/// reached.
#[tokio::test]
async fn a_scenario_refuses_to_move_its_clock_back() {
    let checks = Registry::new().add(Check::new("paid", paid_in_full).with_strategy(Immediate));
    let (mut s, _) = scenario(checks);
    s.advance_to(secs(100)).await.unwrap();
    s.advance_to(secs(100)).await.unwrap();
    let err = s.advance_to(secs(60)).await.unwrap_err();
    assert!(
        matches!(err, overseer_core::pipeline::PipelineError::ClockBackwards { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "cannot move the virtual clock back from 1970-01-01T00:01:40Z to 1970-01-01T00:01:00Z: \
         advance_to takes a time at or after now()"
    );
    assert_eq!(s.now(), secs(100));
}
