//! Scoring a run: which injected discrepancies were detected, which
//! incidents were false alarms, time to detection, and the summary line.
//!
//! * **detected**: an injected discrepancy with an incident opened by the
//!   check of its kind for its transfer.
//! * **false alarm**: an incident opened for a transfer without an injected
//!   discrepancy, even if it resolved later.
//! * **time to detection (TTD)**: from the moment a discrepancy became
//!   observable to the opening of its incident, on simulated time (the
//!   runner's clock, which follows delivery). *Observable* is the source
//!   commit time of the change that made the systems disagree — the bank
//!   payment settling with the wrong amount, the ledger posting that does not
//!   balance or breaks the chain, the later of the failure and the
//!   settlement — and for a missing bank payment, the completion's commit
//!   time plus the SLA (before that, nothing is wrong yet). TTD therefore
//!   includes the grace period every check waits (60 s) and the delivery lag
//!   of the slowest source its view reads. With an `expected.json` that has
//!   no observable times, and for runs without one, the incident's trigger
//!   commit time stands in.
//!
//! Without an expected list (`--input` of a directory without
//! `expected.json`), `injected`, `detected` and `false_alarms` are `null`:
//! there is nothing to tell a detection from a false alarm; the `--report`
//! file lists every incident so the run can be scored elsewhere.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::payments::checks::CHECK_NAMES;
use crate::payments::sim::{Expected, Kind, Micros};

/// An incident as the run's escalation recorded it.
#[derive(Clone, Debug, PartialEq)]
pub struct IncidentRecord {
    /// The failing check.
    pub check: String,
    /// The root record's model.
    pub root_model: String,
    /// The root record's id.
    pub root_id: String,
    /// The transfer the discrepancy concerns (for a chain break, the
    /// transfer of the broken entry).
    pub transfer_id: String,
    /// The first failure's message.
    pub message: String,
    /// When it opened (runner clock).
    pub opened_at: Micros,
    /// When it resolved, if it did.
    pub resolved_at: Option<Micros>,
    /// Commit time of the update that triggered the first failing run.
    pub trigger_commit: Micros,
    /// The incident's dedup key.
    pub dedup_key: String,
}

impl IncidentRecord {
    /// The `--report` line of this incident.
    pub fn report_line(&self) -> Value {
        json!({
            "check": self.check,
            "root_model": self.root_model,
            "root_id": self.root_id,
            "transfer_id": self.transfer_id,
            "message": self.message,
            "opened_at": rfc3339(self.opened_at),
            "resolved_at": self.resolved_at.map(rfc3339),
        })
    }
}

/// RFC 3339 text of a time.
pub fn rfc3339(t: Micros) -> String {
    overseer_core::Timestamp::from_micros(t).to_string()
}

/// The check that detects a kind.
pub fn check_for(kind: Kind) -> &'static str {
    let i = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    CHECK_NAMES[i]
}

/// How a run scored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Score {
    /// Injected discrepancies (`None` without an expected list).
    pub injected: Option<usize>,
    /// Injected discrepancies detected by the right check.
    pub detected: Option<usize>,
    /// Incidents for transfers without an injected discrepancy.
    pub false_alarms: usize,
    /// Incidents for a transfer with an injected discrepancy, by another
    /// check than its kind's (reported, neither detection nor false alarm).
    pub other_check: usize,
    /// The missed discrepancies.
    pub missed: Vec<Expected>,
    /// Times to detection, in milliseconds.
    pub ttd_ms: Vec<f64>,
    /// Detected discrepancies by kind.
    pub detected_by_kind: HashMap<Kind, usize>,
    /// False alarms by check.
    pub false_alarms_by_check: HashMap<String, usize>,
}

/// Scores the incidents of a run against the expected discrepancies.
pub fn score(expected: Option<&[Expected]>, incidents: &[IncidentRecord]) -> Score {
    let mut s = Score::default();
    let Some(expected) = expected else {
        s.false_alarms = incidents.len();
        for i in incidents {
            *s.false_alarms_by_check.entry(i.check.clone()).or_default() += 1;
        }
        s.ttd_ms = incidents
            .iter()
            .map(|i| (i.opened_at - i.trigger_commit) as f64 / 1000.0)
            .collect();
        return s;
    };
    let mut by_transfer: HashMap<&str, Vec<&Expected>> = HashMap::new();
    for e in expected {
        by_transfer.entry(e.transfer_id.as_str()).or_default().push(e);
    }
    let mut detected = 0;
    for e in expected {
        let check = check_for(e.kind);
        let first = incidents
            .iter()
            .filter(|i| i.transfer_id == e.transfer_id && i.check == check)
            .min_by_key(|i| i.opened_at);
        match first {
            Some(i) => {
                detected += 1;
                *s.detected_by_kind.entry(e.kind).or_default() += 1;
                let from = e.observable_at.unwrap_or(i.trigger_commit);
                s.ttd_ms.push((i.opened_at - from) as f64 / 1000.0);
            }
            None => s.missed.push(e.clone()),
        }
    }
    for i in incidents {
        match by_transfer.get(i.transfer_id.as_str()) {
            None => {
                s.false_alarms += 1;
                *s.false_alarms_by_check.entry(i.check.clone()).or_default() += 1;
            }
            Some(kinds) if !kinds.iter().any(|e| check_for(e.kind) == i.check) => s.other_check += 1,
            Some(_) => {}
        }
    }
    s.injected = Some(expected.len());
    s.detected = Some(detected);
    s
}

/// The `p`-th percentile (0–100, nearest rank) of `values`.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Turns transparent huge pages off for this process (and the threads and
/// children it starts), whatever the system's setting: Linux's
/// `prctl(PR_SET_THP_DISABLE)`. Elsewhere there is nothing to turn off.
///
/// The pipeline's heap is millions of small objects that live for the whole
/// run beside short-lived ones. With huge pages (Linux backs memory that
/// asks for them, and mimalloc asks) every page the allocator gives back
/// and takes again is faulted in and zeroed 2 MiB at a time: at 105,000
/// transfers the process peaked 25 to 58 MiB higher and spent up to twice
/// the system time, for no gain in speed (see `docs/performance.md`). Services
/// that keep a large in-memory store are commonly run with them off for
/// the same reason.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_thp_disable(true).map_err(std::io::Error::from)?;
    Ok(())
}

/// The final line of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Events ingested (every line of every source).
    pub events: usize,
    /// Events per second of wall time, from the first ingest to the end of
    /// the final drain.
    pub events_per_sec: f64,
    /// Injected discrepancies.
    pub injected: Option<usize>,
    /// Detected discrepancies.
    pub detected: Option<usize>,
    /// False alarms (`None` without an expected list: nothing to tell a
    /// false alarm from a detection).
    pub false_alarms: Option<usize>,
    /// Median time to detection, ms of simulated time.
    pub ttd_p50_ms: Option<f64>,
    /// 99th percentile of the time to detection.
    pub ttd_p99_ms: Option<f64>,
    /// Peak RSS, MiB.
    pub peak_rss_mb: Option<f64>,
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

impl Summary {
    /// The one JSON line printed on stdout.
    pub fn json(&self) -> Value {
        json!({
            "events": self.events,
            "events_per_sec": round(self.events_per_sec, 1),
            "injected": self.injected,
            "detected": self.detected,
            "false_alarms": self.false_alarms,
            "ttd_p50_ms": self.ttd_p50_ms.map(|x| round(x, 1)),
            "ttd_p99_ms": self.ttd_p99_ms.map(|x| round(x, 1)),
            "peak_rss_mb": self.peak_rss_mb.map(|x| round(x, 1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(check: &str, transfer: &str, opened_at: Micros) -> IncidentRecord {
        IncidentRecord {
            check: check.into(),
            root_model: "transfers".into(),
            root_id: transfer.into(),
            transfer_id: transfer.into(),
            message: String::new(),
            opened_at,
            resolved_at: None,
            trigger_commit: 0,
            dedup_key: String::new(),
        }
    }

    #[test]
    fn scores_detections_and_false_alarms() {
        let expected = vec![
            Expected {
                kind: Kind::AmountMismatch,
                transfer_id: "a".into(),
                observable_at: Some(1_000_000),
            },
            Expected {
                kind: Kind::LedgerImbalance,
                transfer_id: "b".into(),
                observable_at: None,
            },
        ];
        let incidents = vec![
            incident("amount_matches_bank", "a", 61_000_000),
            incident("balance_chain", "b", 5_000_000),
            incident("ledger_balances", "c", 5_000_000),
        ];
        let s = score(Some(&expected), &incidents);
        assert_eq!(
            (s.injected, s.detected, s.false_alarms, s.other_check),
            (Some(2), Some(1), 1, 1)
        );
        assert_eq!(s.ttd_ms, vec![60_000.0]);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), Some(4.0));
    }
}
