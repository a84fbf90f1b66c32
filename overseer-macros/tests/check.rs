//! `#[check]` through overseer-core: registration, options, running against
//! a store, and calling the function directly.

mod support;

use std::time::Duration;

use overseer_core::check::{DEFAULT_ESCALATION, DEFAULT_TIMEOUT};
use overseer_core::strategy::{ExecutionStrategy, FixedDelay, Freshness};
use overseer_core::{Check, DataView, Failure, Registry, Verdict, check, ensure, registered};
use support::{BankPayment, LATER, LedgerEntry, Transfer, TransferView, fixture, transfer};

/// Completed transfers have a bank payment of the same amount. All defaults.
#[check]
async fn completed_transfers_are_paid(view: TransferView) -> Verdict {
    if view.transfer.status != "completed" {
        return Verdict::not_applicable();
    }
    match view.payment {
        None => Verdict::fail("completed transfer has no bank payment"),
        Some(p) if p.amount_minor != view.transfer.amount_minor => Verdict::fail_with(
            "bank payment amount differs",
            serde_json::json!({"transfer": view.transfer.amount_minor, "payment": p.amount_minor}),
        ),
        Some(_) => Verdict::pass(),
    }
}

/// The ledger entries of a transfer balance; `Result` with `ensure!`.
#[check(
    name = "ledger_balances",
    on = ["transfers", "ledger_entries"],
    delay = "10m",
    timeout = "2s",
    escalate = pagerduty,
)]
async fn ledger_balances(view: TransferView) -> Result<(), Failure> {
    let sum: i64 = view.ledger.iter().map(|e| e.amount_minor).sum();
    ensure!(
        sum == 0,
        "ledger of a {} transfer does not balance: {sum}",
        view.transfer.status
    );
    Ok(())
}

#[check(name = "immediate_check", immediate, escalate = "slack", timeout = "1500ms")]
async fn immediate_check(_view: TransferView) -> Verdict {
    Verdict::pass()
}

#[check(
    name = "custom_strategy",
    strategy = FixedDelay(Duration::from_secs(60)).then(Freshness { max_wait: Duration::from_secs(30) }),
)]
async fn custom_strategy(_view: TransferView) -> Verdict {
    Verdict::pass()
}

mod nested {
    use overseer_core::{Verdict, check};

    use crate::support::TransferView;

    /// The default name follows the module path.
    #[check]
    pub(crate) async fn in_a_module(_view: TransferView) -> Verdict {
        Verdict::pass()
    }
}

fn find(name: &str) -> Check {
    registered()
        .checks()
        .iter()
        .find(|c| c.name() == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {:?}", names()))
        .clone()
}

fn names() -> Vec<String> {
    registered()
        .checks()
        .iter()
        .map(|c| c.name().to_owned())
        .collect()
}

fn strategy(check: &Check) -> String {
    format!("{:?}", check.strategy())
}

#[test]
fn every_check_of_this_file_is_registered_sorted_by_name() {
    assert_eq!(
        names(),
        [
            "check::completed_transfers_are_paid",
            "check::nested::in_a_module",
            "custom_strategy",
            "immediate_check",
            "ledger_balances",
        ]
    );
}

#[test]
fn defaults() {
    let check = find("check::completed_transfers_are_paid");
    assert_eq!(check.models(), ["transfers", "ledger_entries", "bank_payments"]);
    assert_eq!(check.spec(), &TransferView::spec());
    assert_eq!(check.timeout(), DEFAULT_TIMEOUT);
    assert_eq!(check.escalation(), DEFAULT_ESCALATION);
    assert_eq!(strategy(&check), format!("{:?}", Freshness::default()));
    let location = check.location();
    assert_eq!(location.module_path, "check");
    assert!(location.file.ends_with("check.rs"), "{location:?}");
    // The line of the function (the attribute is on the line before).
    assert_eq!(location.line, 15, "{location:?}");

    let nested = find("check::nested::in_a_module");
    assert_eq!(nested.location().module_path, "check::nested");
}

#[test]
fn options() {
    let check = find("ledger_balances");
    assert_eq!(check.models(), ["transfers", "ledger_entries"]);
    assert_eq!(
        check.spec().models().count(),
        3,
        "`on` does not change what the view reads"
    );
    assert_eq!(check.timeout(), Duration::from_secs(2));
    assert_eq!(check.escalation(), "pagerduty");
    assert_eq!(
        strategy(&check),
        format!("{:?}", FixedDelay(Duration::from_secs(600)))
    );

    let check = find("immediate_check");
    assert_eq!(check.timeout(), Duration::from_millis(1500));
    assert_eq!(check.escalation(), "slack");
    assert!(strategy(&check).contains("Immediate"), "{}", strategy(&check));

    let check = find("custom_strategy");
    let debug = strategy(&check);
    assert!(
        debug.contains("Then(FixedDelay(60s), Freshness { max_wait: 30s })"),
        "{debug}"
    );
}

#[tokio::test]
async fn registered_checks_run_against_the_store() {
    let dal = fixture().await;
    let paid = find("check::completed_transfers_are_paid");
    let balanced = find("ledger_balances");

    assert_eq!(
        paid.run(&dal, &transfer("t1"), LATER).await.expect("loads"),
        Verdict::Pass
    );
    assert_eq!(
        balanced.run(&dal, &transfer("t1"), LATER).await.expect("loads"),
        Verdict::Pass
    );
    // Before the payment committed.
    let early = overseer_core::Timestamp::from_secs(15);
    assert_eq!(
        paid.run(&dal, &transfer("t1"), early).await.expect("loads"),
        Verdict::fail("completed transfer has no bank payment")
    );
    assert_eq!(
        paid.run(&dal, &transfer("t2"), LATER).await.expect("loads"),
        Verdict::NotApplicable
    );
    assert_eq!(
        balanced.run(&dal, &transfer("t3"), LATER).await.expect("loads"),
        Verdict::fail("ledger of a completed transfer does not balance: -1000")
    );
    // A view that cannot be loaded is an error, not a failure.
    assert!(
        paid.run(&dal, &transfer("t4"), LATER).await.is_err(),
        "two payments"
    );
    assert!(
        paid.run(&dal, &transfer("t404"), LATER).await.is_err(),
        "no such transfer"
    );
}

#[tokio::test]
async fn a_check_is_still_a_plain_async_fn() {
    let view = |payment: Option<i64>, ledger: &[i64]| TransferView {
        transfer: Transfer {
            status: "completed".into(),
            amount_minor: 1000,
            account_id: "a1".into(),
        },
        ledger: ledger
            .iter()
            .map(|&amount_minor| LedgerEntry {
                transfer_id: "t1".into(),
                amount_minor,
            })
            .collect(),
        payment: payment.map(|amount_minor| BankPayment { amount_minor }),
    };
    assert_eq!(
        completed_transfers_are_paid(view(Some(1000), &[])).await,
        Verdict::Pass
    );
    let Verdict::Fail(failure) = completed_transfers_are_paid(view(Some(900), &[])).await else {
        panic!("amounts differ")
    };
    assert_eq!(failure.message, "bank payment amount differs");
    assert_eq!(failure.details["payment"], 900);
    assert_eq!(ledger_balances(view(None, &[5, -5])).await, Ok(()));
    assert_eq!(
        ledger_balances(view(None, &[5]))
            .await
            .expect_err("unbalanced")
            .message,
        "ledger of a completed transfer does not balance: 5"
    );
    assert_eq!(nested::in_a_module(view(None, &[])).await, Verdict::Pass);
}

#[test]
fn registry_validation_reports_every_problem() {
    let models = ["transfers", "ledger_entries", "bank_payments"];
    let escalations = ["log", "pagerduty", "slack"];
    registered().validate(&models, &escalations).expect("valid");

    let error = registered()
        .extend(Registry::new().add(find("ledger_balances")))
        .validate(&["transfers", "ledger_entries"], &["log"])
        .expect_err("invalid");
    let problems = error.problems.join("\n");
    assert!(
        problems.contains("duplicate check name \"ledger_balances\""),
        "{problems}"
    );
    assert!(problems.contains("unknown model \"bank_payments\""), "{problems}");
    assert!(
        problems.contains("unknown escalation \"pagerduty\""),
        "{problems}"
    );
    assert!(problems.contains("unknown escalation \"slack\""), "{problems}");
}

#[test]
fn strategies_plan_like_their_option_says() {
    use overseer_core::strategy::Trigger;
    use overseer_core::{SourceId, Timestamp};
    let trigger = Trigger {
        root: transfer("t1"),
        updated: transfer("t1"),
        source: SourceId::new("app").expect("valid"),
        commit_time: Timestamp::from_secs(100),
        received_at: Timestamp::from_secs(101),
    };
    let plan = find("ledger_balances").strategy().plan(&trigger);
    assert_eq!(plan.not_before, Timestamp::from_secs(700));
    assert!(!plan.await_sources);
    let plan = find("immediate_check").strategy().plan(&trigger);
    assert_eq!(plan.not_before, Timestamp::from_secs(101));
    let plan = find("custom_strategy").strategy().plan(&trigger);
    assert_eq!(
        (plan.as_of, plan.await_sources),
        (Timestamp::from_secs(160), true)
    );
}
