//! Repair and verification of a migrated ledger against real Postgres
//! (`overseer_builders::migrate`): a legacy `transactions` table (one row
//! per transfer, amounts as text) mapped to two `ledger_entries` each.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use overseer_builders::migrate::ledger::{LedgerError, LedgerSchema};
use overseer_builders::migrate::repair::{RepairOptions, repair};
use overseer_builders::migrate::verify::{
    DiffOptions, LegacySource, VerifyOptions, VerifyReport, check_integrity, compare, verify,
};
use overseer_tests::{PgDatabase, pg_database};

/// The mapping: legacy transaction `t` becomes entries `2t` (debit of the
/// payer) and `2t + 1` (credit of the payee).
const MAPPING: &str = "SELECT id * 2 AS id, id::text AS tx_id, from_account AS account, \
       -(amount::numeric * 100)::bigint AS amount_minor, currency FROM transactions \
     UNION ALL \
     SELECT id * 2 + 1, id::text, to_account, (amount::numeric * 100)::bigint, currency FROM transactions";

/// `n` legacy transactions between 40 accounts, amounts as text.
async fn legacy(db: &PgDatabase, n: i64) {
    db.client()
        .batch_execute(&format!(
            "CREATE TABLE transactions (id bigint PRIMARY KEY, from_account text, to_account text, \
               amount text, currency text);
             INSERT INTO transactions SELECT g, 'acc-' || (g * 7 % 40), 'acc-' || ((g * 13 + 5) % 40), \
               ((g * 37 % 100000) / 100.0)::numeric(12, 2)::text, 'EUR' FROM generate_series(1, {n}) g;"
        ))
        .await
        .unwrap();
}

/// The new table, backfilled from the same data without balances or links.
async fn backfilled(db: &PgDatabase, n: i64) {
    legacy(db, n).await;
    db.client()
        .batch_execute(&format!(
            "CREATE TABLE ledger_entries (id bigint PRIMARY KEY, tx_id text NOT NULL, account text NOT NULL, \
               amount_minor bigint NOT NULL, currency text NOT NULL, balance_after bigint, prev_id bigint, \
               created_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX ON ledger_entries (account, id);
             INSERT INTO ledger_entries (id, tx_id, account, amount_minor, currency) {MAPPING};
             DROP TABLE transactions;
             ANALYZE ledger_entries;"
        ))
        .await
        .unwrap();
}

async fn setup(name: &str, n: i64) -> Option<(PgDatabase, PgDatabase, LegacySource)> {
    let old = pg_database(&format!("{name}_legacy")).await?;
    let new = pg_database(&format!("{name}_new")).await.unwrap();
    legacy(&old, n).await;
    backfilled(&new, n).await;
    let source = LegacySource {
        url: old.url().to_owned(),
        query: MAPPING.to_owned(),
    };
    Some((old, new, source))
}

async fn ids(db: &PgDatabase, sql: &str) -> Vec<i64> {
    db.client()
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(db: &PgDatabase, sql: &str) -> T {
    db.client().query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn repair_fixes_balances_and_links_and_a_second_run_changes_nothing() {
    let Some(db) = pg_database("repair").await else {
        return;
    };
    backfilled(&db, 3_000).await;
    let schema = LedgerSchema::default();
    let options = RepairOptions {
        batch_rows: 500,
        ..RepairOptions::default()
    };
    // The backfill left every balance and link empty.
    let first = repair(db.url(), &schema, &options).await.unwrap();
    assert_eq!(first.rows_scanned, 6_000);
    assert_eq!(first.accounts, 40);
    assert!(first.batches >= 10, "{first}");
    assert_eq!(first.rows_changed, 6_000);
    assert_eq!(first.balances_changed, 6_000);
    // Each account's first entry keeps its NULL link.
    assert_eq!(first.links_changed, 6_000 - 40);
    let integrity = check_integrity(db.url(), &schema, 100).await.unwrap();
    assert!(integrity.is_clean(), "{integrity}");
    assert_eq!(integrity.entries, 6_000);
    assert_eq!(integrity.transactions, 3_000);

    // Corrupt three balances and two links (one link set on an account's
    // first entry, one cleared), then repair again: exactly those five rows.
    db.client()
        .batch_execute(
            "UPDATE ledger_entries SET balance_after = balance_after + 1 WHERE id IN (100, 2001, 4999);
             UPDATE ledger_entries SET prev_id = NULL WHERE id = 3000;
             UPDATE ledger_entries SET prev_id = 2 WHERE id = (SELECT min(id) FROM ledger_entries WHERE account = 'acc-39');",
        )
        .await
        .unwrap();
    let broken = check_integrity(db.url(), &schema, 100).await.unwrap();
    assert_eq!(broken.balance_mismatches.total, 3, "{broken}");
    assert_eq!(broken.broken_links.total, 2, "{broken}");
    let second = repair(db.url(), &schema, &options).await.unwrap();
    assert_eq!(
        (second.rows_changed, second.balances_changed, second.links_changed),
        (5, 3, 2),
        "{second}"
    );
    assert!(check_integrity(db.url(), &schema, 100).await.unwrap().is_clean());
    let third = repair(db.url(), &schema, &options).await.unwrap();
    assert_eq!(third.rows_changed, 0, "{third}");
    assert_eq!(third.rows_scanned, 6_000);
}

#[tokio::test]
async fn repair_and_verification_follow_configured_names() {
    let Some(db) = pg_database("renamed").await else {
        return;
    };
    db.client()
        .batch_execute(
            "CREATE SCHEMA \"Led\"\"ger\";
             CREATE TABLE \"Led\"\"ger\".entries (entry_id bigint PRIMARY KEY, txn text, acct bigint, amt integer,
               ccy text, bal bigint, prev bigint, at timestamptz);
             INSERT INTO \"Led\"\"ger\".entries (entry_id, txn, acct, amt, ccy)
               SELECT g, (g / 2)::text, g % 7, CASE WHEN g % 2 = 0 THEN -g ELSE g - 1 END, 'EUR'
               FROM generate_series(2, 201) g;",
        )
        .await
        .unwrap();
    let schema = LedgerSchema {
        schema: Some("Led\"ger".into()),
        table: "entries".into(),
        id: "entry_id".into(),
        tx_id: "txn".into(),
        account: "acct".into(),
        amount: "amt".into(),
        currency: "ccy".into(),
        balance_after: "bal".into(),
        prev_id: "prev".into(),
        created_at: "at".into(),
    };
    let options = RepairOptions {
        batch_rows: 30,
        ..RepairOptions::default()
    };
    let report = repair(db.url(), &schema, &options).await.unwrap();
    assert_eq!(
        (report.rows_scanned, report.accounts, report.rows_changed),
        (200, 7, 200)
    );
    let integrity = check_integrity(db.url(), &schema, 10).await.unwrap();
    assert!(integrity.is_clean(), "{integrity}");
    assert_eq!(repair(db.url(), &schema, &options).await.unwrap().rows_changed, 0);
}

#[tokio::test]
async fn configuration_errors_name_the_problem() {
    let Some((_old, new, source)) = setup("config", 10).await else {
        return;
    };
    let schema = LedgerSchema {
        balance_after: "balance".into(),
        ..LedgerSchema::default()
    };
    let err = check_integrity(new.url(), &schema, 10).await.unwrap_err();
    assert!(matches!(err, LedgerError::Config { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("balance_after column \"balance\" does not exist"),
        "{err}"
    );

    let bad = LegacySource {
        query: "SELECT id AS entry, account, bogus FROM (SELECT 1 AS id, 'a' AS account, 2 AS bogus) x"
            .into(),
        ..source
    };
    let err = compare(
        new.url(),
        &LedgerSchema::default(),
        &bad,
        &DiffOptions::default(),
        10,
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no \"id\" column"), "{text}");
    assert!(
        text.contains("\"bogus\" is not a column of ledger_entries"),
        "{text}"
    );

    let missing = LedgerSchema {
        table: "nope".into(),
        ..LedgerSchema::default()
    };
    let err = repair(new.url(), &missing, &RepairOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("table nope does not exist"), "{err}");
}

/// Entries to corrupt: in distinct accounts and distinct transactions, each
/// with a predecessor and a successor in its account.
async fn victims(db: &PgDatabase, count: usize) -> Vec<(i64, String)> {
    let rows = db
        .client()
        .query(
            "SELECT id, account, tx_id FROM (
               SELECT id, account, tx_id, row_number() OVER (PARTITION BY account ORDER BY id) AS n,
                      count(*) OVER (PARTITION BY account) AS c FROM ledger_entries) s
             WHERE n = c / 2 ORDER BY account",
            &[],
        )
        .await
        .unwrap();
    let mut accounts = BTreeSet::new();
    let mut txs = BTreeSet::new();
    let mut out = Vec::new();
    for r in rows {
        let (id, account, tx): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
        // The other leg's account must stay clean too.
        let other: String = one(
            db,
            &format!("SELECT account FROM ledger_entries WHERE tx_id = '{tx}' AND id <> {id}"),
        )
        .await;
        if accounts.contains(&account) || accounts.contains(&other) || other == account || !txs.insert(tx) {
            continue;
        }
        accounts.insert(account.clone());
        accounts.insert(other);
        out.push((id, account));
        if out.len() == count {
            break;
        }
    }
    assert_eq!(out.len(), count, "not enough independent entries");
    out
}

/// A differing column: name, legacy value, new value.
type Field = (String, Option<String>, Option<String>);

fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[tokio::test]
async fn verification_finds_every_injected_fault_and_names_the_ids() {
    let Some((old, new, source)) = setup("faults", 2_000).await else {
        return;
    };
    let schema = LedgerSchema::default();
    repair(new.url(), &schema, &RepairOptions::default())
        .await
        .unwrap();
    let options = VerifyOptions {
        max_listed: 10_000,
        diff: DiffOptions {
            segment_rows: 500,
            fanout: 4,
            leaf_rows: 50,
            ..DiffOptions::default()
        },
        ..VerifyOptions::default()
    };

    // Clean data: nothing.
    let clean = verify(new.url(), &schema, Some(&source), &options).await.unwrap();
    assert!(clean.is_clean(), "{clean}");
    let c = clean.comparison.as_ref().unwrap();
    assert_eq!((c.legacy_rows, c.new_rows), (4_000, 4_000));
    assert_eq!(c.stats.rows_fetched_legacy + c.stats.rows_fetched_new, 0);
    assert_eq!(c.accounts_compared, 0);
    assert_eq!(c.columns, ["tx_id", "account", "amount_minor", "currency"]);

    let v = victims(&new, 6).await;
    let [
        (rounding, rounding_acc),
        (dropped, dropped_acc),
        (sign, sign_acc),
        (link, _),
        (fork, _),
        (_, extra_acc),
    ] = <[(i64, String); 6]>::try_from(v).unwrap();
    let prev_of = |id: i64| format!("SELECT prev_id FROM ledger_entries WHERE id = {id}");
    let fork_target: i64 = one(&new, &prev_of(fork)).await;
    let fork_first_prev: Option<i64> = one(&new, &prev_of(fork_target)).await;
    let link_prev: i64 = one(&new, &prev_of(link)).await;
    let after_dropped: i64 = one(
        &new,
        &format!("SELECT min(id) FROM ledger_entries WHERE account = '{dropped_acc}' AND id > {dropped}"),
    )
    .await;
    let tx_of = |id: i64| (id / 2).to_string();
    let sign_amount: i64 = one(
        &new,
        &format!("SELECT amount_minor FROM ledger_entries WHERE id = {sign}"),
    )
    .await;
    // An extra entry appended to an account, in a transaction of its own
    // that does not balance; and a whole legacy transaction (both entries)
    // dropped from the new store.
    let extra_id: i64 = one(&new, "SELECT max(id) + 1000 FROM ledger_entries").await;
    let extra_tx = "tx-extra";
    let legacy_only: i64 = 1_999;
    let legacy_only_ids = [2 * legacy_only, 2 * legacy_only + 1];
    new.client()
        .batch_execute(&format!(
            "UPDATE ledger_entries SET amount_minor = amount_minor + 1 WHERE id = {rounding};
             DELETE FROM ledger_entries WHERE id = {dropped};
             UPDATE ledger_entries SET amount_minor = -amount_minor WHERE id = {sign};
             UPDATE ledger_entries SET prev_id = NULL WHERE id = {link};
             UPDATE ledger_entries SET prev_id = {fork_prev} WHERE id = {fork};
             INSERT INTO ledger_entries (id, tx_id, account, amount_minor, currency, balance_after, prev_id)
               SELECT {extra_id}, '{extra_tx}', account, 700, 'EUR', balance_after + 700, id
               FROM ledger_entries WHERE account = '{extra_acc}' ORDER BY id DESC LIMIT 1;
             DELETE FROM ledger_entries WHERE id IN ({a}, {b});",
            fork_prev = fork_first_prev.map_or("NULL".to_owned(), |p| p.to_string()),
            a = legacy_only_ids[0],
            b = legacy_only_ids[1],
        ))
        .await
        .unwrap();
    let report = verify(new.url(), &schema, Some(&source), &options).await.unwrap();
    assert!(!report.is_clean());
    let integrity = report.integrity.as_ref().unwrap();
    let comparison = report.comparison.as_ref().unwrap();

    // Completeness: the dropped entry and the legacy-only transaction are
    // missing in the new store; the extra entry is missing in legacy.
    let mut missing = vec![dropped, legacy_only_ids[0], legacy_only_ids[1]];
    missing.sort();
    assert_eq!(comparison.missing_in_new.items, missing, "{report}");
    assert_eq!(comparison.missing_in_legacy.items, [extra_id], "{report}");
    assert!(comparison.duplicate_legacy_ids.is_empty());
    // Correctness: the rounding error and the wrong sign, with the column.
    let differing: BTreeMap<i64, Vec<Field>> = comparison
        .differing
        .items
        .iter()
        .map(|d| {
            let f = d
                .fields
                .iter()
                .map(|f| (f.column.clone(), f.legacy.clone(), f.new.clone()));
            (d.id, f.collect())
        })
        .collect();
    assert_eq!(
        differing.keys().copied().collect::<Vec<_>>(),
        sorted(&[rounding, sign]),
        "{report}"
    );
    assert_eq!(
        differing[&sign],
        [(
            "amount_minor".to_owned(),
            Some(sign_amount.to_string()),
            Some((-sign_amount).to_string())
        )]
    );
    assert_eq!(differing[&rounding][0].0, "amount_minor");

    // Integrity: links.
    let links: BTreeMap<i64, (Option<i64>, Option<i64>)> = integrity
        .broken_links
        .items
        .iter()
        .map(|l| (l.id, (l.prev_id, l.expected_prev_id)))
        .collect();
    let expected_links = BTreeMap::from([
        (
            after_dropped,
            (Some(dropped), Some(dropped_prev(&new, after_dropped).await)),
        ),
        (link, (None, Some(link_prev))),
        (fork, (fork_first_prev, Some(fork_target))),
    ]);
    assert_eq!(links, expected_links, "{report}");
    // The fork: the fork's entry and its predecessor follow the same entry.
    assert_eq!(integrity.forks.items.len(), 1, "{report}");
    assert_eq!(integrity.forks.items[0].ids, sorted(&[fork_target, fork]));
    // Balances: every entry of the corrupted accounts from the fault on.
    let mut expected_balances = Vec::new();
    for (acc, from) in [
        (&rounding_acc, rounding),
        (&dropped_acc, dropped),
        (&sign_acc, sign),
    ] {
        expected_balances.extend(
            ids(
                &new,
                &format!("SELECT id FROM ledger_entries WHERE account = '{acc}' AND id >= {from}"),
            )
            .await,
        );
    }
    expected_balances.sort();
    let found: Vec<i64> = integrity.balance_mismatches.items.iter().map(|b| b.id).collect();
    assert_eq!(found, expected_balances, "{report}");
    // Transactions: the four faulted ones, with their remaining entries.
    let txs: BTreeMap<String, (i128, Vec<i64>)> = integrity
        .unbalanced_transactions
        .items
        .iter()
        .map(|t| (t.tx_id.clone().unwrap(), (t.sum, t.ids.clone())))
        .collect();
    let leg = |id: i64| id ^ 1;
    let expected_txs = BTreeMap::from([
        (tx_of(rounding), (1, sorted(&[rounding, leg(rounding)]))),
        (
            tx_of(dropped),
            (
                -i128::from(dropped_amount(&old, dropped).await),
                vec![leg(dropped)],
            ),
        ),
        (
            tx_of(sign),
            (-2 * i128::from(sign_amount), sorted(&[sign, leg(sign)])),
        ),
        (extra_tx.to_owned(), (700, vec![extra_id])),
    ]);
    assert_eq!(txs, expected_txs, "{report}");
    // Per-account totals: the accounts of the faults that change them.
    let accounts: Vec<String> = comparison
        .account_totals
        .items
        .iter()
        .map(|a| a.account.clone().unwrap())
        .collect();
    let mut expected_accounts = vec![rounding_acc, dropped_acc, sign_acc, extra_acc];
    for id in legacy_only_ids {
        expected_accounts.push(
            one(
                &old,
                &format!("SELECT account FROM ({MAPPING}) m WHERE id = {id}"),
            )
            .await,
        );
    }
    expected_accounts.sort();
    expected_accounts.dedup();
    assert_eq!(accounts, expected_accounts, "{report}");

    // The JSON form carries the same findings.
    let json = serde_json::to_value(&report).unwrap();
    let back: VerifyReport = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, report);
    assert_eq!(json["comparison"]["missing_in_legacy"]["items"][0], extra_id);
    let text = report.to_string();
    assert!(text.contains(&format!("entry {link} of")), "{text}");
}

/// The predecessor of `id` in its account, as the chain should be.
async fn dropped_prev(db: &PgDatabase, id: i64) -> i64 {
    one(
        db,
        &format!(
            "SELECT max(id) FROM ledger_entries WHERE id < {id} \
             AND account = (SELECT account FROM ledger_entries WHERE id = {id})"
        ),
    )
    .await
}

/// The legacy amount of the mapped entry `id`.
async fn dropped_amount(old: &PgDatabase, id: i64) -> i64 {
    one(
        old,
        &format!("SELECT amount_minor FROM ({MAPPING}) m WHERE id = {id}"),
    )
    .await
}

#[tokio::test]
async fn range_descent_matches_a_full_compare_on_many_ranges() {
    let Some((old, new, source)) = setup("descent", 25_000).await else {
        return;
    };
    let schema = LedgerSchema::default();
    // A handful of differences spread over the key space, including ids
    // beyond both ends of the new table's keys.
    new.client()
        .batch_execute(
            "UPDATE ledger_entries SET amount_minor = amount_minor + 1 WHERE id IN (17, 20001, 49999);
             UPDATE ledger_entries SET currency = 'USD' WHERE id = 33333;
             DELETE FROM ledger_entries WHERE id IN (4242, 4243, 31000);
             INSERT INTO ledger_entries (id, tx_id, account, amount_minor, currency)
               VALUES (12345678, 'x', 'acc-1', 5, 'EUR'), (-7, 'y', 'acc-2', 6, 'EUR');",
        )
        .await
        .unwrap();
    old.client()
        .batch_execute(
            "INSERT INTO transactions VALUES (0, 'acc-3', 'acc-4', '1.00', 'EUR'), (900000, 'acc-5', 'acc-6', '2.50', 'EUR');
             UPDATE transactions SET to_account = 'acc-9' WHERE id = 15000;",
        )
        .await
        .unwrap();
    let descent_options = DiffOptions {
        segment_rows: 2_000,
        fanout: 4,
        leaf_rows: 64,
        ..DiffOptions::default()
    };
    let full_options = DiffOptions {
        full: true,
        ..descent_options.clone()
    };
    let descent = compare(new.url(), &schema, &source, &descent_options, 1_000)
        .await
        .unwrap();
    let full = compare(new.url(), &schema, &source, &full_options, 1_000)
        .await
        .unwrap();
    let strip = |r: &overseer_builders::migrate::verify::ComparisonReport| {
        let mut r = r.clone();
        r.stats = Default::default();
        r
    };
    assert_eq!(
        strip(&descent),
        strip(&full),
        "descent:\n{descent}\nfull:\n{full}"
    );
    assert_eq!(
        descent.missing_in_new.items,
        [0, 1, 4242, 4243, 31000, 1_800_000, 1_800_001]
    );
    assert_eq!(descent.missing_in_legacy.items, [-7, 12_345_678]);
    let differing: Vec<i64> = descent.differing.items.iter().map(|d| d.id).collect();
    assert_eq!(differing, [17, 20001, 30001, 33333, 49999]);
    // The descent went several levels deep and fetched a small fraction.
    let s = &descent.stats;
    assert!(s.levels >= 3, "{s:?}");
    assert!(s.ranges_checked > 25, "{s:?}");
    assert!(s.rows_fetched_new + s.rows_fetched_legacy < 2_000, "{s:?}");
    assert_eq!(full.stats.rows_fetched_new, 49_999);
    assert_eq!((descent.legacy_rows, descent.new_rows), (50_004, 49_999));
}

/// A small new table with nullable columns, holding `rows` (SQL `VALUES`).
async fn small_new(db: &PgDatabase, rows: &str) {
    db.client()
        .batch_execute(&format!(
            "CREATE TABLE ledger_entries (id bigint PRIMARY KEY, tx_id text, account text, \
               amount_minor bigint, currency text, balance_after bigint, prev_id bigint, \
               created_at timestamptz DEFAULT now());
             INSERT INTO ledger_entries (id, tx_id, account, amount_minor, currency) VALUES {rows};
             ANALYZE ledger_entries;"
        ))
        .await
        .unwrap();
}

/// A legacy table `m` already in the new table's shape, holding `rows`.
async fn small_legacy(db: &PgDatabase, rows: &str) -> LegacySource {
    db.client()
        .batch_execute(&format!(
            "CREATE TABLE m (id bigint, tx_id text, account text, amount_minor bigint, currency text);
             INSERT INTO m VALUES {rows};"
        ))
        .await
        .unwrap();
    LegacySource {
        url: db.url().to_owned(),
        query: "SELECT * FROM m".into(),
    }
}

/// Descends as far as it can: every range with more than one row splits.
fn deep(full: bool) -> DiffOptions {
    DiffOptions {
        segment_rows: 2,
        fanout: 2,
        leaf_rows: 1,
        full,
        ..DiffOptions::default()
    }
}

#[tokio::test]
async fn a_null_id_in_the_mapping_is_reported_not_skipped() {
    let Some(old) = pg_database("null_id_legacy").await else {
        return;
    };
    let new = pg_database("null_id_new").await.unwrap();
    small_new(&new, "(1, 't1', 'a', 5, 'EUR'), (2, 't1', 'b', -5, 'EUR')").await;
    let source = small_legacy(
        &old,
        "(1, 't1', 'a', 5, 'EUR'), (2, 't1', 'b', -5, 'EUR'), (NULL, 't2', 'c', 7, 'EUR')",
    )
    .await;
    // The descent skipped the row (clean report) and a full compare
    // panicked fetching it; both now count it.
    for full in [false, true] {
        let r = compare(new.url(), &LedgerSchema::default(), &source, &deep(full), 100)
            .await
            .unwrap();
        assert!(!r.is_clean(), "full {full}: {r}");
        assert_eq!((r.legacy_null_ids, r.new_null_ids), (1, 0), "full {full}: {r}");
        assert_eq!((r.legacy_rows, r.new_rows), (3, 2), "full {full}: {r}");
        assert!(r.missing_in_new.is_empty() && r.differing.is_empty(), "{r}");
        assert!(
            r.to_string()
                .contains("rows with a NULL id (not compared): 1 legacy, 0 new"),
            "{r}"
        );
    }
}

#[tokio::test]
async fn extreme_ids_odd_text_and_a_repeated_top_id_are_each_reported_once() {
    let Some(old) = pg_database("extreme_legacy").await else {
        return;
    };
    let new = pg_database("extreme_new").await.unwrap();
    let (min, max) = (i64::MIN, i64::MAX);
    small_new(
        &new,
        &format!(
            "({min}, 'q''\"', 'a\\b', 1, 'EUR'), ({}, 't', 'x', 2, 'EUR'), (0, E't\\n%/', 'a/%', 3, 'EUR'), \
             (5, 't', 'y', 4, 'EUR'), ({}, 't', 'z', 5, 'EUR'), ({max}, 't', 'z', 6, 'EUR')",
            min + 1,
            max - 1
        ),
    )
    .await;
    // id 0 differs in amount, 5 is only new, 6 only legacy, and the mapping
    // produces i64::MAX three times (more than `leaf_rows`), with another
    // tx_id: that range cannot be split, and the descent looped forever.
    let source = small_legacy(
        &old,
        &format!(
            "({min}, 'q''\"', 'a\\b', 1, 'EUR'), ({}, 't', 'x', 2, 'EUR'), (0, E't\\n%/', 'a/%', 99, 'EUR'), \
             (6, 't', 'y', 4, 'EUR'), ({}, 't', 'z', 5, 'EUR'), ({max}, 'tt', 'z', 6, 'EUR'), \
             ({max}, 'tt', 'z', 6, 'EUR'), ({max}, 'tt', 'z', 6, 'EUR')",
            min + 1,
            max - 1
        ),
    )
    .await;
    for full in [false, true] {
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            compare(new.url(), &LedgerSchema::default(), &source, &deep(full), 100),
        )
        .await
        .expect("the comparison does not finish")
        .unwrap();
        assert_eq!(r.missing_in_new.items, [6], "full {full}: {r}");
        assert_eq!(r.missing_in_legacy.items, [5], "full {full}: {r}");
        assert_eq!(r.duplicate_legacy_ids.items, [max], "full {full}: {r}");
        let differing: Vec<(i64, Vec<&str>)> = r
            .differing
            .items
            .iter()
            .map(|d| (d.id, d.fields.iter().map(|f| f.column.as_str()).collect()))
            .collect();
        assert_eq!(
            differing,
            [(0, vec!["amount_minor"]), (max, vec!["tx_id"])],
            "full {full}: {r}"
        );
        assert_eq!(r.differing.items[0].fields[0].legacy.as_deref(), Some("99"));
    }
}

#[tokio::test]
async fn empty_tables_compare_clean_and_an_empty_new_table_misses_every_row() {
    let Some(old) = pg_database("empty_legacy").await else {
        return;
    };
    let new = pg_database("empty_new").await.unwrap();
    new.client()
        .batch_execute(
            "CREATE TABLE ledger_entries (id bigint PRIMARY KEY, tx_id text, account text, \
               amount_minor bigint, currency text, balance_after bigint, prev_id bigint, created_at timestamptz)",
        )
        .await
        .unwrap();
    let source = small_legacy(&old, "(1, 't', 'a', 1, 'EUR')").await;
    old.client().batch_execute("DELETE FROM m").await.unwrap();
    let r = verify(
        new.url(),
        &LedgerSchema::default(),
        Some(&source),
        &VerifyOptions::default(),
    )
    .await
    .unwrap();
    assert!(r.is_clean(), "{r}");
    old.client()
        .batch_execute("INSERT INTO m SELECT g, 't', 'a', 1, 'EUR' FROM generate_series(1, 50) g")
        .await
        .unwrap();
    for full in [false, true] {
        let r = compare(new.url(), &LedgerSchema::default(), &source, &deep(full), 100)
            .await
            .unwrap();
        assert_eq!(r.missing_in_new.items, (1..=50).collect::<Vec<i64>>(), "{r}");
        assert_eq!(r.account_totals.total, 1, "{r}");
        assert_eq!(r.account_totals.items[0].legacy_sum, 50, "{r}");
    }
}

#[tokio::test]
async fn a_transaction_whose_amounts_are_all_null_does_not_stop_the_integrity_check() {
    let Some(new) = pg_database("null_amounts").await else {
        return;
    };
    // Transaction t1 sums to NULL (all amounts NULL): the check panicked
    // reading that sum. A NULL amount adds nothing, as in the balances.
    small_new(
        &new,
        "(1, 't1', 'a', NULL, 'EUR'), (2, 't1', 'b', NULL, 'EUR'), (3, 't2', 'a', 4, 'EUR')",
    )
    .await;
    let r = check_integrity(new.url(), &LedgerSchema::default(), 100)
        .await
        .unwrap();
    assert_eq!(r.transactions, 2, "{r}");
    assert_eq!(r.unbalanced_transactions.total, 1, "{r}");
    let t2 = &r.unbalanced_transactions.items[0];
    assert_eq!(
        (t2.tx_id.as_deref(), t2.sum, t2.ids.as_slice()),
        (Some("t2"), 4, &[3][..])
    );
}

#[tokio::test]
async fn an_entry_without_an_id_is_a_typed_error_of_the_integrity_check() {
    let Some(new) = pg_database("null_entry_id").await else {
        return;
    };
    // The configured id column need not be the primary key: here it is a
    // nullable column, and one entry has no id. Reading that entry's id
    // panicked.
    new.client()
        .batch_execute(
            "CREATE TABLE ledger_entries (pk serial PRIMARY KEY, id bigint, tx_id text, account text, \
               amount_minor bigint, currency text, balance_after bigint, prev_id bigint, created_at timestamptz);
             INSERT INTO ledger_entries (id, tx_id, account, amount_minor, currency, balance_after, prev_id) VALUES
               (1, 't1', 'a', 5, 'EUR', 5, NULL), (NULL, 't1', 'a', -5, 'EUR', 7, 1), (3, 't2', 'a', 1, 'EUR', 1, 1);",
        )
        .await
        .unwrap();
    let err = check_integrity(new.url(), &LedgerSchema::default(), 100)
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Value { .. }), "{err}");
    assert!(err.to_string().contains("1 entries have a NULL \"id\""), "{err}");
}

/// An entry without an account has no chain to belong to: repair, which
/// recomputes chains per account, leaves it alone, so the integrity check
/// refuses it by name instead of reporting broken links that no repair
/// would ever fix.
#[tokio::test]
async fn an_entry_without_an_account_is_a_typed_error_of_the_integrity_check() {
    let Some(new) = pg_database("null_entry_account").await else {
        return;
    };
    new.client()
        .batch_execute(
            "CREATE TABLE ledger_entries (id bigint PRIMARY KEY, tx_id text, account text, \
               amount_minor bigint, currency text, balance_after bigint, prev_id bigint, created_at timestamptz);
             INSERT INTO ledger_entries (id, tx_id, account, amount_minor, currency, balance_after, prev_id) VALUES
               (1, 't1', 'a', 5, 'EUR', 5, NULL), (2, 't1', NULL, -5, 'EUR', -5, 1), (3, 't2', NULL, 1, 'EUR', 1, 1);",
        )
        .await
        .unwrap();
    let err = check_integrity(new.url(), &LedgerSchema::default(), 100)
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Value { .. }), "{err}");
    assert!(
        err.to_string().contains("2 entries have a NULL \"account\""),
        "{err}"
    );
}
