//! The checks: one per kind of discrepancy, each a plain `async fn` over a
//! data view, registered with `#[check]`.
//!
//! | check | view | strategy | fails when |
//! |---|---|---|---|
//! | `amount_matches_bank` | [`Settlement`] | [`grace`] | a settled bank payment's amount or currency differs from the transfer's |
//! | `completed_transfer_is_paid` (on `transfers`) | [`Settlement`] | [`sla`] | a completed transfer has no settled bank payment [`SLA_SECS`] after its last change |
//! | `failed_transfer_not_settled` | [`Settlement`] | [`grace`] | a failed transfer has a settled bank payment |
//! | `ledger_balances` (on `ledger_entries`) | [`Posting`] | [`grace`] | the ledger entries of a transfer do not sum to zero |
//! | `balance_chain` | [`AccountChain`] (hand-written) | [`grace`] | a user account's entry has `balance_after` ≠ previous `balance_after` + `amount_minor` |
//!
//! Normal business settles within [`GRACE_SECS`] of the source commit time
//! of whatever caused a transient (a ledger row fixed, a duplicate removed, a
//! bank attempt re-created, a bank payment committed after completion), so
//! every check first waits that long on source time, then waits for every
//! source its view reads to catch up ([`Freshness`]): a lagging or stalled
//! source delays a check instead of failing it. Because repeated triggers for
//! the same record coalesce into one pending run, a check runs once the
//! record and everything it joins has been quiet for the grace period.

use std::time::Duration;

use overseer_core::dal::deserialize;
use overseer_core::strategy::{ExecutionStrategy, FixedDelay, Freshness};
use overseer_core::view::{ViewContext, ViewError, ViewSpec};
use overseer_core::{DataView, Record, RecordKey, Registry, Verdict, check};
use serde::{Deserialize, Deserializer};
use serde_json::json;

/// How long normal business may disagree, on source time.
pub const GRACE_SECS: u64 = 60;
/// The SLA of a completed transfer's bank payment, on source time.
pub const SLA_SECS: u64 = 120;
/// The cap on waiting for lagging sources (longer than any stall the
/// simulation injects; a capped run is *degraded* and counted).
pub const MAX_WAIT_SECS: u64 = 15 * 60;
/// The escalation every check reports to.
pub const ESCALATION: &str = "payments_desk";

/// Check names, in the order of [`crate::payments::sim::Kind::ALL`].
pub const CHECK_NAMES: [&str; 5] = [
    "amount_matches_bank",
    "completed_transfer_is_paid",
    "ledger_balances",
    "failed_transfer_not_settled",
    "balance_chain",
];

fn fresh() -> Freshness {
    Freshness {
        max_wait: Duration::from_secs(MAX_WAIT_SECS),
    }
}

/// The grace period on source time, then freshness.
pub fn grace() -> impl ExecutionStrategy {
    FixedDelay(Duration::from_secs(GRACE_SECS)).then(fresh())
}

/// The SLA on source time, then freshness.
pub fn sla() -> impl ExecutionStrategy {
    FixedDelay(Duration::from_secs(SLA_SECS)).then(fresh())
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// A decimal amount in minor units (two decimals), read from a MongoDB
/// `{"$numberDecimal": "12.34"}`, a string or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Minor(pub i64);

/// `"12.34"` as 1234; `None` beyond two decimals or out of range.
pub fn parse_minor(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (units, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let fraction = fraction.trim_end_matches('0');
    if units.is_empty() && fraction.is_empty() || fraction.len() > 2 {
        return None;
    }
    let units: i64 = if units.is_empty() { 0 } else { units.parse().ok()? };
    let cents: i64 = format!("{fraction:0<2}").parse().ok()?;
    let minor = units.checked_mul(100)?.checked_add(cents)?;
    Some(if negative { -minor } else { minor })
}

impl<'de> Deserialize<'de> for Minor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Decimal {
                #[serde(rename = "$numberDecimal")]
                value: String,
            },
            Text(String),
            Integer(i64),
            Float(f64),
        }
        let bad = |what: &dyn std::fmt::Display| serde::de::Error::custom(format!("not an amount: {what}"));
        match Raw::deserialize(d)? {
            Raw::Decimal { value } | Raw::Text(value) => {
                parse_minor(&value).map(Minor).ok_or_else(|| bad(&value))
            }
            Raw::Integer(units) => units.checked_mul(100).map(Minor).ok_or_else(|| bad(&units)),
            Raw::Float(f) => parse_minor(&format!("{f:.2}")).map(Minor).ok_or_else(|| bad(&f)),
        }
    }
}

/// A transfer, as the transfers service stores it in MongoDB.
#[derive(Clone, Debug, Deserialize, Record)]
#[record(model = "transfers")]
pub struct Transfer {
    /// `tr-00000042`.
    #[serde(rename = "_id")]
    pub id: String,
    /// The paying user.
    pub user_id: String,
    /// The amount, in minor units.
    pub amount: Minor,
    /// ISO currency.
    pub currency: String,
    /// `created`, `processing`, `completed` or `failed`.
    pub status: String,
    /// Why it failed.
    #[serde(default)]
    pub failure_reason: Option<String>,
}

/// One row of the ledger's `ledger_entries` table.
#[derive(Clone, Debug, Deserialize, Record)]
#[record(model = "ledger_entries")]
pub struct LedgerEntry {
    /// The row id: entries of an account chain in id order.
    pub id: i64,
    /// The transfer it books.
    pub transfer_id: String,
    /// `user:<uid>:<ccy>` or `omnibus:<ccy>`.
    pub account: String,
    /// Signed amount in minor units (debits negative).
    pub amount_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// The account's balance after this entry.
    pub balance_after: i64,
}

/// One row of the bank gateway's `bank_payments` table.
#[derive(Clone, Debug, Deserialize, Record)]
#[record(model = "bank_payments")]
pub struct BankPayment {
    /// The row id (a re-created attempt gets a new one).
    pub id: i64,
    /// The transfer it pays.
    pub transfer_id: String,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// `pending`, `settled`, `rejected` or `returned`.
    pub state: String,
}

// ---------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------

/// A transfer and its bank payments.
#[derive(Debug, DataView)]
pub struct Settlement {
    /// The transfer.
    #[root]
    pub transfer: Transfer,
    /// Every bank payment whose `transfer_id` points at it.
    #[join(on = "transfer_id")]
    pub bank: Vec<BankPayment>,
}

/// A transfer and its ledger entries.
#[derive(Debug, DataView)]
pub struct Posting {
    /// The transfer.
    #[root]
    pub transfer: Transfer,
    /// Every ledger entry whose `transfer_id` points at it.
    #[join(on = "transfer_id")]
    pub ledger: Vec<LedgerEntry>,
}

/// A ledger entry and the entry before it on the same account.
///
/// Written by hand (the escape hatch when a view needs more than joins):
/// the previous entry is found through the reference
/// `ledger_entries.account -> accounts`, which no source delivers as a
/// model of its own. The view reads `accounts` only through the DAL, never
/// in its [`ViewSpec`], so pipeline validation does not ask for a source of
/// `accounts`; and updates of other entries of the account do not trigger
/// it (the ledger rewrites an entry whenever its running balance changes, so
/// the entry's own updates are the right triggers).
///
/// Only `user:` accounts are loaded: an omnibus account has an entry for
/// every transfer, so its chain would be read in full for every entry. The
/// omnibus chain is better verified incrementally (the backfill's *repair*
/// step owns it).
#[derive(Debug)]
pub struct AccountChain {
    /// The entry, `None` if it does not exist at the view's time (a
    /// duplicate removed by `DELETE`).
    pub entry: Option<LedgerEntry>,
    /// The account's live entry with the greatest id below the entry's.
    pub previous: Option<LedgerEntry>,
}

impl DataView for AccountChain {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: "ledger_entries",
            joins: Vec::new(),
        }
    }

    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        let Some(state) = ctx.dal().shared_state_at(ctx.root(), ctx.at()).await? else {
            return Ok(Self {
                entry: None,
                previous: None,
            });
        };
        let entry: LedgerEntry = deserialize(ctx.root(), &state)?;
        if !entry.account.starts_with("user:") {
            return Ok(Self {
                entry: Some(entry),
                previous: None,
            });
        }
        // Candidates from the reverse index, newest (greatest id) first: a
        // ledger entry's record id is its `id`, so only the entries before
        // this one are read, and usually only the first of them.
        let account = RecordKey::new("accounts", &entry.account)?;
        let mut candidates: Vec<(i64, RecordKey)> = ctx
            .dal()
            .referrer_entries(&account, ctx.at())
            .await?
            .into_iter()
            .filter(|e| e.from.model.as_str() == LedgerEntry::MODEL && e.reference.field == "account")
            .filter_map(|e| {
                let id = e.from.id.as_str().parse::<i64>().ok()?;
                (id < entry.id).then_some((id, e.from))
            })
            .collect();
        candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        candidates.dedup_by_key(|c| c.0);
        let mut previous: Option<LedgerEntry> = None;
        for (_, key) in candidates {
            let Some(state) = ctx.dal().shared_state_at(&key, ctx.at()).await? else {
                continue;
            };
            let e: LedgerEntry = deserialize(&key, &state)?;
            // Still on this account at the view's time (a row can be moved).
            if e.account == entry.account && e.id < entry.id {
                previous = Some(e);
                break;
            }
        }
        Ok(Self {
            entry: Some(entry),
            previous,
        })
    }
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// A settled bank payment pays exactly the transfer's amount.
#[check(name = "amount_matches_bank", strategy = grace(), escalate = payments_desk)]
pub async fn amount_matches_bank(s: Settlement) -> Verdict {
    let want = s.transfer.amount.0;
    for p in s.bank.iter().filter(|p| p.state == "settled") {
        if p.amount_minor != want || p.currency != s.transfer.currency {
            return Verdict::fail_with(
                format!(
                    "bank payment {} settled {} {} for a transfer of {} {}",
                    p.id, p.amount_minor, p.currency, want, s.transfer.currency
                ),
                json!({
                    "transfer_id": s.transfer.id,
                    "bank_payment_id": p.id,
                    "transfer_amount_minor": want,
                    "bank_amount_minor": p.amount_minor,
                }),
            );
        }
    }
    Verdict::pass()
}

/// A completed transfer has a settled bank payment within its SLA.
///
/// Triggered by the transfer's own changes only: the SLA is measured from
/// the transfer's last change (its completion), whatever the bank does.
#[check(name = "completed_transfer_is_paid", on = ["transfers"], strategy = sla(), escalate = payments_desk)]
pub async fn completed_transfer_is_paid(s: Settlement) -> Verdict {
    if s.transfer.status != "completed" {
        return Verdict::not_applicable();
    }
    if s.bank.iter().any(|p| p.state == "settled") {
        return Verdict::pass();
    }
    Verdict::fail_with(
        format!("completed transfer has no settled bank payment after {SLA_SECS} s"),
        json!({
            "transfer_id": s.transfer.id,
            "bank_payments": s.bank.iter().map(|p| json!({"id": p.id, "state": p.state})).collect::<Vec<_>>(),
        }),
    )
}

/// A failed transfer has no settled bank payment.
#[check(name = "failed_transfer_not_settled", strategy = grace(), escalate = payments_desk)]
pub async fn failed_transfer_not_settled(s: Settlement) -> Verdict {
    if s.transfer.status != "failed" {
        return Verdict::not_applicable();
    }
    match s.bank.iter().find(|p| p.state == "settled") {
        Some(p) => Verdict::fail_with(
            format!(
                "transfer failed ({}) but bank payment {} settled",
                s.transfer.failure_reason.as_deref().unwrap_or("no reason"),
                p.id
            ),
            json!({"transfer_id": s.transfer.id, "bank_payment_id": p.id}),
        ),
        None => Verdict::pass(),
    }
}

/// The ledger entries of a transfer sum to zero (double entry).
///
/// Triggered by ledger entries only: a change of the transfer itself cannot
/// unbalance its ledger.
#[check(name = "ledger_balances", on = ["ledger_entries"], strategy = grace(), escalate = payments_desk)]
pub async fn ledger_balances(p: Posting) -> Verdict {
    let sum: i64 = p.ledger.iter().map(|e| e.amount_minor).sum();
    if sum == 0 {
        return Verdict::pass();
    }
    Verdict::fail_with(
        format!("ledger entries of the transfer sum to {sum}, not 0"),
        json!({
            "transfer_id": p.transfer.id,
            "sum_minor": sum,
            "entries": p.ledger.iter().map(|e| json!({"id": e.id, "account": e.account, "amount_minor": e.amount_minor})).collect::<Vec<_>>(),
        }),
    )
}

/// A user account's running balance is continuous: each entry's
/// `balance_after` is the previous entry's plus its own amount.
#[check(name = "balance_chain", strategy = grace(), escalate = payments_desk)]
pub async fn balance_chain(chain: AccountChain) -> Verdict {
    let Some(entry) = chain.entry else {
        return Verdict::not_applicable();
    };
    if !entry.account.starts_with("user:") {
        return Verdict::not_applicable();
    }
    let before = chain.previous.as_ref().map_or(0, |p| p.balance_after);
    let expected = before + entry.amount_minor;
    if entry.balance_after == expected {
        return Verdict::pass();
    }
    Verdict::fail_with(
        format!(
            "entry {} of {}: balance_after {} but previous balance {} + amount {} = {}",
            entry.id, entry.account, entry.balance_after, before, entry.amount_minor, expected
        ),
        json!({
            "transfer_id": entry.transfer_id,
            "entry_id": entry.id,
            "account": entry.account,
            "previous_entry_id": chain.previous.as_ref().map(|p| p.id),
            "expected_balance_after": expected,
            "balance_after": entry.balance_after,
        }),
    )
}

/// The five checks of this module (registered with `#[check]`).
///
/// Fails if one is missing from the registry (a linker that dropped the
/// module's registrations).
pub fn registry() -> Result<Registry, String> {
    let registry = overseer_core::registered().filter(|c| CHECK_NAMES.contains(&c.name()));
    let found: Vec<&str> = registry.checks().iter().map(|c| c.name()).collect();
    let missing: Vec<&str> = CHECK_NAMES
        .iter()
        .copied()
        .filter(|n| !found.contains(n))
        .collect();
    if missing.is_empty() {
        Ok(registry)
    } else {
        Err(format!("checks not registered: {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(status: &str, amount: i64) -> Transfer {
        Transfer {
            id: "tr-1".into(),
            user_id: "u-1".into(),
            amount: Minor(amount),
            currency: "USD".into(),
            status: status.into(),
            failure_reason: None,
        }
    }

    fn payment(state: &str, amount: i64) -> BankPayment {
        BankPayment {
            id: 7,
            transfer_id: "tr-1".into(),
            amount_minor: amount,
            currency: "USD".into(),
            state: state.into(),
        }
    }

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(parse_minor("12.34"), Some(1234));
        assert_eq!(parse_minor("12.3"), Some(1230));
        assert_eq!(parse_minor("12"), Some(1200));
        assert_eq!(parse_minor("-0.05"), Some(-5));
        assert_eq!(parse_minor("1.005"), None);
        let m: Minor = serde_json::from_value(json!({"$numberDecimal": "2999.99"})).unwrap();
        assert_eq!(m, Minor(299_999));
    }

    #[tokio::test]
    async fn checks_are_plain_functions() {
        let s = Settlement {
            transfer: transfer("completed", 100),
            bank: vec![payment("settled", 99)],
        };
        assert!(amount_matches_bank(s).await.is_fail());
        let s = Settlement {
            transfer: transfer("completed", 100),
            bank: vec![payment("pending", 100)],
        };
        assert!(completed_transfer_is_paid(s).await.is_fail());
        let s = Settlement {
            transfer: transfer("failed", 100),
            bank: vec![payment("returned", 100)],
        };
        assert_eq!(failed_transfer_not_settled(s).await, Verdict::pass());
        let entry = |id, amount_minor, balance_after| LedgerEntry {
            id,
            transfer_id: "tr-1".into(),
            account: "user:u-1:USD".into(),
            amount_minor,
            currency: "USD".into(),
            balance_after,
        };
        let chain = AccountChain {
            entry: Some(entry(9, -50, -150)),
            previous: Some(entry(4, -100, -100)),
        };
        assert_eq!(balance_chain(chain).await, Verdict::pass());
        let chain = AccountChain {
            entry: Some(entry(9, -50, -149)),
            previous: Some(entry(4, -100, -100)),
        };
        assert!(balance_chain(chain).await.is_fail());
    }
}
