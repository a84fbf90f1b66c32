//! The audit area: every check execution and every incident transition,
//! written immutably (`audit/` and `incidents/`, see docs/store-layout.md).

use bytes::Bytes;
use object_store::path::Path;
use prost::Message;
use serde_json::Value;

use super::{Compression, Store, codec, compression, layout};
use crate::error::{Error, Result};
use crate::model::{RecordKey, SourceId};
use crate::proto;
use crate::time::Timestamp;

/// The kind of an execution's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutcomeKind {
    /// The systems agree.
    Pass,
    /// The systems disagree.
    Fail,
    /// The check does not apply.
    NotApplicable,
    /// The view could not be loaded; says nothing about agreement.
    Indeterminate,
    /// The check panicked, timed out or errored.
    Error,
}

impl OutcomeKind {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Pass => "pass",
            OutcomeKind::Fail => "fail",
            OutcomeKind::NotApplicable => "not_applicable",
            OutcomeKind::Indeterminate => "indeterminate",
            OutcomeKind::Error => "error",
        }
    }

    fn to_proto(self) -> proto::VerdictKind {
        match self {
            OutcomeKind::Pass => proto::VerdictKind::Pass,
            OutcomeKind::Fail => proto::VerdictKind::Fail,
            OutcomeKind::NotApplicable => proto::VerdictKind::NotApplicable,
            OutcomeKind::Indeterminate => proto::VerdictKind::Indeterminate,
            OutcomeKind::Error => proto::VerdictKind::Error,
        }
    }

    fn from_proto(v: i32) -> Option<Self> {
        Some(match proto::VerdictKind::try_from(v).ok()? {
            proto::VerdictKind::Pass => OutcomeKind::Pass,
            proto::VerdictKind::Fail => OutcomeKind::Fail,
            proto::VerdictKind::NotApplicable => OutcomeKind::NotApplicable,
            proto::VerdictKind::Indeterminate => OutcomeKind::Indeterminate,
            proto::VerdictKind::Error => OutcomeKind::Error,
            proto::VerdictKind::Unspecified => return None,
        })
    }
}

/// One check execution, as audited.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// The check.
    pub check: String,
    /// The root record.
    pub root: RecordKey,
    /// The (latest) triggering update's record.
    pub trigger_key: RecordKey,
    /// Its source.
    pub trigger_source: SourceId,
    /// Its commit time.
    pub trigger_commit_time: Timestamp,
    /// The source time the view was loaded as of.
    pub as_of: Timestamp,
    /// The runner's clock at execution.
    pub executed_at: Timestamp,
    /// The result.
    pub outcome: OutcomeKind,
    /// The failure or error message (empty on pass).
    pub message: String,
    /// Structured failure details.
    pub details: Value,
    /// How long the execution took (wall time).
    pub duration: std::time::Duration,
    /// Sources that had not caught up when a capped wait ran the check.
    pub lagging_sources: Vec<String>,
    /// How many triggers the run covered.
    pub coalesced: u32,
}

/// An incident as stored: its opening, its repeated failures, and its
/// resolution once resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct IncidentEntry {
    /// The check.
    pub check: String,
    /// The root record.
    pub root: RecordKey,
    /// The deduplication key.
    pub dedup_key: String,
    /// When it opened.
    pub opened_at: Timestamp,
    /// When its latest failure was concluded (`opened_at` until it fails
    /// again).
    pub updated_at: Timestamp,
    /// When it resolved, if it has.
    pub resolved_at: Option<Timestamp>,
    /// How many executions have failed since it opened (1 at its opening).
    pub failures: u32,
    /// The message of its latest failure.
    pub message: String,
    /// Details of its latest failure.
    pub details: Value,
    /// Commit time of the update that made the discrepancy observable.
    pub trigger_commit_time: Timestamp,
}

/// The segment of an incident's opening time: microseconds as 20 digits,
/// or `-` and 19 digits before the Unix epoch, so that every opening time
/// has a directory of its own.
fn opened_segment(opened_at: Timestamp) -> String {
    let micros = opened_at.as_micros();
    if micros < 0 {
        format!("-{:019}", micros.unsigned_abs())
    } else {
        format!("{micros:020}")
    }
}

/// The name of the record of an incident's `failures`-th failure.
fn failed_file(failures: u32) -> String {
    format!("failed-{failures:010}.pb")
}

/// Whether `path` is the record of one of an incident's failures after its
/// opening.
fn is_failure(path: &Path) -> bool {
    path.filename().is_some_and(|name| name.starts_with("failed-"))
}

fn details_json(v: &Value) -> String {
    if v.is_null() { String::new() } else { v.to_string() }
}

fn parse_details(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

impl AuditEntry {
    fn to_proto(&self) -> proto::AuditRecord {
        proto::AuditRecord {
            check: self.check.clone(),
            root: Some(codec::key_to_proto(&self.root)),
            trigger_key: Some(codec::key_to_proto(&self.trigger_key)),
            trigger_source: self.trigger_source.as_str().to_owned(),
            trigger_commit_time_micros: self.trigger_commit_time.as_micros(),
            as_of_micros: self.as_of.as_micros(),
            executed_at_micros: self.executed_at.as_micros(),
            verdict: self.outcome.to_proto().into(),
            message: self.message.clone(),
            details_json: details_json(&self.details),
            duration_micros: i64::try_from(self.duration.as_micros()).unwrap_or(i64::MAX),
            lagging_sources: self.lagging_sources.clone(),
            coalesced: self.coalesced,
        }
    }

    fn from_proto(r: proto::AuditRecord, path: &str) -> Result<Self> {
        const M: &str = "AuditBatch";
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_owned(),
            message: M,
            reason,
        };
        Ok(AuditEntry {
            check: r.check,
            root: codec::key_from_proto(r.root, path, M)?,
            trigger_key: codec::key_from_proto(r.trigger_key, path, M)?,
            trigger_source: SourceId::new(&r.trigger_source).map_err(|e| corrupt(e.to_string()))?,
            trigger_commit_time: Timestamp::from_micros(r.trigger_commit_time_micros),
            as_of: Timestamp::from_micros(r.as_of_micros),
            executed_at: Timestamp::from_micros(r.executed_at_micros),
            outcome: OutcomeKind::from_proto(r.verdict)
                .ok_or_else(|| corrupt(format!("unknown verdict {}", r.verdict)))?,
            message: r.message,
            details: parse_details(&r.details_json),
            duration: std::time::Duration::from_micros(r.duration_micros.max(0).unsigned_abs()),
            lagging_sources: r.lagging_sources,
            coalesced: r.coalesced,
        })
    }
}

impl Store {
    fn audit_prefix(&self, check: Option<&str>) -> Path {
        let mut p = self.path(&["audit"]);
        if let Some(check) = check {
            p = p.join(&*layout::encode_segment(check));
        }
        p
    }

    /// Writes one execution's audit record: a batch of one (see
    /// [`put_audit_batch`](Self::put_audit_batch)).
    pub async fn put_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.put_audit_batch(std::slice::from_ref(entry)).await
    }

    /// Writes the audit records of a runner round: one create-only object
    /// per check, holding every execution of that check in `entries`. Its
    /// key is derived from the first execution's time and the batch's
    /// content, so writing the same batch twice is a no-op. Batching keeps
    /// the store at one object per check and round, not one per execution.
    pub async fn put_audit_batch(&self, entries: &[AuditEntry]) -> Result<()> {
        let mut by_check: std::collections::BTreeMap<&str, Vec<proto::AuditRecord>> = Default::default();
        for entry in entries {
            by_check.entry(&entry.check).or_default().push(entry.to_proto());
        }
        for (check, records) in by_check {
            let first = records.iter().map(|r| r.executed_at_micros).min().unwrap_or(0);
            let bytes = proto::AuditBatch { records }.encode_to_vec();
            let stem = format!("{:020}-{}", first.max(0), layout::short_digest(&bytes));
            // Batches repeat check names, records and messages: compressed
            // with zstd (no dictionary) under `.pb.zst` unless disabled.
            let compressed = match self.compression {
                Compression::Zstd(options) => compression::compress(&bytes, options.audit_level),
                Compression::None => None,
            };
            let (name, bytes) = match compressed {
                Some(frame) => (format!("{stem}.pb.zst"), frame),
                None => (format!("{stem}.pb"), bytes),
            };
            let path = self.audit_prefix(Some(check)).join(name);
            self.put_create(&path, Bytes::from(bytes)).await?;
        }
        Ok(())
    }

    /// Audit records, optionally of one check and one root record, ordered
    /// by execution time, then as-of time, then trigger commit time.
    ///
    /// Filtering by check lists that check's batches only; filtering by
    /// record reads them and keeps the record's executions.
    pub async fn audit(&self, check: Option<&str>, root: Option<&RecordKey>) -> Result<Vec<AuditEntry>> {
        let prefix = self.audit_prefix(check);
        // Batches are `audit/<check>/<file>`; deeper keys are the
        // per-execution objects of earlier versions, which are skipped.
        let depth = self.audit_prefix(None).parts().count() + 2;
        let mut out = Vec::new();
        for path in self.list_paths(&prefix).await? {
            if path.parts().count() != depth {
                continue;
            }
            let batch = self.audit_batch(&path).await?;
            for record in batch.records {
                let entry = AuditEntry::from_proto(record, path.as_ref())?;
                if root.is_none_or(|r| *r == entry.root) {
                    out.push(entry);
                }
            }
        }
        out.sort_by(|a, b| {
            (a.executed_at, a.as_of, a.trigger_commit_time, &a.check, &a.root).cmp(&(
                b.executed_at,
                b.as_of,
                b.trigger_commit_time,
                &b.check,
                &b.root,
            ))
        });
        Ok(out)
    }

    /// Reads one audit batch (`.pb`, or `.pb.zst`: one zstd frame of it).
    async fn audit_batch(&self, path: &Path) -> Result<proto::AuditBatch> {
        const M: &str = "AuditBatch";
        let mut bytes = self.get_bytes(path).await?;
        if path.as_ref().ends_with(".zst") {
            bytes = compression::decompress(&bytes)
                .map(Bytes::from)
                .map_err(|reason| codec::corrupt(path.as_ref(), M, reason))?;
        }
        codec::decode(path.as_ref(), M, bytes)
    }

    /// The names of the checks that have audit records or incidents in the
    /// store, sorted: the names [`audit`](Self::audit) and
    /// [`incidents`](Self::incidents) can report.
    ///
    /// Lists the first level of the `audit/` and `incidents/` areas; a check
    /// whose name is too long to be kept in its key (hashed, see
    /// docs/store-layout.md) is named by its first object.
    pub async fn checks(&self) -> Result<Vec<String>> {
        let mut names = std::collections::BTreeSet::new();
        for area in ["audit", "incidents"] {
            let prefix = self.path(&[area]);
            let listing = self
                .inner
                .list_with_delimiter(Some(&prefix))
                .await
                .map_err(|source| super::list_error(&prefix, source))?;
            for dir in listing.common_prefixes {
                let Some(segment) = dir.filename() else {
                    continue;
                };
                let name = match layout::decode_segment(segment) {
                    Some(name) => Some(name),
                    None => self.check_named_in(area, &dir).await?,
                };
                names.extend(name);
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The check name held by the first object under `dir`, a check's
    /// directory in `area` (`audit` or `incidents`).
    async fn check_named_in(&self, area: &str, dir: &Path) -> Result<Option<String>> {
        let depth = dir.parts().count() + 1;
        for path in self.list_paths(dir).await? {
            if area == "audit" {
                // Deeper keys are the per-execution objects of earlier versions.
                if path.parts().count() != depth {
                    continue;
                }
                let batch = self.audit_batch(&path).await?;
                if let Some(record) = batch.records.into_iter().next() {
                    return Ok(Some(record.check));
                }
            } else {
                return Ok(Some(self.incident_record(&path).await?.check));
            }
        }
        Ok(None)
    }

    /// Reads one of an incident's records.
    async fn incident_record(&self, path: &Path) -> Result<proto::IncidentRecord> {
        codec::decode(path.as_ref(), "IncidentRecord", self.get_bytes(path).await?)
    }

    fn incident_dir(&self, entry: &IncidentEntry) -> Path {
        self.path(&["incidents"])
            .join(&*layout::encode_segment(&entry.check))
            .join(&*layout::encode_segment(entry.root.model.as_str()))
            .join(&*layout::encode_segment(entry.root.id.as_str()))
            .join(opened_segment(entry.opened_at))
    }

    fn incident_message(entry: &IncidentEntry) -> proto::IncidentRecord {
        proto::IncidentRecord {
            check: entry.check.clone(),
            root: Some(codec::key_to_proto(&entry.root)),
            dedup_key: entry.dedup_key.clone(),
            opened_at_micros: entry.opened_at.as_micros(),
            resolved_at_micros: entry.resolved_at.map(Timestamp::as_micros),
            message: entry.message.clone(),
            details_json: details_json(&entry.details),
            trigger_commit_time_micros: entry.trigger_commit_time.as_micros(),
            failures: entry.failures,
            updated_at_micros: Some(entry.updated_at.as_micros()),
        }
    }

    /// Records an incident's opening (`opened.pb`, its first failure), its
    /// `n`-th failure (`failed-<n>.pb`, `n` in 10 digits) or, when
    /// `resolved_at` is set, its resolution (`resolved.pb`); each
    /// create-only, so an incident's record only grows.
    pub async fn put_incident(&self, entry: &IncidentEntry) -> Result<()> {
        let name = if entry.resolved_at.is_some() {
            "resolved.pb".to_owned()
        } else if entry.failures <= 1 {
            "opened.pb".to_owned()
        } else {
            failed_file(entry.failures)
        };
        let path = self.incident_dir(entry).join(name.as_str());
        let bytes = Self::incident_message(entry).encode_to_vec();
        self.put_create(&path, Bytes::from(bytes)).await?;
        Ok(())
    }

    /// Every incident, open or resolved, ordered by opening time, each with
    /// its latest failure recorded.
    pub async fn incidents(&self) -> Result<Vec<IncidentEntry>> {
        const M: &str = "IncidentRecord";
        let mut by_dir: std::collections::BTreeMap<String, IncidentEntry> = Default::default();
        // Of an incident's failures, only the latest is read: its name
        // (`failed-` and the count in 10 digits) sorts last. Listings are
        // sorted, so it is the last of its directory.
        let mut paths: Vec<(String, Path)> = Vec::new();
        for path in self.list_paths(&self.path(&["incidents"])).await? {
            let dir = path.parent().map(|p| p.to_string()).unwrap_or_default();
            if let Some((last_dir, last)) = paths.last_mut()
                && *last_dir == dir
                && is_failure(last)
                && is_failure(&path)
            {
                *last = path;
            } else {
                paths.push((dir, path));
            }
        }
        for (dir, path) in paths {
            let r = self.incident_record(&path).await?;
            // A failure's record holds the count its name gives and its
            // time: one without is truncated (its last fields lost, read as
            // defaults) or was copied from another failure.
            if is_failure(&path)
                && (path.filename() != Some(failed_file(r.failures).as_str())
                    || r.updated_at_micros.is_none()
                    || r.resolved_at_micros.is_some())
            {
                let without_time = if r.updated_at_micros.is_none() {
                    " without its time"
                } else {
                    ""
                };
                return Err(codec::corrupt(
                    path.as_ref(),
                    M,
                    format!(
                        "it holds failure {} of its incident{without_time}, which is not the one \
                         its key names (truncated, or copied from another failure)",
                        r.failures
                    ),
                ));
            }
            let entry = IncidentEntry {
                check: r.check,
                root: codec::key_from_proto(r.root, path.as_ref(), M)?,
                dedup_key: r.dedup_key,
                opened_at: Timestamp::from_micros(r.opened_at_micros),
                // Records written before these were kept: the opening.
                updated_at: Timestamp::from_micros(r.updated_at_micros.unwrap_or(r.opened_at_micros)),
                resolved_at: r.resolved_at_micros.map(Timestamp::from_micros),
                failures: r.failures.max(1),
                message: r.message,
                details: parse_details(&r.details_json),
                trigger_commit_time: Timestamp::from_micros(r.trigger_commit_time_micros),
            };
            // The directory is named by the check, the record and the
            // opening time: an object that disagrees with it is truncated
            // (its missing fields read as defaults) or was copied there.
            if self.incident_dir(&entry).to_string() != dir {
                return Err(codec::corrupt(
                    path.as_ref(),
                    M,
                    format!(
                        "it holds the incident of check {:?} on {} opened at {}, which is not the \
                         one its key names (truncated, or copied from another incident)",
                        entry.check, entry.root, entry.opened_at
                    ),
                ));
            }
            let slot = by_dir.entry(dir).or_insert_with(|| entry.clone());
            if entry.resolved_at.is_some() {
                slot.resolved_at = entry.resolved_at;
            }
            // The latest failure recorded (listings are in no set order).
            if (entry.failures, entry.updated_at) > (slot.failures, slot.updated_at) {
                slot.failures = entry.failures;
                slot.updated_at = entry.updated_at;
                slot.message = entry.message;
                slot.details = entry.details;
            }
        }
        let mut out: Vec<IncidentEntry> = by_dir.into_values().collect();
        out.sort_by(|a, b| (a.opened_at, &a.check, &a.root).cmp(&(b.opened_at, &b.check, &b.root)));
        Ok(out)
    }
}
