//! The embedded pipeline across restarts and over hostile state: open
//! incidents picked up again after a restart, re-delivered batches,
//! corrupt, truncated or foreign checkpoints, incidents and dead letters,
//! a failing or unknown source in `run`, shutdown mid-batch, and
//! configuration a pipeline must refuse at startup.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};
use overseer_core::check::{Check, Verdict};
use overseer_core::clock::ManualClock;
use overseer_core::pipeline::{Overseer, SourceConfig};
use overseer_core::testing::LinesConsumer;
use overseer_core::view::{DataView, ViewContext, ViewError, ViewSpec};
use overseer_core::{Registry, SourceId, Store, Timestamp};

#[derive(serde::Deserialize)]
struct Line {
    n: i64,
}
impl DataView for Line {
    fn spec() -> ViewSpec {
        ViewSpec {
            root: "lines",
            joins: vec![],
        }
    }
    async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
        ctx.root_as().await
    }
}
async fn small(l: Line) -> Verdict {
    if l.n < 100 {
        Verdict::pass()
    } else {
        Verdict::fail("too big")
    }
}

fn build(store: &Store, clock: &Arc<ManualClock>) -> Overseer {
    build_with(store, clock, Registry::new().add(Check::new("small", small)))
}

/// A pipeline over the lines of source `app` running `checks`.
fn build_with(store: &Store, clock: &Arc<ManualClock>, checks: Registry) -> Overseer {
    Overseer::builder()
        .store(store.clone())
        .manual_clock(clock.clone())
        .state_builder(LinesConsumer)
        .source(
            SourceConfig::new("app", LinesConsumer)
                .unwrap()
                .models(["lines"])
                .unwrap(),
        )
        .checks(checks)
        .build()
        .unwrap()
}

fn b(lines: &[&str]) -> Vec<Bytes> {
    lines.iter().map(|l| Bytes::from(l.to_string())).collect()
}

/// A record that still fails after a restart must not get a second open incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_does_not_duplicate_open_incident() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1000)));
    {
        let mut o = build(&store, &clock);
        o.ingest("app", &b(&["r 500"])).await.unwrap();
        o.drain().await.unwrap();
        assert_eq!(o.runner().stats().incidents_opened, 1);
    }
    clock.advance_to(Timestamp::from_secs(2000));
    let mut o = build(&store, &clock);
    o.ingest("app", &b(&["r 600"])).await.unwrap();
    o.drain().await.unwrap();
    let incidents = store.incidents().await.unwrap();
    let open: Vec<_> = incidents.iter().filter(|i| i.resolved_at.is_none()).collect();
    assert_eq!(
        open.len(),
        1,
        "open incidents in the store after restart: {incidents:#?}"
    );
}

/// An open incident's repeated failures are stored as they happen: a
/// restarted runner goes on counting them from where the previous one left
/// off, and the store holds the time and message of the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_goes_on_counting_an_open_incidents_failures() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1000)));
    {
        let mut o = build(&store, &clock);
        o.ingest("app", &b(&["r 500"])).await.unwrap();
        o.drain().await.unwrap();
        clock.advance_to(Timestamp::from_secs(1500));
        o.ingest("app", &b(&["r 600"])).await.unwrap();
        o.drain().await.unwrap();
    }
    let stored = store.incidents().await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert_eq!(
        (stored[0].failures, stored[0].updated_at),
        (2, Timestamp::from_secs(1500))
    );

    clock.advance_to(Timestamp::from_secs(2000));
    let mut o = build(&store, &clock);
    o.ingest("app", &b(&["r 700"])).await.unwrap();
    o.drain().await.unwrap();
    let open: Vec<_> = o.runner().open_incidents().cloned().collect();
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(
        (open[0].failures, open[0].opened_at, open[0].updated_at),
        (3, Timestamp::from_secs(1000), Timestamp::from_secs(2000)),
        "the restarted runner counts on from the stored failures"
    );
    let stored = store.incidents().await.unwrap();
    assert_eq!(
        (stored[0].failures, stored[0].updated_at, stored[0].resolved_at),
        (3, Timestamp::from_secs(2000), None)
    );
}

/// An incident resolved at the clock's current time, then the runner
/// restarted before the clock moved: the record failing again opens a new
/// incident after it, not one that shares the resolved one's key (whose
/// opening and failures would be dropped as duplicates of the old one's,
/// and which would list as resolved while open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_tick_of_a_resolution_opens_a_new_incident() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1000)));
    async fn even(l: Line) -> Verdict {
        if l.n % 2 == 0 {
            Verdict::pass()
        } else {
            Verdict::fail("odd")
        }
    }
    let build = || build_with(&store, &clock, Registry::new().add(Check::new("even", even)));
    {
        let mut o = build();
        o.ingest("app", &b(&["r 101"])).await.unwrap();
        o.drain().await.unwrap();
        o.ingest("app", &b(&["r 102"])).await.unwrap();
        o.drain().await.unwrap();
        assert_eq!(o.runner().stats().incidents_resolved, 1);
    }
    let mut o = build();
    o.ingest("app", &b(&["r 103"])).await.unwrap();
    o.drain().await.unwrap();
    o.ingest("app", &b(&["r 105"])).await.unwrap();
    o.drain().await.unwrap();
    let stored = store.incidents().await.unwrap();
    let got: Vec<_> = stored
        .iter()
        .map(|i| (i.opened_at, i.resolved_at, i.failures))
        .collect();
    let reopened = Timestamp::from_micros(1_000_000_001);
    assert_eq!(
        got,
        [
            (Timestamp::from_secs(1000), Some(Timestamp::from_secs(1000)), 1),
            (reopened, None, 2)
        ],
        "{stored:#?}"
    );
    let open: Vec<_> = o.runner().open_incidents().map(|i| i.opened_at).collect();
    assert_eq!(open, [reopened]);
}

/// A record that passes after a restart must resolve the incident opened before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_then_pass_resolves_stored_incident() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1000)));
    {
        let mut o = build(&store, &clock);
        o.ingest("app", &b(&["r 500"])).await.unwrap();
        o.drain().await.unwrap();
    }
    clock.advance_to(Timestamp::from_secs(2000));
    let mut o = build(&store, &clock);
    o.ingest("app", &b(&["r 5"])).await.unwrap();
    o.drain().await.unwrap();
    let incidents = store.incidents().await.unwrap();
    let open: Vec<_> = incidents.iter().filter(|i| i.resolved_at.is_none()).collect();
    assert!(open.is_empty(), "the record passes now, yet open: {open:#?}");
}

/// A re-delivered batch after a restart stores nothing twice and audits nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_batch_after_restart_is_deduplicated() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1000)));
    let batch = b(&["a 5", "b 500", "c 7"]);
    {
        let mut o = build(&store, &clock);
        o.ingest("app", &batch).await.unwrap();
        o.drain().await.unwrap();
    }
    let audit_before = store.audit(None, None).await.unwrap().len();
    let incidents_before = store.incidents().await.unwrap().len();
    let mut o = build(&store, &clock);
    let r = o.ingest("app", &batch).await.unwrap();
    o.drain().await.unwrap();
    assert_eq!((r.stored, r.duplicates), (0, 3));
    assert_eq!(store.audit(None, None).await.unwrap().len(), audit_before);
    assert_eq!(store.incidents().await.unwrap().len(), incidents_before);
}

/// The objects under `prefix`.
async fn list(store: &Store, prefix: &str) -> Vec<Path> {
    use futures::TryStreamExt;
    store
        .object_store()
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap()
}

/// The bytes of the object at `path`.
async fn get(store: &Store, path: &Path) -> Bytes {
    store
        .object_store()
        .get(path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

async fn put_raw(store: &Store, key: &str, bytes: &[u8]) {
    store
        .object_store()
        .put(&Path::from(key), PutPayload::from(bytes.to_vec()))
        .await
        .unwrap();
}

/// A checkpoint that is not a SourceCheckpoint: a typed error naming it.
#[tokio::test]
async fn garbage_checkpoint_is_typed_error() {
    let store = Store::in_memory();
    put_raw(&store, "sources/app/checkpoint.pb", b"\xff\xff\xff garbage").await;
    let err = store
        .checkpoint(&SourceId::new("app").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, overseer_core::Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("checkpoint.pb"), "{err}");
}

/// An empty (truncated to 0 bytes) checkpoint must not read as position "" at the epoch.
#[tokio::test]
async fn empty_checkpoint_is_typed_error() {
    let store = Store::in_memory();
    put_raw(&store, "sources/app/checkpoint.pb", b"").await;
    let got = store.checkpoint(&SourceId::new("app").unwrap()).await;
    assert!(got.is_err(), "a 0-byte checkpoint read as {got:?}");
}

/// The checkpoint of another source, copied over this one's, is foreign.
#[tokio::test]
async fn foreign_checkpoint_is_typed_error() {
    let store = Store::in_memory();
    let other = SourceId::new("other").unwrap();
    store
        .put_checkpoint(
            &other,
            &overseer_core::store::Checkpoint {
                position: overseer_core::SourcePosition::new("zz"),
                watermark: Timestamp::from_secs(9_999),
            },
        )
        .await
        .unwrap();
    let bytes = get(&store, &Path::from("sources/other/checkpoint.pb")).await;
    put_raw(&store, "sources/app/checkpoint.pb", &bytes).await;
    let got = store.checkpoint(&SourceId::new("app").unwrap()).await;
    assert!(
        got.is_err(),
        "the checkpoint of `other` was accepted as app's: {got:?}"
    );
}

/// A truncated incident object: a typed error naming it, no panic.
#[tokio::test]
async fn truncated_incident_is_typed_error() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1000)));
    let mut o = build(&store, &clock);
    o.ingest("app", &b(&["r 500"])).await.unwrap();
    o.drain().await.unwrap();
    let paths = list(&store, "incidents").await;
    assert_eq!(paths.len(), 1);
    let bytes = get(&store, &paths[0]).await;
    put_raw(&store, paths[0].as_ref(), &bytes[..bytes.len() / 2]).await;
    let err = store.incidents().await.unwrap_err();
    assert!(matches!(err, overseer_core::Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(paths[0].as_ref()), "{err}");
}

/// A truncated dead letter: a typed error naming it.
#[tokio::test]
async fn truncated_dead_letter_is_typed_error() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1000)));
    let o = build(&store, &clock);
    o.ingest("app", &b(&["garbage"])).await.unwrap();
    let paths = list(&store, "dead-letters").await;
    assert_eq!(paths.len(), 1);
    let bytes = get(&store, &paths[0]).await;
    put_raw(&store, paths[0].as_ref(), &bytes[..bytes.len() - 3]).await;
    let err = store.dead_letters().await.unwrap_err();
    assert!(matches!(err, overseer_core::Error::Corrupt { .. }), "{err}");
}

fn builder_with(sources: Vec<SourceConfig>, registry: Registry) -> Result<Overseer, String> {
    let mut b = Overseer::builder()
        .store(Store::in_memory())
        .state_builder(LinesConsumer)
        .checks(registry);
    for s in sources {
        b = b.source(s);
    }
    b.build().map_err(|e| e.to_string())
}

#[test]
fn source_with_no_models_is_startup_error() {
    let r = builder_with(
        vec![
            SourceConfig::new("app", LinesConsumer)
                .unwrap()
                .models(["lines"])
                .unwrap(),
            SourceConfig::new("silent", LinesConsumer).unwrap(),
        ],
        Registry::new().add(Check::new("small", small)),
    );
    assert!(r.is_err(), "a source delivering no model was accepted");
}

#[test]
fn check_on_undelivered_model_is_startup_error() {
    let r = builder_with(
        vec![
            SourceConfig::new("app", LinesConsumer)
                .unwrap()
                .models(["other"])
                .unwrap(),
        ],
        Registry::new().add(Check::new("small", small)),
    );
    let Err(e) = r else {
        panic!("check on undelivered model accepted")
    };
    assert!(e.contains("lines"), "{e}");
}

#[test]
fn bad_reference_specs_are_errors() {
    for bad in [
        "no arrow",
        "a -> b",
        "a. -> b",
        ".f -> b",
        "a.f -> ",
        "a.f -> b -> c",
        "a.f -> b.g -> c",
    ] {
        assert!(
            overseer_core::ReferenceSpec::parse(bad).is_err(),
            "{bad:?} accepted"
        );
    }
    // Names may hold spaces (a MongoDB field, a quoted Postgres table).
    let spaced = overseer_core::ReferenceSpec::parse("ledger entries.transfer id -> transfers").unwrap();
    assert_eq!(spaced.field, "transfer id");
}

/// Empty and huge batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_huge_batches() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000_000)));
    let mut o = build(&store, &clock);
    let r = o.ingest("app", &[]).await.unwrap();
    assert_eq!(r.read, 0);
    let lines: Vec<Bytes> = (0..20_000)
        .map(|i| Bytes::from(format!("r{i} {}", i % 150)))
        .collect();
    let r = o.ingest("app", &lines).await.unwrap();
    assert_eq!((r.read, r.stored), (20_000, 20_000));
    o.drain().await.unwrap();
    let failing = (0..20_000).filter(|i| i % 150 >= 100).count() as u64;
    assert_eq!(o.runner().stats().incidents_opened, failing);
    assert_eq!(o.runner().stats().executions, 20_000);
    let r = o.ingest("app", &lines).await.unwrap();
    assert_eq!((r.stored, r.duplicates), (0, 20_000));
}

use std::collections::VecDeque;
use std::sync::Mutex;

use overseer_core::pipeline::Source;
use overseer_core::{BoxError, SourcePosition};

struct VecSource {
    id: SourceId,
    batches: VecDeque<Vec<Bytes>>,
    fail_after: Option<std::time::Duration>,
    acks: Acks,
}

/// What a [`VecSource`] was acknowledged, in order.
type Acks = Arc<Mutex<Vec<Option<SourcePosition>>>>;

impl VecSource {
    /// A source `id` delivering `batches`, then ending; and what it is
    /// acknowledged.
    fn new(id: &str, batches: impl IntoIterator<Item = Vec<Bytes>>) -> (Self, Acks) {
        let acks = Acks::default();
        let source = Self {
            id: SourceId::new(id).unwrap(),
            batches: batches.into_iter().collect(),
            fail_after: None,
            acks: acks.clone(),
        };
        (source, acks)
    }
}

#[async_trait::async_trait]
impl Source for VecSource {
    fn id(&self) -> &SourceId {
        &self.id
    }
    async fn next_batch(&mut self) -> Result<Option<Vec<Bytes>>, BoxError> {
        if let Some(d) = self.fail_after.take() {
            tokio::time::sleep(d).await;
            return Err("source broke".into());
        }
        Ok(self.batches.pop_front())
    }
    async fn ack(&mut self, position: Option<&SourcePosition>) -> Result<(), BoxError> {
        self.acks.lock().unwrap().push(position.cloned());
        Ok(())
    }
}

fn build_two(store: &Store, clock: &Arc<ManualClock>) -> Overseer {
    Overseer::builder()
        .store(store.clone())
        .manual_clock(clock.clone())
        .state_builder(LinesConsumer)
        .source(
            SourceConfig::new("app", LinesConsumer)
                .unwrap()
                .models(["lines"])
                .unwrap(),
        )
        .source(
            SourceConfig::new("broken", LinesConsumer)
                .unwrap()
                .models(["other"])
                .unwrap(),
        )
        .checks(Registry::new().add(Check::new("small", small)))
        .build()
        .unwrap()
}

/// When one source fails, `run` returns its error at once; another source's
/// batch that was being ingested is then stored and acknowledged to its
/// source after `run` returned: its updates are never checked, and since the
/// source will not re-deliver an acknowledged batch (and a re-delivered one
/// would be a duplicate without notifications), no restart checks them either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_source_does_not_leave_acked_unchecked_batches() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000_000)));
    let o = build_two(&store, &clock);
    let lines: Vec<Bytes> = (0..4_000).map(|i| Bytes::from(format!("r{i} 500"))).collect();
    let (app, acks) = VecSource::new("app", VecDeque::from([lines]));
    let (mut broken, _) = VecSource::new("broken", VecDeque::new());
    broken.fail_after = Some(std::time::Duration::from_millis(5));
    let r = o
        .run(vec![Box::new(app), Box::new(broken)], std::future::pending())
        .await;
    assert!(r.is_err());
    let acked_when_run_returned = acks.lock().unwrap().len();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let acked_later = acks.lock().unwrap().len();
    // Restart: the source resumes after its acknowledged position (nothing to re-deliver).
    let mut o = build_two(&store, &clock);
    o.drain().await.unwrap();
    let incidents = store.incidents().await.unwrap().len();
    assert!(
        acked_later == acked_when_run_returned,
        "acked when run returned: {acked_when_run_returned}, 3 s later: {acked_later}; \
         incidents in the store after restart: {incidents} (4000 failing records acked)"
    );
    assert_eq!(incidents, 4000);
}

/// Shutdown while a batch is being ingested: the batch is stored, acknowledged and checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_batch_loses_nothing() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000_000)));
    let o = build(&store, &clock);
    let batches: VecDeque<Vec<Bytes>> = (0..3)
        .map(|b| (0..3_000).map(|i| Bytes::from(format!("r{b}x{i} 500"))).collect())
        .collect();
    let (app, acks) = VecSource::new("app", batches);
    let o = o
        .run(
            vec![Box::new(app)],
            tokio::time::sleep(std::time::Duration::from_millis(20)),
        )
        .await
        .unwrap();
    let acked = acks.lock().unwrap().len();
    // What was acknowledged was checked by the runner `run` hands back.
    assert_eq!(o.runner().stats().incidents_opened, acked as u64 * 3_000);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(acks.lock().unwrap().len(), acked, "acked after run returned");
    let incidents = store.incidents().await.unwrap().len() as u64;
    assert_eq!(incidents, acked as u64 * 3_000);
}

/// A consumer that gives every event the same position.
#[derive(Clone, Copy)]
struct SamePosition;
impl overseer_core::Consumer for SamePosition {
    fn format(&self) -> overseer_core::Format {
        overseer_core::Consumer::format(&LinesConsumer)
    }
    fn consume(&self, raw: &[u8]) -> Result<overseer_core::Consumed, overseer_core::ConsumeError> {
        let text = std::str::from_utf8(raw).unwrap();
        let two: Vec<&str> = text.split(' ').take(2).collect();
        let mut c = overseer_core::Consumer::consume(&LinesConsumer, two.join(" ").as_bytes())?;
        if let overseer_core::Consumed::Record(r) = &mut c {
            r.position = SourcePosition::new("p");
        }
        Ok(c)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_position_for_different_events() {
    let store = Store::in_memory();
    let ing = overseer_core::Ingestor::new(
        store.clone(),
        SourceId::new("app").unwrap(),
        SamePosition,
        overseer_core::References::new(),
    );
    // Same record and commit time, different bytes; then another record.
    let batch = b(&["a 5 x", "a 5 y", "b 5 z"]);
    let r = ing.ingest_and_ack(&batch).await.unwrap();
    let dl = store.dead_letters().await.unwrap();
    assert_eq!(r.stored + r.dead_lettered, 3);
    assert!(
        dl.iter()
            .any(|d| d.raw == "a 5 y" && d.error.contains("position conflict"))
    );
    // Again, across the parallel chunked path.
    let mut big: Vec<Bytes> = (0..600).map(|i| Bytes::from(format!("k{i} 7 q"))).collect();
    big.push(Bytes::from("k0 7 other"));
    let r = ing.ingest_and_ack(&big).await.unwrap();
    assert_eq!(r.stored + r.dead_lettered + r.duplicates, 601);
}

async fn cli(args: &[&str]) -> (Result<(), String>, String) {
    use clap::Parser;
    let cli =
        overseer_cli::Cli::try_parse_from(std::iter::once("overseer").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    let r = overseer_cli::run_with_output(cli, &mut out)
        .await
        .map_err(|e| e.to_string());
    (r, String::from_utf8_lossy(&out).into_owned())
}

/// The CLI over a store with a truncated dead letter, a corrupt incident and
/// a stray file in the incidents area.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_over_hostile_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let store = Store::local(dir.path()).unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1000)));
    {
        let mut o = build(&store, &clock);
        o.ingest("app", &b(&["r 500", "garbage"])).await.unwrap();
        o.drain().await.unwrap();
    }
    let (r, out) = cli(&["dead-letters", "--store", d]).await;
    assert!(r.is_ok() && out.contains("garbage"), "{r:?} {out}");
    let (r, out) = cli(&["audit", "--store", d, "--incidents"]).await;
    assert!(r.is_ok() && out.contains("too big"), "{r:?} {out}");

    let find = |area: &str| walk(&dir.path().join(area));
    fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { v.extend(walk(&p)) } else { v.push(p) }
        }
        v
    }
    let dl = find("dead-letters");
    let bytes = std::fs::read(&dl[0]).unwrap();
    std::fs::write(&dl[0], &bytes[..bytes.len() - 4]).unwrap();
    let (r, _) = cli(&["dead-letters", "--store", d]).await;
    let e = r.unwrap_err();
    assert!(e.contains(dl[0].file_name().unwrap().to_str().unwrap()), "{e}");

    let inc = find("incidents");
    let bytes = std::fs::read(&inc[0]).unwrap();
    std::fs::write(&inc[0], &bytes[..bytes.len() / 2]).unwrap();
    let (r, _) = cli(&["audit", "--store", d, "--incidents"]).await;
    let e = r.unwrap_err();
    assert!(e.contains("opened.pb"), "{e}");
    // The restarted pipeline does not carry on as if the store held no incident.
    let mut o = build(&store, &clock);
    o.ingest("app", &b(&["r 600"])).await.unwrap();
    let e = o.drain().await.unwrap_err().to_string();
    assert!(e.contains("opened.pb"), "{e}");
}

/// Objects truncated at a field boundary decode as valid protobuf whose
/// missing fields read as defaults: they must not be taken as real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_at_field_boundary_is_detected() {
    use prost::Message;
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1000)));
    let mut o = build(&store, &clock);
    o.ingest("app", &b(&["r 500", "garbage"])).await.unwrap();
    o.drain().await.unwrap();
    let inc = list(&store, "incidents").await;
    let bytes = get(&store, &inc[0]).await;
    let full = overseer_core::proto::IncidentRecord::decode(bytes.clone()).unwrap();
    let prefix = overseer_core::proto::IncidentRecord {
        check: full.check.clone(),
        root: full.root.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(&bytes[..prefix.len()], &prefix[..]);
    put_raw(&store, inc[0].as_ref(), &prefix).await;
    let got = store.incidents().await;
    let inc_err = got.is_err();

    let dl = list(&store, "dead-letters").await;
    let bytes = get(&store, &dl[0]).await;
    let full = overseer_core::proto::DeadLetter::decode(bytes.clone()).unwrap();
    let prefix = overseer_core::proto::DeadLetter {
        received_at_micros: 0,
        error: String::new(),
        batch_index: 0,
        ..full
    }
    .encode_to_vec();
    assert_eq!(&bytes[..prefix.len()], &prefix[..]);
    put_raw(&store, dl[0].as_ref(), &prefix).await;
    let got = store.dead_letters().await;
    assert!(inc_err && got.is_err(), "truncated objects read as valid");
}

/// `run` with a source that is not configured is a configuration error;
/// the sources listed before it must not have been started (they would
/// ingest and acknowledge batches that no runner ever checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_unknown_source_starts_nothing() {
    // Whether the first source's task wins the race is random: try 20 times.
    for _ in 0..20 {
        run_with_unknown_source_once().await;
    }
}

async fn run_with_unknown_source_once() {
    let store = Store::in_memory();
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000_000)));
    let o = build(&store, &clock);
    let (app, acks) = VecSource::new("app", VecDeque::from([b(&["r 500"])]));
    let (ghost, _) = VecSource::new("ghost", VecDeque::new());
    let r = o
        .run(vec![Box::new(app), Box::new(ghost)], std::future::pending())
        .await;
    let Err(e) = r else {
        panic!("unknown source accepted")
    };
    let e = e.to_string();
    assert!(e.contains("ghost"), "{e}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let acked = acks.lock().unwrap().len();
    let stored = store.checkpoint(&SourceId::new("app").unwrap()).await.unwrap();
    assert_eq!(
        acked, 0,
        "app acked {acked} batch(es) after run failed; checkpoint {stored:?}"
    );
}

/// A tick that fails (here: an incident object the runner cannot read back)
/// ends `run` with its error, and no source acknowledges a batch after `run`
/// has returned: what a source acknowledged was stored before the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tick_stops_the_sources_before_run_returns() {
    let store = Store::in_memory();
    put_raw(
        &store,
        "incidents/small/lines/r/00000000000001000000/opened.pb",
        b"\xff\xff garbage",
    )
    .await;
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_000_000)));
    let o = build(&store, &clock);
    let batches: VecDeque<Vec<Bytes>> = (0..3)
        .map(|b| (0..3_000).map(|i| Bytes::from(format!("r{b}x{i} 500"))).collect())
        .collect();
    let (app, acks) = VecSource::new("app", batches);
    let Err(e) = o.run(vec![Box::new(app)], std::future::pending()).await else {
        panic!("run over an unreadable incident succeeded");
    };
    assert!(e.to_string().contains("opened.pb"), "{e}");
    let acked = acks.lock().unwrap().len();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        acks.lock().unwrap().len(),
        acked,
        "acknowledged after run returned"
    );
}
