//! Verification of a migrated ledger, ending in a [`VerifyReport`] (serde
//! JSON, and a human-readable `Display`) that names the offending ids.
//!
//! * **Integrity** inside the new store ([`check_integrity`]), each a
//!   set-based query, run in parallel on their own connections:
//!   - every account's chain is complete: each entry's `prev_id` is the
//!     account's previous entry in id order, `NULL` for its first
//!     ([`BrokenLink`]: gaps, wrong links);
//!   - no fork: no two entries share a `prev_id` ([`Fork`]);
//!   - every `balance_after` equals the account's running sum of
//!     `amount_minor` in id order ([`BalanceMismatch`]);
//!   - every transaction's entries sum to zero per currency
//!     ([`UnbalancedTransaction`]).
//! * **Completeness and correctness** against the legacy store, through the
//!   user's mapping ([`LegacySource`]), by checksums of key ranges descending
//!   only where they differ ([`compare`], see `migrate::diff`).

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use super::diff::{DiffOptions, LegacySource, compare};
use super::ledger::{Conn, LedgerError, LedgerSchema, quote_ident};

/// What to verify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyOptions {
    /// Check integrity inside the new store (default true).
    pub integrity: bool,
    /// Compare with the legacy store when one is configured (default true).
    pub compare: bool,
    /// At most this many items of each kind are listed; all are counted
    /// (default 1 000).
    pub max_listed: usize,
    /// How the comparison descends.
    pub diff: DiffOptions,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            integrity: true,
            compare: true,
            max_listed: 1_000,
            diff: DiffOptions::default(),
        }
    }
}

/// Items of one kind: how many were found, and the first ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed<T> {
    /// How many were found.
    pub total: u64,
    /// The first of them (at most [`VerifyOptions::max_listed`]), in key order.
    pub items: Vec<T>,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Self {
            total: 0,
            items: Vec::new(),
        }
    }
}

impl<T> Listed<T> {
    /// Whether none was found.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// An entry whose `prev_id` is not its account's previous entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenLink {
    /// The entry.
    pub id: i64,
    /// Its account.
    pub account: Option<String>,
    /// Its `prev_id`.
    pub prev_id: Option<i64>,
    /// The account's previous entry in id order (`None` for the first).
    pub expected_prev_id: Option<i64>,
}

/// Entries sharing a `prev_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    /// The shared `prev_id`.
    pub prev_id: i64,
    /// The entries that claim to follow it, sorted.
    pub ids: Vec<i64>,
}

/// An entry whose `balance_after` is not its account's running sum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceMismatch {
    /// The entry.
    pub id: i64,
    /// Its account.
    pub account: Option<String>,
    /// Its `balance_after`.
    pub balance_after: Option<i64>,
    /// The running sum of the account's amounts up to and including it.
    pub expected: i128,
}

/// A transaction whose entries do not sum to zero in a currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnbalancedTransaction {
    /// The transaction.
    pub tx_id: Option<String>,
    /// The currency.
    pub currency: Option<String>,
    /// The sum of its entries in that currency.
    pub sum: i128,
    /// Its entries in that currency, sorted.
    pub ids: Vec<i64>,
}

/// Integrity of the new store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrityReport {
    /// Entries checked.
    pub entries: u64,
    /// Accounts checked.
    pub accounts: u64,
    /// Transactions checked (distinct transaction and currency pairs).
    pub transactions: u64,
    /// Gaps and wrong links.
    pub broken_links: Listed<BrokenLink>,
    /// Forks.
    pub forks: Listed<Fork>,
    /// Wrong cumulative balances.
    pub balance_mismatches: Listed<BalanceMismatch>,
    /// Transactions that do not sum to zero.
    pub unbalanced_transactions: Listed<UnbalancedTransaction>,
}

impl IntegrityReport {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.broken_links.is_empty()
            && self.forks.is_empty()
            && self.balance_mismatches.is_empty()
            && self.unbalanced_transactions.is_empty()
    }
}

/// One column that differs between the legacy and the new row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDiff {
    /// The column.
    pub column: String,
    /// The legacy value as text (cast to the new column's type).
    pub legacy: Option<String>,
    /// The new value as text.
    pub new: Option<String>,
}

/// A row present on both sides with different values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowDiff {
    /// The row's id.
    pub id: i64,
    /// The columns that differ.
    pub fields: Vec<FieldDiff>,
}

/// An account whose entry count or amount sum differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountTotalDiff {
    /// The account.
    pub account: Option<String>,
    /// Entries on the legacy side.
    pub legacy_count: u64,
    /// Entries on the new side.
    pub new_count: u64,
    /// Sum of the legacy amounts.
    pub legacy_sum: i128,
    /// Sum of the new amounts.
    pub new_sum: i128,
}

/// How much work the comparison did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffStats {
    /// Rows the legacy mapping produces.
    pub legacy_rows: u64,
    /// Rows of the new table.
    pub new_rows: u64,
    /// Checksum levels walked.
    pub levels: u64,
    /// Checksum statements run (both sides).
    pub checksum_queries: u64,
    /// Ranges whose checksums were compared.
    pub ranges_checked: u64,
    /// Ranges whose checksums differed.
    pub ranges_differing: u64,
    /// Ranges fetched and compared row by row.
    pub ranges_fetched: u64,
    /// Legacy rows fetched.
    pub rows_fetched_legacy: u64,
    /// New rows fetched.
    pub rows_fetched_new: u64,
    /// Whether every row was fetched (no checksums).
    pub full: bool,
}

/// Completeness and correctness against the legacy store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComparisonReport {
    /// Rows the legacy mapping produces.
    pub legacy_rows: u64,
    /// Rows of the new table.
    pub new_rows: u64,
    /// The compared columns (besides the id).
    pub columns: Vec<String>,
    /// Ids the legacy mapping produces that the new table lacks.
    pub missing_in_new: Listed<i64>,
    /// Ids of the new table the legacy mapping does not produce.
    pub missing_in_legacy: Listed<i64>,
    /// Rows on both sides that differ.
    pub differing: Listed<RowDiff>,
    /// Ids the legacy mapping produces more than once.
    pub duplicate_legacy_ids: Listed<i64>,
    /// Rows the legacy mapping produces with a `NULL` id: they match no
    /// new row, so they cannot be compared (fix the mapping).
    #[serde(default)]
    pub legacy_null_ids: u64,
    /// Rows of the new table with a `NULL` id (possible only when the id
    /// column is not the primary key).
    #[serde(default)]
    pub new_null_ids: u64,
    /// Accounts whose full totals were compared: those whose rows in the
    /// differing ranges do not tally (0 on clean data, when the mapping lacks
    /// the account or amount column, or totals are off).
    pub accounts_compared: u64,
    /// Accounts whose totals differ.
    pub account_totals: Listed<AccountTotalDiff>,
    /// How much work the descent did.
    pub stats: DiffStats,
}

impl ComparisonReport {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.missing_in_new.is_empty()
            && self.missing_in_legacy.is_empty()
            && self.differing.is_empty()
            && self.duplicate_legacy_ids.is_empty()
            && self.legacy_null_ids == 0
            && self.new_null_ids == 0
            && self.account_totals.is_empty()
    }
}

/// The result of [`verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The table verified.
    pub table: String,
    /// Integrity, if checked.
    pub integrity: Option<IntegrityReport>,
    /// The comparison with the legacy store, if run.
    pub comparison: Option<ComparisonReport>,
    /// Wall time, in milliseconds.
    pub elapsed_ms: u64,
}

impl VerifyReport {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.integrity.as_ref().is_none_or(IntegrityReport::is_clean)
            && self.comparison.as_ref().is_none_or(ComparisonReport::is_clean)
    }
}

/// Verifies the ledger table at `new_url`: integrity, then (when `legacy`
/// is given and [`VerifyOptions::compare`] is on) the comparison, both at
/// once.
pub async fn verify(
    new_url: &str,
    schema: &LedgerSchema,
    legacy: Option<&LegacySource>,
    options: &VerifyOptions,
) -> Result<VerifyReport, LedgerError> {
    let started = Instant::now();
    let integrity = async {
        if options.integrity {
            check_integrity(new_url, schema, options.max_listed)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    };
    let comparison = async {
        match legacy {
            Some(legacy) if options.compare => {
                compare(new_url, schema, legacy, &options.diff, options.max_listed)
                    .await
                    .map(Some)
            }
            _ => Ok(None),
        }
    };
    let (integrity, comparison) = tokio::join!(integrity, comparison);
    Ok(VerifyReport {
        table: schema.table_name(),
        integrity: integrity?,
        comparison: comparison?,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

fn count(total: i64) -> u64 {
    total.unsigned_abs()
}

fn parse_sum(side: &'static str, step: &str, text: &str) -> Result<i128, LedgerError> {
    text.parse().map_err(|_| LedgerError::Value {
        side,
        step: step.to_owned(),
        reason: format!("{text:?} is not an integer of at most 128 bits"),
    })
}

/// Checks the integrity of the ledger table at `url`, listing at most
/// `max_listed` items of each kind.
pub async fn check_integrity(
    url: &str,
    schema: &LedgerSchema,
    max_listed: usize,
) -> Result<IntegrityReport, LedgerError> {
    let first = Conn::open("new", url).await?;
    first.check_schema(schema).await?;
    let limit = i64::try_from(max_listed).unwrap_or(i64::MAX);
    let t = schema.table_sql();
    let id = quote_ident(&schema.id);
    let account = quote_ident(&schema.account);
    let tx = quote_ident(&schema.tx_id);
    let amount = quote_ident(&schema.amount);
    let currency = quote_ident(&schema.currency);
    let balance = quote_ident(&schema.balance_after);
    let prev = quote_ident(&schema.prev_id);

    // Links and balances in one window pass over each account in id order;
    // the first `limit` offenders of each kind, and how many there are.
    let chain_sql = format!(
        "SELECT id, account, prev_id, expected_prev, balance, running::text, link_bad, balance_bad, \
                link_total, balance_total FROM ( \
           SELECT *, sum(link_bad::int) OVER (ORDER BY id) AS link_rank, \
                  sum(balance_bad::int) OVER (ORDER BY id) AS balance_rank, \
                  (count(*) FILTER (WHERE link_bad) OVER ())::int8 AS link_total, \
                  (count(*) FILTER (WHERE balance_bad) OVER ())::int8 AS balance_total FROM ( \
             SELECT *, prev_id IS DISTINCT FROM expected_prev AS link_bad, \
                    balance IS DISTINCT FROM running AS balance_bad FROM ( \
               SELECT {id}::int8 AS id, {account}::text AS account, {prev}::int8 AS prev_id, \
                      {balance}::int8 AS balance, (lag({id}) OVER a)::int8 AS expected_prev, \
                      sum({amount}) OVER a AS running \
               FROM {t} WINDOW a AS (PARTITION BY {account} ORDER BY {id} \
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) s) f \
             WHERE link_bad OR balance_bad) r \
         WHERE (link_bad AND link_rank <= $1) OR (balance_bad AND balance_rank <= $1) ORDER BY id"
    );
    let forks_sql = format!(
        "SELECT {prev}::int8, array_agg({id}::int8 ORDER BY {id}), count(*) OVER ()::int8 FROM {t} \
         WHERE {prev} IS NOT NULL GROUP BY {prev} HAVING count(*) > 1 ORDER BY 1 LIMIT $1"
    );
    // Every (transaction, currency) sum, the unbalanced ones first; their
    // entries are read afterwards, for the few listed only. A `NULL` amount
    // adds nothing (as in the running balances), so a transaction whose
    // amounts are all `NULL` sums to 0 instead of to `NULL`.
    let tx_sql = format!(
        "SELECT tx, ccy, total::text, (count(*) FILTER (WHERE total <> 0) OVER ())::int8, \
                (count(*) OVER ())::int8 FROM ( \
           SELECT {tx}::text AS tx, {currency}::text AS ccy, coalesce(sum({amount}), 0) AS total FROM {t} GROUP BY 1, 2) g \
         ORDER BY total = 0, 1, 2 LIMIT $1"
    );
    let totals_sql = format!(
        "SELECT count(*)::int8, (SELECT count(*) FROM (SELECT {account} FROM {t} GROUP BY 1) a)::int8, \
                (count(*) FILTER (WHERE {id} IS NULL))::int8, \
                (count(*) FILTER (WHERE {account} IS NULL))::int8 FROM {t}"
    );

    let run = |sql: String, step: &'static str| async move {
        let conn = Conn::open("new", url).await?;
        let rows = conn.query(step, &sql, &[&limit]).await?;
        Ok::<_, LedgerError>((conn, rows))
    };
    let totals = async { first.query("counting entries", &totals_sql, &[]).await };
    let (chain, forks, txs, totals) = tokio::join!(
        run(chain_sql, "checking links and cumulative balances"),
        run(forks_sql, "checking for forks"),
        run(tx_sql, "checking that transactions sum to zero"),
        totals,
    );
    let mut report = IntegrityReport::default();
    if let Some(row) = totals?.first() {
        report.entries = count(row.get(0));
        report.accounts = count(row.get(1));
        // An entry without an id has no place in its account's chain (and
        // the offender lists name entries by id), nor has one without an
        // account: the chains are per account, and repair, which recomputes
        // them per account, leaves such entries alone, so reporting them as
        // broken links would ask for a repair that never comes. Refuse
        // either, naming the count.
        for (nulls, column, advice) in [
            (
                count(row.get(2)),
                &schema.id,
                "every entry needs an id (make the id column NOT NULL, ideally the primary key)",
            ),
            (
                count(row.get(3)),
                &schema.account,
                "every entry belongs to an account's chain (give each one its account, and make the \
                 column NOT NULL)",
            ),
        ] {
            if nulls > 0 {
                return Err(LedgerError::Value {
                    side: "new",
                    step: "counting entries".to_owned(),
                    reason: format!("{nulls} entries have a NULL {column:?}; {advice}"),
                });
            }
        }
    }
    for row in chain?.1 {
        let (link_bad, balance_bad): (bool, bool) = (row.get(6), row.get(7));
        let (id, account): (i64, Option<String>) = (row.get(0), row.get(1));
        report.broken_links.total = count(row.get(8));
        report.balance_mismatches.total = count(row.get(9));
        if link_bad && report.broken_links.items.len() < max_listed {
            report.broken_links.items.push(BrokenLink {
                id,
                account: account.clone(),
                prev_id: row.get(2),
                expected_prev_id: row.get(3),
            });
        }
        if balance_bad && report.balance_mismatches.items.len() < max_listed {
            let running: Option<String> = row.get(5);
            report.balance_mismatches.items.push(BalanceMismatch {
                id,
                account,
                balance_after: row.get(4),
                expected: parse_sum(
                    "new",
                    "checking the cumulative balances",
                    running.as_deref().unwrap_or("0"),
                )?,
            });
        }
    }
    for row in forks?.1 {
        report.forks.total = count(row.get(2));
        report.forks.items.push(Fork {
            prev_id: row.get(0),
            ids: row.get(1),
        });
    }
    let (tx_conn, tx_rows) = txs?;
    let mut unbalanced = Vec::new();
    for row in tx_rows {
        report.transactions = count(row.get(4));
        report.unbalanced_transactions.total = count(row.get(3));
        let sum: String = row.get(2);
        let sum = parse_sum("new", "checking that transactions sum to zero", &sum)?;
        if sum != 0 {
            let (tx, ccy): (Option<String>, Option<String>) = (row.get(0), row.get(1));
            unbalanced.push((tx, ccy, sum));
        }
    }
    if !unbalanced.is_empty() {
        let named: Vec<&str> = unbalanced.iter().filter_map(|(t, _, _)| t.as_deref()).collect();
        let null = unbalanced.iter().any(|(t, _, _)| t.is_none());
        let sql = format!(
            "SELECT {tx}::text, {currency}::text, array_agg({id}::int8 ORDER BY {id}) FROM {t} \
             WHERE {tx}::text = ANY($1::text[]) OR ($2 AND {tx} IS NULL) GROUP BY 1, 2"
        );
        let rows = tx_conn
            .query("reading unbalanced transactions' entries", &sql, &[&named, &null])
            .await?;
        let ids: std::collections::HashMap<(Option<String>, Option<String>), Vec<i64>> =
            rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
        for (tx_id, currency, sum) in unbalanced {
            let entries = ids
                .get(&(tx_id.clone(), currency.clone()))
                .cloned()
                .unwrap_or_default();
            report.unbalanced_transactions.items.push(UnbalancedTransaction {
                tx_id,
                currency,
                sum,
                ids: entries,
            });
        }
    }
    Ok(report)
}

/// How many items of each kind the human-readable report shows (the JSON
/// form has every listed item).
const SHOWN: usize = 20;

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "NULL".to_owned(), T::to_string)
}

fn more<T>(f: &mut fmt::Formatter<'_>, list: &Listed<T>) -> fmt::Result {
    let shown = list.items.len().min(SHOWN) as u64;
    if list.total > shown {
        writeln!(f, "    ... and {} more", list.total - shown)?;
    }
    Ok(())
}

fn ids(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for IntegrityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "integrity: {} entries, {} accounts, {} transactions: {}",
            self.entries,
            self.accounts,
            self.transactions,
            if self.is_clean() { "ok" } else { "PROBLEMS" }
        )?;
        if !self.broken_links.is_empty() {
            writeln!(f, "  broken links ({}):", self.broken_links.total)?;
            for l in self.broken_links.items.iter().take(SHOWN) {
                writeln!(
                    f,
                    "    entry {} of {}: prev_id {} but the previous entry is {}",
                    l.id,
                    opt(&l.account),
                    opt(&l.prev_id),
                    opt(&l.expected_prev_id)
                )?;
            }
            more(f, &self.broken_links)?;
        }
        if !self.forks.is_empty() {
            writeln!(f, "  forks ({}):", self.forks.total)?;
            for x in self.forks.items.iter().take(SHOWN) {
                writeln!(f, "    entries {} all follow entry {}", ids(&x.ids), x.prev_id)?;
            }
            more(f, &self.forks)?;
        }
        if !self.balance_mismatches.is_empty() {
            writeln!(
                f,
                "  wrong cumulative balances ({}):",
                self.balance_mismatches.total
            )?;
            for b in self.balance_mismatches.items.iter().take(SHOWN) {
                writeln!(
                    f,
                    "    entry {} of {}: balance_after {} but the running sum is {}",
                    b.id,
                    opt(&b.account),
                    opt(&b.balance_after),
                    b.expected
                )?;
            }
            more(f, &self.balance_mismatches)?;
        }
        if !self.unbalanced_transactions.is_empty() {
            writeln!(
                f,
                "  unbalanced transactions ({}):",
                self.unbalanced_transactions.total
            )?;
            for t in self.unbalanced_transactions.items.iter().take(SHOWN) {
                writeln!(
                    f,
                    "    transaction {} sums to {} {} (entries {})",
                    opt(&t.tx_id),
                    t.sum,
                    opt(&t.currency),
                    ids(&t.ids)
                )?;
            }
            more(f, &self.unbalanced_transactions)?;
        }
        Ok(())
    }
}

impl fmt::Display for ComparisonReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "comparison: {} legacy rows, {} new rows, columns {}: {}",
            self.legacy_rows,
            self.new_rows,
            self.columns.join(", "),
            if self.is_clean() { "ok" } else { "PROBLEMS" }
        )?;
        writeln!(
            f,
            "  {} checksum levels, {} ranges compared, {} differing, {} fetched ({} legacy + {} new rows){}",
            s.levels,
            s.ranges_checked,
            s.ranges_differing,
            s.ranges_fetched,
            s.rows_fetched_legacy,
            s.rows_fetched_new,
            if s.full { ", full compare" } else { "" }
        )?;
        for (what, list) in [
            ("missing in the new store", &self.missing_in_new),
            ("missing in the legacy store", &self.missing_in_legacy),
            ("produced twice by the legacy mapping", &self.duplicate_legacy_ids),
        ] {
            if !list.is_empty() {
                writeln!(
                    f,
                    "  {what} ({}): {}",
                    list.total,
                    ids(&list.items[..list.items.len().min(SHOWN)])
                )?;
                more(f, list)?;
            }
        }
        if self.legacy_null_ids > 0 || self.new_null_ids > 0 {
            writeln!(
                f,
                "  rows with a NULL id (not compared): {} legacy, {} new",
                self.legacy_null_ids, self.new_null_ids
            )?;
        }
        if !self.differing.is_empty() {
            writeln!(f, "  differing rows ({}):", self.differing.total)?;
            for d in self.differing.items.iter().take(SHOWN) {
                let fields: Vec<String> = d
                    .fields
                    .iter()
                    .map(|x| format!("{}: legacy {} new {}", x.column, opt(&x.legacy), opt(&x.new)))
                    .collect();
                writeln!(f, "    id {}: {}", d.id, fields.join("; "))?;
            }
            more(f, &self.differing)?;
        }
        if !self.account_totals.is_empty() {
            writeln!(
                f,
                "  accounts with different totals ({} of {}):",
                self.account_totals.total, self.accounts_compared
            )?;
            for a in self.account_totals.items.iter().take(SHOWN) {
                writeln!(
                    f,
                    "    {}: legacy {} entries summing to {}, new {} entries summing to {}",
                    opt(&a.account),
                    a.legacy_count,
                    a.legacy_sum,
                    a.new_count,
                    a.new_sum
                )?;
            }
            more(f, &self.account_totals)?;
        }
        Ok(())
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "verification of {}: {} ({} ms)",
            self.table,
            if self.is_clean() {
                "clean"
            } else {
                "PROBLEMS FOUND"
            },
            self.elapsed_ms
        )?;
        if let Some(i) = &self.integrity {
            write!(f, "{i}")?;
        }
        match &self.comparison {
            Some(c) => write!(f, "{c}")?,
            // Said, so that a configuration without `legacy` (or with it
            // misspelt) is not read as a clean comparison.
            None => writeln!(
                f,
                "comparison with the legacy store: not run (no legacy store given)"
            )?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_render_and_round_trip() {
        let report = VerifyReport {
            table: "ledger_entries".into(),
            integrity: Some(IntegrityReport {
                entries: 3,
                accounts: 1,
                transactions: 2,
                forks: Listed {
                    total: 2,
                    items: vec![Fork {
                        prev_id: 1,
                        ids: vec![2, 3],
                    }],
                },
                ..IntegrityReport::default()
            }),
            comparison: Some(ComparisonReport {
                differing: Listed {
                    total: 1,
                    items: vec![RowDiff {
                        id: 7,
                        fields: vec![FieldDiff {
                            column: "amount_minor".into(),
                            legacy: Some("100".into()),
                            new: Some("-100".into()),
                        }],
                    }],
                },
                ..ComparisonReport::default()
            }),
            elapsed_ms: 5,
        };
        assert!(!report.is_clean());
        let text = report.to_string();
        assert!(text.contains("entries 2, 3 all follow entry 1"), "{text}");
        assert!(text.contains("... and 1 more"), "{text}");
        assert!(text.contains("id 7: amount_minor: legacy 100 new -100"), "{text}");
        let json = serde_json::to_string(&report).unwrap();
        let back: VerifyReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert!(VerifyReport::default().is_clean());
        // Without a comparison, the report says it did not compare.
        let integrity_only = VerifyReport {
            comparison: None,
            ..report
        };
        let text = integrity_only.to_string();
        assert!(
            text.contains("comparison with the legacy store: not run"),
            "{text}"
        );
    }
}
