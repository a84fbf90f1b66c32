//! The data access layer: time travel, aggregation, joins and typed reads.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt, stream};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::change::{self, Change, FieldPath, State};
use crate::consumer::{StateBuilder, id_text};
use crate::error::{Error, Result};
use crate::index::{HistoryOrder, Index, Memo, Plan};
use crate::model::{Format, Model, RecordKey, Reference, UpdateDocument};
use crate::store::{ReferenceEntry, Store};
use crate::time::Timestamp;
use quick_cache::sync::{EntryAction, EntryResult};

/// Default budget of each of the DAL's caches (decoded updates, latest
/// folded states), in estimated bytes of memory.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// One stored update, decoded by its format's builder.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    /// The stored update.
    pub update: UpdateDocument,
    /// What it changes, normalized.
    pub change: Change,
}

/// One line of a record's timeline: an update and its effect.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineEntry {
    /// The update.
    pub entry: Arc<HistoryEntry>,
    /// The fields (dotted paths) whose value differs from the previous state.
    pub changed_fields: Vec<String>,
    /// The record's state after the update (`None`: deleted).
    pub state: Option<State>,
}

#[derive(Clone)]
struct Weigher;

impl quick_cache::Weighter<String, Arc<HistoryEntry>> for Weigher {
    /// An estimate of the memory an entry holds: its raw bytes, its
    /// decoded change, the key and a fixed overhead for the metadata.
    fn weight(&self, key: &String, value: &Arc<HistoryEntry>) -> u64 {
        (key.len() + value.update.raw.len() + value.change.approx_size() + 256) as u64
    }
}

#[derive(Clone)]
struct MemoWeigher;

impl quick_cache::Weighter<RecordKey, Arc<Memo>> for MemoWeigher {
    /// An estimate of the memory a memo holds: its folded state and last
    /// position, the key and a fixed overhead.
    fn weight(&self, key: &RecordKey, value: &Arc<Memo>) -> u64 {
        (key.model.as_str().len() + key.id.as_str().len() + value.heap_size() + 160) as u64
    }
}

type MemoCache = quick_cache::sync::Cache<RecordKey, Arc<Memo>, MemoWeigher>;

/// Whether an update read from the store is kept in the decoded-update cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// Cached: it may be read again.
    Cache,
    /// Not cached: what it is read for is memoized instead.
    Store,
}

/// The share of the memo cache kept for records read more than once; the
/// rest holds newly written memos until they are first read.
///
/// A memo is written when ingestion stores a record's update, and first
/// read when a check runs over that record: after the check's delay (a
/// grace period, an SLA, a lagging source), while every record ingested in
/// between is written to the cache too. With quick_cache's default (97 %
/// for records read more than once), a memo had to be read within the
/// ingestion of 3 % of the cache's worth of newer records, or it was
/// evicted and its record folded again from the store. In the `payments`
/// example (50,000 transfers), 0.97 missed 109,564 reads of 590,580, 0.6
/// missed 19,743; 0.5 and 0.7 did about as well, 0.35 and 0.85 worse.
const MEMO_HOT_ALLOCATION: f64 = 0.6;

/// The data access layer over a [`Store`]: a record's history up to a time,
/// its state at a time (folded by its format's [`StateBuilder`]), its
/// references and the records that reference it, and typed reads into serde
/// types.
///
/// Decoded updates are cached (they are immutable, so the cache is always
/// right; it is derived, never the truth). An [indexed](Self::indexed) DAL
/// also keeps, in memory, which updates and references each record has and
/// its latest folded state, so that reading a record neither lists the
/// store nor folds its history again.
#[derive(Clone)]
pub struct Dal {
    store: Store,
    /// Shared: a DAL is cloned for every check execution.
    builders: Arc<HashMap<Format, Arc<dyn StateBuilder>>>,
    cache: Arc<quick_cache::sync::Cache<String, Arc<HistoryEntry>, Weigher>>,
    index: Option<Arc<Index>>,
    memo: Arc<MemoCache>,
}

impl std::fmt::Debug for Dal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut formats: Vec<_> = self.builders.keys().collect();
        formats.sort();
        f.debug_struct("Dal")
            .field("formats", &formats)
            .finish_non_exhaustive()
    }
}

impl Dal {
    /// A DAL over `store` with no builders yet.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            builders: Arc::default(),
            cache: Arc::new(Self::make_cache(DEFAULT_CACHE_BYTES)),
            index: None,
            memo: Arc::new(Self::make_memo(DEFAULT_CACHE_BYTES)),
        }
    }

    fn make_memo(bytes: u64) -> MemoCache {
        let items = (bytes / 1024).max(16) as usize;
        quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(bytes.max(1))
            .hot_allocation(MEMO_HOT_ALLOCATION)
            .build()
            .map(|options| {
                quick_cache::sync::Cache::with_options(
                    options,
                    MemoWeigher,
                    Default::default(),
                    Default::default(),
                )
            })
            // Unreachable (both capacities are set above); the library's
            // defaults are still a working cache.
            .unwrap_or_else(|_| quick_cache::sync::Cache::with_weighter(items, bytes.max(1), MemoWeigher))
    }

    /// Keeps an in-memory index of every record's updates and references,
    /// fed by write-through from the ingestors given this DAL
    /// ([`Ingestor::with_dal`](crate::Ingestor::with_dal)), plus each
    /// record's latest folded state (in a cache of the same size as the
    /// decoded-update cache). Reads then never list the store, and a state
    /// read again, or after a few more updates, is not folded from scratch.
    ///
    /// The index starts by asking the store whether it holds any update
    /// already; if it does, each record is read from the store once (the
    /// first time it is read) and kept up to date by write-through after.
    /// It assumes that, while this DAL lives, every update and reference is
    /// stored through an ingestor that writes through to it: the embedded
    /// pipeline, the only consumer of its sources, sets this up itself.
    /// A DAL that is not indexed lists the store on every read and so also
    /// sees what other processes store.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> overseer_core::Result<()> {
    /// use overseer_core::testing::LinesConsumer;
    /// use overseer_core::{Dal, Ingestor, RecordKey, References, SourceId, Store, Timestamp};
    ///
    /// let store = Store::in_memory();
    /// let dal = Dal::new(store.clone()).with_builder(LinesConsumer).indexed();
    /// let ingestor = Ingestor::new(store, SourceId::new("app")?, LinesConsumer, References::new())
    ///     .with_dal(&dal);
    /// ingestor.ingest_batch(&["a 1".into(), "a 2".into()]).await?;
    ///
    /// let a = RecordKey::new("lines", "a")?;
    /// let now = dal.shared_state_at(&a, Timestamp::MAX).await?;
    /// assert_eq!(now.and_then(|s| s.get("n").cloned()), Some(2.into()));
    /// let then = dal.shared_state_at(&a, Timestamp::from_secs(1)).await?;
    /// assert_eq!(then.and_then(|s| s.get("n").cloned()), Some(1.into()));
    /// # Ok(()) }
    /// ```
    pub fn indexed(mut self) -> Self {
        self.index = Some(Arc::new(Index::new(self.store.clone())));
        self
    }

    fn make_cache(bytes: u64) -> quick_cache::sync::Cache<String, Arc<HistoryEntry>, Weigher> {
        quick_cache::sync::Cache::with_weighter((bytes / 1024).max(16) as usize, bytes.max(1), Weigher)
    }

    /// Adds the builder of one format.
    pub fn with_builder(mut self, builder: impl StateBuilder) -> Self {
        Arc::make_mut(&mut self.builders).insert(builder.format(), Arc::new(builder));
        self
    }

    /// Adds a shared builder.
    pub fn with_shared_builder(mut self, builder: Arc<dyn StateBuilder>) -> Self {
        Arc::make_mut(&mut self.builders).insert(builder.format(), builder);
        self
    }

    /// Sets the size of the decoded-update cache, in estimated bytes of
    /// memory (about four times the raw size of the cached updates; 0
    /// disables it).
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache = Arc::new(Self::make_cache(bytes));
        self.memo = Arc::new(Self::make_memo(bytes));
        self
    }

    /// The store under this DAL.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn decode(&self, update: UpdateDocument) -> Result<HistoryEntry> {
        let builder = self
            .builders
            .get(&update.format)
            .ok_or_else(|| Error::UnknownFormat {
                format: update.format.to_string(),
                known: self.formats().join(", "),
            })?;
        let change = builder.decode(&update).map_err(|e| Error::Build {
            key: update.key.to_string(),
            position: update.position.to_string(),
            format: update.format.to_string(),
            reason: e.reason,
        })?;
        Ok(HistoryEntry { update, change })
    }

    /// The formats this DAL has builders for, sorted.
    pub(crate) fn formats(&self) -> Vec<&str> {
        let mut known: Vec<&str> = self.builders.keys().map(Format::as_str).collect();
        known.sort_unstable();
        known
    }

    /// Whether this DAL has a builder for `format`.
    pub fn has_builder(&self, format: &Format) -> bool {
        self.builders.contains_key(format)
    }

    /// Starts the index, if any: must complete before the first update is
    /// stored through this DAL's ingestors.
    pub(crate) async fn start_index(&self) -> Result<()> {
        if let Some(index) = &self.index {
            index.start().await?;
        }
        Ok(())
    }

    /// Write-through from ingestion: an update was stored at `path`. Its
    /// already decoded change, when given, is folded into the record's
    /// latest state; when it cannot be (it arrived out of order, or the DAL
    /// is not indexed), it goes to the cache of decoded updates instead.
    pub(crate) fn prime(&self, path: &str, update: &UpdateDocument, mut change: Option<Change>) {
        if let Some(index) = &self.index {
            // Keep the record's latest state folded as updates arrive in
            // order: a check reading it then folds nothing.
            index.add_update(path, update, |generation, n| {
                self.extend_memo(update, &mut change, generation, n);
            });
        }
        // A folded update (its change taken into the memo) is read again
        // only by a read of an earlier point of the record's history (or
        // after its memo is evicted): caching it as well costs more than
        // loading it then.
        if let Some(change) = change {
            let entry = HistoryEntry {
                update: update.clone(),
                change,
            };
            self.cache.insert(path.to_owned(), Arc::new(entry));
        }
    }

    /// Folds `change`, the `n`-th update of its record, into the memo of
    /// the record's first `n - 1` updates (or starts it, for the first):
    /// in place when no reader holds the memo or its state. The change is
    /// taken (its values move into the state) when the memo then holds the
    /// state after this update; it is left where it is otherwise.
    ///
    /// The index calls this once it is unlocked, so a read may have folded
    /// the update into the memo in between: a memo of the record's first
    /// `n` updates is kept as it is, with or without the change.
    fn extend_memo(&self, update: &UpdateDocument, change: &mut Option<Change>, generation: u64, n: usize) {
        if change.is_none() {
            // A read folds the update on top of the memo later, unless it
            // goes before the memo's last update (they tie on commit time
            // and source): then the memo folds updates out of order.
            self.memo.entry(&update.key, None, |_, memo| {
                if memo.folds(generation, n) || memo.is_extended_by(update) {
                    EntryAction::Retain(())
                } else {
                    EntryAction::Remove
                }
            });
            return;
        }
        // The memo is taken out of the cache (its place held, so that it
        // keeps its standing there) and folded outside the cache's lock,
        // which readers of the other records of its shard wait for.
        let found = self.memo.entry(&update.key, None, |_, memo| {
            if memo.folds(generation, n) {
                EntryAction::Retain(())
            } else if memo.folds(generation, n.saturating_sub(1)) && memo.is_extended_by(update) {
                // Folded on top of the memo of the first `n - 1` only.
                EntryAction::ReplaceWithGuard
            } else {
                EntryAction::Remove
            }
        });
        let (guard, previous, size) = match found {
            EntryResult::Replaced(guard, memo) => {
                let size = memo.state_size();
                // In place when no reader holds the memo or its state.
                let state = match Arc::try_unwrap(memo) {
                    Ok(mut memo) => memo.state.take(),
                    Err(memo) => memo.state.clone(),
                };
                let state = state.map(|s| Arc::try_unwrap(s).unwrap_or_else(|s| (*s).clone()));
                (guard, state, size)
            }
            EntryResult::Vacant(guard) if n == 1 => (guard, None, 0),
            _ => return,
        };
        let Some(c) = change.take() else {
            return;
        };
        // Weighed by what the change adds and removes, not by walking the
        // whole state again.
        let (state, size) = change::apply_owned_sized(previous, size, c);
        let last = Some(HistoryOrder::of(update));
        let memo = Memo::with_size(generation, n, state.map(Arc::new), size, last);
        // Refused if the memo alone exceeds the cache's budget, or if a
        // read put a memo in its place meanwhile (which a read checks
        // before using, as it checks this one).
        let _ = guard.insert(Arc::new(memo));
    }

    /// Write-through from ingestion: the references of an update of `from`
    /// committed at `commit_time` were stored.
    pub(crate) fn prime_references(
        &self,
        from: &RecordKey,
        references: &[Reference],
        commit_time: Timestamp,
    ) {
        if let Some(index) = &self.index {
            index.add_references(from, references, commit_time);
        }
    }

    /// Reads one update, through the decoded-update cache; what is read from
    /// the store is cached when `keep` is [`Keep::Cache`].
    async fn load(&self, path: &str, keep: Keep) -> Result<Arc<HistoryEntry>> {
        if let Some(hit) = self.cache.get(path) {
            return Ok(hit);
        }
        let update = self.store.get_update(path).await?;
        let entry = Arc::new(self.decode(update)?);
        if keep == Keep::Cache {
            self.cache.insert(path.to_owned(), entry.clone());
        }
        Ok(entry)
    }

    async fn load_all<P: AsRef<str>>(&self, paths: &[P], keep: Keep) -> Result<Vec<Arc<HistoryEntry>>> {
        // Cached updates (the common case) without building a stream.
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            match self.cache.get(p.as_ref()) {
                Some(hit) => out.push(hit),
                None => break,
            }
        }
        if out.len() == paths.len() {
            return Ok(out);
        }
        let missing: Vec<String> = paths[out.len()..].iter().map(|p| p.as_ref().to_owned()).collect();
        let rest: Vec<Arc<HistoryEntry>> = stream::iter(missing)
            .map(|p| async move { self.load(&p, keep).await })
            .buffered(crate::store::DEFAULT_CONCURRENCY)
            .try_collect()
            .await?;
        out.extend(rest);
        Ok(out)
    }

    /// Every update of `key` in the store (listed, so in no particular
    /// order): what seeds the index for a record.
    async fn stored_updates(&self, key: &RecordKey) -> Result<Vec<Arc<HistoryEntry>>> {
        let objects = self.store.list_updates(key, Timestamp::MAX).await?;
        let paths: Vec<String> = objects.into_iter().map(|o| o.path).collect();
        self.load_all(&paths, Keep::Cache).await
    }

    /// Time travel: the updates of a record committed at or before `up_to`,
    /// ordered by (commit time, source, position).
    pub async fn history(&self, key: &RecordKey, up_to: Timestamp) -> Result<Vec<Arc<HistoryEntry>>> {
        if let Some(index) = &self.index {
            index.start().await?;
            let paths = match index.paths(key, up_to) {
                Some(paths) => paths,
                None => {
                    let found = self.stored_updates(key).await?;
                    index.seed_then_paths(key, found.iter().map(|e| &e.update), up_to)
                }
            };
            let mut entries = self.load_all(&paths, Keep::Cache).await?;
            in_history_order(&mut entries);
            return Ok(entries);
        }
        let objects = self.store.list_updates(key, up_to).await?;
        let paths: Vec<String> = objects.into_iter().map(|o| o.path).collect();
        let mut entries = self.load_all(&paths, Keep::Cache).await?;
        in_history_order(&mut entries);
        Ok(entries)
    }

    /// Aggregation: the state of a record after every update committed at or
    /// before `at`; `None` if it does not exist then (never inserted yet, or
    /// deleted).
    ///
    /// The state is shared: an indexed DAL hands out the same state to every
    /// read of the same record at the same point of its history. Use
    /// [`state_at`](Self::state_at) for an owned copy.
    pub async fn shared_state_at(&self, key: &RecordKey, at: Timestamp) -> Result<Option<Arc<State>>> {
        let Some(index) = &self.index else {
            let history = self.history(key, at).await?;
            return Ok(fold(&history).map(Arc::new));
        };
        index.start().await?;
        let mut memo = self.memo.get(key);
        loop {
            let plan = match index.plan(key, at, memo.as_deref()) {
                Some(plan) => plan,
                None => {
                    let found = self.stored_updates(key).await?;
                    index.seed_then_plan(key, found.iter().map(|e| &e.update), at, memo.as_deref())
                }
            };
            let (base, paths, generation, n, latest) = match plan {
                Plan::Hit(state) => return Ok(state),
                Plan::Fold {
                    base,
                    paths,
                    generation,
                    n,
                    latest,
                } => (base, paths, generation, n, latest),
            };
            // The latest state goes into the memo, which is what the next
            // read of the record uses: its updates are cached only for a
            // read of an earlier point of its history, as at ingestion (see
            // `prime`).
            let keep = if latest { Keep::Store } else { Keep::Cache };
            let mut entries = self.load_all(&paths, keep).await?;
            in_history_order(&mut entries);
            let base_memo = memo.as_deref().filter(|_| base.is_some());
            if let (Some(m), Some(first)) = (base_memo, entries.first())
                && !m.is_extended_by(&first.update)
            {
                // An update tying with the memo's last goes before it: fold
                // every update instead (this plan has no base, so the loop
                // ends).
                memo = None;
                continue;
            }
            let last = entries
                .last()
                .map(|e| HistoryOrder::of(&e.update))
                .or_else(|| base_memo.and_then(|m| m.last().cloned()));
            let state = match base {
                Some(base) => entries.iter().fold(base.map(|s| (*s).clone()), |state, e| {
                    change::apply(state, &e.change)
                }),
                None => fold(&entries),
            }
            .map(Arc::new);
            if latest {
                self.memo.insert(
                    key.clone(),
                    Arc::new(Memo::new(generation, n, state.clone(), last)),
                );
            }
            return Ok(state);
        }
    }

    /// Aggregation: the state of a record after every update committed at or
    /// before `at`; `None` if it does not exist then (never inserted yet, or
    /// deleted). An owned copy of [`shared_state_at`](Self::shared_state_at).
    pub async fn state_at(&self, key: &RecordKey, at: Timestamp) -> Result<Option<State>> {
        Ok(self
            .shared_state_at(key, at)
            .await?
            .map(|s| Arc::try_unwrap(s).unwrap_or_else(|s| (*s).clone())))
    }

    /// A typed read: the state at `at` deserialized into `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &RecordKey, at: Timestamp) -> Result<Option<T>> {
        match self.shared_state_at(key, at).await? {
            None => Ok(None),
            Some(state) => deserialize(key, &state).map(Some),
        }
    }

    /// The record's whole timeline: every update with the fields it changed
    /// and the state after it.
    pub async fn timeline(&self, key: &RecordKey) -> Result<Vec<TimelineEntry>> {
        let history = self.history(key, Timestamp::MAX).await?;
        let mut state: Option<State> = None;
        let mut out = Vec::with_capacity(history.len());
        for entry in history {
            let next = change::apply(state.clone(), &entry.change);
            let changed_fields = diff(state.as_ref(), next.as_ref());
            out.push(TimelineEntry {
                entry,
                changed_fields,
                state: next.clone(),
            });
            state = next;
        }
        Ok(out)
    }

    /// The master document: the references of `key` first stored at or
    /// before `at`.
    pub async fn references(&self, key: &RecordKey, at: Timestamp) -> Result<Vec<ReferenceEntry>> {
        let stored = self.store.references(key);
        self.reference_list(
            at,
            |i| i.references(key),
            |i, found| i.seed_references(key, found),
            stored,
        )
        .await
    }

    /// The reverse index: the records stored with a reference to `target`
    /// first stored at or before `at` (candidates: a reference may have
    /// changed since; [`referrers`](Self::referrers) confirms them).
    pub async fn referrer_entries(&self, target: &RecordKey, at: Timestamp) -> Result<Vec<ReferenceEntry>> {
        let stored = self.store.referrers(target);
        self.reference_list(
            at,
            |i| i.referrers(target),
            |i, found| i.seed_referrers(target, found),
            stored,
        )
        .await
    }

    /// A list of references as of `at`: from the index (seeded from
    /// `stored` the first time), or from `stored` without an index. The
    /// store is only read when needed (`stored` is lazy until awaited).
    async fn reference_list(
        &self,
        at: Timestamp,
        indexed: impl FnOnce(&Index) -> Option<Vec<ReferenceEntry>>,
        seed: impl FnOnce(&Index, Vec<ReferenceEntry>) -> Vec<ReferenceEntry>,
        stored: impl Future<Output = Result<Vec<ReferenceEntry>>>,
    ) -> Result<Vec<ReferenceEntry>> {
        let mut refs = match &self.index {
            None => stored.await?,
            Some(index) => {
                index.start().await?;
                match indexed(index) {
                    Some(refs) => refs,
                    None => seed(index, stored.await?),
                }
            }
        };
        refs.retain(|r| r.first_seen <= at);
        Ok(refs)
    }

    /// Joins: the records of `model` whose `field` points at `target` in
    /// their state at `at`, with those states, ordered by id.
    ///
    /// Candidates come from the reverse reference index; each is confirmed
    /// on its state at `at`, so a reference that was changed or removed
    /// later (or earlier) is answered as of `at`.
    pub async fn referrers(
        &self,
        target: &RecordKey,
        model: &Model,
        field: &str,
        at: Timestamp,
    ) -> Result<Vec<(RecordKey, Arc<State>)>> {
        let path = FieldPath::parse(field);
        let mut candidates: Vec<RecordKey> = self
            .referrer_entries(target, at)
            .await?
            .into_iter()
            .filter(|e| &e.from.model == model && e.reference.field == field)
            .map(|e| e.from)
            .collect();
        candidates.sort();
        candidates.dedup();
        let states: Vec<Option<(RecordKey, Arc<State>)>> = stream::iter(candidates)
            .map(|key| {
                let path = &path;
                async move {
                    let state = self.shared_state_at(&key, at).await?;
                    Ok::<_, Error>(state.filter(|s| points_at(s, path, target)).map(|s| (key, s)))
                }
            })
            .buffered(crate::store::DEFAULT_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(states.into_iter().flatten().collect())
    }

    /// Joins the other way: the record of `target_model` that `key`'s
    /// `field` points at in its state at `at`, with its state at `at`.
    pub async fn referenced(
        &self,
        key: &RecordKey,
        field: &str,
        target_model: &Model,
        at: Timestamp,
    ) -> Result<Vec<(RecordKey, Arc<State>)>> {
        let Some(state) = self.shared_state_at(key, at).await? else {
            return Ok(Vec::new());
        };
        let mut ids: Vec<String> = match FieldPath::parse(field).lookup(&state) {
            Some(Value::Array(items)) => items.iter().filter_map(id_text).collect(),
            Some(v) => id_text(v).into_iter().collect(),
            None => Vec::new(),
        };
        ids.sort();
        ids.dedup();
        let mut out = Vec::new();
        for id in ids {
            let Ok(target) = RecordKey::new(target_model.as_str(), &id) else {
                continue;
            };
            if let Some(s) = self.shared_state_at(&target, at).await? {
                out.push((target, s));
            }
        }
        Ok(out)
    }
}

/// Orders updates in history order ([`UpdateDocument::history_order`]): the
/// index orders them by commit time and source only, and a listing not at
/// all.
fn in_history_order(entries: &mut [Arc<HistoryEntry>]) {
    // Usually in order already: the stable sort then makes one pass.
    entries.sort_by(|a, b| a.update.history_order().cmp(&b.update.history_order()));
}

/// Folds a record's ordered history into its state. Updates before the last
/// whole-state change (insert, replace, snapshot, full row, delete) cannot
/// affect the result, so the fold starts there.
fn fold(history: &[Arc<HistoryEntry>]) -> Option<State> {
    let start = history
        .iter()
        .rposition(|e| matches!(e.change, Change::Full(_) | Change::Delete))
        .unwrap_or(0);
    history[start..]
        .iter()
        .fold(None, |state, e| change::apply(state, &e.change))
}

fn points_at(state: &State, path: &FieldPath, target: &RecordKey) -> bool {
    let id = target.id.as_str();
    match path.lookup(state) {
        Some(Value::Array(items)) => items.iter().any(|v| id_text(v).as_deref() == Some(id)),
        Some(v) => id_text(v).as_deref() == Some(id),
        None => false,
    }
}

/// Deserializes a state into the user's type, naming the record, the type
/// and the field that does not fit on error.
///
/// ```
/// use overseer_core::RecordKey;
/// use overseer_core::dal::deserialize;
///
/// #[derive(serde::Deserialize, Debug)]
/// struct Transfer {
///     amount_minor: i64,
/// }
/// let key = RecordKey::new("transfers", "t-1")?;
/// let state = serde_json::json!({"amount_minor": "12"});
/// let err = deserialize::<Transfer>(&key, state.as_object().unwrap()).unwrap_err();
/// assert!(err.to_string().contains("record transfers/t-1 does not fit type"));
/// assert!(err.to_string().contains("at amount_minor: invalid type: string \"12\""));
/// # Ok::<(), overseer_core::Error>(())
/// ```
pub fn deserialize<T: DeserializeOwned>(key: &RecordKey, state: &State) -> Result<T> {
    T::deserialize(state).map_err(|source| {
        // Read again with the path tracked, only on this (rare) error path:
        // it names the field that does not fit.
        let field = match serde_path_to_error::deserialize::<_, T>(state) {
            Err(e) if e.path().iter().next().is_some() => e.path().to_string(),
            _ => String::new(),
        };
        Error::Deserialize {
            key: key.to_string(),
            type_name: std::any::type_name::<T>(),
            field,
            source,
        }
    })
}

/// The dotted paths whose values differ between two states (nested objects
/// are descended into; arrays and scalars compare whole).
fn diff(before: Option<&State>, after: Option<&State>) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&State>, b: Option<&State>, out: &mut Vec<String>) {
        let empty = State::new();
        let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
        let mut names: Vec<&String> = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))).collect();
        names.dedup();
        for name in names {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match (a.get(name), b.get(name)) {
                (Some(Value::Object(x)), Some(Value::Object(y))) => walk(&path, Some(x), Some(y), out),
                (x, y) if x != y => out.push(path),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk("", before, after, &mut out);
    out
}

/// The references an update carries, as a readable list (`field -> model/id`).
pub fn describe_references(refs: &[Reference]) -> Vec<String> {
    refs.iter()
        .map(|r| format!("{} -> {}", r.field, r.target))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_cache::Weighter;

    /// A record's memo as ingestion writes it: a small state.
    fn memo(i: usize) -> Arc<Memo> {
        let mut state = State::new();
        state.insert("id".into(), Value::from(i));
        state.insert("status".into(), Value::from("completed"));
        state.insert("note".into(), Value::from("x".repeat(64)));
        Arc::new(Memo::new(0, 1, Some(Arc::new(state)), None))
    }

    fn key(i: usize) -> RecordKey {
        RecordKey::new("transfers", format!("t-{i}")).unwrap()
    }

    /// The pipeline's pattern: ingestion writes every record's memo, and a
    /// check reads it once its delay has passed, while the records ingested
    /// meanwhile (here a fifth of the cache's worth) are written too. Once
    /// the cache is full, a memo must still be there when it is first read.
    #[test]
    fn a_memo_written_by_ingestion_is_still_cached_when_its_check_reads_it_later() {
        let budget: u64 = 1 << 20;
        let cache = Dal::make_memo(budget);
        // How many memos the cache holds.
        let fit = (budget / MemoWeigher.weight(&key(0), &memo(0))) as usize;
        let delay = fit / 5;
        let (mut hits, mut reads) = (0, 0);
        for i in 0..20 * fit {
            cache.insert(key(i), memo(i));
            if let Some(read) = i.checked_sub(delay) {
                let found = cache.get(&key(read)).is_some();
                // Counted once the cache has been filled twice over.
                if i >= 2 * fit {
                    reads += 1;
                    hits += usize::from(found);
                }
            }
        }
        assert!(
            hits * 100 >= reads * 95,
            "{hits} of {reads} delayed reads found their memo ({delay} records written in between, {fit} fit)"
        );
    }

    /// A format for these tests: an update's raw bytes are the value of its
    /// record's field `v`.
    struct Values;

    impl StateBuilder for Values {
        fn format(&self) -> Format {
            Format::new("values").unwrap()
        }

        fn decode(&self, update: &UpdateDocument) -> Result<Change, crate::error::ConsumeError> {
            let v = String::from_utf8_lossy(&update.raw).into_owned();
            Ok(Change::Full(State::from_iter([("v".to_owned(), Value::from(v))])))
        }
    }

    /// The record of these tests.
    fn record() -> RecordKey {
        RecordKey::new("values", "r").unwrap()
    }

    /// An indexed DAL over an empty in-memory store, with [`Values`].
    async fn indexed_dal() -> Dal {
        let dal = Dal::new(Store::in_memory()).with_builder(Values).indexed();
        dal.start_index().await.unwrap();
        dal
    }

    /// An update of [`record`] committed at 10 s (all tie), at `position`,
    /// setting `v`.
    fn tied(position: u64, v: &str) -> UpdateDocument {
        UpdateDocument {
            key: record(),
            source: crate::model::SourceId::new("s").unwrap(),
            position: crate::model::SourcePosition::from_numbers(&[position]),
            commit_time: Timestamp::from_secs(10),
            ingested_at: Timestamp::from_secs(10),
            operation: crate::model::Operation::Update,
            format: Values.format(),
            raw: bytes::Bytes::from(v.to_owned()),
            references: Vec::new(),
        }
    }

    /// An update of [`record`] committed at `secs`, setting `v` to `v{secs}`.
    fn at(secs: u64) -> UpdateDocument {
        let mut u = tied(secs, "");
        u.commit_time = Timestamp::from_secs(secs as i64);
        u.raw = bytes::Bytes::from(format!("v{secs}"));
        u
    }

    /// Stores `update` and writes it through, as ingestion does.
    async fn ingest(dal: &Dal, update: UpdateDocument, with_change: bool) {
        let change = with_change.then(|| Values.decode(&update).unwrap());
        let stored = dal.store.put_updates(vec![update]).await;
        let (update, path, outcome) = stored.into_iter().next().unwrap();
        outcome.unwrap();
        dal.prime(&path, &update, change);
    }

    async fn latest_v(dal: &Dal) -> Option<Value> {
        let state = dal.state_at(&record(), Timestamp::MAX).await.unwrap()?;
        state.get("v").cloned()
    }

    /// A reader holding a record's memo while an update tying with its last
    /// (one transaction, an earlier position) is written through folds the
    /// record again rather than that update on top of the memo.
    #[tokio::test]
    async fn a_memo_read_while_an_earlier_tie_arrives_is_not_folded_onto() {
        let (dal, key) = (indexed_dal().await, record());
        ingest(&dal, tied(5, "five"), true).await;
        assert_eq!(latest_v(&dal).await, Some(Value::from("five")));
        let held = dal.memo.get(&key).unwrap();
        ingest(&dal, tied(3, "three"), true).await;
        // The reader's memo, taken before the tie arrived.
        dal.memo.insert(key.clone(), held);
        assert_eq!(latest_v(&dal).await, Some(Value::from("five")));
        ingest(&dal, tied(7, "seven"), true).await;
        assert_eq!(latest_v(&dal).await, Some(Value::from("seven")));
    }

    /// Ingestion indexes an update, then folds it into the memo once the
    /// index is unlocked: a read in between folds the update itself and
    /// leaves a memo that already holds it, which the fold that follows
    /// keeps rather than drops (with the update's change or without).
    #[tokio::test]
    async fn a_memo_a_read_folded_before_the_write_through_is_kept() {
        let (dal, key) = (indexed_dal().await, record());
        let index = dal.index.clone().unwrap();
        ingest(&dal, at(1), true).await;
        let generation = dal.memo.get(&key).unwrap().generation;
        // The second update is stored and indexed, not yet folded.
        let second = at(2);
        let stored = dal.store.put_updates(vec![second]).await;
        let (second, path, outcome) = stored.into_iter().next().unwrap();
        outcome.unwrap();
        let mut indexed = None;
        index.add_update(&path, &second, |g, n| indexed = Some((g, n)));
        assert_eq!(indexed, Some((generation, 2)));
        // A check reads the record meanwhile.
        assert_eq!(latest_v(&dal).await, Some(Value::from("v2")));
        assert_eq!(dal.memo.get(&key).map(|m| m.n), Some(2));
        // Then ingestion's fold arrives.
        let mut change = Some(Values.decode(&second).unwrap());
        dal.extend_memo(&second, &mut change, generation, 2);
        let memo = dal.memo.get(&key).expect("the read's memo is kept");
        assert_eq!((memo.generation, memo.n), (generation, 2));
        assert!(change.is_some(), "the change is not folded twice");
        // The same for an update written through without its change.
        dal.extend_memo(&second, &mut None, generation, 2);
        let memo = dal.memo.get(&key).expect("the read's memo is kept");
        assert_eq!((memo.generation, memo.n), (generation, 2));
        ingest(&dal, at(3), true).await;
        assert_eq!(dal.memo.get(&key).map(|m| m.n), Some(3));
        assert_eq!(latest_v(&dal).await, Some(Value::from("v3")));
    }

    /// Ingestion folds an update into the memo outside the cache's lock:
    /// a state a reader holds is left as it was (the fold works on a copy),
    /// and either way the memo stays cached, now of one more update.
    #[tokio::test]
    async fn a_fold_leaves_a_state_a_reader_holds_as_it_was() {
        let (dal, key) = (indexed_dal().await, record());
        ingest(&dal, at(1), true).await;
        let held = dal.shared_state_at(&key, Timestamp::MAX).await.unwrap().unwrap();
        ingest(&dal, at(2), true).await;
        assert_eq!(
            held.get("v"),
            Some(&Value::from("v1")),
            "the reader's state is not changed"
        );
        assert_eq!(dal.memo.get(&key).map(|m| m.n), Some(2));
        drop(held);
        ingest(&dal, at(3), true).await;
        let memo = dal.memo.get(&key).expect("the memo stays cached");
        assert_eq!(memo.n, 3);
        assert_eq!(
            memo.state.as_ref().and_then(|s| s.get("v")),
            Some(&Value::from("v3"))
        );
        assert_eq!(latest_v(&dal).await, Some(Value::from("v3")));
    }

    /// An update written through without its change (the DAL folds it when
    /// read) that goes before the memo's last update drops the memo.
    #[tokio::test]
    async fn an_earlier_tie_written_through_without_its_change_drops_the_memo() {
        let (dal, key) = (indexed_dal().await, record());
        ingest(&dal, tied(5, "five"), true).await;
        ingest(&dal, tied(6, "six"), false).await;
        assert!(dal.memo.get(&key).is_some(), "an update in order keeps the memo");
        ingest(&dal, tied(3, "three"), false).await;
        assert!(dal.memo.get(&key).is_none());
        assert_eq!(latest_v(&dal).await, Some(Value::from("six")));
    }
}
