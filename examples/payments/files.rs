//! The simulation's input as files: one JSON Lines file per source and an
//! optional `expected.json`, so a run can be reproduced from files, and
//! files made by another tool can be replayed and scored.
//!
//! | file | content |
//! |---|---|
//! | `transfers.mongo.jsonl` | MongoDB change events, one per line |
//! | `ledger.wal2json.jsonl` | wal2json `format-version` 2 lines |
//! | `bank.debezium.jsonl` | Debezium values |
//! | `expected.json` | `{"discrepancies": [{"kind", "transfer_id", "observable_at"?}]}` |
//!
//! Kinds are `amount_mismatch`, `missing_bank_payment`, `ledger_imbalance`,
//! `failed_but_settled`, `balance_chain_break`; `observable_at` (RFC 3339,
//! optional) is when the discrepancy became observable on source time.
//!
//! Generated input is always written to files (a temporary directory unless
//! `--write-input` names one) and streamed back in delivery order, so a run
//! holds only the commit time of each event in memory, never the events.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use overseer_builders::{FormatName, FormatOptions};
use overseer_core::{BoxError, Consumed, Timestamp};
use serde_json::{Value, json};

use crate::payments::sim::{self, Expected, Kind, Micros, SimConfig};

/// The file of each source, in the order of
/// [`SOURCES`](crate::payments::delivery::SOURCES).
pub const FILES: [&str; 3] = [
    "transfers.mongo.jsonl",
    "ledger.wal2json.jsonl",
    "bank.debezium.jsonl",
];
/// The format of each source.
pub const FORMATS: [FormatName; 3] = [FormatName::Mongo, FormatName::Wal2json, FormatName::Debezium];
/// The expected discrepancies.
pub const EXPECTED: &str = "expected.json";

/// A directory of input files, and what the driver needs to know of them.
#[derive(Debug)]
pub struct Input {
    /// The directory holding the three files.
    pub dir: PathBuf,
    /// The commit time of each event of each source, in file order.
    pub commits: [Vec<Micros>; 3],
    /// The injected discrepancies, if known.
    pub expected: Option<Vec<Expected>>,
    /// Whether `dir` is a temporary directory, removed on drop.
    temporary: bool,
}

impl Drop for Input {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Input {
    /// Readers of the three files, positioned at their first event.
    pub fn readers(&self) -> Result<[LineReader; 3], BoxError> {
        let open = |file: &str| LineReader::open(&self.dir.join(file));
        Ok([open(FILES[0])?, open(FILES[1])?, open(FILES[2])?])
    }
}

/// Generates the simulation into `dir` (a fresh temporary directory if
/// `None`), with its `expected.json`.
pub fn generate(cfg: &SimConfig, dir: Option<&Path>) -> Result<Input, BoxError> {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let (dir, temporary) = match dir {
        Some(d) => (d.to_path_buf(), false),
        None => {
            let name = format!(
                "overseer-payments-{}-{}-{}",
                std::process::id(),
                cfg.seed,
                RUNS.fetch_add(1, Ordering::Relaxed)
            );
            (std::env::temp_dir().join(name), true)
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // From here on, a failure removes a temporary directory.
    let mut input = Input {
        dir,
        commits: Default::default(),
        expected: None,
        temporary,
    };
    let create = |file: &str| -> Result<BufWriter<std::fs::File>, BoxError> {
        let path = input.dir.join(file);
        let file =
            std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(BufWriter::with_capacity(1 << 20, file))
    };
    let (mut t, mut l, mut b) = (create(FILES[0])?, create(FILES[1])?, create(FILES[2])?);
    let generated = sim::generate(cfg, [&mut t, &mut l, &mut b])?;
    for w in [&mut t, &mut l, &mut b] {
        w.flush()?;
    }
    write_expected(&input.dir, &generated.expected)?;
    input.commits = generated.commits;
    input.expected = Some(generated.expected);
    Ok(input)
}

/// Writes `expected.json` to `dir`.
pub fn write_expected(dir: &Path, expected: &[Expected]) -> Result<(), BoxError> {
    let list: Vec<Value> = expected
        .iter()
        .map(|e| {
            json!({
                "kind": e.kind.as_str(),
                "transfer_id": e.transfer_id,
                "observable_at": e.observable_at.map(crate::payments::metrics::rfc3339),
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&json!({ "discrepancies": list }))?;
    let path = dir.join(EXPECTED);
    std::fs::write(&path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Copies the three files (and `expected.json`, if any) from `from` to `to`.
pub fn copy(from: &Path, to: &Path) -> Result<(), BoxError> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    for file in FILES.iter().chain([&EXPECTED]) {
        let source = from.join(file);
        if source.exists() {
            let target = to.join(file);
            std::fs::copy(&source, &target)
                .map_err(|e| format!("cannot copy {} to {}: {e}", source.display(), target.display()))?;
        }
    }
    Ok(())
}

/// Reads the commit times of the three files in `dir` (and its
/// `expected.json`, if present).
///
/// Each event's commit time is read with its format's consumer (an event
/// without one, or that cannot be read, takes the previous event's time; it
/// will be dead-lettered by ingestion all the same).
pub fn read(dir: &Path) -> Result<Input, BoxError> {
    let results: Vec<Result<Vec<Micros>, BoxError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = FILES
            .iter()
            .zip(FORMATS)
            .map(|(file, format)| scope.spawn(move || commit_times(&dir.join(file), format)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a reader thread panicked".into()))
            })
            .collect()
    });
    let mut commits: [Vec<Micros>; 3] = Default::default();
    for (slot, r) in commits.iter_mut().zip(results) {
        *slot = r?;
    }
    let path = dir.join(EXPECTED);
    let expected = if path.exists() {
        Some(read_expected(&path)?)
    } else {
        None
    };
    Ok(Input {
        dir: dir.to_path_buf(),
        commits,
        expected,
        temporary: false,
    })
}

fn commit_times(path: &Path, format: FormatName) -> Result<Vec<Micros>, BoxError> {
    let consumer = overseer_builders::consumer(format, FormatOptions::default())?;
    let mut reader = LineReader::open(path)?;
    let mut out = Vec::new();
    let mut last: Option<Micros> = None;
    let mut leading = 0;
    while let Some(line) = reader
        .next_line()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
    {
        let time = match consumer.consume(&line) {
            Ok(Consumed::Record(r)) => Some(r.commit_time),
            Ok(Consumed::Control { commit_time, .. }) => commit_time,
            Err(_) => None,
        };
        if let Some(t) = time {
            last = Some(t.as_micros());
        }
        match last {
            Some(t) => out.push(t),
            None => leading += 1,
        }
    }
    // An event without a time of its own (unreadable: it is dead-lettered)
    // is delivered with the event before it; those before the first event
    // with a time, with that one (not at time 0, which would stretch the
    // simulated time back to 1970).
    let first = out.first().copied().unwrap_or_default();
    out.splice(0..0, std::iter::repeat_n(first, leading));
    Ok(out)
}

/// Reads the non-empty lines of a file, one event each.
#[derive(Debug)]
pub struct LineReader {
    inner: BufReader<std::fs::File>,
    buf: Vec<u8>,
}

impl LineReader {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<Self, BoxError> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(Self {
            inner: BufReader::with_capacity(1 << 20, file),
            buf: Vec::with_capacity(4096),
        })
    }

    /// The next non-empty line, without its line ending.
    pub fn next_line(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            self.buf.clear();
            if self.inner.read_until(b'\n', &mut self.buf)? == 0 {
                return Ok(None);
            }
            let line = self.buf.trim_ascii_end();
            if !line.trim_ascii_start().is_empty() {
                return Ok(Some(Bytes::copy_from_slice(line)));
            }
        }
    }
}

fn read_expected(path: &Path) -> Result<Vec<Expected>, BoxError> {
    let bad = |why: &str| format!("{}: {why}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let list = value
        .get("discrepancies")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"discrepancies\" list"))?;
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let kind = item.get("kind").and_then(Value::as_str).unwrap_or_default();
        let kind = Kind::parse(kind).ok_or_else(|| {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            bad(&format!("unknown kind {kind:?} (known: {})", known.join(", ")))
        })?;
        let transfer_id = item
            .get("transfer_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a discrepancy without a string transfer_id"))?
            .to_owned();
        let observable_at = match item.get("observable_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(
                Timestamp::parse(t)
                    .map_err(|e| bad(&format!("observable_at of {transfer_id}: {e}")))?
                    .as_micros(),
            ),
            Some(other) => {
                return Err(bad(&format!(
                    "observable_at of {transfer_id} is {other}, not an RFC 3339 time"
                ))
                .into());
            }
        };
        out.push(Expected {
            kind,
            transfer_id,
            observable_at,
        });
    }
    Ok(out)
}
