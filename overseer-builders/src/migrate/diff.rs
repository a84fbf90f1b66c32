//! Completeness and correctness against the legacy store, by checksums of
//! key ranges (the method of data-diff and reladiff).
//!
//! The legacy side is the user's mapping: a query on the legacy database
//! producing rows in the new table's shape, keyed by the new `id`. Both
//! sides are read as `(id, ROW(columns)::text)`, the legacy columns cast to
//! the new columns' types first, so equal rows have equal text.
//!
//! 1. The key space is cut into segments of about
//!    [`DiffOptions::segment_rows`] rows (from the new table's id bounds and
//!    size estimate), plus two open-ended ranges below and above it for ids
//!    only the legacy side has.
//! 2. For a list of ranges, each side computes in one statement, grouped by
//!    the range an id falls in (integer arithmetic on the id, ranges being
//!    equal pieces of a few spans): the row count and two 32-bit sums of
//!    the row's 64-bit hash (per-column typed hashes XORed, see
//!    `row_hash`). Both servers work in parallel; only
//!    `3 × 8` bytes per range cross the wire.
//! 3. Ranges whose checksums agree are done. A differing range with at most
//!    [`DiffOptions::leaf_rows`] rows on either side is fetched; a larger one
//!    is split [`DiffOptions::fanout`] ways (open ranges are bounded first)
//!    and step 2 runs again on the pieces only, filtered by their key
//!    ranges (index range scans on the new table).
//! 4. The rows of the fetched ranges are compared by id and column: missing
//!    on either side, differing (with the columns that differ), ids the
//!    mapping produces twice.
//!
//! Per-account totals (count and sum of the amounts) change only through
//! rows in differing ranges: the fetched rows are tallied per account on
//! both sides, and for every account whose tallies differ the full totals
//! are read on both servers (`WHERE account = ANY(...)`) and reported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ledger::{Conn, LedgerError, LedgerSchema, quote_ident, sorted_keys};
use super::verify::{AccountTotalDiff, ComparisonReport, DiffStats, FieldDiff, Listed, RowDiff};

/// The legacy store: where it is and how its rows map to new rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacySource {
    /// The legacy database's connection URL.
    pub url: String,
    /// A query on the legacy database producing rows in the new table's
    /// shape: an `id` column (the new primary key) and any of the new
    /// table's columns, by their names. Every column it produces is
    /// compared (cast to the new column's type). Example, one legacy
    /// transaction becoming two entries:
    ///
    /// ```sql
    /// SELECT id * 2 AS id, id::text AS tx_id, from_account AS account,
    ///        -(amount::numeric * 100)::bigint AS amount_minor, currency FROM transactions
    /// UNION ALL
    /// SELECT id * 2 + 1, id::text, to_account, (amount::numeric * 100)::bigint, currency FROM transactions
    /// ```
    pub query: String,
}

/// How the comparison descends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffOptions {
    /// About how many rows a first-level segment covers (default 10 000).
    pub segment_rows: u64,
    /// How many pieces a differing range is split into (default 16).
    pub fanout: u64,
    /// A differing range with at most this many rows on either side is
    /// fetched and compared row by row (default 2 000).
    pub leaf_rows: u64,
    /// Compare per-account totals too (default true).
    pub account_totals: bool,
    /// Skip the checksums and fetch every row (for testing the descent;
    /// slow, pulls both tables across whole). Default false.
    pub full: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self {
            segment_rows: 10_000,
            fanout: 16,
            leaf_rows: 2_000,
            account_totals: true,
            full: false,
        }
    }
}

/// A half-open key range `[lo, hi)`; `None` is unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyRange {
    lo: Option<i64>,
    hi: Option<i64>,
}

impl KeyRange {
    fn sql(&self, key: &str) -> String {
        match (self.lo, self.hi) {
            (Some(lo), Some(hi)) => format!("({key} >= {lo} AND {key} < {hi})"),
            (Some(lo), None) => format!("({key} >= {lo})"),
            (None, Some(hi)) => format!("({key} < {hi})"),
            (None, None) => "TRUE".to_owned(),
        }
    }

    /// `[lo, hi)` cut into at most `parts` pieces of equal width.
    fn split(lo: i64, hi: i64, parts: u64) -> Vec<KeyRange> {
        let width = i128::from(hi) - i128::from(lo);
        if width <= 0 {
            return Vec::new();
        }
        let parts = i128::from(parts.max(1)).min(width);
        let bound = |i: i128| i64::try_from(i128::from(lo) + width * i / parts).unwrap_or(hi);
        (0..parts)
            .map(|i| KeyRange {
                lo: Some(bound(i)),
                hi: Some(bound(i + 1)),
            })
            .collect()
    }
}

/// A piece of a level: a bounded range cut into `pieces` ranges of equal
/// width (as [`KeyRange::split`] cuts it), or an open range (one piece).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Group {
    span: KeyRange,
    pieces: u64,
}

impl Group {
    /// `[lo, hi)` in at most `pieces` pieces; `None` if it is empty.
    fn bounded(lo: i64, hi: i64, pieces: u64) -> Option<Group> {
        let width = i128::from(hi) - i128::from(lo);
        (width > 0).then(|| Group {
            span: KeyRange {
                lo: Some(lo),
                hi: Some(hi),
            },
            pieces: u64::try_from(i128::from(pieces.max(1)).min(width)).unwrap_or(1),
        })
    }

    fn open(span: KeyRange) -> Group {
        Group { span, pieces: 1 }
    }

    /// The pieces, in key order.
    fn ranges(&self) -> Vec<KeyRange> {
        match (self.span.lo, self.span.hi) {
            (Some(lo), Some(hi)) if self.pieces > 1 => KeyRange::split(lo, hi, self.pieces),
            _ => vec![self.span],
        }
    }

    /// A `CASE` branch giving the piece number (from `offset`) of `key`:
    /// plain integer arithmetic, the inverse of [`KeyRange::split`] (the
    /// piece of `x = key - lo` is `((x + 1) * pieces - 1) / width`).
    fn bucket_sql(&self, key: &str, offset: u64) -> String {
        let condition = self.span.sql(key);
        match (self.span.lo, self.span.hi) {
            (Some(lo), Some(hi)) if self.pieces > 1 => {
                let width = i128::from(hi) - i128::from(lo);
                let pieces = i128::from(self.pieces);
                if width
                    .checked_mul(pieces)
                    .is_some_and(|p| p < i128::from(i64::MAX))
                {
                    format!(
                        "WHEN {condition} THEN {offset} + (({key} - ({lo}) + 1) * {pieces} - 1) / {width}"
                    )
                } else {
                    format!(
                        "WHEN {condition} THEN {offset} + div(({key}::numeric - ({lo}) + 1) * {pieces} - 1, {width})::int8"
                    )
                }
            }
            _ => format!("WHEN {condition} THEN {offset}"),
        }
    }
}

/// Sorted disjoint ranges with touching ones merged (so that a level
/// covering the whole key space needs no filter at all).
fn merged(ranges: impl IntoIterator<Item = KeyRange>) -> Vec<KeyRange> {
    let mut out: Vec<KeyRange> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.hi.is_some() && last.hi == r.lo => last.hi = r.hi,
            _ => out.push(r),
        }
    }
    out
}

/// Count and checksum of a range on one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sum {
    rows: i64,
    high: i64,
    low: i64,
}

/// The checksums of one level on one side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Checksums {
    /// One per piece, in order.
    sums: Vec<Sum>,
    /// Rows whose key is `NULL`: they fall in no range, so they are
    /// counted apart (only a level covering the whole key space, with no
    /// key filter, sees them).
    null_keys: u64,
}

/// One side of the comparison: how to read `(id, row text, columns)`.
struct Side {
    conn: Conn,
    /// `FROM` item, aliased `m`.
    from: String,
    /// The key as `int8`.
    key: String,
    /// The compared columns as text, in `columns` order.
    values: Vec<String>,
    /// The row's 64-bit hash: the XOR of per-column hashes with a seed per
    /// column (see [`row_hash`]).
    row_hash: String,
    /// Account and amount expressions for the totals, if both exist.
    totals: Option<(String, String)>,
}

impl Side {
    fn filter(&self, ranges: &[KeyRange]) -> String {
        let ranges = merged(ranges.iter().copied());
        if ranges.is_empty() || ranges.iter().any(|r| r.lo.is_none() && r.hi.is_none()) || ranges.len() > 256
        {
            return String::new();
        }
        let parts: Vec<String> = ranges.iter().map(|r| r.sql(&self.key)).collect();
        format!(" WHERE {}", parts.join(" OR "))
    }

    /// Checksums of every piece of `groups` (disjoint, sorted), in order,
    /// and the count of rows with a `NULL` key the filter lets through.
    async fn checksums(&self, groups: &[Group]) -> Result<Checksums, LedgerError> {
        let mut branches = Vec::with_capacity(groups.len());
        let mut offset = 0u64;
        for g in groups {
            branches.push(g.bucket_sql(&self.key, offset));
            offset += g.pieces;
        }
        let spans: Vec<KeyRange> = groups.iter().map(|g| g.span).collect();
        let sql = format!(
            "SELECT b, count(*)::int8, coalesce(sum((h >> 32)::int4), 0)::int8, \
                    coalesce(sum((h & 2147483647)::int4), 0)::int8 \
             FROM (SELECT (CASE WHEN {key} IS NULL THEN {NULL_BUCKET} {branches} ELSE -1 END)::int8 AS b, \
                          {row} AS h \
                   FROM {from}{filter}) s GROUP BY b",
            branches = branches.join(" "),
            key = self.key,
            row = self.row_hash,
            from = self.from,
            filter = self.filter(&spans),
        );
        let rows = self.conn.query("computing range checksums", &sql, &[]).await?;
        let mut sums = vec![Sum::default(); usize::try_from(offset).unwrap_or(0)];
        let mut null_keys = 0;
        for row in rows {
            let bucket: i64 = row.get(0);
            if bucket == NULL_BUCKET {
                null_keys = row.get::<_, i64>(1).unsigned_abs();
            } else if let Some(sum) = usize::try_from(bucket).ok().and_then(|b| sums.get_mut(b)) {
                *sum = Sum {
                    rows: row.get(1),
                    high: row.get(2),
                    low: row.get(3),
                };
            }
        }
        Ok(Checksums { sums, null_keys })
    }

    /// The smallest and largest key within `range`.
    async fn bounds(&self, range: KeyRange) -> Result<Option<(i64, i64)>, LedgerError> {
        let sql = format!(
            "SELECT min({key}), max({key}) FROM {from}{filter}",
            key = self.key,
            from = self.from,
            filter = self.filter(&[range])
        );
        let rows = self.conn.query("finding key bounds", &sql, &[]).await?;
        Ok(rows.first().and_then(|r| {
            let lo: Option<i64> = r.get(0);
            let hi: Option<i64> = r.get(1);
            lo.zip(hi)
        }))
    }

    /// The rows of `ranges`, sorted by key: `(key, column texts)`. Rows
    /// with a `NULL` key are never fetched (they are counted by
    /// [`Side::checksums`]).
    async fn fetch(&self, ranges: &[KeyRange]) -> Result<Vec<(i64, Vec<Option<String>>)>, LedgerError> {
        let mut select = vec![self.key.clone()];
        select.extend(self.values.iter().cloned());
        let filter = match self.filter(ranges) {
            f if f.is_empty() => format!(" WHERE {} IS NOT NULL", self.key),
            f => f,
        };
        let sql = format!(
            "SELECT {} FROM {}{filter} ORDER BY 1",
            select.join(", "),
            self.from,
        );
        let rows = self.conn.query("fetching rows", &sql, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let values = (1..=self.values.len()).map(|i| r.get(i)).collect();
                (r.get(0), values)
            })
            .collect())
    }

    /// Count and sum of the amounts per account.
    async fn account_totals(&self, accounts: &[Option<String>]) -> Result<Totals, LedgerError> {
        let Some((account, amount)) = &self.totals else {
            return Ok(BTreeMap::new());
        };
        let named: Vec<&str> = accounts.iter().flatten().map(String::as_str).collect();
        let null = accounts.iter().any(Option::is_none);
        let sql = format!(
            "SELECT {account}, count(*)::int8, coalesce(sum({amount}), 0)::text FROM {from} \
             WHERE {account} = ANY($1::text[]) OR ($2 AND {account} IS NULL) GROUP BY 1",
            from = self.from
        );
        let step = "computing per-account totals";
        let rows = self.conn.query(step, &sql, &[&named, &null]).await?;
        let mut totals = BTreeMap::new();
        for row in rows {
            let text: String = row.get(2);
            let sum: i128 = text.parse().map_err(|_| LedgerError::Value {
                side: self.conn.side,
                step: step.to_owned(),
                reason: format!("sum {text:?} is not an integer of at most 128 bits"),
            })?;
            totals.insert(row.get(0), (row.get(1), sum));
        }
        Ok(totals)
    }
}

/// The checksum bucket of rows whose key is `NULL`.
const NULL_BUCKET: i64 = -2;

/// Entry count and amount sum per account.
type Totals = BTreeMap<Option<String>, (i64, i128)>;

/// Adds fetched rows to per-account `(count, sum)` totals.
fn tally(totals: &mut Totals, rows: &[(i64, Vec<Option<String>>)], account: usize, amount: usize) {
    for (_, values) in rows {
        let key = values.get(account).cloned().flatten();
        let value = values
            .get(amount)
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse::<i128>().ok())
            .unwrap_or(0);
        let entry = totals.entry(key).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += value;
    }
}

/// Reads both sides' descriptions and checks the mapping against the new
/// table; returns `(legacy, new, compared columns)`.
async fn sides(
    new_url: &str,
    schema: &LedgerSchema,
    legacy: &LegacySource,
) -> Result<(Side, Side, Vec<String>), LedgerError> {
    let (new, old) = tokio::join!(Conn::open("new", new_url), Conn::open("legacy", &legacy.url));
    let (new, old) = (new?, old?);
    let types = new.check_schema(schema).await?;
    let query = legacy.query.trim().trim_end_matches(';');
    if query.is_empty() {
        return Err(LedgerError::Config {
            reason: "the legacy mapping query is empty".into(),
        });
    }
    let probe = old
        .client
        .prepare(&format!("SELECT * FROM ({query}) AS m LIMIT 0"))
        .await
        .map_err(|e| old.err("preparing the legacy mapping query", e))?;
    let mapped: Vec<String> = probe.columns().iter().map(|c| c.name().to_owned()).collect();
    let mut problems = Vec::new();
    if !mapped.contains(&schema.id) {
        problems.push(format!("it has no {:?} column (the new primary key)", schema.id));
    }
    let mut columns = Vec::new();
    for name in &mapped {
        if columns.contains(name) {
            problems.push(format!("column {name:?} appears twice"));
        } else if !types.contains_key(name) {
            problems.push(format!(
                "column {name:?} is not a column of {} (columns: {})",
                schema.table_name(),
                sorted_keys(&types)
            ));
        } else if *name != schema.id {
            columns.push(name.clone());
        }
    }
    if !problems.is_empty() {
        return Err(LedgerError::Config {
            reason: format!("legacy mapping query: {}", problems.join("; ")),
        });
    }
    let id = quote_ident(&schema.id);
    let key = format!("(m.{id})::int8");
    let legacy_value = |c: &str| {
        format!(
            "(m.{})::{}",
            quote_ident(c),
            types.get(c).map_or("text", String::as_str)
        )
    };
    let new_value = |c: &str| format!("m.{}", quote_ident(c));
    let kinds: Vec<bool> = columns
        .iter()
        .map(|c| {
            types
                .get(c)
                .is_some_and(|t| matches!(t.as_str(), "bigint" | "integer" | "smallint"))
        })
        .collect();
    let build = |conn: Conn, from: String, value: &dyn Fn(&str) -> String| {
        let typed: Vec<String> = columns.iter().map(|c| value(c)).collect();
        let totals = (columns.contains(&schema.account) && columns.contains(&schema.amount)).then(|| {
            (
                format!("({})::text", value(&schema.account)),
                value(&schema.amount),
            )
        });
        Side {
            conn,
            from,
            key: key.clone(),
            values: typed.iter().map(|v| format!("({v})::text")).collect(),
            row_hash: row_hash(&key, &typed, &kinds),
            totals,
        }
    };
    let legacy_side = build(old, format!("({query}) AS m"), &legacy_value);
    let new_side = build(new, format!("{} AS m", schema.table_sql()), &new_value);
    Ok((legacy_side, new_side, columns))
}

/// The hash of a row: `hashint8extended(id, 1)` XOR, for each compared
/// column (already of the new column's type), `hashint8extended` (integers)
/// or `hashtextextended` of its text (others) with its own seed, a
/// seed-specific constant for `NULL`. Typed hashing avoids formatting a
/// record as text, the costliest part of a checksum (about 3x faster).
fn row_hash(key: &str, values: &[String], integer: &[bool]) -> String {
    let mut parts = vec![format!("hashint8extended({key}, 1)")];
    for (i, (value, is_int)) in values.iter().zip(integer).enumerate() {
        let seed = i + 2;
        let hash = if *is_int {
            format!("hashint8extended(({value})::int8, {seed})")
        } else {
            format!("hashtextextended(({value})::text, {seed})")
        };
        parts.push(format!("coalesce({hash}, {})", seed * 1_000_003));
    }
    format!("({})", parts.join(" # "))
}

/// Compares the new table with the legacy mapping (see the module
/// documentation); lists at most `max_listed` items of each kind.
pub async fn compare(
    new_url: &str,
    schema: &LedgerSchema,
    legacy: &LegacySource,
    options: &DiffOptions,
    max_listed: usize,
) -> Result<ComparisonReport, LedgerError> {
    let (old, new, columns) = sides(new_url, schema, legacy).await?;
    let (fetch, mut stats, (legacy_null_ids, new_null_ids)) = descend(&old, &new, options).await?;
    let mut report = ComparisonReport {
        columns: columns.clone(),
        legacy_rows: stats.legacy_rows,
        new_rows: stats.new_rows,
        legacy_null_ids,
        new_null_ids,
        ..ComparisonReport::default()
    };
    // Per-account totals move only through rows in differing ranges: tally
    // the fetched rows per account on both sides.
    let tallied = match (
        columns.iter().position(|c| *c == schema.account),
        columns.iter().position(|c| *c == schema.amount),
    ) {
        (Some(account), Some(amount)) if options.account_totals => Some((account, amount)),
        _ => None,
    };
    let (mut old_tally, mut new_tally) = (Totals::new(), Totals::new());
    // Fetch the differing ranges in groups, both sides in parallel.
    let mut group: Vec<KeyRange> = Vec::new();
    let mut group_rows = 0u64;
    let mut pending = fetch.into_iter().peekable();
    while let Some((range, rows)) = pending.next() {
        group.push(range);
        group_rows += rows;
        let full = group.len() >= 64 || group_rows >= 100_000;
        if full || pending.peek().is_none() {
            let (a, b) = tokio::join!(old.fetch(&group), new.fetch(&group));
            let (a, b) = (a?, b?);
            stats.rows_fetched_legacy += a.len() as u64;
            stats.rows_fetched_new += b.len() as u64;
            if let Some((account, amount)) = tallied {
                tally(&mut old_tally, &a, account, amount);
                tally(&mut new_tally, &b, account, amount);
            }
            merge_rows(&columns, a, b, &mut report, max_listed);
            group.clear();
            group_rows = 0;
        }
    }
    // The accounts whose totals the differences change: their full totals
    // on both sides (index lookups on the new side).
    let mut affected: Vec<Option<String>> = Vec::new();
    for (account, totals) in &old_tally {
        if new_tally.get(account) != Some(totals) {
            affected.push(account.clone());
        }
    }
    for account in new_tally.keys() {
        if !old_tally.contains_key(account) {
            affected.push(account.clone());
        }
    }
    if !affected.is_empty() {
        let (a, b) = tokio::join!(old.account_totals(&affected), new.account_totals(&affected));
        compare_totals(a?, b?, &mut report, max_listed);
        report.accounts_compared = affected.len() as u64;
    }
    report.stats = stats;
    Ok(report)
}

/// Walks down the differing ranges; returns the ranges to fetch, with their
/// larger side's row count, the statistics, and the rows with a `NULL` id
/// on each side (legacy, new).
async fn descend(
    old: &Side,
    new: &Side,
    options: &DiffOptions,
) -> Result<(Vec<(KeyRange, u64)>, DiffStats, (u64, u64)), LedgerError> {
    let mut stats = DiffStats {
        full: options.full,
        ..DiffStats::default()
    };
    let level0 = first_level(new, options).await?;
    if options.full {
        let all = [Group::open(KeyRange { lo: None, hi: None })];
        let (a, b) = tokio::join!(old.checksums(&all), new.checksums(&all));
        let (a, b) = (a?, b?);
        stats.legacy_rows = a.sums.first().map_or(0, |s| s.rows.unsigned_abs()) + a.null_keys;
        stats.new_rows = b.sums.first().map_or(0, |s| s.rows.unsigned_abs()) + b.null_keys;
        let ranges: Vec<KeyRange> = level0.iter().flat_map(Group::ranges).collect();
        stats.ranges_fetched = ranges.len() as u64;
        return Ok((
            ranges.into_iter().map(|r| (r, options.segment_rows)).collect(),
            stats,
            (a.null_keys, b.null_keys),
        ));
    }
    let mut nulls = (0, 0);
    let mut level = level0;
    let mut fetch = Vec::new();
    let mut first = true;
    while !level.is_empty() {
        let ranges: Vec<KeyRange> = level.iter().flat_map(Group::ranges).collect();
        stats.levels += 1;
        stats.checksum_queries += 2;
        stats.ranges_checked += ranges.len() as u64;
        let (a, b) = tokio::join!(old.checksums(&level), new.checksums(&level));
        let (a, b) = (a?, b?);
        if first {
            // The first level covers the whole key space with no filter:
            // it is the one that sees the rows with a `NULL` key.
            nulls = (a.null_keys, b.null_keys);
            stats.legacy_rows = a.sums.iter().map(|s| s.rows.unsigned_abs()).sum::<u64>() + a.null_keys;
            stats.new_rows = b.sums.iter().map(|s| s.rows.unsigned_abs()).sum::<u64>() + b.null_keys;
            first = false;
        }
        let (a, b) = (a.sums, b.sums);
        let mut next = Vec::new();
        for ((range, x), y) in ranges.iter().zip(&a).zip(&b) {
            if x == y {
                continue;
            }
            stats.ranges_differing += 1;
            let rows = x.rows.max(y.rows).unsigned_abs();
            // A range of at most one key cannot be split: fetch it, however
            // many rows (an id the mapping produces many times) it holds.
            let narrow = match (range.lo, range.hi) {
                (Some(lo), Some(hi)) => i128::from(hi) - i128::from(lo) <= 1,
                (Some(lo), None) => lo == i64::MAX,
                (None, Some(hi)) => hi == i64::MIN,
                (None, None) => false,
            };
            if rows <= options.leaf_rows || narrow {
                fetch.push((*range, rows));
                continue;
            }
            match (range.lo, range.hi) {
                (Some(lo), Some(hi)) => next.extend(Group::bounded(lo, hi, options.fanout)),
                _ => {
                    // Bound an open range by the keys the two sides have in it.
                    let (p, q) = tokio::join!(old.bounds(*range), new.bounds(*range));
                    let found = [p?, q?].into_iter().flatten();
                    let (lo, hi) = found.fold((i64::MAX, i64::MIN), |(l, h), (a, b)| (l.min(a), h.max(b)));
                    if lo <= hi {
                        match hi.checked_add(1) {
                            Some(end) => next.extend(Group::bounded(lo, end, options.fanout)),
                            None => {
                                next.extend(Group::bounded(lo, hi, options.fanout));
                                next.push(Group::open(KeyRange {
                                    lo: Some(hi),
                                    hi: None,
                                }));
                            }
                        }
                    }
                }
            }
        }
        next.sort_by_key(|g| g.span.lo);
        level = next;
    }
    stats.ranges_fetched = fetch.len() as u64;
    Ok((fetch, stats, nulls))
}

/// The first level: open ranges below and above the new table's keys and
/// its key span cut into segments of about `segment_rows` rows.
async fn first_level(new: &Side, options: &DiffOptions) -> Result<Vec<Group>, LedgerError> {
    let sql = format!(
        "SELECT min({key}), max({key}), (SELECT reltuples::int8 FROM pg_class WHERE oid = to_regclass($1)) FROM {from}",
        key = new.key,
        from = new.from
    );
    let table = new.from.trim_end_matches(" AS m").to_owned();
    let rows = new.conn.query("finding key bounds", &sql, &[&table]).await?;
    let everything = vec![Group::open(KeyRange { lo: None, hi: None })];
    let Some(row) = rows.first() else {
        return Ok(everything);
    };
    let (lo, hi, estimate): (Option<i64>, Option<i64>, Option<i64>) = (row.get(0), row.get(1), row.get(2));
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(everything);
    };
    let span = u64::try_from(i128::from(hi) - i128::from(lo) + 1).unwrap_or(u64::MAX);
    let estimate = estimate
        .and_then(|e| u64::try_from(e).ok())
        .filter(|e| *e > 0)
        .unwrap_or(span);
    let segments = estimate.div_ceil(options.segment_rows.max(1)).clamp(1, 1_000_000);
    let end = hi.checked_add(1).unwrap_or(hi);
    let mut level = vec![Group::open(KeyRange {
        lo: None,
        hi: Some(lo),
    })];
    level.extend(Group::bounded(lo, end, segments));
    level.push(Group::open(KeyRange {
        lo: Some(end),
        hi: None,
    }));
    Ok(level)
}

fn push<T>(list: &mut Listed<T>, item: T, max: usize) {
    list.total += 1;
    if list.items.len() < max {
        list.items.push(item);
    }
}

/// Compares two sorted row lists and records what differs.
fn merge_rows(
    columns: &[String],
    old: Vec<(i64, Vec<Option<String>>)>,
    new: Vec<(i64, Vec<Option<String>>)>,
    report: &mut ComparisonReport,
    max: usize,
) {
    let mut old = old.into_iter().peekable();
    let mut new = new.into_iter().peekable();
    let mut last_old: Option<i64> = None;
    loop {
        // The mapping may produce an id twice: report and skip repeats.
        if let Some((id, _)) = old.peek()
            && last_old == Some(*id)
        {
            let id = *id;
            old.next();
            if report.duplicate_legacy_ids.items.last() != Some(&id) {
                push(&mut report.duplicate_legacy_ids, id, max);
            }
            continue;
        }
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((a, _)), Some((b, _))) if a == b => {
                let (Some((id, x)), Some((_, y))) = (old.next(), new.next()) else {
                    break;
                };
                last_old = Some(id);
                let fields: Vec<FieldDiff> = columns
                    .iter()
                    .zip(x.into_iter().zip(y))
                    .filter(|(_, (x, y))| x != y)
                    .map(|(c, (x, y))| FieldDiff {
                        column: c.clone(),
                        legacy: x,
                        new: y,
                    })
                    .collect();
                if !fields.is_empty() {
                    push(&mut report.differing, RowDiff { id, fields }, max);
                }
            }
            (Some((a, _)), Some((b, _))) if a > b => {
                if let Some((id, _)) = new.next() {
                    push(&mut report.missing_in_legacy, id, max);
                }
            }
            (Some(_), _) => {
                if let Some((id, _)) = old.next() {
                    last_old = Some(id);
                    push(&mut report.missing_in_new, id, max);
                }
            }
            (None, Some(_)) => {
                if let Some((id, _)) = new.next() {
                    push(&mut report.missing_in_legacy, id, max);
                }
            }
        }
    }
}

fn compare_totals(
    old: BTreeMap<Option<String>, (i64, i128)>,
    mut new: BTreeMap<Option<String>, (i64, i128)>,
    report: &mut ComparisonReport,
    max: usize,
) {
    for (account, (legacy_count, legacy_sum)) in old {
        let (new_count, new_sum) = new.remove(&account).unwrap_or((0, 0));
        if (legacy_count, legacy_sum) != (new_count, new_sum) {
            let diff = AccountTotalDiff {
                account,
                legacy_count: legacy_count.unsigned_abs(),
                new_count: new_count.unsigned_abs(),
                legacy_sum,
                new_sum,
            };
            push(&mut report.account_totals, diff, max);
        }
    }
    for (account, (new_count, new_sum)) in new {
        let diff = AccountTotalDiff {
            account,
            legacy_count: 0,
            new_count: new_count.unsigned_abs(),
            legacy_sum: 0,
            new_sum,
        };
        push(&mut report.account_totals, diff, max);
    }
    report
        .account_totals
        .items
        .sort_by(|a, b| a.account.cmp(&b.account));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_covers_the_range_exactly() {
        let parts = KeyRange::split(10, 110, 16);
        assert_eq!(parts.len(), 16);
        assert_eq!(parts[0].lo, Some(10));
        assert_eq!(parts[15].hi, Some(110));
        for w in parts.windows(2) {
            assert_eq!(w[0].hi, w[1].lo);
        }
        assert_eq!(KeyRange::split(5, 8, 16).len(), 3);
        assert!(KeyRange::split(5, 5, 16).is_empty());
        assert_eq!(KeyRange::split(i64::MIN, i64::MAX, 4).len(), 4);
    }

    #[test]
    fn bucket_arithmetic_inverts_splitting() {
        for (lo, hi, pieces) in [(10i64, 110i64, 16u64), (-7, 5, 4), (0, 3, 16), (1, 1_000_003, 97)] {
            let group = Group::bounded(lo, hi, pieces).unwrap();
            let ranges = group.ranges();
            assert_eq!(ranges.len() as u64, group.pieces);
            let width = i128::from(hi) - i128::from(lo);
            let p = i128::from(group.pieces);
            for k in (lo..hi)
                .step_by(usize::try_from((hi - lo) / 500).unwrap_or(1).max(1))
                .chain([hi - 1])
            {
                let piece = ((i128::from(k) - i128::from(lo) + 1) * p - 1) / width;
                let r = ranges[usize::try_from(piece).unwrap()];
                assert!(
                    r.lo.unwrap() <= k && k < r.hi.unwrap(),
                    "{k} not in piece {piece} {r:?}"
                );
            }
        }
        assert_eq!(
            merged([
                KeyRange {
                    lo: None,
                    hi: Some(1)
                },
                KeyRange {
                    lo: Some(1),
                    hi: Some(5)
                },
                KeyRange {
                    lo: Some(5),
                    hi: None
                },
            ]),
            [KeyRange { lo: None, hi: None }]
        );
    }

    #[test]
    fn merge_names_missing_extra_differing_and_duplicate_rows() {
        let row = |id: i64, v: &str| (id, vec![Some(v.to_owned()), None]);
        let columns = vec!["amount_minor".to_owned(), "currency".to_owned()];
        let mut report = ComparisonReport::default();
        let old = vec![row(1, "5"), row(2, "6"), row(2, "6"), row(4, "8")];
        let new = vec![row(1, "5"), row(3, "7"), row(4, "9")];
        merge_rows(&columns, old, new, &mut report, 10);
        assert_eq!(report.missing_in_new.items, [2]);
        assert_eq!(report.missing_in_legacy.items, [3]);
        assert_eq!(report.duplicate_legacy_ids.items, [2]);
        assert_eq!(report.differing.items.len(), 1);
        assert_eq!(report.differing.items[0].id, 4);
        assert_eq!(report.differing.items[0].fields[0].column, "amount_minor");
    }

    #[test]
    fn listing_is_capped_but_counted() {
        let mut list = Listed::default();
        for i in 0..5 {
            push(&mut list, i, 2);
        }
        assert_eq!(list.total, 5);
        assert_eq!(list.items, [0, 1]);
    }
}
