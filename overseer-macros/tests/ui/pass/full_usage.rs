//! Every form the macros accept, used together, with the lints a strict
//! crate sets: the generated code must not trip them.
#![deny(warnings, missing_docs, unreachable_pub, unused_qualifications)]

use std::time::Duration;

use overseer_core::strategy::{ExecutionStrategy, FixedDelay, Freshness};
use overseer_core::{DataView, Failure, Record, Verdict, check, ensure};
use serde::Deserialize;

#[derive(Deserialize, Record)]
#[record(model = "transfers")]
struct Transfer {
    status: String,
    amount_minor: i64,
}

#[derive(Deserialize, Record)]
#[record(model = "ledger_entries")]
struct LedgerEntry {
    amount_minor: i64,
}

#[derive(Deserialize, Record)]
#[record(model = "bank_payments")]
struct BankPayment {
    amount_minor: i64,
}

#[derive(Deserialize)]
struct Account {
    owner: String,
}

#[derive(DataView)]
struct TransferView {
    #[root]
    transfer: Transfer,
    #[join(on = "transfer_id")]
    ledger: Vec<LedgerEntry>,
    #[join(on = "transfer_id")]
    payment: Option<BankPayment>,
    #[join(via = "account_id", model = "accounts")]
    account: Account,
    #[join(model = "fees", on = "transfer_id")]
    fees: Vec<serde_json::Value>,
}

#[derive(DataView)]
struct UntypedView {
    #[root(model = "transfers")]
    transfer: serde_json::Value,
}

#[check]
async fn defaults(view: TransferView) -> Verdict {
    if view.account.owner.is_empty() || view.fees.len() > 10 {
        return Verdict::not_applicable();
    }
    match view.payment {
        Some(p) if p.amount_minor == view.transfer.amount_minor => Verdict::pass(),
        _ => Verdict::fail("unpaid"),
    }
}

#[check(
    name = "ledger_balances",
    on = ["transfers", "ledger_entries"],
    delay = "1h30m",
    timeout = "500ms",
    escalate = pagerduty,
)]
async fn ledger_balances(view: TransferView) -> Result<(), Failure> {
    let sum: i64 = view.ledger.iter().map(|e| e.amount_minor).sum();
    ensure!(sum == 0, "{} ledger does not balance: {sum}", view.transfer.status);
    Ok(())
}

#[check(immediate, escalate = "slack", on = "transfers")]
async fn immediate(_: UntypedView) -> Verdict {
    Verdict::pass()
}

#[check(strategy = FixedDelay(Duration::from_secs(60)).then(Freshness::default()), name = "grace")]
async fn grace(UntypedView { transfer }: UntypedView) -> Verdict {
    if transfer.is_null() { Verdict::fail("null") } else { Verdict::pass() }
}

mod nested {
    #[overseer_core::check]
    pub(crate) async fn r#in(_view: super::UntypedView) -> overseer_core::Verdict {
        overseer_core::Verdict::pass()
    }
}

fn main() {
    let registry = overseer_core::registered();
    let names: Vec<&str> = registry.checks().iter().map(|c| c.name()).collect();
    let here = module_path!();
    assert_eq!(
        names,
        [
            "grace".to_owned(),
            "ledger_balances".to_owned(),
            format!("{here}::defaults"),
            format!("{here}::immediate"),
            format!("{here}::nested::in"),
        ]
    );
    let balances = &registry.checks()[1];
    assert_eq!(balances.timeout(), Duration::from_millis(500));
    assert_eq!(format!("{:?}", balances.strategy()), "FixedDelay(5400s)");
    assert_eq!(registry.checks()[3].models(), ["transfers"]);
    let _ = (defaults, ledger_balances, immediate, grace, nested::r#in);
}
