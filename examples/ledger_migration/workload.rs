//! The live workload: one writer posting, amending and cancelling
//! transactions through the [`DualRouter`] (legacy first, then the new
//! ledger), and reading transactions back through it, for the whole
//! migration. Every write's latency is recorded with its time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use overseer_core::migration::{DualRouter, Phase};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::Error;

/// The final state of a transaction the workload wrote, as the legacy store
/// has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxState {
    /// The debited account.
    pub from: String,
    /// The credited account.
    pub to: String,
    /// The amount in minor units (positive).
    pub minor: i64,
    /// Cancelled (deleted).
    pub deleted: bool,
    /// Written to both stores (inserted in the shadow phase or later);
    /// otherwise it reaches the new ledger through the backfill.
    pub dual: bool,
}

/// One write's latency.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When the write finished.
    pub at: Instant,
    /// How long it took, in milliseconds.
    pub ms: f64,
}

/// What the writer did.
#[derive(Debug, Default)]
pub struct WorkloadLog {
    /// Every transaction it wrote, by id, in its final state.
    pub txs: BTreeMap<i64, TxState>,
    /// Every write's latency, in order.
    pub samples: Vec<Sample>,
    /// Reads made through the router.
    pub reads: u64,
}

/// The workload's settings.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// The first transaction id the workload uses (above the seeded ones).
    pub first_id: i64,
    /// How many accounts exist (`acct-000000` ...).
    pub accounts: u64,
    /// The pause between two operations.
    pub interval: Duration,
    /// The seed of its choices.
    pub seed: u64,
    /// Legacy transaction ids below this may be read in the prefer-new phase
    /// (the seeded history).
    pub seeded: i64,
}

/// A running writer.
pub struct Workload {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    task: JoinHandle<Result<WorkloadLog, Error>>,
}

impl Workload {
    /// Starts the writer on its own two connections.
    pub fn start(router: DualRouter, legacy: Client, new: Client, spec: WorkloadSpec) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            router,
            Arc::new(legacy),
            Arc::new(new),
            spec,
            stop.clone(),
            writes.clone(),
        ));
        Workload { stop, writes, task }
    }

    /// Writes committed so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Fails when the writer already stopped with an error (a legacy write
    /// failed: that is downtime).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the writer and returns what it did.
    pub async fn finish(self) -> Result<WorkloadLog, Error> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.map_err(|e| Error::Workload {
            reason: format!("the writer task failed: {e}"),
        })?
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The account name of index `i`, as the seed and the workload spell it.
pub fn account(i: u64) -> String {
    format!("acct-{i:06}")
}

/// `minor` cents as legacy decimal text: `1234` -> `"12.34"`.
pub fn decimal(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

fn legacy_err(e: tokio_postgres::Error) -> String {
    format!("legacy: {e}")
}

fn new_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("new: {} ({})", db.message(), db.code().code()),
        None => format!("new: {e}"),
    }
}

/// A failed new-side write: logged (the router records it for repair and
/// never fails the caller).
fn new_write_err(e: tokio_postgres::Error) -> String {
    let message = new_err(e);
    eprintln!("ledger_migration: new-side write failed: {message}");
    message
}

/// Runs a new-side statement again when it was chosen as a deadlock victim
/// or could not be serialized (a repair batch locks the same accounts' last
/// entries): the statement had no effect, so running it again is safe.
async fn retrying<T, F, Fut>(mut f: F) -> Result<T, tokio_postgres::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(e)
                if attempt < 5
                    && e.code()
                        .is_some_and(|c| matches!(c.code(), "40P01" | "40001" | "55P03")) =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(2 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// A transaction as both stores answer it (the comparison's shape): the
/// legacy row mapped, or the new ledger's two entries folded back.
fn tx_json(id: i64, from: &str, to: &str, debit: i64, credit: i64, currency: &str) -> Value {
    json!({"id": id, "from": from, "to": to, "debit_minor": debit, "credit_minor": credit, "currency": currency})
}

const LEGACY_READ: &str = "SELECT id, from_account, to_account, (amount::numeric * 100)::int8, currency \
                           FROM transactions WHERE id = $1";
const NEW_READ: &str = "SELECT id, account, amount_minor, currency FROM ledger_entries \
                        WHERE id = $1::int8 * 2 OR id = $1::int8 * 2 + 1 ORDER BY id";

fn legacy_row_json(row: &tokio_postgres::Row) -> Value {
    let minor: i64 = row.get(3);
    tx_json(row.get(0), row.get(1), row.get(2), minor, minor, row.get(4))
}

/// Folds the new ledger's entries of transaction `tx` back into the
/// comparison's shape; `null` when it has none, the raw entries when they
/// are not one debit and one credit.
fn new_rows_json(tx: i64, rows: &[tokio_postgres::Row]) -> Value {
    let entries: Vec<(i64, String, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    match entries.as_slice() {
        [] => Value::Null,
        [(d, from, debit, currency), (c, to, credit, _)] if *d == tx * 2 && *c == tx * 2 + 1 => {
            tx_json(tx, from, to, -debit, *credit, currency)
        }
        other => {
            json!({"id": tx, "entries": other.iter().map(|(id, a, m, c)| json!([id, a, m, c])).collect::<Vec<_>>()})
        }
    }
}

/// The new ledger's side of posting transaction `$1`: two entries, each
/// chained to its account's last entry (locked, so a concurrent repair batch
/// is waited for) with its cumulative balance.
const NEW_INSERT: &str = "\
WITH f AS (SELECT id, balance_after FROM ledger_entries WHERE account = $2 ORDER BY id DESC LIMIT 1 FOR UPDATE),
     t AS (SELECT id, balance_after FROM ledger_entries WHERE account = $3 ORDER BY id DESC LIMIT 1 FOR UPDATE)
INSERT INTO ledger_entries (id, tx_id, account, amount_minor, currency, balance_after, prev_id, created_at)
SELECT $1::int8 * 2, $1::int8::text, $2, -$4::int8, $5, coalesce((SELECT balance_after FROM f), 0) - $4::int8,
       (SELECT id FROM f), $6::text::timestamptz
UNION ALL
SELECT $1::int8 * 2 + 1, $1::int8::text, $3, $4::int8, $5, coalesce((SELECT balance_after FROM t), 0) + $4::int8,
       (SELECT id FROM t), $6::text::timestamptz
RETURNING id, account, amount_minor, currency";

/// Amending the amount of the writer's latest transaction: its entries are
/// the last of their accounts, so adjusting their balances keeps the chains
/// right.
const NEW_AMEND: &str = "\
UPDATE ledger_entries
   SET amount_minor = CASE WHEN id % 2 = 0 THEN -$2::int8 ELSE $2::int8 END,
       balance_after = balance_after - amount_minor + CASE WHEN id % 2 = 0 THEN -$2::int8 ELSE $2::int8 END
 WHERE id = $1::int8 * 2 OR id = $1::int8 * 2 + 1
RETURNING id, account, amount_minor, currency";

async fn run(
    router: DualRouter,
    legacy: Arc<Client>,
    new: Arc<Client>,
    spec: WorkloadSpec,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) -> Result<WorkloadLog, Error> {
    let mut log = WorkloadLog::default();
    let mut rng = Rng(spec.seed.max(1) ^ 0x9e37_79b9_7f4a_7c15);
    let mut next_id = spec.first_id;
    // The latest transaction, when it is the writer's own, dual-written
    // and not yet amended or cancelled.
    let mut latest: Option<i64> = None;
    // Dual-written transactions still present in both stores (what shadow
    // reads pick from before the backfill).
    let mut readable: Vec<i64> = Vec::new();
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let phase = router.phase().get();
        let dual = phase != Phase::LegacyOnly;
        let roll = rng.below(100);
        let started = Instant::now();
        match latest {
            Some(tx) if dual && roll < 4 => {
                let minor = 1 + rng.below(500_000) as i64;
                let minor = if minor % 100 == 0 { minor + 1 } else { minor };
                amend(&router, &legacy, &new, tx, minor).await?;
                if let Some(state) = log.txs.get_mut(&tx) {
                    state.minor = minor;
                }
                latest = None;
            }
            Some(tx) if dual && roll < 7 => {
                cancel(&router, &legacy, &new, tx).await?;
                if let Some(state) = log.txs.get_mut(&tx) {
                    state.deleted = true;
                }
                readable.retain(|t| *t != tx);
                latest = None;
            }
            _ => {
                let tx = next_id;
                next_id += 1;
                let from_i = rng.below(spec.accounts);
                let to_i = (from_i + 1 + rng.below(spec.accounts - 1)) % spec.accounts;
                let (from, to) = (account(from_i), account(to_i));
                // Never a whole amount, so a rounding fault always shows.
                let minor = 1 + rng.below(500_000) as i64;
                let minor = if minor % 100 == 0 { minor + 1 } else { minor };
                post(&router, &legacy, &new, tx, &from, &to, minor).await?;
                log.txs.insert(
                    tx,
                    TxState {
                        from,
                        to,
                        minor,
                        deleted: false,
                        dual,
                    },
                );
                if dual {
                    latest = Some(tx);
                    readable.push(tx);
                } else {
                    latest = None;
                }
            }
        }
        log.samples.push(Sample {
            at: Instant::now(),
            ms: started.elapsed().as_secs_f64() * 1e3,
        });
        writes.fetch_add(1, Ordering::Relaxed);

        // Every third operation, a read through the router: before the
        // prefer-new phase, of a dual-written transaction (the history is
        // not in the new ledger yet); then of any transaction.
        if n % 3 == 2 && dual {
            let tx = if phase == Phase::PreferNew && rng.below(2) == 0 {
                1 + rng.below(spec.seeded.max(1) as u64) as i64
            } else if let Some(&tx) = readable.get(rng.below(readable.len() as u64) as usize) {
                tx
            } else {
                0
            };
            if tx > 0 {
                read(&router, &legacy, &new, tx).await?;
                log.reads += 1;
            }
        }
        if !spec.interval.is_zero() {
            tokio::time::sleep(spec.interval).await;
        }
    }
    Ok(log)
}

async fn post(
    router: &DualRouter,
    legacy: &Arc<Client>,
    new: &Arc<Client>,
    tx: i64,
    from: &str,
    to: &str,
    minor: i64,
) -> Result<(), Error> {
    let created_at = std::sync::Mutex::new(String::new());
    let amount = decimal(minor);
    router
        .write(
            "post_transaction",
            &tx.to_string(),
            || async {
                let row = legacy
                    .query_one(
                        "INSERT INTO transactions (id, from_account, to_account, amount, currency, created_at) \
                         VALUES ($1, $2, $3, $4, 'USD', now()) \
                         RETURNING id, from_account, to_account, (amount::numeric * 100)::int8, currency, created_at::text",
                        &[&tx, &from, &to, &amount],
                    )
                    .await
                    .map_err(legacy_err)?;
                if let Ok(mut at) = created_at.lock() {
                    *at = row.get(5);
                }
                Ok(legacy_row_json(&row))
            },
            || async {
                let at = created_at.lock().map(|a| a.clone()).unwrap_or_default();
                let params: [&(dyn ToSql + Sync); 6] = [&tx, &from, &to, &minor, &"USD", &at];
                let rows = retrying(|| new.query(NEW_INSERT, &params))
                    .await
                    .map_err(new_write_err)?;
                Ok(new_rows_json(tx, &rows))
            },
        )
        .await
        .map(drop)
        .map_err(|reason: String| Error::Workload {
            reason: format!("posting transaction {tx}: {reason}"),
        })
}

async fn amend(
    router: &DualRouter,
    legacy: &Arc<Client>,
    new: &Arc<Client>,
    tx: i64,
    minor: i64,
) -> Result<(), Error> {
    let amount = decimal(minor);
    router
        .write(
            "amend_transaction",
            &tx.to_string(),
            || async {
                let row = legacy
                    .query_one(
                        "UPDATE transactions SET amount = $2 WHERE id = $1 \
                         RETURNING id, from_account, to_account, (amount::numeric * 100)::int8, currency",
                        &[&tx, &amount],
                    )
                    .await
                    .map_err(legacy_err)?;
                Ok(legacy_row_json(&row))
            },
            || async {
                let params: [&(dyn ToSql + Sync); 2] = [&tx, &minor];
                let mut rows = retrying(|| new.query(NEW_AMEND, &params))
                    .await
                    .map_err(new_write_err)?;
                rows.sort_by_key(|r| r.get::<_, i64>(0));
                Ok(new_rows_json(tx, &rows))
            },
        )
        .await
        .map(drop)
        .map_err(|reason: String| Error::Workload {
            reason: format!("amending transaction {tx}: {reason}"),
        })
}

async fn cancel(router: &DualRouter, legacy: &Arc<Client>, new: &Arc<Client>, tx: i64) -> Result<(), Error> {
    router
        .write(
            "cancel_transaction",
            &tx.to_string(),
            || async {
                let n = legacy
                    .execute("DELETE FROM transactions WHERE id = $1", &[&tx])
                    .await
                    .map_err(legacy_err)?;
                Ok(json!({"id": tx, "deleted_entries": n * 2}))
            },
            || async {
                let params: [&(dyn ToSql + Sync); 1] = [&tx];
                let n = retrying(|| {
                    new.execute(
                        "DELETE FROM ledger_entries WHERE id = $1::int8 * 2 OR id = $1::int8 * 2 + 1",
                        &params,
                    )
                })
                .await
                .map_err(new_write_err)?;
                Ok(json!({"id": tx, "deleted_entries": n}))
            },
        )
        .await
        .map(drop)
        .map_err(|reason: String| Error::Workload {
            reason: format!("cancelling transaction {tx}: {reason}"),
        })
}

async fn read(router: &DualRouter, legacy: &Arc<Client>, new: &Arc<Client>, tx: i64) -> Result<(), Error> {
    let (legacy, new) = (legacy.clone(), new.clone());
    router
        .read(
            "get_transaction",
            &tx.to_string(),
            move || async move {
                let row = legacy.query_opt(LEGACY_READ, &[&tx]).await.map_err(legacy_err)?;
                Ok(row.as_ref().map_or(Value::Null, legacy_row_json))
            },
            move || async move {
                let rows = new.query(NEW_READ, &[&tx]).await.map_err(new_err)?;
                Ok(new_rows_json(tx, &rows))
            },
        )
        .await
        .map(drop)
        .map_err(|reason: String| Error::Workload {
            reason: format!("reading transaction {tx}: {reason}"),
        })
}
