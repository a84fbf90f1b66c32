//! The runner on unusual input and timing: incidents reopened at one clock
//! time, a hot record behind a stalled source, waits of different caps,
//! records that do not fit their view, hostile ids, a panic payload that
//! panics when dropped, and a registry that could never run a check.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use overseer_core::check::{Check, Verdict};
use overseer_core::runner::Outcome;
use overseer_core::store::OutcomeKind;
use overseer_core::strategy::{FixedDelay, Immediate};
use overseer_core::testing::Scenario;
use overseer_core::view::{DataView, JoinDirection, JoinSpec, ViewContext, ViewError, ViewSpec};
use overseer_core::{Registry, Timestamp};
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
        Verdict::fail(format!("paid {paid} of {}", v.transfer.amount))
    }
}

struct JustTransfer {
    transfer: Transfer,
}
impl DataView for JustTransfer {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: "transfers",
            joins: vec![],
        }
    }
    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        Ok(Self {
            transfer: ctx.root_as().await?,
        })
    }
}
async fn positive(v: JustTransfer) -> Verdict {
    if v.transfer.amount > 0 {
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

fn scenario(checks: Registry) -> Scenario {
    Scenario::builder(checks)
        .source("core", Script, &["transfers"])
        .source("bank", Script, &["payments"])
        .state_builder(Script)
        .reference("payments.transfer_id -> transfers")
        .start(Timestamp::from_secs(0))
        .unwrap()
}

fn secs(s: i64) -> Timestamp {
    Timestamp::from_secs(s)
}

/// An incident that resolves and reopens for the same (check, record) at
/// the same runner time must be kept in the store as two incidents: the
/// store must agree with the runner that the record is failing.
#[tokio::test]
async fn an_incident_reopened_at_the_same_clock_time_is_stored() {
    let checks = Registry::new().add(Check::new("positive", positive).with_strategy(Immediate));
    let mut s = scenario(checks);
    s.advance_to(secs(100)).await.unwrap();
    // Fail, pass, fail, pass, fail: three incidents, the clock never moves.
    for (i, amount) in [-1, 1, -2, 2, -3].into_iter().enumerate() {
        let t = i as i64 + 1;
        s.feed(
            "core",
            [ev("transfers", "t1", t, t as u64, json!({ "amount": amount }))],
        )
        .await
        .unwrap();
    }
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

#[derive(Deserialize, Debug)]
#[allow(dead_code)]
struct Strict {
    amount: i64,
    currency: String,
}
struct StrictView {
    _t: Strict,
}
impl DataView for StrictView {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: "transfers",
            joins: vec![],
        }
    }
    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        Ok(Self {
            _t: ctx.root_as().await?,
        })
    }
}
async fn strict(_v: StrictView) -> Verdict {
    Verdict::pass()
}

/// Records whose state does not fit the view's type: indeterminate, not
/// escalated, abandoned after the attempts; the message names the record
/// and the field.
#[tokio::test]
async fn records_that_do_not_fit_the_view_are_indeterminate_and_named() {
    let checks = Registry::new().add(Check::new("strict", strict).with_strategy(Immediate));
    let mut s = scenario(checks);
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
    }
    // Never escalated as a disagreement; given up after the attempts.
    assert!(s.open_incidents().is_empty());
    assert_eq!(s.overseer().runner().stats().abandoned, 5);
}

/// A check triggered `on` a model its view does not read can never run:
/// the registry should say so at startup.
#[tokio::test]
async fn a_check_on_a_model_its_view_does_not_read_is_reported() {
    let checks = Registry::new().add(
        Check::new("positive", positive)
            .on(&["payments"])
            .with_strategy(Immediate),
    );
    let built = Scenario::builder(checks)
        .source("core", Script, &["transfers"])
        .source("bank", Script, &["payments"])
        .state_builder(Script)
        .reference("payments.transfer_id -> transfers")
        .start(secs(0));
    let error = match built {
        Err(e) => e.to_string(),
        Ok(mut s) => {
            s.feed("core", [ev("transfers", "t1", 1, 1, json!({"amount": -1}))])
                .await
                .unwrap();
            s.feed(
                "bank",
                [ev(
                    "payments",
                    "p1",
                    1,
                    1,
                    json!({"amount": 5, "transfer_id": "t1"}),
                )],
            )
            .await
            .unwrap();
            s.finish().await.unwrap();
            panic!(
                "accepted a check that can never run: {} executions, {} triggers",
                s.executions().len(),
                s.overseer().runner().stats().triggers
            );
        }
    };
    assert!(
        error.contains("\"payments\", which its view does not read"),
        "{error}"
    );
}

/// Hostile ids round-trip through execution, audit and incidents.
#[tokio::test]
async fn hostile_ids_are_checked_and_audited() {
    let checks = Registry::new().add(Check::new("positive", positive).with_strategy(Immediate));
    let mut s = scenario(checks);
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
    let mut s = scenario(checks);
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
    let mut s = scenario(checks);
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

async fn panics_with_a_bomb(v: JustTransfer) -> Verdict {
    if v.transfer.amount == 13 {
        std::panic::panic_any(Bomb);
    }
    if v.transfer.amount == 7 {
        std::panic::panic_any(42u64);
    }
    Verdict::pass()
}

/// A panic payload that panics when dropped affects only its execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_payload_that_panics_on_drop_affects_only_its_run() {
    let checks = Registry::new().add(Check::new("bomb", panics_with_a_bomb).with_strategy(Immediate));
    let mut s = scenario(checks);
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

async fn empty_named(_v: JustTransfer) -> Verdict {
    Verdict::fail("x")
}

/// A check with an empty name is refused at startup (its audit would be
/// written under an empty key segment, which breaks listing the audit).
#[tokio::test]
async fn a_check_with_an_empty_name_is_refused() {
    let checks = Registry::new()
        .add(Check::new("", empty_named).with_strategy(Immediate))
        .add(Check::new("positive", positive).with_strategy(Immediate));
    let built = Scenario::builder(checks)
        .source("core", Script, &["transfers"])
        .source("bank", Script, &["payments"])
        .state_builder(Script)
        .start(secs(0));
    let error = match built {
        Err(e) => e.to_string(),
        Ok(mut s) => {
            s.feed("core", [ev("transfers", "t1", 1, 1, json!({"amount": -1}))])
                .await
                .unwrap();
            // The check's audit batch went to `audit//..`: the audit area
            // no longer lists, for any check.
            let all = s.overseer().store().audit(None, None).await;
            panic!("a check with an empty name was accepted; the audit then reads {all:?}");
        }
    };
    assert!(error.contains("empty name"), "{error}");
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
    let mut s = scenario(checks);
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
