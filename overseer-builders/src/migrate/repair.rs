//! Repair: recompute every account's cumulative balances (`balance_after`,
//! the running sum of `amount_minor` in id order) and the links between its
//! sequential entries (`prev_id`, the previous entry's id), with set-based
//! SQL, in short batches.
//!
//! The accounts are cut into consecutive ranges of about
//! [`RepairOptions::batch_rows`] entries. Each batch is one statement in its
//! own transaction:
//!
//! ```sql
//! UPDATE ledger_entries t SET balance_after = w.balance, prev_id = w.prev
//! FROM (SELECT id, sum(amount_minor) OVER a AS balance, lag(id) OVER a AS prev
//!       FROM ledger_entries WHERE account BETWEEN $1 AND $2
//!       WINDOW a AS (PARTITION BY account ORDER BY id)) w
//! WHERE t.id = w.id
//!   AND (t.balance_after IS DISTINCT FROM w.balance OR t.prev_id IS DISTINCT FROM w.prev)
//! ```
//!
//! so it locks only the rows it changes, only until the batch commits, and
//! rows already right are not written at all: a second run changes nothing.
//! A `lock_timeout` bounds how long a batch waits behind live writes.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ledger::{Conn, LedgerError, LedgerSchema, quote_ident};

/// How the repair batches its work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepairOptions {
    /// About how many entries one batch (one transaction) covers; whole
    /// accounts are never split (default 50 000).
    pub batch_rows: u64,
    /// Pause between batches, in milliseconds, to leave room for live
    /// writes (default 0).
    pub pause_ms: u64,
    /// How long a batch may wait for a row lock before failing, in
    /// milliseconds (default 5 000; 0 waits forever).
    pub lock_timeout_ms: u64,
}

impl Default for RepairOptions {
    fn default() -> Self {
        Self {
            batch_rows: 50_000,
            pause_ms: 0,
            lock_timeout_ms: 5_000,
        }
    }
}

/// What a repair did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// The table repaired.
    pub table: String,
    /// Accounts covered.
    pub accounts: u64,
    /// Entries covered.
    pub rows_scanned: u64,
    /// Batches (transactions) run.
    pub batches: u64,
    /// Entries written (balance, link or both changed).
    pub rows_changed: u64,
    /// Entries whose `balance_after` changed.
    pub balances_changed: u64,
    /// Entries whose `prev_id` changed.
    pub links_changed: u64,
    /// Wall time, in milliseconds.
    pub elapsed_ms: u64,
}

impl std::fmt::Display for RepairReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "repaired {}: {} entries of {} accounts in {} batches; {} rows changed ({} balances, {} links) in {} ms",
            self.table,
            self.rows_scanned,
            self.accounts,
            self.batches,
            self.rows_changed,
            self.balances_changed,
            self.links_changed,
            self.elapsed_ms
        )
    }
}

/// Repairs the ledger table of the database at `url` (see the module
/// documentation).
pub async fn repair(
    url: &str,
    schema: &LedgerSchema,
    options: &RepairOptions,
) -> Result<RepairReport, LedgerError> {
    let started = Instant::now();
    let conn = Conn::open("new", url).await?;
    let types = conn.check_schema(schema).await?;
    let account_type = types
        .get(&schema.account)
        .cloned()
        .unwrap_or_else(|| "text".to_owned());
    let table = schema.table_sql();
    let id = quote_ident(&schema.id);
    let account = quote_ident(&schema.account);
    let amount = quote_ident(&schema.amount);
    let balance = quote_ident(&schema.balance_after);
    let prev = quote_ident(&schema.prev_id);
    let balance_type = types
        .get(&schema.balance_after)
        .cloned()
        .unwrap_or_else(|| "bigint".to_owned());
    let prev_type = types
        .get(&schema.prev_id)
        .cloned()
        .unwrap_or_else(|| "bigint".to_owned());

    conn.batch(
        "setting the lock timeout",
        &format!("SET lock_timeout = {}", options.lock_timeout_ms),
    )
    .await?;

    // The accounts and their sizes, in account order (one scan).
    let rows = conn
        .query(
            "listing the accounts",
            &format!(
                "SELECT {account}::text, count(*)::int8 FROM {table} WHERE {account} IS NOT NULL GROUP BY {account} ORDER BY {account}"
            ),
            &[],
        )
        .await?;
    let mut report = RepairReport {
        table: schema.table_name(),
        ..RepairReport::default()
    };
    let mut batches: Vec<(String, String)> = Vec::new();
    let mut first: Option<String> = None;
    let mut in_batch = 0u64;
    for row in &rows {
        let name: String = row.get(0);
        let count: i64 = row.get(1);
        report.accounts += 1;
        report.rows_scanned += count.unsigned_abs();
        if first.is_none() {
            first = Some(name.clone());
        }
        in_batch += count.unsigned_abs();
        if in_batch >= options.batch_rows.max(1) {
            batches.push((first.take().unwrap_or_else(|| name.clone()), name));
            in_batch = 0;
        }
    }
    if let (Some(lo), Some(last)) = (first, rows.last()) {
        batches.push((lo, last.get(0)));
    }

    let sql = format!(
        "WITH changed AS ( \
           UPDATE {table} t SET {balance} = w.new_balance, {prev} = w.new_prev \
           FROM (SELECT {id} AS wid, {balance} AS old_balance, {prev} AS old_prev, \
                   (sum({amount}) OVER a)::{balance_type} AS new_balance, \
                   (lag({id}) OVER a)::{prev_type} AS new_prev \
                 FROM {table} \
                 WHERE {account} >= ($1::text)::{account_type} AND {account} <= ($2::text)::{account_type} \
                 WINDOW a AS (PARTITION BY {account} ORDER BY {id})) w \
           WHERE t.{id} = w.wid \
             AND t.{account} >= ($1::text)::{account_type} AND t.{account} <= ($2::text)::{account_type} \
             AND (t.{balance} IS DISTINCT FROM w.new_balance OR t.{prev} IS DISTINCT FROM w.new_prev) \
           RETURNING w.old_balance IS DISTINCT FROM w.new_balance AS balance_changed, \
                     w.old_prev IS DISTINCT FROM w.new_prev AS link_changed) \
         SELECT count(*)::int8, (count(*) FILTER (WHERE balance_changed))::int8, \
                (count(*) FILTER (WHERE link_changed))::int8 FROM changed"
    );
    // Not a prepared statement: each batch is planned with its own account
    // range (range scans on an `(account, id)` index), never a generic plan.
    for (lo, hi) in &batches {
        let step = format!("repairing accounts {lo:?} to {hi:?}");
        let row = conn
            .client
            .query_one(sql.as_str(), &[lo, hi])
            .await
            .map_err(|e| conn.err(&step, e))?;
        let (changed, balances, links): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        report.batches += 1;
        report.rows_changed += changed.unsigned_abs();
        report.balances_changed += balances.unsigned_abs();
        report.links_changed += links.unsigned_abs();
        if options.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(options.pause_ms)).await;
        }
    }
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}
