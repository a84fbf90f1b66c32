//! The three systems of the payments platform, simulated.
//!
//! [`generate`] writes per-transfer business stories over simulated time with
//! a seeded PRNG, applies them to three simulated databases in commit order,
//! and returns what each database's change data capture emits:
//!
//! * **transfers** — a MongoDB collection, as change stream events in
//!   relaxed Extended JSON v2: inserts, dotted-path updates (with
//!   `removedFields` and `truncatedArrays`), replaces and deletes; `amount` is
//!   a `{"$numberDecimal": "12.34"}`.
//! * **ledger** — a double-entry ledger in Postgres, as wal2json
//!   `format-version` 2 lines with `include-xids`, `include-timestamp`,
//!   `include-lsn` and the transactions' `B`/`C` records. Each posting is a
//!   debit on `user:<uid>:<ccy>` and a credit on `omnibus:<ccy>`;
//!   `balance_after` is the account's cumulative balance in `id` order. Rows
//!   are corrected by `UPDATE` and removed by `DELETE`, and the ledger then
//!   repairs the running balances of the account's later rows in the same
//!   transaction, so the chain stays consistent.
//! * **bank** — a bank gateway's Postgres table, as Debezium PostgreSQL
//!   connector values (`schemas.enable=false`, `REPLICA IDENTITY FULL`): a
//!   snapshot (`op: "r"`) of the rows that exist when the connector starts,
//!   then `c`/`u`/`d` events.
//!
//! Normal business includes transients that settle within 60 s of the
//! source commit time of the change that caused them: amounts corrected
//! before processing, failed transfers with a ledger reversal, a ledger row
//! fixed by a later `UPDATE`, a duplicate ledger row removed by `DELETE`, a
//! bank attempt deleted and re-created under a new id, bank rows that exist
//! only in the snapshot, bank payments committed after their transfer
//! completed, bank returns that fail a transfer after its payment settled.
//! On top of that, one discrepancy of one [`Kind`] is injected into a few
//! transfers, and listed in [`Generated::expected`].

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::LazyLock;

use chrono::format::{Item, StrftimeItems};

/// One microsecond-precision instant (Unix microseconds).
pub type Micros = i64;

const SECOND: Micros = 1_000_000;

/// A small deterministic PRNG (SplitMix64), so runs are reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo + 1).unsigned_abs()) as i64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A duration uniform between `lo` and `hi` seconds, in microseconds.
    pub fn secs(&mut self, lo: f64, hi: f64) -> Micros {
        ((lo + (hi - lo) * self.unit()) * SECOND as f64) as Micros
    }
}

/// The kinds of discrepancy the simulation injects, one per affected
/// transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The bank settled a different amount than the transfer's.
    AmountMismatch,
    /// A completed transfer has no settled bank payment within its SLA.
    MissingBankPayment,
    /// The ledger entries of a transfer do not sum to zero.
    LedgerImbalance,
    /// The transfer failed but its bank payment settled.
    FailedButSettled,
    /// One ledger entry's `balance_after` is not the previous entry's
    /// `balance_after` plus its `amount_minor`.
    BalanceChainBreak,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::AmountMismatch,
        Kind::MissingBankPayment,
        Kind::LedgerImbalance,
        Kind::FailedButSettled,
        Kind::BalanceChainBreak,
    ];

    /// The kind's name in `expected.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AmountMismatch => "amount_mismatch",
            Kind::MissingBankPayment => "missing_bank_payment",
            Kind::LedgerImbalance => "ledger_imbalance",
            Kind::FailedButSettled => "failed_but_settled",
            Kind::BalanceChainBreak => "balance_chain_break",
        }
    }

    /// The kind named `name` in `expected.json`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One injected discrepancy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// What is wrong.
    pub kind: Kind,
    /// The transfer it concerns.
    pub transfer_id: String,
    /// When it became observable on source time: the commit time of the
    /// change that made the systems disagree (for a missing bank payment,
    /// the completion's commit time plus the SLA). `None` when unknown
    /// (an `expected.json` written by another tool).
    pub observable_at: Option<Micros>,
}

/// Where one source's change events go: one JSON line each, written as
/// they are emitted (so a large run never holds its input in memory), and
/// the source commit time each carries (for `B`/`C` records, the
/// transaction's).
pub struct Sink<'a> {
    out: &'a mut dyn Write,
    /// The commit time of each line written, in order.
    pub commits: Vec<Micros>,
    error: Option<std::io::Error>,
}

impl<'a> Sink<'a> {
    /// A sink writing to `out`.
    pub fn new(out: &'a mut dyn Write) -> Self {
        Self {
            out,
            commits: Vec::new(),
            error: None,
        }
    }

    fn push(&mut self, commit: Micros, line: &str) {
        if self.error.is_none()
            && let Err(e) = self
                .out
                .write_all(line.as_bytes())
                .and_then(|()| self.out.write_all(b"\n"))
        {
            self.error = Some(e);
        }
        self.commits.push(commit);
    }

    fn finish(self) -> std::io::Result<Vec<Micros>> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.commits),
        }
    }
}

/// What the three systems emitted (the events themselves went to the
/// [`Sink`]s).
#[derive(Clone, Debug, Default)]
pub struct Generated {
    /// The commit time of each event of each source (transfers, ledger,
    /// bank), in emission order.
    pub commits: [Vec<Micros>; 3],
    /// The injected discrepancies.
    pub expected: Vec<Expected>,
    /// When business starts.
    pub start: Micros,
    /// When the last transfer starts.
    pub end: Micros,
}

/// Parameters of the simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of transfers.
    pub transfers: usize,
    /// PRNG seed.
    pub seed: u64,
    /// When business starts (Unix microseconds).
    pub start: Micros,
    /// Transfers started per second of simulated time (at most).
    pub rate: f64,
    /// The shortest business period, so that small runs still span a stall.
    pub min_duration: Micros,
    /// One transfer in this many gets a discrepancy (at least five in all).
    pub discrepancy_every: usize,
    /// The SLA of bank payments after completion.
    pub sla: Micros,
    /// When the bank's Debezium connector starts (snapshot), after `start`.
    pub snapshot_after: Micros,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            transfers: 2000,
            seed: 1,
            // 2024-03-01T12:00:00Z
            start: 1_709_294_400 * SECOND,
            rate: 30.0,
            min_duration: 15 * 60 * SECOND,
            discrepancy_every: 250,
            sla: crate::payments::checks::SLA_SECS as i64 * SECOND,
            snapshot_after: 30 * SECOND,
        }
    }
}

impl SimConfig {
    /// How long business lasts.
    pub fn duration(&self) -> Micros {
        let by_rate = (self.transfers as f64 / self.rate * SECOND as f64) as Micros;
        by_rate.max(self.min_duration)
    }
}

// ---------------------------------------------------------------------------
// Time formatting
// ---------------------------------------------------------------------------

/// A chrono pattern, parsed once: formatting with a pattern string parses
/// it again for every time formatted (a third of the cost of generating
/// the input, which formats several times per event).
type Pattern = LazyLock<Vec<Item<'static>>>;

static ISO_MILLIS: Pattern = LazyLock::new(|| StrftimeItems::new("%Y-%m-%dT%H:%M:%S%.3fZ").collect());
static ISO_MICROS: Pattern = LazyLock::new(|| StrftimeItems::new("%Y-%m-%dT%H:%M:%S%.6fZ").collect());
static PG_TIMESTAMP: Pattern = LazyLock::new(|| StrftimeItems::new("%Y-%m-%d %H:%M:%S%.6f+00").collect());

/// A Unix time in microseconds formatted with `pattern` (UTC).
fn format_utc(us: Micros, pattern: &Pattern) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(
        || format!("<out of range: {us} us>"),
        |t| t.format_with_items(pattern.iter()).to_string(),
    )
}

/// `2024-03-01T12:00:00.123Z` (MongoDB `$date`, milliseconds).
pub fn iso_millis(us: Micros) -> String {
    format_utc(us, &ISO_MILLIS)
}

/// `2024-03-01T12:00:00.123456Z` (Debezium `ZonedTimestamp`).
pub fn iso_micros(us: Micros) -> String {
    format_utc(us, &ISO_MICROS)
}

/// `2024-03-01 12:00:00.123456+00` (Postgres `timestamptz` output).
pub fn pg_timestamp(us: Micros) -> String {
    format_utc(us, &PG_TIMESTAMP)
}

fn decimal(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let a = minor.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

fn millis(us: Micros) -> Micros {
    us - us.rem_euclid(1000)
}

// ---------------------------------------------------------------------------
// The stories
// ---------------------------------------------------------------------------

const CURRENCIES: [&str; 3] = ["USD", "EUR", "GBP"];
const CHANNELS: [&str; 4] = ["card", "sepa", "ach", "wallet"];
const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-south-1"];

/// A transfer document as the transfers service keeps it.
#[derive(Clone, Debug)]
struct Doc {
    id: String,
    user: String,
    amount: i64,
    ccy: &'static str,
    status: &'static str,
    channel: &'static str,
    ip: Option<String>,
    region: Option<&'static str>,
    attempt: u32,
    promo: Option<String>,
    corrected: bool,
    schema: Option<u32>,
    history: Vec<(&'static str, Micros)>,
    created: Micros,
    updated: Micros,
    ledger_tx: Option<String>,
    completed: Option<Micros>,
    failure: Option<&'static str>,
}

fn date(us: Micros) -> String {
    format!(r#"{{"$date":"{}"}}"#, iso_millis(us))
}

fn history_item(status: &str, at: Micros) -> String {
    format!(r#"{{"status":"{status}","at":{}}}"#, date(at))
}

impl Doc {
    fn json(&self) -> String {
        let mut s = String::with_capacity(512);
        let _ = write!(
            s,
            r#"{{"_id":"{}","user_id":"{}","amount":{{"$numberDecimal":"{}"}},"currency":"{}","status":"{}","channel":"{}","meta":{{"#,
            self.id,
            self.user,
            decimal(self.amount),
            self.ccy,
            self.status,
            self.channel
        );
        let mut meta: Vec<String> = Vec::new();
        if let Some(ip) = &self.ip {
            meta.push(format!(r#""ip":"{ip}""#));
        }
        if let Some(region) = self.region {
            meta.push(format!(r#""region":"{region}""#));
        }
        meta.push(format!(r#""attempt":{}"#, self.attempt));
        if let Some(promo) = &self.promo {
            meta.push(format!(r#""promo_code":"{promo}""#));
        }
        if self.corrected {
            meta.push(r#""corrected":true"#.to_owned());
        }
        if let Some(v) = self.schema {
            meta.push(format!(r#""schema":{v}"#));
        }
        s.push_str(&meta.join(","));
        s.push_str(r#"},"status_history":["#);
        let items: Vec<String> = self
            .history
            .iter()
            .map(|(st, at)| history_item(st, *at))
            .collect();
        s.push_str(&items.join(","));
        let _ = write!(
            s,
            r#"],"created_at":{},"updated_at":{}"#,
            date(self.created),
            date(self.updated)
        );
        if let Some(tx) = &self.ledger_tx {
            let _ = write!(s, r#","ledger_tx_id":"{tx}""#);
        }
        if let Some(c) = self.completed {
            let _ = write!(s, r#","completed_at":{}"#, date(c));
        }
        if let Some(f) = self.failure {
            let _ = write!(s, r#","failure_reason":"{f}""#);
        }
        s.push('}');
        s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MongoKind {
    Insert,
    Update,
    Replace,
    Delete,
}

#[derive(Debug)]
struct MongoOp {
    at: Micros,
    seq: u64,
    transfer: u32,
    kind: MongoKind,
    /// What follows `documentKey` in the event.
    body: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Account {
    User(u32, u8),
    Omnibus(u8),
}

impl Account {
    fn name(self) -> String {
        match self {
            Account::User(u, c) => format!("user:u-{u:06}:{}", CURRENCIES[c as usize]),
            Account::Omnibus(c) => format!("omnibus:{}", CURRENCIES[c as usize]),
        }
    }
}

#[derive(Debug)]
struct PostRow {
    account: Account,
    amount: i64,
    handle: Option<u32>,
    /// Added to the row's `balance_after` (an injected chain break).
    break_by: i64,
}

#[derive(Debug)]
enum LedgerKind {
    Post { transfer: u32, rows: Vec<PostRow> },
    Fix { handle: u32, amount: i64 },
    Remove { handle: u32 },
}

#[derive(Debug)]
struct LedgerOp {
    at: Micros,
    seq: u64,
    kind: LedgerKind,
}

#[derive(Debug)]
enum BankKind {
    Insert {
        handle: u32,
        transfer: u32,
        amount: i64,
        ccy: u8,
        state: &'static str,
    },
    Update {
        handle: u32,
        state: &'static str,
    },
    Delete {
        handle: u32,
    },
}

#[derive(Debug)]
struct BankOp {
    at: Micros,
    seq: u64,
    kind: BankKind,
}

/// Collects the operations of every story, to be applied in commit order.
#[derive(Default)]
struct Plan {
    mongo: Vec<MongoOp>,
    ledger: Vec<LedgerOp>,
    bank: Vec<BankOp>,
    seq: u64,
    handles: u32,
    expected: Vec<Expected>,
}

impl Plan {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn handle(&mut self) -> u32 {
        self.handles += 1;
        self.handles
    }

    fn mongo(&mut self, at: Micros, transfer: u32, kind: MongoKind, body: String) {
        let seq = self.next_seq();
        self.mongo.push(MongoOp {
            at: millis(at),
            seq,
            transfer,
            kind,
            body,
        });
    }

    fn update(
        &mut self,
        at: Micros,
        transfer: u32,
        set: &[String],
        removed: &[&str],
        truncated: &[(&str, usize)],
    ) {
        let removed: Vec<String> = removed.iter().map(|r| format!("\"{r}\"")).collect();
        let truncated: Vec<String> = truncated
            .iter()
            .map(|(f, n)| format!(r#"{{"field":"{f}","newSize":{n}}}"#))
            .collect();
        let body = format!(
            r#","updateDescription":{{"updatedFields":{{{}}},"removedFields":[{}],"truncatedArrays":[{}]}}"#,
            set.join(","),
            removed.join(","),
            truncated.join(",")
        );
        self.mongo(at, transfer, MongoKind::Update, body);
    }

    fn insert_doc(&mut self, at: Micros, transfer: u32, doc: &Doc) {
        self.mongo(
            at,
            transfer,
            MongoKind::Insert,
            format!(r#","fullDocument":{}"#, doc.json()),
        );
    }

    fn replace_doc(&mut self, at: Micros, transfer: u32, doc: &Doc) {
        self.mongo(
            at,
            transfer,
            MongoKind::Replace,
            format!(r#","fullDocument":{}"#, doc.json()),
        );
    }

    fn ledger(&mut self, at: Micros, kind: LedgerKind) {
        let seq = self.next_seq();
        self.ledger.push(LedgerOp { at, seq, kind });
    }

    fn bank(&mut self, at: Micros, kind: BankKind) {
        let seq = self.next_seq();
        self.bank.push(BankOp {
            at: millis(at),
            seq,
            kind,
        });
    }

    fn expect(&mut self, kind: Kind, doc: &Doc, at: Micros) {
        self.expected.push(Expected {
            kind,
            transfer_id: doc.id.clone(),
            observable_at: Some(at),
        });
    }
}

/// What happens to one transfer after processing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Completed,
    /// The bank rejected the payment.
    Rejected,
    /// Declined by risk before any bank payment.
    Declined,
    /// The bank settled, then returned the payment.
    Returned,
}

struct Story<'a> {
    plan: &'a mut Plan,
    rng: &'a mut Rng,
    cfg: &'a SimConfig,
    index: u32,
    doc: Doc,
    user: Account,
    omnibus: Account,
    ccy: u8,
    injected: Option<Kind>,
}

impl Story<'_> {
    fn set_status(&mut self, status: &'static str, at: Micros) -> Vec<String> {
        self.doc.status = status;
        self.doc.updated = millis(at);
        self.doc.history.push((status, millis(at)));
        vec![
            format!(r#""status":"{status}""#),
            format!(
                r#""status_history.{}":{}"#,
                self.doc.history.len() - 1,
                history_item(status, millis(at))
            ),
            format!(r#""updated_at":{}"#, date(at)),
        ]
    }

    fn run(mut self, t0: Micros) {
        let i = self.index;
        self.plan.insert_doc(t0, i, &self.doc);
        if self.injected.is_none() && self.rng.chance(0.01) {
            // Abandoned by the user before processing: deleted.
            let at = t0 + self.rng.secs(5.0, 30.0);
            self.plan.mongo(at, i, MongoKind::Delete, String::new());
            return;
        }
        let mut t = t0;
        if self.injected.is_none() && self.rng.chance(0.08) {
            // The amount is corrected before processing.
            t += self.rng.secs(1.0, 3.0);
            let new_amount = (self.doc.amount + self.rng.range(-5_000, 5_000)).max(100);
            self.doc.amount = new_amount;
            self.doc.corrected = true;
            self.doc.updated = millis(t);
            let removed: Vec<&str> = if self.doc.promo.take().is_some() {
                vec!["meta.promo_code"]
            } else {
                vec![]
            };
            let set = vec![
                format!(r#""amount":{{"$numberDecimal":"{}"}}"#, decimal(new_amount)),
                r#""meta.corrected":true"#.to_owned(),
                format!(r#""updated_at":{}"#, date(t)),
            ];
            self.plan.update(t, i, &set, &removed, &[]);
        }
        // Processing.
        let tp = t + self.rng.secs(1.0, 6.0);
        let mut set = self.set_status("processing", tp);
        self.doc.attempt += 1;
        set.push(format!(r#""meta.attempt":{}"#, self.doc.attempt));
        let removed: Vec<&str> = if self.rng.chance(0.5) && self.doc.ip.take().is_some() {
            vec!["meta.ip"]
        } else {
            vec![]
        };
        self.plan.update(tp, i, &set, &removed, &[]);

        // The ledger posts the debit when processing starts.
        let tl = tp + self.rng.secs(0.2, 2.0);
        self.post(tl);

        let outcome = match self.injected {
            Some(Kind::FailedButSettled) => Outcome::Returned,
            Some(_) => Outcome::Completed,
            None if self.rng.chance(0.05) => match self.rng.below(5) {
                0 => Outcome::Declined,
                1 => Outcome::Returned,
                _ => Outcome::Rejected,
            },
            None => Outcome::Completed,
        };
        match outcome {
            Outcome::Completed => self.complete(tp),
            Outcome::Declined => {
                let tf = tp + self.rng.secs(1.0, 5.0);
                self.fail(tf, "risk_declined");
            }
            Outcome::Rejected => {
                let at = tp + self.rng.secs(1.0, 5.0);
                let (handle, tb) = self.bank_insert(at, self.doc.amount);
                let tr = tb + self.rng.secs(2.0, 20.0);
                self.plan.bank(
                    tr,
                    BankKind::Update {
                        handle,
                        state: "rejected",
                    },
                );
                let tf = tr + self.rng.secs(0.5, 5.0);
                self.fail(tf, "bank_rejected");
            }
            Outcome::Returned => {
                let at = tp + self.rng.secs(1.0, 5.0);
                let (handle, tb) = self.bank_insert(at, self.doc.amount);
                let ts = tb + self.rng.secs(2.0, 25.0);
                self.plan.bank(
                    ts,
                    BankKind::Update {
                        handle,
                        state: "settled",
                    },
                );
                if self.injected == Some(Kind::FailedButSettled) {
                    // The transfer times out and fails, but the bank settled
                    // (and never returns the money).
                    let tf = ts + self.rng.secs(0.5, 5.0);
                    self.fail(tf, "timeout");
                    let doc_ts = millis(tf).max(millis(ts));
                    let doc = self.doc.clone();
                    self.plan.expect(Kind::FailedButSettled, &doc, doc_ts);
                } else {
                    let tr = ts + self.rng.secs(3.0, 20.0);
                    self.plan.bank(
                        tr,
                        BankKind::Update {
                            handle,
                            state: "returned",
                        },
                    );
                    let tf = tr + self.rng.secs(0.5, 5.0);
                    self.fail(tf, "bank_returned");
                }
            }
        }
    }

    /// The ledger's posting: a debit on the user's account, a credit on the
    /// omnibus account; sometimes fixed later, or duplicated and cleaned up.
    fn post(&mut self, tl: Micros) {
        let amount = self.doc.amount;
        let user_handle = self.plan.handle();
        let fix = self.injected.is_none() && self.rng.chance(0.03);
        let dup = self.injected.is_none() && !fix && self.rng.chance(0.02);
        let debit = if fix {
            -(amount + self.rng.range(1, 900))
        } else {
            -amount
        };
        let credit = if self.injected == Some(Kind::LedgerImbalance) {
            amount - self.rng.range(1, 99)
        } else {
            amount
        };
        let break_by = if self.injected == Some(Kind::BalanceChainBreak) {
            if self.rng.chance(0.5) {
                self.rng.range(1, 10_000)
            } else {
                -self.rng.range(1, 10_000)
            }
        } else {
            0
        };
        let rows = vec![
            PostRow {
                account: self.user,
                amount: debit,
                handle: Some(user_handle),
                break_by,
            },
            PostRow {
                account: self.omnibus,
                amount: credit,
                handle: None,
                break_by: 0,
            },
        ];
        self.plan.ledger(
            tl,
            LedgerKind::Post {
                transfer: self.index,
                rows,
            },
        );
        if fix {
            let at = tl + self.rng.secs(2.0, 50.0);
            self.plan.ledger(
                at,
                LedgerKind::Fix {
                    handle: user_handle,
                    amount: -amount,
                },
            );
        }
        if dup {
            let at = tl + self.rng.secs(0.5, 10.0);
            let handle = self.plan.handle();
            let rows = vec![PostRow {
                account: self.user,
                amount: -amount,
                handle: Some(handle),
                break_by: 0,
            }];
            self.plan.ledger(
                at,
                LedgerKind::Post {
                    transfer: self.index,
                    rows,
                },
            );
            let removed = at + self.rng.secs(5.0, 45.0);
            self.plan.ledger(removed, LedgerKind::Remove { handle });
        }
        if matches!(
            self.injected,
            Some(Kind::LedgerImbalance | Kind::BalanceChainBreak)
        ) {
            let doc = self.doc.clone();
            let kind = self.injected.unwrap_or(Kind::LedgerImbalance);
            self.plan.expect(kind, &doc, tl);
        }
        self.doc.ledger_tx = Some(format!("lt-{}-{}", self.index, tl / 1000));
    }

    fn bank_insert(&mut self, at: Micros, amount: i64) -> (u32, Micros) {
        let handle = self.plan.handle();
        self.plan.bank(
            at,
            BankKind::Insert {
                handle,
                transfer: self.index,
                amount,
                ccy: self.ccy,
                state: "pending",
            },
        );
        (handle, at)
    }

    /// A pending bank attempt, maybe deleted and re-created under a new id,
    /// then settled. Returns the settlement's commit time.
    fn bank_payment(&mut self, at: Micros, amount: i64, recreate: bool) -> Micros {
        let (mut handle, tb) = self.bank_insert(at, amount);
        let mut t = tb;
        if recreate {
            let deleted = tb + self.rng.secs(2.0, 15.0);
            self.plan.bank(deleted, BankKind::Delete { handle });
            let again = deleted + self.rng.secs(1.0, 10.0);
            (handle, t) = self.bank_insert(again, amount);
        }
        let ts = t + self.rng.secs(2.0, 20.0);
        self.plan.bank(
            ts,
            BankKind::Update {
                handle,
                state: "settled",
            },
        );
        ts
    }

    fn complete(&mut self, tp: Micros) {
        let bank_amount = if self.injected == Some(Kind::AmountMismatch) {
            let off = self.rng.range(1, 5_000);
            if self.rng.chance(0.5) || self.doc.amount <= off {
                self.doc.amount + off
            } else {
                self.doc.amount - off
            }
        } else {
            self.doc.amount
        };
        let recreate = self.rng.chance(0.03);
        let tc;
        match self.injected {
            Some(Kind::MissingBankPayment) => {
                tc = tp + self.rng.secs(3.0, 20.0);
                self.completed(tc);
                let doc = self.doc.clone();
                self.plan
                    .expect(Kind::MissingBankPayment, &doc, millis(tc) + self.cfg.sla);
            }
            _ if self.rng.chance(0.10) => {
                // The bank payment is committed after the transfer completed.
                tc = tp + self.rng.secs(3.0, 20.0);
                self.completed(tc);
                let at = tc + self.rng.secs(1.0, 20.0);
                let ts = self.bank_payment(at, bank_amount, false);
                self.mismatch_observable(ts);
            }
            _ => {
                let at = tp + self.rng.secs(1.0, 5.0);
                let ts = self.bank_payment(at, bank_amount, recreate);
                tc = ts + self.rng.secs(0.5, 5.0);
                self.completed(tc);
                self.mismatch_observable(ts);
            }
        }
        if self.rng.chance(0.15) {
            // A later clean-up trims the history and drops the region.
            let at = tc + self.rng.secs(1.0, 30.0);
            self.doc.history.truncate(1);
            self.doc.updated = millis(at);
            let removed: Vec<&str> = if self.doc.region.take().is_some() {
                vec!["meta.region"]
            } else {
                vec![]
            };
            let set = vec![format!(r#""updated_at":{}"#, date(at))];
            self.plan
                .update(at, self.index, &set, &removed, &[("status_history", 1)]);
        }
    }

    fn mismatch_observable(&mut self, settled: Micros) {
        if self.injected == Some(Kind::AmountMismatch) {
            let doc = self.doc.clone();
            self.plan.expect(Kind::AmountMismatch, &doc, millis(settled));
        }
    }

    fn completed(&mut self, tc: Micros) {
        let mut set = self.set_status("completed", tc);
        self.doc.completed = Some(millis(tc));
        if self.rng.chance(0.02) {
            // A back-office tool rewrites the whole document.
            self.doc.schema = Some(2);
            self.plan.replace_doc(tc, self.index, &self.doc);
            return;
        }
        if let Some(tx) = &self.doc.ledger_tx {
            set.push(format!(r#""ledger_tx_id":"{tx}""#));
        }
        set.push(format!(r#""completed_at":{}"#, date(tc)));
        self.plan.update(tc, self.index, &set, &[], &[]);
    }

    fn fail(&mut self, tf: Micros, reason: &'static str) {
        let mut set = self.set_status("failed", tf);
        self.doc.failure = Some(reason);
        set.push(format!(r#""failure_reason":"{reason}""#));
        self.plan.update(tf, self.index, &set, &[], &[]);
        // The ledger reverses the debit.
        let at = tf + self.rng.secs(0.5, 5.0);
        let amount = self.doc.amount;
        let rows = vec![
            PostRow {
                account: self.user,
                amount,
                handle: None,
                break_by: 0,
            },
            PostRow {
                account: self.omnibus,
                amount: -amount,
                handle: None,
                break_by: 0,
            },
        ];
        self.plan.ledger(
            at,
            LedgerKind::Post {
                transfer: self.index,
                rows,
            },
        );
    }
}

/// The id of transfer number `index`.
pub fn transfer_id(index: u32) -> String {
    format!("tr-{:08}", index + 1)
}

/// Runs the simulation: every story, then the three databases in commit
/// order, writing each source's events to its writer in `outs` (transfers,
/// ledger, bank).
pub fn generate(cfg: &SimConfig, outs: [&mut dyn Write; 3]) -> std::io::Result<Generated> {
    let mut rng = Rng::new(cfg.seed);
    let n = cfg.transfers;
    let duration = cfg.duration();
    let slot = duration / n.max(1) as Micros;
    let users = (n / 3).max(10) as u64;

    // Which transfers get a discrepancy: after the snapshot era, and early
    // enough that every delay ends before the input does.
    let mut injected: HashMap<u32, Kind> = HashMap::new();
    let wanted = (n / cfg.discrepancy_every.max(1)).max(5).min(n / 8);
    let lo = (n / 20).max(1) as u64;
    let hi = (n as u64).saturating_sub(lo).max(lo + 1);
    let mut taken: HashSet<u32> = HashSet::new();
    let mut k = 0;
    while injected.len() < wanted && taken.len() < n {
        let i = (lo + rng.below(hi - lo)) as u32;
        if taken.insert(i) {
            injected.insert(i, Kind::ALL[k % Kind::ALL.len()]);
            k += 1;
        }
    }

    let mut plan = Plan::default();
    for i in 0..n as u32 {
        let t0 = cfg.start + i as Micros * slot + rng.below(slot.max(1) as u64) as Micros;
        let uid = rng.below(users) as u32;
        let ccy = match rng.below(10) {
            0..=5 => 0u8,
            6..=8 => 1,
            _ => 2,
        };
        let amount = 100 + rng.below(300_000) as i64;
        let doc = Doc {
            id: transfer_id(i),
            user: format!("u-{uid:06}"),
            amount,
            ccy: CURRENCIES[ccy as usize],
            status: "created",
            channel: CHANNELS[rng.below(4) as usize],
            ip: Some(format!(
                "10.{}.{}.{}",
                rng.below(256),
                rng.below(256),
                rng.below(256)
            )),
            region: Some(REGIONS[rng.below(3) as usize]),
            attempt: 1,
            promo: rng.chance(0.2).then(|| format!("PROMO{}", rng.below(100))),
            corrected: false,
            schema: None,
            history: vec![("created", millis(t0))],
            created: millis(t0),
            updated: millis(t0),
            ledger_tx: None,
            completed: None,
            failure: None,
        };
        let story = Story {
            plan: &mut plan,
            rng: &mut rng,
            cfg,
            index: i,
            doc,
            user: Account::User(uid, ccy),
            omnibus: Account::Omnibus(ccy),
            ccy,
            injected: injected.get(&i).copied(),
        };
        story.run(t0);
    }

    let Plan {
        mut mongo,
        mut ledger,
        mut bank,
        mut expected,
        ..
    } = plan;
    mongo.sort_by_key(|o| (o.at, o.seq));
    ledger.sort_by_key(|o| (o.at, o.seq));
    bank.sort_by_key(|o| (o.at, o.seq));
    expected.sort_by(|a, b| a.transfer_id.cmp(&b.transfer_id));
    let [t, l, b] = outs;
    let mut sink = Sink::new(t);
    emit_mongo(mongo, &mut sink);
    let transfers = sink.finish()?;
    let mut sink = Sink::new(l);
    emit_ledger(ledger, &mut sink);
    let ledger = sink.finish()?;
    let mut sink = Sink::new(b);
    emit_bank(bank, cfg.start + cfg.snapshot_after, &mut sink);
    let bank = sink.finish()?;
    Ok(Generated {
        commits: [transfers, ledger, bank],
        expected,
        start: cfg.start,
        end: cfg.start + duration,
    })
}

// ---------------------------------------------------------------------------
// MongoDB change stream
// ---------------------------------------------------------------------------

fn emit_mongo(ops: Vec<MongoOp>, out: &mut Sink<'_>) {
    let mut last_sec = -1;
    let mut s = String::with_capacity(2048);
    let mut inc = 0u32;
    for op in ops {
        let sec = op.at.div_euclid(SECOND);
        if sec == last_sec {
            inc += 1;
        } else {
            last_sec = sec;
            inc = 1;
        }
        let id = transfer_id(op.transfer);
        let kind = match op.kind {
            MongoKind::Insert => "insert",
            MongoKind::Update => "update",
            MongoKind::Replace => "replace",
            MongoKind::Delete => "delete",
        };
        s.clear();
        let _ = write!(
            s,
            r#"{{"_id":{{"_data":"82{sec:08X}{inc:08X}2B042C0100296E5A1004{}"}},"operationType":"{kind}","clusterTime":{{"$timestamp":{{"t":{sec},"i":{inc}}}}},"wallTime":{},"ns":{{"db":"payments","coll":"transfers"}},"documentKey":{{"_id":"{id}"}}"#,
            hex_of(&id),
            date(op.at)
        );
        s.push_str(&op.body);
        s.push('}');
        out.push(op.at, &s);
    }
}

fn hex_of(text: &str) -> String {
    text.bytes()
        .fold(String::with_capacity(text.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02X}");
            s
        })
}

// ---------------------------------------------------------------------------
// The ledger, through wal2json
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Row {
    transfer: u32,
    account: Account,
    amount: i64,
    balance: i64,
    created: Micros,
}

struct Ledger<'s, 'w> {
    next_id: i64,
    xid: u64,
    lsn: u64,
    balances: HashMap<Account, i64>,
    /// Live rows of user accounts, by id (omnibus rows are never changed).
    rows: HashMap<i64, Row>,
    /// Live row ids of each user account, ascending.
    by_account: HashMap<Account, Vec<i64>>,
    handles: HashMap<u32, i64>,
    out: &'s mut Sink<'w>,
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

impl Ledger<'_, '_> {
    fn line(&mut self, at: Micros, text: String) {
        self.out.push(at, &text);
    }

    fn next_lsn(&mut self) -> String {
        self.lsn += 0x38 + (self.lsn % 7) * 8;
        lsn_text(self.lsn)
    }

    fn begin(&mut self, at: Micros) {
        self.xid += 1;
        let lsn = self.next_lsn();
        let text = format!(
            r#"{{"action":"B","xid":{},"timestamp":"{}","lsn":"{lsn}"}}"#,
            self.xid,
            pg_timestamp(at)
        );
        self.line(at, text);
    }

    fn commit(&mut self, at: Micros) {
        let lsn = self.next_lsn();
        let text = format!(
            r#"{{"action":"C","xid":{},"timestamp":"{}","lsn":"{lsn}"}}"#,
            self.xid,
            pg_timestamp(at)
        );
        self.line(at, text);
    }

    fn row_line(&mut self, action: &str, at: Micros, id: i64, row: &Row) {
        let lsn = self.next_lsn();
        let mut s = String::with_capacity(520);
        let _ = write!(
            s,
            r#"{{"action":"{action}","xid":{},"timestamp":"{}","lsn":"{lsn}","schema":"public","table":"ledger_entries","columns":[{{"name":"id","type":"bigint","value":{id}}},{{"name":"transfer_id","type":"text","value":"{}"}},{{"name":"account","type":"text","value":"{}"}},{{"name":"amount_minor","type":"bigint","value":{}}},{{"name":"currency","type":"text","value":"{}"}},{{"name":"balance_after","type":"bigint","value":{}}},{{"name":"created_at","type":"timestamp with time zone","value":"{}"}}]"#,
            self.xid,
            pg_timestamp(at),
            transfer_id(row.transfer),
            row.account.name(),
            row.amount,
            CURRENCIES[match row.account {
                Account::User(_, c) | Account::Omnibus(c) => c as usize,
            }],
            row.balance,
            pg_timestamp(row.created)
        );
        if action == "U" {
            let _ = write!(s, r#","identity":[{{"name":"id","type":"bigint","value":{id}}}]"#);
        }
        s.push('}');
        self.line(at, s);
    }

    fn delete_line(&mut self, at: Micros, id: i64) {
        let lsn = self.next_lsn();
        let text = format!(
            r#"{{"action":"D","xid":{},"timestamp":"{}","lsn":"{lsn}","schema":"public","table":"ledger_entries","identity":[{{"name":"id","type":"bigint","value":{id}}}]}}"#,
            self.xid,
            pg_timestamp(at)
        );
        self.line(at, text);
    }

    /// Shifts the running balance of every live row of `account` after `id`
    /// by `delta`, writing the updates (the repair of a corrected ledger).
    fn shift_after(&mut self, at: Micros, account: Account, id: i64, delta: i64) {
        let later: Vec<i64> = self
            .by_account
            .get(&account)
            .map(|ids| ids.iter().copied().filter(|&r| r > id).collect())
            .unwrap_or_default();
        for r in later {
            if let Some(row) = self.rows.get_mut(&r) {
                row.balance += delta;
                let row = row.clone();
                self.row_line("U", at, r, &row);
            }
        }
        *self.balances.entry(account).or_default() += delta;
    }

    fn apply(&mut self, op: &LedgerOp) {
        let at = op.at;
        self.begin(at);
        match &op.kind {
            LedgerKind::Post { transfer, rows } => {
                for r in rows {
                    self.next_id += 1;
                    let id = self.next_id;
                    let balance = self.balances.entry(r.account).or_default();
                    *balance += r.amount + r.break_by;
                    let row = Row {
                        transfer: *transfer,
                        account: r.account,
                        amount: r.amount,
                        balance: *balance,
                        created: at,
                    };
                    self.row_line("I", at, id, &row);
                    if let Account::User(..) = r.account {
                        self.by_account.entry(r.account).or_default().push(id);
                        self.rows.insert(id, row);
                    }
                    if let Some(h) = r.handle {
                        self.handles.insert(h, id);
                    }
                }
            }
            LedgerKind::Fix { handle, amount } => {
                if let Some(&id) = self.handles.get(handle)
                    && let Some(row) = self.rows.get_mut(&id)
                {
                    let delta = *amount - row.amount;
                    row.amount = *amount;
                    row.balance += delta;
                    let (row, account) = (row.clone(), row.account);
                    self.row_line("U", at, id, &row);
                    self.shift_after(at, account, id, delta);
                }
            }
            LedgerKind::Remove { handle } => {
                if let Some(&id) = self.handles.get(handle)
                    && let Some(row) = self.rows.remove(&id)
                {
                    self.delete_line(at, id);
                    if let Some(ids) = self.by_account.get_mut(&row.account) {
                        ids.retain(|&r| r != id);
                    }
                    self.shift_after(at, row.account, id, -row.amount);
                }
            }
        }
        self.commit(at);
    }
}

fn emit_ledger(ops: Vec<LedgerOp>, out: &mut Sink<'_>) {
    let mut ledger = Ledger {
        next_id: 0,
        xid: 730,
        lsn: 0x16B_3748,
        balances: HashMap::new(),
        rows: HashMap::new(),
        by_account: HashMap::new(),
        handles: HashMap::new(),
        out,
    };
    for op in &ops {
        ledger.apply(op);
    }
}

// ---------------------------------------------------------------------------
// The bank, through Debezium
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Payment {
    transfer: u32,
    amount: i64,
    ccy: u8,
    state: &'static str,
    updated: Micros,
}

fn payment_json(id: i64, p: &Payment) -> String {
    format!(
        r#"{{"id":{id},"transfer_id":"{}","amount_minor":{},"currency":"{}","state":"{}","updated_at":"{}"}}"#,
        transfer_id(p.transfer),
        p.amount,
        CURRENCIES[p.ccy as usize],
        p.state,
        iso_micros(p.updated)
    )
}

struct Bank<'s, 'w> {
    next_id: i64,
    lsn: u64,
    tx: u64,
    rows: std::collections::BTreeMap<i64, Payment>,
    handles: HashMap<u32, i64>,
    out: &'s mut Sink<'w>,
}

impl Bank<'_, '_> {
    fn event(&mut self, op: &str, at: Micros, before: Option<String>, after: Option<String>, snapshot: &str) {
        let ms = at / 1000;
        let text = format!(
            r#"{{"before":{},"after":{},"source":{{"version":"2.7.0.Final","connector":"postgresql","name":"bank","ts_ms":{ms},"snapshot":"{snapshot}","db":"bank","sequence":"[null,\"{}\"]","schema":"public","table":"bank_payments","txId":{},"lsn":{},"xmin":null}},"op":"{op}","ts_ms":{},"transaction":null}}"#,
            before.as_deref().unwrap_or("null"),
            after.as_deref().unwrap_or("null"),
            self.lsn,
            self.tx,
            self.lsn,
            ms + 37
        );
        self.out.push(ms * 1000, &text);
    }

    fn apply(&mut self, op: &BankOp, emit: bool) {
        let at = op.at;
        self.tx += 1;
        self.lsn += 0x98;
        match &op.kind {
            BankKind::Insert {
                handle,
                transfer,
                amount,
                ccy,
                state,
            } => {
                self.next_id += 1;
                let id = self.next_id;
                let p = Payment {
                    transfer: *transfer,
                    amount: *amount,
                    ccy: *ccy,
                    state,
                    updated: at,
                };
                if emit {
                    self.event("c", at, None, Some(payment_json(id, &p)), "false");
                }
                self.rows.insert(id, p);
                self.handles.insert(*handle, id);
            }
            BankKind::Update { handle, state } => {
                if let Some(&id) = self.handles.get(handle)
                    && let Some(p) = self.rows.get_mut(&id)
                {
                    let before = payment_json(id, p);
                    p.state = state;
                    p.updated = at;
                    let after = payment_json(id, p);
                    if emit {
                        self.event("u", at, Some(before), Some(after), "false");
                    }
                }
            }
            BankKind::Delete { handle } => {
                if let Some(&id) = self.handles.get(handle)
                    && let Some(p) = self.rows.remove(&id)
                    && emit
                {
                    self.event("d", at, Some(payment_json(id, &p)), None, "false");
                }
            }
        }
    }

    /// The connector's initial snapshot: every row that exists, as `r`.
    fn snapshot(&mut self, at: Micros) {
        self.lsn += 0x1000;
        let rows: Vec<(i64, Payment)> = self.rows.iter().map(|(id, p)| (*id, p.clone())).collect();
        let n = rows.len();
        for (k, (id, p)) in rows.into_iter().enumerate() {
            let marker = match (k, n) {
                (0, _) => "first",
                (k, n) if k + 1 == n => "last",
                _ => "true",
            };
            self.event("r", at, None, Some(payment_json(id, &p)), marker);
        }
    }
}

fn emit_bank(ops: Vec<BankOp>, snapshot_at: Micros, out: &mut Sink<'_>) {
    let mut bank = Bank {
        next_id: 5000,
        lsn: 0x2A0_0000,
        tx: 9100,
        rows: Default::default(),
        handles: HashMap::new(),
        out,
    };
    let mut snapshotted = false;
    for op in &ops {
        if !snapshotted && op.at >= snapshot_at {
            bank.snapshot(snapshot_at);
            snapshotted = true;
        }
        bank.apply(op, snapshotted);
    }
    if !snapshotted {
        bank.snapshot(snapshot_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(iso_millis(1_709_294_400_123_456), "2024-03-01T12:00:00.123Z");
        assert_eq!(iso_micros(1_709_294_400_123_456), "2024-03-01T12:00:00.123456Z");
        assert_eq!(
            pg_timestamp(1_709_294_400_123_456),
            "2024-03-01 12:00:00.123456+00"
        );
        assert_eq!(decimal(1234), "12.34");
        assert_eq!(decimal(5), "0.05");
    }
}
