//! The ledger's integrity checks as Overseer checks, so that during the
//! shadow phase they run continuously on live changes of the new store
//! (`ledger_entries` rows ingested through wal2json, pgoutput or Debezium)
//! and open incidents.
//!
//! | check | view | fails when |
//! |---|---|---|
//! | [`BALANCE_CHAIN_CHECK`] ([`balance_chain`]) | [`AccountEntries`] | the entry's `prev_id` is not the account's previous entry (a gap), another entry has the same `prev_id` (a fork), or `balance_after` ≠ previous `balance_after` + `amount_minor` |
//! | [`TRANSACTION_CHECK`] ([`transaction_sums_to_zero`]) | [`TransactionEntries`] | the entries of the entry's transaction do not sum to zero per currency |
//!
//! Both views find their siblings through references that ingestion must
//! be told about ([`references`]): `ledger_entries.account ->
//! ledger_accounts` and `ledger_entries.tx_id -> ledger_transactions`. No
//! source delivers those two models; they only name the groups.
//!
//! Register them by hand (they are not `#[check]`s, so that linking this
//! crate never adds checks to a registry that did not ask for them):
//!
//! ```
//! use overseer_builders::migrate::checks::LedgerChecks;
//! let registry = LedgerChecks::default().escalate_to("ledger_desk").registry();
//! assert_eq!(registry.checks().len(), 2);
//! let references = overseer_builders::migrate::checks::references();
//! assert_eq!(references.len(), 2);
//! ```
//!
//! The check functions are plain `async fn`s over their views, so tests
//! build a view by hand and call them.

use std::collections::BTreeMap;
use std::time::Duration;

use overseer_core::dal::deserialize;
use overseer_core::strategy::{ExecutionStrategy, FixedDelay, Freshness};
use overseer_core::view::{ViewContext, ViewError, ViewSpec};
use overseer_core::{Check, DataView, Model, Record, RecordKey, ReferenceSpec, Registry, Verdict};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

/// The model of ledger entries (the table name, as wal2json reports it).
pub const ENTRIES_MODEL: &str = "ledger_entries";
/// The model an entry's `account` points at (no source delivers it).
pub const ACCOUNTS_MODEL: &str = "ledger_accounts";
/// The model an entry's `tx_id` points at (no source delivers it).
pub const TRANSACTIONS_MODEL: &str = "ledger_transactions";
/// The name of the balance-chain check.
pub const BALANCE_CHAIN_CHECK: &str = "ledger_balance_chain";
/// The name of the transaction check.
pub const TRANSACTION_CHECK: &str = "ledger_transaction_sums_to_zero";

/// One row of `ledger_entries`, as a change format delivers it (integers as
/// JSON numbers; `tx_id` and `account` as strings or numbers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The primary key; an account's entries are chained in id order.
    pub id: i64,
    /// The transaction.
    #[serde(deserialize_with = "text_or_number")]
    pub tx_id: String,
    /// The account.
    #[serde(deserialize_with = "text_or_number")]
    pub account: String,
    /// Signed amount in minor units.
    pub amount_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// The account's balance after this entry (`NULL` before repair).
    #[serde(default)]
    pub balance_after: Option<i64>,
    /// The account's previous entry, `NULL` for its first.
    #[serde(default)]
    pub prev_id: Option<i64>,
}

impl Record for LedgerEntry {
    const MODEL: &'static str = ENTRIES_MODEL;
}

fn text_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Integer(i64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Integer(i) => i.to_string(),
    })
}

/// The references ingestion needs for the two views: `ledger_entries.account
/// -> ledger_accounts` and `ledger_entries.tx_id -> ledger_transactions`.
pub fn references() -> Vec<ReferenceSpec> {
    [(ACCOUNTS_MODEL, "account"), (TRANSACTIONS_MODEL, "tx_id")]
        .into_iter()
        .filter_map(|(target, field)| {
            Some(ReferenceSpec {
                model: Model::new(ENTRIES_MODEL).ok()?,
                field: field.to_owned(),
                target: Model::new(target).ok()?,
            })
        })
        .collect()
}

/// Loads the root entry and the live entries whose `field` holds the same
/// value as the root's (through the reference to `target`), sorted by id.
async fn load_group(
    ctx: &ViewContext<'_>,
    target: &str,
    field: &str,
    pick: fn(&LedgerEntry) -> &str,
) -> Result<(Option<LedgerEntry>, Vec<LedgerEntry>), ViewError> {
    let Some(state) = ctx.dal().shared_state_at(ctx.root(), ctx.at()).await? else {
        return Ok((None, Vec::new()));
    };
    let entry: LedgerEntry = deserialize(ctx.root(), &state)?;
    let group = RecordKey::new(target, pick(&entry))?;
    let model = Model::new(ENTRIES_MODEL)?;
    let mut entries = Vec::new();
    for (key, state) in ctx.dal().referrers(&group, &model, field, ctx.at()).await? {
        entries.push(deserialize::<LedgerEntry>(&key, &state)?);
    }
    entries.sort_by_key(|e| e.id);
    Ok((Some(entry), entries))
}

/// A ledger entry and every entry of its account (itself included), sorted
/// by id, as of the view's time.
///
/// Reads `ledger_accounts` only through the DAL, never in its
/// [`ViewSpec`]: only changes of entries trigger it. Loading reads the
/// whole account, so very long accounts (an omnibus account) cost as much
/// as their length per change; the batch verification covers those.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountEntries {
    /// The entry, `None` if it does not exist at the view's time.
    pub entry: Option<LedgerEntry>,
    /// The account's live entries, sorted by id.
    pub account: Vec<LedgerEntry>,
}

impl DataView for AccountEntries {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: ENTRIES_MODEL,
            joins: Vec::new(),
        }
    }

    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        let (entry, account) = load_group(ctx, ACCOUNTS_MODEL, "account", |e| &e.account).await?;
        Ok(Self { entry, account })
    }
}

/// A ledger entry and every entry of its transaction (itself included),
/// sorted by id, as of the view's time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionEntries {
    /// The entry, `None` if it does not exist at the view's time.
    pub entry: Option<LedgerEntry>,
    /// The transaction's live entries, sorted by id.
    pub transaction: Vec<LedgerEntry>,
}

impl DataView for TransactionEntries {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: ENTRIES_MODEL,
            joins: Vec::new(),
        }
    }

    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        let (entry, transaction) = load_group(ctx, TRANSACTIONS_MODEL, "tx_id", |e| &e.tx_id).await?;
        Ok(Self { entry, transaction })
    }
}

/// The entry is linked to its account's previous entry (no gap), no other
/// entry of the account shares its `prev_id` (no fork), and its
/// `balance_after` is the previous entry's plus its own amount (the first
/// entry's is its amount). Every entry passing means every cumulative
/// balance equals the account's running sum.
pub async fn balance_chain(view: AccountEntries) -> Verdict {
    let Some(entry) = view.entry else {
        return Verdict::not_applicable();
    };
    let previous = view
        .account
        .iter()
        .filter(|e| e.id < entry.id)
        .max_by_key(|e| e.id);
    let expected_prev = previous.map(|p| p.id);
    let mut problems = Vec::new();
    if entry.prev_id != expected_prev {
        problems.push(format!(
            "prev_id is {} but the account's previous entry is {}",
            show(entry.prev_id),
            show(expected_prev)
        ));
    }
    let forks: Vec<i64> = match entry.prev_id {
        Some(prev) => view
            .account
            .iter()
            .filter(|e| e.id != entry.id && e.prev_id == Some(prev))
            .map(|e| e.id)
            .collect(),
        None => Vec::new(),
    };
    if !forks.is_empty() {
        problems.push(format!(
            "entries {} also follow entry {} (a fork)",
            join_ids(&forks),
            show(entry.prev_id)
        ));
    }
    let before = match previous {
        Some(p) => p.balance_after,
        None => Some(0),
    };
    let expected_balance = before.and_then(|b| b.checked_add(entry.amount_minor));
    if entry.balance_after.is_none() || entry.balance_after != expected_balance {
        problems.push(format!(
            "balance_after is {} but previous balance {} + amount {} = {}",
            show(entry.balance_after),
            show(before),
            entry.amount_minor,
            show(expected_balance)
        ));
    }
    if problems.is_empty() {
        return Verdict::pass();
    }
    Verdict::fail_with(
        format!(
            "entry {} of account {}: {}",
            entry.id,
            entry.account,
            problems.join("; ")
        ),
        json!({
            "entry_id": entry.id,
            "account": entry.account,
            "tx_id": entry.tx_id,
            "prev_id": entry.prev_id,
            "expected_prev_id": expected_prev,
            "fork_ids": forks,
            "balance_after": entry.balance_after,
            "expected_balance_after": expected_balance,
        }),
    )
}

/// The entries of the entry's transaction sum to zero in every currency.
pub async fn transaction_sums_to_zero(view: TransactionEntries) -> Verdict {
    let Some(entry) = view.entry else {
        return Verdict::not_applicable();
    };
    let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
    for e in &view.transaction {
        *sums.entry(&e.currency).or_default() += i128::from(e.amount_minor);
    }
    let unbalanced: Vec<String> = sums
        .iter()
        .filter(|(_, sum)| **sum != 0)
        .map(|(ccy, sum)| format!("{sum} {ccy}"))
        .collect();
    if unbalanced.is_empty() {
        return Verdict::pass();
    }
    let ids: Vec<i64> = view.transaction.iter().map(|e| e.id).collect();
    Verdict::fail_with(
        format!(
            "transaction {} sums to {} (entries {})",
            entry.tx_id,
            unbalanced.join(", "),
            join_ids(&ids)
        ),
        json!({
            "tx_id": entry.tx_id,
            "sums_minor": sums.iter().map(|(c, s)| (c.to_string(), s.to_string())).collect::<BTreeMap<_, _>>(),
            "entry_ids": ids,
        }),
    )
}

fn show(v: Option<i64>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

fn join_ids(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}

/// Builds the two checks with a schedule and an escalation.
#[derive(Clone, Debug)]
pub struct LedgerChecks {
    grace: Duration,
    max_wait: Duration,
    escalation: String,
}

impl Default for LedgerChecks {
    /// A 60 s grace period on source time (a transaction's entries and an
    /// account's next entry are written within it), then waiting for
    /// freshness up to 15 min; the `log` escalation.
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(60),
            max_wait: Duration::from_secs(15 * 60),
            escalation: overseer_core::check::DEFAULT_ESCALATION.to_owned(),
        }
    }
}

impl LedgerChecks {
    /// How long after an entry's commit time the checks wait, on source time.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The cap on waiting for lagging sources after the grace period.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The escalation failures go to.
    pub fn escalate_to(mut self, escalation: impl Into<String>) -> Self {
        self.escalation = escalation.into();
        self
    }

    fn strategy(&self) -> impl ExecutionStrategy {
        FixedDelay(self.grace).then(Freshness {
            max_wait: self.max_wait,
        })
    }

    /// The balance-chain check.
    pub fn balance_chain(&self) -> Check {
        Check::new(BALANCE_CHAIN_CHECK, balance_chain)
            .at(module_path!(), file!(), line!())
            .on(&[ENTRIES_MODEL])
            .with_strategy(self.strategy())
            .escalate_to(self.escalation.clone())
    }

    /// The transaction check.
    pub fn transaction_sums_to_zero(&self) -> Check {
        Check::new(TRANSACTION_CHECK, transaction_sums_to_zero)
            .at(module_path!(), file!(), line!())
            .on(&[ENTRIES_MODEL])
            .with_strategy(self.strategy())
            .escalate_to(self.escalation.clone())
    }

    /// Both checks.
    pub fn registry(&self) -> Registry {
        Registry::new()
            .add(self.balance_chain())
            .add(self.transaction_sums_to_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: i64, tx: &str, amount: i64, balance: Option<i64>, prev: Option<i64>) -> LedgerEntry {
        LedgerEntry {
            id,
            tx_id: tx.into(),
            account: "acc-1".into(),
            amount_minor: amount,
            currency: "EUR".into(),
            balance_after: balance,
            prev_id: prev,
        }
    }

    fn chain() -> Vec<LedgerEntry> {
        vec![
            e(1, "t1", 100, Some(100), None),
            e(4, "t2", -30, Some(70), Some(1)),
            e(9, "t3", 5, Some(75), Some(4)),
        ]
    }

    async fn verdict_for(id: i64, account: Vec<LedgerEntry>) -> Verdict {
        let entry = account.iter().find(|x| x.id == id).cloned();
        balance_chain(AccountEntries { entry, account }).await
    }

    #[tokio::test]
    async fn a_sound_chain_passes() {
        for id in [1, 4, 9] {
            assert_eq!(verdict_for(id, chain()).await, Verdict::pass(), "entry {id}");
        }
    }

    #[tokio::test]
    async fn a_missing_entry_is_not_applicable() {
        let v = balance_chain(AccountEntries::default()).await;
        assert_eq!(v, Verdict::not_applicable());
    }

    #[tokio::test]
    async fn a_wrong_balance_names_the_entry() {
        let mut account = chain();
        account[1].balance_after = Some(71);
        let Verdict::Fail(f) = verdict_for(4, account.clone()).await else {
            panic!("expected a failure");
        };
        assert!(f.message.contains("entry 4"), "{}", f.message);
        assert_eq!(f.details["expected_balance_after"], 70);
        // The next entry's step is wrong too (its previous balance is 71).
        assert!(verdict_for(9, account).await.is_fail());
    }

    #[tokio::test]
    async fn a_gap_and_a_fork_are_named() {
        // Entry 4 deleted: entry 9 still points at it.
        let gap = vec![chain()[0].clone(), chain()[2].clone()];
        let Verdict::Fail(f) = verdict_for(9, gap).await else {
            panic!("expected a failure");
        };
        assert_eq!(f.details["expected_prev_id"], 1);
        assert_eq!(f.details["prev_id"], 4);

        let mut fork = chain();
        fork[2].prev_id = Some(1);
        let Verdict::Fail(f) = verdict_for(9, fork).await else {
            panic!("expected a failure");
        };
        assert_eq!(f.details["fork_ids"], json!([4]));
    }

    #[tokio::test]
    async fn a_null_balance_fails() {
        let mut account = chain();
        account[0].balance_after = None;
        assert!(verdict_for(1, account).await.is_fail());
    }

    #[tokio::test]
    async fn transactions_sum_to_zero_per_currency() {
        let mut a = e(1, "t1", -500, Some(0), None);
        let mut b = e(2, "t1", 500, Some(0), None);
        b.account = "acc-2".into();
        let view = |entries: Vec<LedgerEntry>| TransactionEntries {
            entry: entries.first().cloned(),
            transaction: entries,
        };
        assert_eq!(
            transaction_sums_to_zero(view(vec![a.clone(), b.clone()])).await,
            Verdict::pass()
        );
        b.amount_minor = 499;
        let Verdict::Fail(f) = transaction_sums_to_zero(view(vec![a.clone(), b.clone()])).await else {
            panic!("expected a failure");
        };
        assert_eq!(f.details["entry_ids"], json!([1, 2]));
        assert!(f.message.contains("-1 EUR"), "{}", f.message);
        // Balanced amounts in two currencies are two unbalanced legs.
        b.amount_minor = 500;
        a.currency = "USD".into();
        assert!(transaction_sums_to_zero(view(vec![a, b])).await.is_fail());
    }

    #[test]
    fn entries_deserialize_from_wal2json_state() {
        let state = json!({"id": 7, "tx_id": 12, "account": "a", "amount_minor": -5, "currency": "EUR",
            "balance_after": null, "prev_id": 3, "created_at": "2026-01-01 00:00:00+00"});
        let entry: LedgerEntry = serde_json::from_value(state).unwrap();
        assert_eq!(entry.tx_id, "12");
        assert_eq!(entry.balance_after, None);
        assert_eq!(entry.prev_id, Some(3));
    }

    #[test]
    fn the_registry_validates_against_the_entries_model() {
        let registry = LedgerChecks::default().registry();
        registry.validate(&[ENTRIES_MODEL], &["log"]).unwrap();
        let refs = references();
        assert_eq!(
            refs[0],
            ReferenceSpec::parse("ledger_entries.account -> ledger_accounts").unwrap()
        );
        assert_eq!(
            refs[1],
            ReferenceSpec::parse("ledger_entries.tx_id -> ledger_transactions").unwrap()
        );
    }
}
