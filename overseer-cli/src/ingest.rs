//! `overseer ingest`: events, one per line, from files or stdin into a store.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use overseer_builders::FormatOptions;
use overseer_core::{
    BatchReport, Consumed, Consumer, Ingestor, Model, ReferenceSpec, References, SourceId, Store,
};
use serde_json::json;

use crate::cli::{IngestArgs, RefArg};
use crate::{Error, output};

/// Inputs at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 1024 * 1024;

/// An input to ingest, opened.
struct Input {
    /// As given on the command line (`-` for stdin).
    name: String,
    source: SourceId,
    reader: Box<dyn Read>,
    /// The size in bytes, for a regular file.
    len: Option<u64>,
}

impl Input {
    fn open(path: &Path, source: Option<&str>) -> Result<Self, Error> {
        let name = path.display().to_string();
        let is_stdin = path.as_os_str() == "-";
        let default_source = if is_stdin {
            "stdin".to_owned()
        } else {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.clone())
        };
        let source = SourceId::new(source.unwrap_or(&default_source))
            .map_err(|e| Error::Usage(format!("source of {name}: {e}")))?;
        if is_stdin {
            return Ok(Self {
                name,
                source,
                reader: Box::new(io::stdin()),
                len: None,
            });
        }
        let unreadable = |source| Error::Input {
            input: name.clone(),
            source,
        };
        let file = File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if meta.is_dir() {
            return Err(unreadable(io::Error::new(
                io::ErrorKind::IsADirectory,
                "it is a directory",
            )));
        }
        Ok(Self {
            len: meta.is_file().then_some(meta.len()),
            name,
            source,
            reader: Box::new(file),
        })
    }
}

/// The configured references, and the models they apply to so far.
struct RefPlan {
    /// References of one model each.
    scoped: Vec<ReferenceSpec>,
    /// References of every model the events carry (`FIELD=MODEL` without
    /// `--model`).
    unscoped: Vec<(String, Model)>,
    /// The models seen so far (only tracked when there are unscoped references).
    models: BTreeSet<Model>,
}

impl RefPlan {
    fn new(refs: &[RefArg], model: Option<&Model>) -> Self {
        let mut plan = Self {
            scoped: Vec::new(),
            unscoped: Vec::new(),
            models: BTreeSet::new(),
        };
        for r in refs {
            match r.model.as_ref().or(model) {
                Some(m) => plan
                    .scoped
                    .push(ReferenceSpec::new(m.clone(), r.field.clone(), r.target.clone())),
                None => plan.unscoped.push((r.field.clone(), r.target.clone())),
            }
        }
        plan
    }

    fn references(&self) -> References {
        let unscoped = self.models.iter().flat_map(|m| {
            self.unscoped
                .iter()
                .map(move |(field, target)| ReferenceSpec::new(m.clone(), field.clone(), target.clone()))
        });
        self.scoped
            .iter()
            .cloned()
            .chain(unscoped)
            .fold(References::new(), References::with)
    }

    /// Learns the models of a batch's events; whether new ones were seen
    /// (and the references must be rebuilt).
    fn learn(&mut self, consumer: &dyn Consumer, batch: &[Vec<u8>]) -> bool {
        if self.unscoped.is_empty() {
            return false;
        }
        let mut new = false;
        for raw in batch {
            if let Ok(Consumed::Record(r)) = consumer.consume(raw)
                && !self.models.contains(&r.key.model)
            {
                self.models.insert(r.key.model);
                new = true;
            }
        }
        new
    }
}

/// Counters of one input.
struct InputReport {
    name: String,
    source: SourceId,
    report: BatchReport,
}

pub(crate) async fn run(store: Store, args: &IngestArgs, out: &mut dyn Write) -> Result<(), Error> {
    let options = FormatOptions {
        model: args.model.clone(),
        key_columns: args.key_columns.clone(),
        id_field: args.id_field.clone(),
        time_field: args.time_field.clone(),
    };
    let consumer = overseer_builders::consumer(args.format.0, options)?;
    // Open every input first: an unreadable one fails before anything is stored.
    let inputs = args
        .files
        .iter()
        .map(|p| Input::open(p, args.source.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut plan = RefPlan::new(&args.refs, args.model.as_ref());
    let mut reports = Vec::with_capacity(inputs.len());
    for input in inputs {
        let report = ingest_input(&store, &consumer, &mut plan, input, args.batch_size.get()).await?;
        reports.push(report);
    }
    print_summary(out, &reports, args.json)
}

async fn ingest_input(
    store: &Store,
    consumer: &Arc<dyn Consumer>,
    plan: &mut RefPlan,
    input: Input,
    batch_size: usize,
) -> Result<InputReport, Error> {
    let Input {
        name,
        source,
        reader,
        len,
    } = input;
    let mut ingestor = Ingestor::new(store.clone(), source.clone(), consumer.clone(), plan.references());
    let progress = progress_bar(&name, len);
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut total = BatchReport::default();
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(batch_size.min(4096));
    let mut line_no: u64 = 0;
    let mut first_line: u64 = 1;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| Error::Input {
                input: name.clone(),
                source,
            })?;
        let at_end = n == 0;
        if !at_end {
            line_no += 1;
            if let Some(bar) = &progress {
                bar.inc(n as u64);
            }
            let event = trim_line_end(&buf);
            if !event.iter().all(u8::is_ascii_whitespace) {
                if batch.is_empty() {
                    first_line = line_no;
                }
                batch.push(event.to_vec());
            }
        }
        if batch.len() >= batch_size || (at_end && !batch.is_empty()) {
            if plan.learn(consumer.as_ref(), &batch) {
                ingestor = Ingestor::new(store.clone(), source.clone(), consumer.clone(), plan.references());
            }
            // `Bytes`, inferred from `ingest_and_ack`.
            let events: Vec<_> = batch.drain(..).map(Into::into).collect();
            let report = ingestor
                .ingest_and_ack(&events)
                .await
                .map_err(|source| Error::Ingest {
                    input: name.clone(),
                    first_line,
                    last_line: line_no,
                    stored: total.stored,
                    source: Box::new(source),
                })?;
            total.absorb(report);
            if let Some(bar) = &progress {
                bar.set_message(format!("{} events", total.read));
            }
        }
        if at_end {
            break;
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    tracing::info!(input = %name, %source, read = total.read, stored = total.stored, "input ingested");
    Ok(InputReport {
        name,
        source,
        report: total,
    })
}

/// The line without its `\n` or `\r\n`.
fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn progress_bar(name: &str, len: Option<u64>) -> Option<ProgressBar> {
    let len = len.filter(|&l| l >= PROGRESS_MIN_BYTES)?;
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix} [{bar:25}] {bytes}/{total_bytes} ({eta}) {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(name.to_owned());
    Some(bar)
}

const LABELS: [&str; 5] = [
    "events read",
    "updates stored",
    "duplicates skipped",
    "dead-lettered",
    "control events",
];

fn counts(r: &BatchReport) -> [usize; 5] {
    [r.read, r.stored, r.duplicates, r.dead_lettered, r.control]
}

fn print_summary(out: &mut dyn Write, inputs: &[InputReport], as_json: bool) -> Result<(), Error> {
    let mut total = BatchReport::default();
    for input in inputs {
        total.absorb(input.report.clone());
    }
    if as_json {
        let per_input: Vec<_> = inputs
            .iter()
            .map(|i| {
                let r = &i.report;
                json!({
                    "input": i.name,
                    "source": i.source.as_str(),
                    "events_read": r.read,
                    "updates_stored": r.stored,
                    "duplicates_skipped": r.duplicates,
                    "dead_lettered": r.dead_lettered,
                    "control_events": r.control,
                    "last_position": r.last_position.as_ref().map(|p| p.as_str()),
                    "watermark": r.watermark.map(|t| t.to_string()),
                })
            })
            .collect();
        let summary = json!({
            "events_read": total.read,
            "updates_stored": total.stored,
            "duplicates_skipped": total.duplicates,
            "dead_lettered": total.dead_lettered,
            "control_events": total.control,
            "inputs": per_input,
        });
        return output::json_line(out, &summary);
    }
    for (label, n) in LABELS.iter().zip(counts(&total)) {
        output::line(out, &format!("{:<19} {n}", format!("{label}:")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_core::RecordKey;
    use overseer_core::testing::LinesConsumer;

    #[test]
    fn line_ends_are_trimmed() {
        assert_eq!(trim_line_end(b"a\r\n"), b"a");
        assert_eq!(trim_line_end(b"a\n"), b"a");
        assert_eq!(trim_line_end(b"a"), b"a");
        assert_eq!(trim_line_end(b"a\r"), b"a");
    }

    fn file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn ingests_in_batches_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_memory();
        let consumer: Arc<dyn Consumer> = Arc::new(LinesConsumer);
        let path = file(dir.path(), "events.txt", "a 1\n\nb 2\r\ngarbage\n  \na 3\nb 2");
        let mut plan = RefPlan::new(&[], None);
        let input = Input::open(&path, None).unwrap();
        assert_eq!(input.source.as_str(), "events.txt");
        let r = ingest_input(&store, &consumer, &mut plan, input, 2)
            .await
            .unwrap();
        assert_eq!(counts(&r.report), [5, 3, 1, 1, 0]);
        let checkpoint = store.checkpoint(&r.source).await.unwrap().unwrap();
        assert_eq!(checkpoint.watermark, overseer_core::Timestamp::from_secs(3));

        // Again: nothing new.
        let input = Input::open(&path, Some("events.txt")).unwrap();
        let r = ingest_input(&store, &consumer, &mut plan, input, 1000)
            .await
            .unwrap();
        assert_eq!(counts(&r.report), [5, 0, 4, 1, 0]);

        let mut out = Vec::new();
        print_summary(&mut out, &[r], false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "events read:        5\nupdates stored:     0\nduplicates skipped: 4\n\
             dead-lettered:      1\ncontrol events:     0\n"
        );
    }

    #[tokio::test]
    async fn unscoped_references_apply_to_every_model_seen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_memory();
        let consumer: Arc<dyn Consumer> = Arc::new(LinesConsumer);
        let path = file(dir.path(), "events.txt", "a 1\nb 2\n");
        let refs = [RefArg {
            model: None,
            field: "n".into(),
            target: Model::new("numbers").unwrap(),
        }];
        let mut plan = RefPlan::new(&refs, None);
        let input = Input::open(&path, None).unwrap();
        ingest_input(&store, &consumer, &mut plan, input, 1)
            .await
            .unwrap();
        let key = RecordKey::new("lines", "b").unwrap();
        let refs = store.references(&key).await.unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].reference.target, RecordKey::new("numbers", "2").unwrap());

        // Scoped by --model: only that model's records.
        let plan = RefPlan::new(&refs_arg(), Some(&Model::new("other").unwrap()));
        assert_eq!(plan.scoped.len(), 1);
        assert!(plan.unscoped.is_empty());
    }

    fn refs_arg() -> Vec<RefArg> {
        vec![RefArg {
            model: None,
            field: "n".into(),
            target: Model::new("numbers").unwrap(),
        }]
    }

    #[test]
    fn unreadable_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.jsonl");
        let err = Input::open(&missing, None).err().unwrap();
        assert!(err.to_string().contains("missing.jsonl"), "{err}");
        let err = Input::open(dir.path(), None).err().unwrap();
        assert!(matches!(err, Error::Input { .. }), "{err}");
    }
}
