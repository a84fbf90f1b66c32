//! The update store on [`object_store`]: immutable update objects, master
//! documents (references), the reverse reference index, dead letters and
//! source checkpoints. The layout is a documented format
//! (`docs/store-layout.md`).

mod audit;
pub(crate) mod codec;
mod compression;
mod counting;
pub mod layout;
mod memory;

pub use audit::{AuditEntry, IncidentEntry, OutcomeKind};
pub use compression::{Compression, ZstdOptions};
pub use counting::{CountingStore, RequestCounts};
pub use memory::MemoryStore;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use prost::Message;

use crate::error::{Error, Result};
use crate::model::{RecordKey, Reference, SourceId, SourcePosition, UpdateDocument};
use crate::proto;
use crate::time::Timestamp;
use compression::{Decoder, Dictionaries, Encoder, Step};
use layout::encode_segment;

/// How many store requests one call keeps in flight by default.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// The most file-system requests a [`Store::local`] runs at once.
pub const LOCAL_MAX_REQUESTS: usize = 16;

/// How many stored references the store remembers to save requests.
const KNOWN_REFS_CAPACITY: usize = 100_000;

/// What a create-only write found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PutOutcome {
    /// The object was new and is now stored.
    Created,
    /// The same object was already stored; nothing was written.
    Duplicate,
}

/// A stored update as listed: its key and its commit time (read from the key,
/// without fetching the object).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UpdateObject {
    /// The object's key in the store.
    pub path: String,
    /// The update's source commit time.
    pub commit_time: Timestamp,
}

/// One reference of a record, as found in the master document or the
/// reverse index.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReferenceEntry {
    /// The referencing record.
    pub from: RecordKey,
    /// The reference (field and target).
    pub reference: Reference,
    /// Commit time of the update in which the reference was first stored.
    pub first_seen: Timestamp,
}

/// An event that could not be consumed, kept with its bytes and the reason.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeadLetter {
    /// The source that delivered it.
    pub source: SourceId,
    /// Its position, if it could be read.
    pub position: Option<SourcePosition>,
    /// The format it was consumed as.
    pub format: String,
    /// The event exactly as received.
    pub raw: Bytes,
    /// Why it was rejected.
    pub error: String,
    /// When it was received (the batch it arrived in).
    pub received_at: Timestamp,
    /// Its index in the batch it arrived in: dead letters are listed in
    /// the order they arrived in, by `received_at` then this.
    pub batch_index: u32,
}

/// A source's acknowledged progress.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Checkpoint {
    /// The last position whose batch is durably stored.
    pub position: SourcePosition,
    /// The latest source commit time delivered (the watermark).
    pub watermark: Timestamp,
}

/// The Overseer store: a thin, typed layer over any [`ObjectStore`].
///
/// Nothing here assumes a backend: every write is a create-only put
/// ([`PutMode::Create`], supported by InMemory, LocalFileSystem and S3),
/// except checkpoints, which one ingester per source overwrites.
///
/// Raw events are compressed at rest by default (see [`Compression`]);
/// reads return them exactly as received either way.
///
/// ```
/// # async fn demo() -> overseer_core::Result<()> {
/// use overseer_core::Store;
/// let memory = Store::in_memory();
/// let dir = tempfile::tempdir().unwrap();
/// let local = Store::local(dir.path())?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    root: Path,
    /// References known to be stored (a derived cache that saves requests).
    known_refs: Arc<Mutex<KnownRefs>>,
    concurrency: usize,
    compression: Compression,
    /// Each source's compression dictionary, and those read back.
    dictionaries: Arc<Dictionaries>,
    /// `inner` itself, when it is the store's own [`MemoryStore`]: updates
    /// and reference lists are then written a batch at a time.
    memory: Option<MemoryStore>,
}

/// References known to be stored: each record's (a handful each), looked
/// up without copying the record's key or the reference.
#[derive(Debug, Default)]
struct KnownRefs {
    by_record: HashMap<RecordKey, Vec<Reference>, foldhash::fast::RandomState>,
    len: usize,
}

impl KnownRefs {
    fn contains(&self, from: &RecordKey, reference: &Reference) -> bool {
        self.by_record
            .get(from)
            .is_some_and(|refs| refs.contains(reference))
    }

    /// Adds references not known yet, forgetting every one first when that
    /// would hold more than [`KNOWN_REFS_CAPACITY`].
    fn extend<'a>(&mut self, fresh: impl ExactSizeIterator<Item = (&'a RecordKey, &'a Reference)>) {
        if self.len + fresh.len() > KNOWN_REFS_CAPACITY {
            *self = Self::default();
        }
        for (from, reference) in fresh {
            self.by_record
                .entry(from.clone())
                .or_default()
                .push(reference.clone());
            self.len += 1;
        }
    }
}

/// The dictionary each source's updates of one batch are compressed against.
type Encoders = HashMap<SourceId, Option<Arc<Encoder>>>;

/// A put to `key` that failed in the backend.
fn put_error(key: &str, source: object_store::Error) -> Error {
    Error::Store {
        operation: "put",
        path: key.to_owned(),
        source,
    }
}

/// A listing of `prefix` that failed in the backend.
pub(crate) fn list_error(prefix: &Path, source: object_store::Error) -> Error {
    Error::Store {
        operation: "list",
        path: prefix.to_string(),
        source,
    }
}

/// A key built by the store (every segment already safe, see [`layout`]) as
/// a [`Path`]: validated, not encoded a second time.
fn built_path(key: &str) -> Result<Path> {
    Path::parse(key).map_err(|source| Error::Store {
        operation: "put",
        path: key.to_owned(),
        source: object_store::Error::InvalidPath { source },
    })
}

impl Store {
    /// A store over any object store, at its root.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            root: Path::default(),
            known_refs: Arc::default(),
            concurrency: DEFAULT_CONCURRENCY,
            compression: Compression::default(),
            dictionaries: Arc::default(),
            memory: None,
        }
    }

    /// A store in memory (tests, examples, the embedded default), on a
    /// [`MemoryStore`]. Knowing its backend, it stores a batch of updates
    /// (or of reference lists) under one lock of the `MemoryStore`, rather
    /// than through one `put` each; what it stores is the same.
    pub fn in_memory() -> Self {
        let memory = MemoryStore::new();
        Self {
            memory: Some(memory.clone()),
            ..Self::new(Arc::new(memory))
        }
    }

    /// A store in a local directory, created if missing.
    ///
    /// At most [`LOCAL_MAX_REQUESTS`] file-system requests run at once
    /// (`object_store`'s `LimitStore`): each runs on a blocking thread, and
    /// more in flight only adds threads (and their memory), not throughput.
    pub fn local(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::InvalidInput {
            what: "store directory",
            reason: format!("cannot create {}: {e}", dir.display()),
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| Error::Store {
            operation: "open",
            path: dir.display().to_string(),
            source: e,
        })?;
        Ok(Self::new(Arc::new(object_store::limit::LimitStore::new(
            fs,
            LOCAL_MAX_REQUESTS,
        ))))
    }

    /// The same store under a key prefix (several Overseer stores in one bucket).
    ///
    /// The store under the prefix is another store: what this one knows
    /// about its own objects (references stored, compression dictionaries)
    /// is not carried over.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        for part in prefix.split('/').filter(|p| !p.is_empty()) {
            self.root = self.root.clone().join(&*encode_segment(part));
        }
        self.known_refs = Arc::default();
        self.dictionaries = Arc::default();
        self
    }

    /// The number of requests one call keeps in flight (default
    /// [`DEFAULT_CONCURRENCY`]).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How raw events are stored from now on (default: zstd against a
    /// dictionary trained per source, see [`Compression`]). Updates stored
    /// either way are read back alike.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Waits until every compression dictionary being trained is trained
    /// and stored (or has failed). Training runs in the background, and
    /// events are stored as received meanwhile, so nothing depends on this
    /// for correctness; it makes a test, a benchmark or a shutdown see the
    /// dictionaries settled.
    pub async fn settle_compression(&self) {
        for training in self.dictionaries.take_training() {
            // A training task cannot panic on input (errors are logged and
            // leave the source uncompressed); a panic is a bug in zstd.
            if let Err(e) = training.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    pub(crate) fn path(&self, parts: &[&str]) -> Path {
        let mut p = self.root.clone();
        for part in parts {
            p = p.join(*part);
        }
        p
    }

    fn record_prefix(&self, area: &str, key: &RecordKey) -> Path {
        self.path(&[
            area,
            &encode_segment(key.model.as_str()),
            &encode_segment(key.id.as_str()),
        ])
    }

    /// The key under which an update is stored: derived from its record,
    /// commit time, source and position only, so storing the same event
    /// twice addresses the same object.
    pub fn update_path(&self, doc: &UpdateDocument) -> String {
        self.update_path_of(
            &doc.key,
            doc.commit_time,
            &layout::update_digest(doc.source.as_str(), doc.position.as_str()),
        )
    }

    /// [`update_path`](Self::update_path) from the record, the commit time
    /// and the digest of the source and position ([`layout::update_digest`]).
    pub(crate) fn update_path_of(
        &self,
        key: &RecordKey,
        commit_time: Timestamp,
        digest: &[u8; 16],
    ) -> String {
        self.record_object_key("updates", key, commit_time.as_micros(), digest)
    }

    /// The key of an object of `key` under `area`, named by a time and a
    /// digest ([`layout::push_object_file_name`]).
    fn record_object_key(&self, area: &str, key: &RecordKey, micros: i64, digest: &[u8; 16]) -> String {
        // Every segment is already safe (see `layout`), so the key is built
        // as text, in one buffer; it equals what `Path::join` would build.
        let model = encode_segment(key.model.as_str());
        let id = encode_segment(key.id.as_str());
        let root = self.root.as_ref();
        let mut path = String::with_capacity(root.len() + area.len() + model.len() + id.len() + 64);
        if !root.is_empty() {
            path.push_str(root);
            path.push('/');
        }
        for segment in [area, &model, &id] {
            path.push_str(segment);
            path.push('/');
        }
        layout::push_object_file_name(&mut path, micros, digest);
        path
    }

    pub(crate) async fn put_create(&self, path: &Path, bytes: Bytes) -> Result<PutOutcome> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(path, PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::Duplicate),
            Err(source) => Err(put_error(path.as_ref(), source)),
        }
    }

    pub(crate) async fn get_bytes(&self, path: &Path) -> Result<Bytes> {
        let store_err = |source| Error::Store {
            operation: "get",
            path: path.to_string(),
            source,
        };
        self.inner
            .get(path)
            .await
            .map_err(store_err)?
            .bytes()
            .await
            .map_err(store_err)
    }

    pub(crate) async fn list_paths(&self, prefix: &Path) -> Result<Vec<Path>> {
        let mut paths: Vec<Path> = self
            .inner
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|source| list_error(prefix, source))?;
        // `list` order is not guaranteed by every backend.
        paths.sort();
        Ok(paths)
    }

    /// Stores one update, create-only. If an object already exists at its
    /// key, it is fetched and compared: the same raw bytes are a
    /// [`PutOutcome::Duplicate`] (a re-delivered event, or our own earlier
    /// put whose reply was lost); different bytes are an
    /// [`Error::PositionConflict`].
    pub async fn put_update(&self, doc: &UpdateDocument) -> Result<PutOutcome> {
        let encoders = self.encoders(std::slice::from_ref(doc)).await;
        let key = self.update_path(doc);
        let encoder = encoders.get(&doc.source).and_then(Option::as_deref);
        match self
            .put_create(&built_path(&key)?, codec::encode_update(doc, encoder))
            .await?
        {
            PutOutcome::Created => Ok(PutOutcome::Created),
            PutOutcome::Duplicate => self.settle_existing(doc, &key).await,
        }
    }

    /// An object is already stored at `doc`'s key: the same raw bytes of
    /// the same record are a [`PutOutcome::Duplicate`], anything else an
    /// [`Error::PositionConflict`].
    async fn settle_existing(&self, doc: &UpdateDocument, key: &str) -> Result<PutOutcome> {
        let existing = self
            .open_update(key, self.get_bytes(&built_path(key)?).await?)
            .await?;
        if existing.raw == doc.raw && existing.key == doc.key {
            Ok(PutOutcome::Duplicate)
        } else {
            Err(Error::PositionConflict {
                source_id: doc.source.to_string(),
                position: doc.position.to_string(),
                key: doc.key.to_string(),
            })
        }
    }

    /// Stores many updates with up to the store's concurrency in flight;
    /// returns each update with its key and outcome, in the order of `docs`.
    ///
    /// Large batches are split into one chunk per core, each written by its
    /// own task, so encoding and writing use every core of the runtime.
    pub async fn put_updates(
        &self,
        docs: Vec<UpdateDocument>,
    ) -> Vec<(UpdateDocument, String, Result<PutOutcome>)> {
        let encoders = Arc::new(self.encoders(&docs).await);
        let parallelism = crate::parallelism();
        if docs.len() < 256 || parallelism < 2 || tokio::runtime::Handle::try_current().is_err() {
            return self.put_chunk(docs, self.concurrency, &encoders).await;
        }
        let chunk_len = docs.len().div_ceil(parallelism);
        let per_chunk = self.concurrency.div_ceil(parallelism).max(1);
        let mut docs = docs;
        let mut chunks = Vec::with_capacity(parallelism);
        while !docs.is_empty() {
            let rest = docs.split_off(chunk_len.min(docs.len()));
            chunks.push(std::mem::replace(&mut docs, rest));
        }
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let store = self.clone();
                let encoders = encoders.clone();
                tokio::spawn(async move { store.put_chunk(chunk, per_chunk, &encoders).await })
            })
            .collect();
        let mut out = Vec::new();
        for handle in handles {
            match handle.await {
                Ok(part) => out.extend(part),
                // Writing cannot panic on input; a panic here is a bug in a
                // backend. Re-raise it rather than report writes that did not happen.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        out
    }

    /// Stores one chunk of updates: each encoded and named, all stored
    /// create-only ([`put_all`](Self::put_all)), then each found already
    /// stored settled as a duplicate or a position conflict.
    async fn put_chunk(
        &self,
        docs: Vec<UpdateDocument>,
        concurrency: usize,
        encoders: &Encoders,
    ) -> Vec<(UpdateDocument, String, Result<PutOutcome>)> {
        let encoded: Vec<(String, Bytes)> = docs
            .iter()
            .map(|d| {
                let encoder = encoders.get(&d.source).and_then(Option::as_deref);
                (self.update_path(d), codec::encode_update(d, encoder))
            })
            .collect();
        let outcomes = self.put_all(&encoded, concurrency).await;
        let mut out: Vec<(UpdateDocument, String, Result<PutOutcome>)> = docs
            .into_iter()
            .zip(encoded)
            .zip(outcomes)
            .map(|((doc, (key, _)), outcome)| (doc, key, outcome))
            .collect();
        let duplicates: Vec<usize> = (0..out.len())
            .filter(|&i| matches!(out[i].2, Ok(PutOutcome::Duplicate)))
            .collect();
        let settles: Vec<_> = duplicates
            .iter()
            .map(|&i| self.settle_existing(&out[i].0, &out[i].1))
            .collect();
        let settled: Vec<Result<PutOutcome>> = stream::iter(settles).buffered(concurrency).collect().await;
        for (i, outcome) in duplicates.into_iter().zip(settled) {
            out[i].2 = outcome;
        }
        out
    }

    /// Stores each `(key, bytes)` create-only, up to `concurrency` at a
    /// time; the outcome of each, in order, as [`put_create`](Self::put_create)
    /// gives it. On the store's own [`MemoryStore`] they are all stored
    /// under one lock instead, without a put per object. The keys are
    /// built by the store (see [`built_path`]).
    async fn put_all(&self, objects: &[(String, Bytes)], concurrency: usize) -> Vec<Result<PutOutcome>> {
        if let Some(memory) = &self.memory {
            let created =
                memory.create_all(objects.iter().map(|(key, bytes)| (key.as_str(), bytes.as_ref())));
            return created
                .into_iter()
                .zip(objects)
                .map(|(created, (key, _))| match created {
                    Ok(true) => Ok(PutOutcome::Created),
                    Ok(false) => Ok(PutOutcome::Duplicate),
                    Err(source) => Err(put_error(key, source)),
                })
                .collect();
        }
        // The futures are made first: a stream holding the closure that
        // makes them would not be `Send` for every lifetime.
        let puts: Vec<_> = objects
            .iter()
            .map(|(key, bytes)| async move { self.put_create(&built_path(key)?, bytes.clone()).await })
            .collect();
        stream::iter(puts).buffered(concurrency).collect().await
    }

    /// The updates of a record with a commit time at or before `up_to`,
    /// ordered by commit time (ties are ordered by position once fetched).
    pub async fn list_updates(&self, key: &RecordKey, up_to: Timestamp) -> Result<Vec<UpdateObject>> {
        let prefix = self.record_prefix("updates", key);
        let mut out = Vec::new();
        for path in self.list_paths(&prefix).await? {
            let Some(commit) = path.filename().and_then(layout::commit_micros_of) else {
                continue;
            };
            if commit <= up_to.as_micros() {
                out.push(UpdateObject {
                    path: path.to_string(),
                    commit_time: Timestamp::from_micros(commit),
                });
            }
        }
        Ok(out)
    }

    /// Whether any update or reference is stored (one listing request per
    /// area, reading at most one entry).
    pub async fn holds_records(&self) -> Result<bool> {
        for area in ["updates", "referrers"] {
            let prefix = self.path(&[area]);
            match self.inner.list(Some(&prefix)).next().await {
                None => {}
                Some(Ok(_)) => return Ok(true),
                Some(Err(source)) => return Err(list_error(&prefix, source)),
            }
        }
        Ok(false)
    }

    /// Fetches and decodes one update object.
    pub async fn get_update(&self, path: &str) -> Result<UpdateDocument> {
        let p = Path::from(path);
        self.open_update(path, self.get_bytes(&p).await?).await
    }

    /// Decodes an update object, decompressing what it holds compressed.
    ///
    /// An update's key is derived from the update itself (record, commit
    /// time, source, position): an object at any other key (another
    /// record's update copied there, a file name whose time is not the
    /// commit time) is corrupt, never read as this record's history.
    async fn open_update(&self, path: &str, bytes: Bytes) -> Result<UpdateDocument> {
        let doc = match codec::decode_update(path, bytes)? {
            codec::Decoded::Update(doc) => doc,
            codec::Decoded::Compressed {
                source,
                dictionary,
                envelope,
            } => {
                let decoder = self.decoder(&source, dictionary, path).await?;
                codec::decompress_update(path, envelope, source, |frame| decoder.decompress(frame))?
            }
        };
        let expected = self.update_path(&doc);
        if expected != path {
            return Err(codec::corrupt(
                path,
                codec::UPDATE_ENVELOPE,
                format!(
                    "it holds an update of {} committed at {} (source {}), which belongs at {expected}",
                    doc.key, doc.commit_time, doc.source
                ),
            ));
        }
        Ok(doc)
    }

    fn dictionary_path(&self, source: &SourceId, id: u32) -> Path {
        self.path(&[
            "dictionaries",
            &encode_segment(source.as_str()),
            &format!("{id:010}.zdict"),
        ])
    }

    /// The dictionary `id` of `source`, read from the store the first time.
    async fn decoder(&self, source: &SourceId, id: u32, update: &str) -> Result<Arc<Decoder>> {
        if let Some(decoder) = self.dictionaries.decoder(source, id) {
            return Ok(decoder);
        }
        let path = self.dictionary_path(source, id);
        let bytes = self.get_bytes(&path).await?;
        let decoder = Decoder::new(&bytes, id).map_err(|reason| {
            codec::corrupt(
                update,
                codec::UPDATE_ENVELOPE,
                format!("its zstd dictionary {path} cannot be used: {reason}"),
            )
        })?;
        let decoder = Arc::new(decoder);
        self.dictionaries.add_decoder(source, id, decoder.clone());
        Ok(decoder)
    }

    /// The dictionary to compress each source's updates of a batch
    /// against: loaded from the store, or trained once enough of the
    /// source's events were seen. Compression never fails a write: any
    /// trouble stores the events as received (and is logged).
    async fn encoders(&self, docs: &[UpdateDocument]) -> Encoders {
        let Compression::Zstd(options) = self.compression else {
            return Encoders::new();
        };
        let mut out = Encoders::new();
        for doc in docs {
            if out.contains_key(&doc.source) {
                continue;
            }
            let source = &doc.source;
            let encoder = loop {
                match self.dictionaries.step(source, docs, &options) {
                    Step::Use(encoder) => break encoder,
                    // First sight of the source: reuse a stored dictionary,
                    // or else (the source now sampling) step again.
                    Step::Load => {
                        if let Some(encoder) = self.load_dictionary(source, options.level).await {
                            self.dictionaries.settle(source, Some(encoder.clone()));
                            break Some(encoder);
                        }
                    }
                    Step::Train { data, sizes } => {
                        break self.start_training(source, data, sizes, options).await;
                    }
                }
            };
            out.insert(source.clone(), encoder);
        }
        out
    }

    /// Trains `source`'s dictionary: in the background inside a runtime
    /// (this batch, and those stored until the dictionary is ready, go as
    /// received, so training never holds up ingestion and the checks
    /// waiting for it), else at once.
    async fn start_training(
        &self,
        source: &SourceId,
        data: Vec<u8>,
        sizes: Vec<usize>,
        options: ZstdOptions,
    ) -> Option<Arc<Encoder>> {
        if tokio::runtime::Handle::try_current().is_err() {
            let encoder = self.train_dictionary(source, data, sizes, &options).await;
            self.dictionaries.settle(source, encoder.clone());
            return encoder;
        }
        let store = self.clone();
        let source = source.clone();
        let training = tokio::spawn(async move {
            let encoder = store.train_dictionary(&source, data, sizes, &options).await;
            store.dictionaries.settle(&source, encoder);
        });
        self.dictionaries.add_training(training);
        None
    }

    /// A dictionary an earlier run stored for `source`, if any.
    async fn load_dictionary(&self, source: &SourceId, level: i32) -> Option<Arc<Encoder>> {
        let prefix = self.path(&["dictionaries", &encode_segment(source.as_str())]);
        let paths = match self.list_paths(&prefix).await {
            Ok(paths) => paths,
            Err(error) => {
                tracing::warn!(%source, %error, "cannot look for a compression dictionary; sampling anew");
                return None;
            }
        };
        // Several runs may each have trained one (a run that could not
        // read them); any will do, and the last in key order is chosen.
        let path = paths
            .iter()
            .rev()
            .find(|p| p.filename().is_some_and(|f| f.ends_with(".zdict")))?;
        match self.get_bytes(path).await {
            Ok(bytes) => {
                let encoder = self.prepare(source, &bytes, level);
                if encoder.is_none() {
                    tracing::warn!(%source, %path, "stored compression dictionary is not a zstd dictionary; sampling anew");
                }
                encoder
            }
            Err(error) => {
                tracing::warn!(%source, %error, "cannot read a compression dictionary; sampling anew");
                None
            }
        }
    }

    /// Prepares stored dictionary bytes for writing and reading.
    fn prepare(&self, source: &SourceId, bytes: &[u8], level: i32) -> Option<Arc<Encoder>> {
        let encoder = Encoder::new(bytes, level)?;
        if let Ok(decoder) = Decoder::new(bytes, encoder.id) {
            self.dictionaries
                .add_decoder(source, encoder.id, Arc::new(decoder));
        }
        Some(Arc::new(encoder))
    }

    /// Trains `source`'s dictionary (on a blocking thread) and stores it,
    /// create-only, before any update uses it.
    async fn train_dictionary(
        &self,
        source: &SourceId,
        data: Vec<u8>,
        sizes: Vec<usize>,
        options: &ZstdOptions,
    ) -> Option<Arc<Encoder>> {
        let max = options.dictionary_bytes;
        let trained = if tokio::runtime::Handle::try_current().is_ok() {
            // Training takes a fraction of a second of CPU: off the runtime's workers.
            tokio::task::spawn_blocking(move || compression::train(&data, &sizes, max))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        } else {
            compression::train(&data, &sizes, max)
        };
        let dictionary = match trained {
            Ok(d) => d,
            Err(error) => {
                tracing::warn!(%source, %error, "compression dictionary training failed; storing events as received");
                return None;
            }
        };
        let id = compression::dictionary_id(&dictionary)?;
        let path = self.dictionary_path(source, id);
        let stored = match self.put_create(&path, Bytes::from(dictionary.clone())).await {
            Ok(PutOutcome::Created) => Ok(dictionary),
            // Another writer stored a dictionary with this id: that one is
            // what readers will find, so it is the one to use.
            Ok(PutOutcome::Duplicate) => self.get_bytes(&path).await.map(|b| b.to_vec()),
            Err(e) => Err(e),
        };
        match stored {
            Ok(bytes) => {
                tracing::info!(%source, id, bytes = bytes.len(), "compression dictionary trained");
                self.prepare(source, &bytes, options.level)
            }
            Err(error) => {
                tracing::warn!(%source, %error, "cannot store the compression dictionary; storing events as received");
                None
            }
        }
    }

    /// Records the references of `from` found in an update committed at
    /// `commit_time`: [`add_batch_references`](Self::add_batch_references)
    /// for one update.
    pub async fn add_references(
        &self,
        from: &RecordKey,
        references: &[Reference],
        commit_time: Timestamp,
    ) -> Result<usize> {
        self.add_batch_references(&[(from, references, commit_time)])
            .await
    }

    /// Records the references found in the updates of one batch, each
    /// update given as its record, its references and its commit time.
    ///
    /// References this handle has stored already are skipped. Of the rest,
    /// the reverse index gets one create-only `ReferenceList` per target
    /// (`referrers/`), holding every record of the batch that points at it;
    /// then each record's master document gets one create-only
    /// `ReferenceList` (`refs/`). No object is ever rewritten, so concurrent
    /// writers can never lose each other's references, and a
    /// master-document entry is only visible once its reverse entry is.
    /// Returns how many references the new master-document objects hold.
    ///
    /// Records and references may be owned or borrowed: `(RecordKey,
    /// Vec<Reference>, Timestamp)` and `(&RecordKey, &[Reference],
    /// Timestamp)` both do.
    pub async fn add_batch_references<K, R>(&self, updates: &[(K, R, Timestamp)]) -> Result<usize>
    where
        K: std::borrow::Borrow<RecordKey> + Sync,
        R: AsRef<[Reference]> + Sync,
    {
        // The earliest commit time of each reference new to this handle.
        let mut fresh: BTreeMap<(&RecordKey, &Reference), Timestamp> = BTreeMap::new();
        {
            let known = self.known_refs.lock().ok();
            for (from, references, time) in updates {
                let from = from.borrow();
                for reference in references.as_ref() {
                    if known.as_ref().is_some_and(|k| k.contains(from, reference)) {
                        continue;
                    }
                    let first = fresh.entry((from, reference)).or_insert(*time);
                    *first = (*first).min(*time);
                }
            }
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        let entry = |from: &RecordKey, reference: &Reference, time: Timestamp| proto::ReferenceEntry {
            from: Some(codec::key_to_proto(from)),
            reference: Some(codec::reference_to_proto(reference)),
            first_seen_micros: time.as_micros(),
        };
        // `fresh` is ordered by record, then field and target.
        let mut reverse: BTreeMap<&RecordKey, Vec<proto::ReferenceEntry>> = BTreeMap::new();
        let mut forward: Vec<(&RecordKey, Vec<proto::ReferenceEntry>)> = Vec::new();
        for (&(from, reference), &time) in &fresh {
            let e = entry(from, reference, time);
            reverse.entry(&reference.target).or_default().push(e.clone());
            match forward.last_mut() {
                Some((last, list)) if *last == from => list.push(e),
                _ => forward.push((from, vec![e])),
            }
        }
        // Reverse index first: a master-document entry is only ever
        // visible once its reverse entry exists.
        let reverse = reverse
            .into_iter()
            .map(|(target, entries)| self.reference_list("referrers", target, entries))
            .collect();
        let forward = forward
            .into_iter()
            .map(|(from, entries)| self.reference_list("refs", from, entries))
            .collect();
        self.put_lists(reverse).await?;
        let added = self.put_lists(forward).await?;
        if let Ok(mut known) = self.known_refs.lock() {
            known.extend(fresh.into_keys());
        }
        Ok(added)
    }

    /// A reference list of `key` under `area`, its key and how many entries
    /// it holds. Named by its earliest entry's time and its digest, so the
    /// same list written again addresses the same object.
    fn reference_list(
        &self,
        area: &str,
        key: &RecordKey,
        entries: Vec<proto::ReferenceEntry>,
    ) -> (String, Bytes, usize) {
        let count = entries.len();
        let first = entries.iter().map(|e| e.first_seen_micros).min().unwrap_or(0);
        let bytes = proto::ReferenceList { entries }.encode_to_vec();
        let digest = layout::short_digest_bytes(&bytes);
        let key = self.record_object_key(area, key, first, &digest);
        (key, Bytes::from(bytes), count)
    }

    /// Stores reference lists (key, bytes, entries) create-only; returns
    /// how many entries the lists that were not stored yet hold.
    async fn put_lists(&self, lists: Vec<(String, Bytes, usize)>) -> Result<usize> {
        let (objects, counts): (Vec<(String, Bytes)>, Vec<usize>) = lists
            .into_iter()
            .map(|(key, bytes, count)| ((key, bytes), count))
            .unzip();
        let mut added = 0;
        for (count, outcome) in counts
            .into_iter()
            .zip(self.put_all(&objects, self.concurrency).await)
        {
            if outcome? == PutOutcome::Created {
                added += count;
            }
        }
        Ok(added)
    }

    fn reference_entry(path: &Path, e: proto::ReferenceEntry) -> Result<ReferenceEntry> {
        const M: &str = "ReferenceEntry";
        let reference = e.reference.ok_or_else(|| Error::Corrupt {
            path: path.to_string(),
            message: M,
            reason: "reference missing".into(),
        })?;
        Ok(ReferenceEntry {
            from: codec::key_from_proto(e.from, path.as_ref(), M)?,
            reference: codec::reference_from_proto(reference, path.as_ref(), M)?,
            first_seen: Timestamp::from_micros(e.first_seen_micros),
        })
    }

    /// The reference entries under `prefix`: a `ReferenceList` in each
    /// object `lists_at` segments below it, a single `ReferenceEntry` in any
    /// other. Every entry must be `owner`'s (its referencing record, or
    /// with `by_target` its target): an object holding another record's
    /// entries is corrupt, never read as this record's.
    async fn read_entries(
        &self,
        prefix: &Path,
        lists_at: Option<usize>,
        owner: &RecordKey,
        by_target: bool,
    ) -> Result<Vec<ReferenceEntry>> {
        let depth = prefix.parts().count();
        let owned = |path: &Path, e: ReferenceEntry| {
            let found = if by_target { &e.reference.target } else { &e.from };
            if found == owner {
                Ok(e)
            } else {
                let role = if by_target { "referrers" } else { "references" };
                Err(codec::corrupt(
                    path.as_ref(),
                    "ReferenceList",
                    format!("it holds an entry of {found}, not one of the {role} of {owner}"),
                ))
            }
        };
        let paths = self.list_paths(prefix).await?;
        let batches: Vec<Vec<ReferenceEntry>> = stream::iter(paths)
            .map(|path| async move {
                let bytes = self.get_bytes(&path).await?;
                if lists_at.is_some_and(|d| path.parts().count() == depth + d) {
                    let list: proto::ReferenceList = codec::decode(path.as_ref(), "ReferenceList", bytes)?;
                    list.entries
                        .into_iter()
                        .map(|e| owned(&path, Self::reference_entry(&path, e)?))
                        .collect()
                } else {
                    let e: proto::ReferenceEntry = codec::decode(path.as_ref(), "ReferenceEntry", bytes)?;
                    Ok(vec![owned(&path, Self::reference_entry(&path, e)?)?])
                }
            })
            .buffered(self.concurrency)
            .try_collect()
            .await?;
        Ok(batches.into_iter().flatten().collect())
    }

    /// The master document of a record: every reference it was ever stored
    /// with, once each (with the earliest commit time it was stored at),
    /// ordered by field and target.
    pub async fn references(&self, key: &RecordKey) -> Result<Vec<ReferenceEntry>> {
        // Lists sit right under the record's prefix; a deeper object is a
        // single entry (`<field>/<target-model>/<target-id>`, the layout
        // before lists).
        let mut entries = self
            .read_entries(&self.record_prefix("refs", key), Some(1), key, false)
            .await?;
        entries.sort_by(|a, b| {
            (&a.reference.field, &a.reference.target, a.first_seen).cmp(&(
                &b.reference.field,
                &b.reference.target,
                b.first_seen,
            ))
        });
        entries.dedup_by(|later, first| later.reference == first.reference);
        Ok(entries)
    }

    /// The reverse index: every record that was ever stored with a reference
    /// to `target`, once each (with the earliest commit time it was stored
    /// at), ordered by record and field.
    pub async fn referrers(&self, target: &RecordKey) -> Result<Vec<ReferenceEntry>> {
        // Lists sit right under the target's prefix; a deeper object is a
        // single entry (`<model>/<id>/<field>`, the layout before lists).
        let mut entries = self
            .read_entries(&self.record_prefix("referrers", target), Some(1), target, true)
            .await?;
        entries.sort_by(|a, b| {
            (&a.from, &a.reference.field, a.first_seen).cmp(&(&b.from, &b.reference.field, b.first_seen))
        });
        entries.dedup_by(|later, first| {
            later.from == first.from && later.reference.field == first.reference.field
        });
        Ok(entries)
    }

    /// Keeps an event that could not be consumed. Its key is derived from the
    /// source and the raw bytes, so dead-lettering the same input twice
    /// stores it once.
    pub async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<PutOutcome> {
        let path = self.dead_letter_path(letter.source.as_str(), &letter.raw);
        let message = proto::DeadLetter {
            source: letter.source.to_string(),
            position: letter
                .position
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            format: letter.format.clone(),
            raw: letter.raw.clone(),
            error: letter.error.clone(),
            received_at_micros: letter.received_at.as_micros(),
            batch_index: letter.batch_index,
        };
        self.put_create(&path, Bytes::from(message.encode_to_vec())).await
    }

    /// The key of a dead letter: derived from its source and raw bytes.
    fn dead_letter_path(&self, source: &str, raw: &[u8]) -> Path {
        self.path(&[
            "dead-letters",
            &encode_segment(source),
            &format!("{}.pb", layout::short_digest(raw)),
        ])
    }

    /// Every dead letter, in the order received: by the time its batch
    /// was received, then by source and position in its batch. (Dead
    /// letters stored before the position in the batch was kept come
    /// first among those of their batch.)
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let paths = self.list_paths(&self.path(&["dead-letters"])).await?;
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            const M: &str = "DeadLetter";
            let d: proto::DeadLetter = codec::decode(path.as_ref(), M, self.get_bytes(&path).await?)?;
            // Its key is derived from its source and raw bytes, and every
            // dead letter has a reason: an object that disagrees is
            // truncated (missing fields read as defaults) or was copied there.
            if self.dead_letter_path(&d.source, &d.raw) != path || d.error.is_empty() {
                return Err(Error::Corrupt {
                    path: path.to_string(),
                    message: M,
                    reason: "its source, raw bytes or reason are missing or do not match its key \
                             (truncated, or copied from elsewhere)"
                        .into(),
                });
            }
            out.push(DeadLetter {
                source: SourceId::new(&d.source).map_err(|e| Error::Corrupt {
                    path: path.to_string(),
                    message: M,
                    reason: e.to_string(),
                })?,
                position: (!d.position.is_empty()).then(|| SourcePosition::new(d.position)),
                format: d.format,
                raw: d.raw,
                error: d.error,
                received_at: Timestamp::from_micros(d.received_at_micros),
                batch_index: d.batch_index,
            });
        }
        out.sort_by(|a, b| {
            (a.received_at, &a.source, a.batch_index).cmp(&(b.received_at, &b.source, b.batch_index))
        });
        Ok(out)
    }

    fn checkpoint_path(&self, source: &SourceId) -> Path {
        self.path(&["sources", &encode_segment(source.as_str()), "checkpoint.pb"])
    }

    /// Acknowledges a source's progress: its batch up to `position` is stored.
    pub async fn put_checkpoint(&self, source: &SourceId, checkpoint: &Checkpoint) -> Result<()> {
        let path = self.checkpoint_path(source);
        let message = proto::SourceCheckpoint {
            source: source.to_string(),
            position: checkpoint.position.to_string(),
            watermark_micros: checkpoint.watermark.as_micros(),
            updated_at_micros: Timestamp::now().as_micros(),
        };
        self.inner
            .put(&path, PutPayload::from(message.encode_to_vec()))
            .await
            .map_err(|source| Error::Store {
                operation: "put",
                path: path.to_string(),
                source,
            })?;
        Ok(())
    }

    /// A source's last acknowledged progress, if any.
    pub async fn checkpoint(&self, source: &SourceId) -> Result<Option<Checkpoint>> {
        let path = self.checkpoint_path(source);
        match self.inner.get(&path).await {
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(Error::Store {
                operation: "get",
                path: path.to_string(),
                source,
            }),
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|source| Error::Store {
                    operation: "get",
                    path: path.to_string(),
                    source,
                })?;
                let c: proto::SourceCheckpoint = codec::decode(path.as_ref(), "SourceCheckpoint", bytes)?;
                // An empty (truncated) object decodes as every field's
                // default; one copied from another source names that source.
                if c.source != source.as_str() {
                    return Err(codec::corrupt(
                        path.as_ref(),
                        "SourceCheckpoint",
                        format!(
                            "it is the checkpoint of source {:?}, not of {:?} (truncated, or copied from another source)",
                            c.source,
                            source.as_str()
                        ),
                    ));
                }
                Ok(Some(Checkpoint {
                    position: SourcePosition::new(c.position),
                    watermark: Timestamp::from_micros(c.watermark_micros),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::compression::{Decoder, Encoder, train};
    use super::*;
    use crate::model::{Format, Operation};

    #[test]
    fn known_references_are_found_without_copies_and_forgotten_past_the_capacity() {
        let key = |id: &str| RecordKey::new("ledger_entries", id).unwrap();
        let reference = |field: &str, to: &str| Reference {
            field: field.into(),
            target: RecordKey::new("transfers", to).unwrap(),
        };
        let mut known = KnownRefs::default();
        let (l1, l2) = (key("l1"), key("l2"));
        let (r1, r2) = (reference("transfer_id", "t1"), reference("account", "t1"));
        known.extend([(&l1, &r1), (&l1, &r2)].into_iter());
        assert!(known.contains(&l1, &r1) && known.contains(&l1, &r2));
        assert!(!known.contains(&l2, &r1));
        assert!(!known.contains(&l1, &reference("transfer_id", "t2")));
        assert_eq!(known.len, 2);
        // Past the capacity, what was known is forgotten (it is only a cache
        // that saves writes) and the new references are kept.
        let many: Vec<(RecordKey, Reference)> = (0..KNOWN_REFS_CAPACITY - 1)
            .map(|i| (key(&format!("m{i}")), reference("transfer_id", "t1")))
            .collect();
        known.extend(many.iter().map(|(k, r)| (k, r)));
        assert!(!known.contains(&l1, &r1));
        assert!(known.contains(&key("m0"), &r1));
        assert_eq!(known.len, KNOWN_REFS_CAPACITY - 1);
    }

    /// Keys built as text are the keys `Path::join` builds from the same
    /// segments (what stores written before held), under a root or not,
    /// for hostile ids too.
    #[test]
    fn object_keys_built_as_text_are_the_joined_paths() {
        let entries = vec![proto::ReferenceEntry {
            first_seen_micros: 1_700_000_000_000_000,
            ..proto::ReferenceEntry::default()
        }];
        for store in [Store::in_memory(), Store::in_memory().with_prefix("tenant/a b")] {
            for id in ["tr-1", "../x", "a/b", "%2F", "ü ß", "+41"] {
                let key = RecordKey::new("transfers", id).unwrap();
                for area in ["refs", "referrers"] {
                    let (path, bytes, _) = store.reference_list(area, &key, entries.clone());
                    let name = format!(
                        "{:020}-{}.pb",
                        1_700_000_000_000_000u64,
                        layout::short_digest(&bytes)
                    );
                    assert_eq!(path, store.record_prefix(area, &key).join(name).as_ref());
                }
                let digest = [7u8; 16];
                let joined =
                    store
                        .record_prefix("updates", &key)
                        .join(format!("{:020}-{}.pb", 5, "07".repeat(16)));
                let built = store.update_path_of(&key, Timestamp::from_micros(5), &digest);
                assert_eq!(built, joined.as_ref());
            }
        }
    }

    fn update(i: u64) -> UpdateDocument {
        let transfer = format!("tr-{:08}", i % 500);
        let raw = format!(
            r#"{{"action":"I","lsn":"0/{:08X}","table":"ledger_entries","columns":[{{"name":"id","value":{i}}},{{"name":"transfer_id","value":"{transfer}"}},{{"name":"amount_minor","value":{}}}]}}"#,
            0x1000 + i * 64,
            i * 37 % 10_000
        );
        UpdateDocument {
            key: RecordKey::new("ledger_entries", i.to_string()).unwrap(),
            source: SourceId::new("ledger").unwrap(),
            position: SourcePosition::new(format!("{:016X}", 0x1000 + i * 64)),
            commit_time: Timestamp::from_micros(1_700_000_000_000_000 + i as i64),
            ingested_at: Timestamp::from_micros(1_700_000_000_100_000 + i as i64),
            operation: Operation::Insert,
            format: Format::new("wal2json").unwrap(),
            raw: Bytes::from(raw),
            references: vec![Reference {
                field: "transfer_id".into(),
                target: RecordKey::new("transfers", &transfer).unwrap(),
            }],
        }
    }

    /// A dictionary trained the way a writer trains it: on sealed updates.
    fn dictionary() -> Vec<u8> {
        let samples: Vec<Vec<u8>> = (0..2000)
            .map(|i| codec::sealed_update(&update(i)).encode_to_vec())
            .collect();
        let sizes: Vec<usize> = samples.iter().map(Vec::len).collect();
        train(&samples.concat(), &sizes, 4096).unwrap()
    }

    async fn store_with(dictionary: &[u8], id: u32) -> Store {
        let store = Store::in_memory();
        let path = store.dictionary_path(&SourceId::new("ledger").unwrap(), id);
        store
            .put_create(&path, Bytes::from(dictionary.to_vec()))
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn sealed_updates_keep_only_what_finds_the_dictionary_in_clear_and_read_back_whole() {
        let dictionary = dictionary();
        let encoder = Encoder::new(&dictionary, 3).unwrap();
        let store = store_with(&dictionary, encoder.id).await;
        let doc = update(4242);
        let bytes = codec::encode_update(&doc, Some(&encoder));
        let plain = codec::encode_update(&doc, None);
        assert!(
            bytes.len() * 2 < plain.len(),
            "sealed {} bytes, as received {}",
            bytes.len(),
            plain.len()
        );
        let e = proto::UpdateEnvelope::decode(bytes.clone()).unwrap();
        assert_eq!((e.version, e.raw_dictionary), (3, encoder.id));
        assert_eq!(e.source, "ledger");
        assert_eq!(e.commit_time_micros, doc.commit_time.as_micros());
        assert!(e.key.is_none() && e.position.is_empty() && e.raw.is_empty() && e.references.is_empty());

        let key = store.update_path(&doc);
        store.put_create(&Path::from(key.as_str()), bytes).await.unwrap();
        assert_eq!(store.get_update(&key).await.unwrap(), doc);

        // A sealed frame that does not decompress is a corrupt update.
        let mut broken = e;
        broken.sealed = broken.sealed.slice(..broken.sealed.len() - 4);
        let path = Path::from("updates/broken.pb");
        store
            .put_create(&path, Bytes::from(broken.encode_to_vec()))
            .await
            .unwrap();
        let err = store.get_update(path.as_ref()).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("sealed"), "{err}");
    }

    #[tokio::test]
    async fn updates_whose_raw_event_alone_is_compressed_are_still_read() {
        // Version 2, as written before sealed envelopes.
        let dictionary = dictionary();
        let encoder = Encoder::new(&dictionary, 3).unwrap();
        let store = store_with(&dictionary, encoder.id).await;
        let doc = update(7);
        let envelope = proto::UpdateEnvelope {
            version: 2,
            key: Some(codec::key_to_proto(&doc.key)),
            source: doc.source.to_string(),
            position: doc.position.as_str().to_owned(),
            commit_time_micros: doc.commit_time.as_micros(),
            ingested_at_micros: doc.ingested_at.as_micros(),
            operation: proto::Operation::Insert.into(),
            format: doc.format.to_string(),
            raw: Bytes::from(encoder.compress(&doc.raw).unwrap()),
            references: doc.references.iter().map(codec::reference_to_proto).collect(),
            raw_dictionary: encoder.id,
            sealed: Bytes::new(),
        };
        assert!(Decoder::new(&dictionary, encoder.id).is_ok());
        let key = store.update_path(&doc);
        store
            .put_create(&Path::from(key.as_str()), Bytes::from(envelope.encode_to_vec()))
            .await
            .unwrap();
        assert_eq!(store.get_update(&key).await.unwrap(), doc);
    }

    #[test]
    fn envelope_versions_and_dictionaries_must_agree() {
        let envelope = |version, raw_dictionary| proto::UpdateEnvelope {
            version,
            raw_dictionary,
            source: "ledger".into(),
            ..Default::default()
        };
        let decode = |version, dictionary| {
            codec::decode_update("u", Bytes::from(envelope(version, dictionary).encode_to_vec()))
        };
        for (version, dictionary) in [(1, 5), (2, 0), (3, 0)] {
            let err = decode(version, dictionary).err().expect("refused");
            assert!(err.to_string().contains("does not match raw_dictionary"), "{err}");
        }
        let err = decode(4, 1).err().expect("refused");
        assert!(
            err.to_string().contains("unsupported envelope version 4"),
            "{err}"
        );
        // Compressed versions are handed on with the dictionary they name.
        for version in [2, 3] {
            assert!(matches!(
                decode(version, 9),
                Ok(codec::Decoded::Compressed { dictionary: 9, .. })
            ));
        }
    }
}
