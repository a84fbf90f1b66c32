//! The in-memory index of an indexed [`Dal`](crate::Dal): every record's
//! list of stored updates and its references, both ways, fed by ingestion
//! (write-through), so that reading a record never lists the store.
//!
//! The store stays the truth. The index only remembers which objects exist:
//!
//! * when it starts, it asks the store whether any update or reference is
//!   stored already. If none is (a *fresh* store), everything stored from
//!   then on goes through write-through, so a record the index does not know
//!   has no update at all;
//! * otherwise, a record is *seeded* from the store (one listing) the first
//!   time it is read, and kept up to date by write-through from then on.
//!
//! This relies on the pipeline being the only writer of its sources'
//! updates while it runs, as it is their only consumer.
//!
//! Entries are kept small (an update is its commit time, source and the
//! digest naming its object: its object key is derived from them when
//! needed), since the index holds every update the pipeline has stored.
//! Updates of a record that tie on commit time and source are kept in the
//! order they were indexed: readers order them by position once loaded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
// A fast, randomly seeded hasher: record ids come from the outside world.
use foldhash::fast::RandomState;

use crate::change::State;
use crate::error::Result;
use crate::model::{RecordKey, Reference, SourceId, SourcePosition, UpdateDocument};
use crate::store::{ReferenceEntry, Store, layout};
use crate::time::Timestamp;

/// One stored update of a record, as the index knows it: its commit time,
/// source and the digest naming its object (not its position, which may be
/// a hundred bytes and more: the index holds every update the pipeline has
/// stored).
#[derive(Clone, Debug)]
pub(crate) struct Indexed {
    commit_time: Timestamp,
    source: SourceId,
    digest: [u8; 16],
}

impl Indexed {
    /// The entry of `update`, whose object is named by `digest`
    /// ([`layout::update_digest`]).
    fn new(update: &UpdateDocument, digest: [u8; 16]) -> Self {
        Self {
            commit_time: update.commit_time,
            source: update.source.clone(),
            digest,
        }
    }

    /// The entry of `update`, its digest computed.
    fn of(update: &UpdateDocument) -> Self {
        Self::new(
            update,
            layout::update_digest(update.source.as_str(), update.position.as_str()),
        )
    }

    /// Updates of a record that tie on both (one transaction touching it
    /// several times) are ordered by position, which the index does not
    /// keep: readers order them once loaded.
    fn group(&self) -> (Timestamp, &SourceId) {
        (self.commit_time, &self.source)
    }
}

/// A reference as the index keeps it (field names are shared).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ref {
    field: Arc<str>,
    other: RecordKey,
    first_seen: Timestamp,
}

impl Ref {
    /// The entry of this reference from `from` to `target` (one of them is
    /// `other`, the other the record the index keeps it for).
    fn entry(&self, from: &RecordKey, target: &RecordKey) -> ReferenceEntry {
        ReferenceEntry {
            from: from.clone(),
            reference: Reference {
                field: String::from(&*self.field),
                target: target.clone(),
            },
            first_seen: self.first_seen,
        }
    }
}

/// Makes room for one more element: one at a time while the list is short
/// (most records have one to three updates and references, and the index
/// holds every record), doubling as usual beyond that.
fn reserve_tight<T>(list: &mut Vec<T>) {
    const TIGHT_UP_TO: usize = 4;
    if list.len() == list.capacity() && list.len() < TIGHT_UP_TO {
        list.reserve_exact(1);
    }
}

#[derive(Debug, Default)]
struct Tracked {
    /// Holds every update stored before tracking began too.
    seeded: bool,
    /// Holds every reference stored before tracking began too.
    refs_seeded: bool,
    /// Changes whenever an update is inserted before others (so a fold of
    /// the first `n` updates is no longer one of the same updates).
    generation: u64,
    /// Ordered by (commit time, source); ties in the order they were indexed.
    updates: Vec<Indexed>,
    /// The record's references (its master document).
    refs: Vec<Ref>,
}

impl Tracked {
    /// Inserts in (commit time, source) order, after the updates it ties
    /// with; `false` if the update is already there.
    fn insert(&mut self, entry: Indexed) -> bool {
        let lo = self.updates.partition_point(|u| u.group() < entry.group());
        let ties = self.updates[lo..].partition_point(|u| u.group() == entry.group());
        let at = lo + ties;
        if self.updates[lo..at].iter().any(|u| u.digest == entry.digest) {
            return false;
        }
        // A fold of the first `n` updates is no longer one of the same
        // updates when this one goes before others. One tying with the
        // last updates (its place among them is its position's) is checked
        // against the memo's last update instead (`Memo::is_extended_by`).
        if at < self.updates.len() {
            self.generation += 1;
        }
        reserve_tight(&mut self.updates);
        self.updates.insert(at, entry);
        true
    }

    /// Adds a reference; `false` if the record already had it (the first
    /// stored wins, as in the store's create-only reference objects).
    fn add_ref(&mut self, field: &Arc<str>, target: &RecordKey, first_seen: Timestamp) -> bool {
        if self
            .refs
            .iter()
            .any(|r| *r.field == **field && r.other == *target)
        {
            return false;
        }
        reserve_tight(&mut self.refs);
        self.refs.push(Ref {
            field: field.clone(),
            other: target.clone(),
            first_seen,
        });
        true
    }
}

/// The records that reference one record.
#[derive(Debug, Default)]
struct Referrers {
    seeded: bool,
    /// `other` is the referencing record.
    entries: Vec<Ref>,
    /// Whether a reference may be held twice (once from the store, once
    /// written through after a restart): readers then deduplicate. Never set
    /// on a fresh store.
    maybe_twice: bool,
}

/// Where an update goes in its record's history: updates are ordered by
/// commit time, source and position.
#[derive(Clone, Debug)]
pub(crate) struct HistoryOrder {
    commit_time: Timestamp,
    source: SourceId,
    position: SourcePosition,
}

impl HistoryOrder {
    pub(crate) fn of(update: &UpdateDocument) -> Self {
        Self {
            commit_time: update.commit_time,
            source: update.source.clone(),
            position: update.position.clone(),
        }
    }

    /// Whether `update` goes after this one.
    fn precedes(&self, update: &UpdateDocument) -> bool {
        (self.commit_time, &self.source, &self.position) < update.history_order()
    }
}

/// The folded state of a record's first `n` updates (of one generation).
#[derive(Debug)]
pub(crate) struct Memo {
    pub(crate) generation: u64,
    pub(crate) n: usize,
    pub(crate) state: Option<Arc<State>>,
    /// The estimated memory of `state`, computed once: the cache weighs a
    /// memo before and after every update folded into it.
    state_size: usize,
    /// The last update folded in. The index keeps updates that tie on
    /// commit time and source in the order they arrived, not by position:
    /// one arriving after the memo was folded may go before its last.
    last: Option<HistoryOrder>,
}

impl Memo {
    pub(crate) fn new(
        generation: u64,
        n: usize,
        state: Option<Arc<State>>,
        last: Option<HistoryOrder>,
    ) -> Self {
        let state_size = state.as_deref().map_or(0, crate::change::approx_size);
        Self::with_size(generation, n, state, state_size, last)
    }

    /// A memo whose state's [`approx_size`](crate::change::approx_size) is
    /// already known (`state_size`).
    pub(crate) fn with_size(
        generation: u64,
        n: usize,
        state: Option<Arc<State>>,
        state_size: usize,
        last: Option<HistoryOrder>,
    ) -> Self {
        Self {
            generation,
            n,
            state,
            state_size,
            last,
        }
    }

    /// The [`approx_size`](crate::change::approx_size) of its state (0 for
    /// none).
    pub(crate) fn state_size(&self) -> usize {
        self.state_size
    }

    /// The estimated memory of the memo beyond its fixed size: its state
    /// ([`approx_size`](crate::change::approx_size)) and its last update's
    /// position.
    pub(crate) fn heap_size(&self) -> usize {
        self.state_size + self.last.as_ref().map_or(0, |l| l.position.as_str().len())
    }

    /// Whether the memo is the fold of its record's first `n` updates of
    /// `generation` (which of them, the generation fixes).
    pub(crate) fn folds(&self, generation: u64, n: usize) -> bool {
        self.generation == generation && self.n == n
    }

    /// Whether `update` goes after every update folded into the memo, so
    /// that folding it on top keeps the history's order.
    pub(crate) fn is_extended_by(&self, update: &UpdateDocument) -> bool {
        self.last.as_ref().is_none_or(|l| l.precedes(update))
    }

    /// The last update folded in.
    pub(crate) fn last(&self) -> Option<&HistoryOrder> {
        self.last.as_ref()
    }
}

/// What reading a record's state at a time needs.
pub(crate) enum Plan {
    /// The memo is exactly the state asked for.
    Hit(Option<Arc<State>>),
    /// Fold the updates at these object keys, on top of `base` when given
    /// (the memo of an earlier prefix of the same generation). They are in
    /// (commit time, source) order: ties are to be ordered by position once
    /// loaded. A prefix never ends within ties.
    Fold {
        base: Option<Option<Arc<State>>>,
        paths: Vec<String>,
        generation: u64,
        n: usize,
        /// Whether these are all of the record's updates (worth a memo).
        latest: bool,
    },
}

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Index {
    store: Store,
    records: DashMap<RecordKey, Tracked, RandomState>,
    referrers: DashMap<RecordKey, Referrers, RandomState>,
    fields: Mutex<HashSet<Arc<str>>>,
    fresh: tokio::sync::OnceCell<bool>,
}

impl Index {
    pub(crate) fn new(store: Store) -> Self {
        Self {
            store,
            records: DashMap::default(),
            referrers: DashMap::default(),
            fields: Mutex::default(),
            fresh: tokio::sync::OnceCell::new(),
        }
    }

    /// Asks the store, once, whether it held anything when tracking began.
    /// Must complete before this process stores anything.
    pub(crate) async fn start(&self) -> Result<bool> {
        self.fresh
            .get_or_try_init(|| async { Ok(!self.store.holds_records().await?) })
            .await
            .copied()
    }

    fn fresh(&self) -> bool {
        self.fresh.get().copied().unwrap_or(false)
    }

    fn field(&self, name: &str) -> Arc<str> {
        let Ok(mut fields) = self.fields.lock() else {
            return Arc::from(name);
        };
        if let Some(f) = fields.get(name) {
            return f.clone();
        }
        let f: Arc<str> = Arc::from(name);
        fields.insert(f.clone());
        f
    }

    /// Write-through: an update was stored at `path` (its object key, which
    /// names it by its digest). When it is the record's latest (and the
    /// record is seeded), `extend` is called with the record's generation
    /// and update count as of the insert.
    ///
    /// `extend` runs after the record's shard of the map is unlocked, so
    /// that folding the update (the costly part) does not hold up readers
    /// and writers of the other records of the shard. By then another
    /// update of the record may have been indexed: whatever `extend` builds
    /// must hold for the record's first `n` updates of that generation
    /// only, which is what readers check a memo against.
    pub(crate) fn add_update(&self, path: &str, update: &UpdateDocument, extend: impl FnOnce(u64, usize)) {
        let fresh = self.fresh();
        let latest = {
            let mut tracked = self.records.entry(update.key.clone()).or_insert_with(|| Tracked {
                seeded: fresh,
                refs_seeded: fresh,
                ..Tracked::default()
            });
            let generation = tracked.generation;
            // The digest in the key ingestion just built, rather than
            // hashing the source and position again.
            let entry = match layout::update_digest_of(path) {
                Some(digest) => Indexed::new(update, digest),
                None => Indexed::of(update),
            };
            (tracked.insert(entry) && tracked.seeded && tracked.generation == generation)
                .then(|| (generation, tracked.updates.len()))
        };
        if let Some((generation, n)) = latest {
            extend(generation, n);
        }
    }

    /// Write-through: `from`'s update committed at `first_seen` carried
    /// `references` (stored).
    pub(crate) fn add_references(&self, from: &RecordKey, references: &[Reference], first_seen: Timestamp) {
        let fresh = self.fresh();
        // A target already indexed is referred to through the key the index
        // holds, so that each record's key is allocated once however many
        // records point at it (an account, by every ledger entry).
        let targets: Vec<RecordKey> = references
            .iter()
            .map(|r| {
                self.referrers
                    .get(&r.target)
                    .map_or_else(|| r.target.clone(), |e| e.key().clone())
            })
            .collect();
        let mut added = Vec::new();
        let known;
        {
            let mut tracked = self.records.entry(from.clone()).or_insert_with(|| Tracked {
                seeded: fresh,
                refs_seeded: fresh,
                ..Tracked::default()
            });
            for (reference, target) in references.iter().zip(&targets) {
                let field = self.field(&reference.field);
                if tracked.add_ref(&field, target, first_seen) {
                    added.push((field, target));
                }
            }
            // Whether "new" is new to the store too, or only to the index.
            known = tracked.refs_seeded;
        }
        for (field, target) in added {
            let mut list = self.referrers.entry(target.clone()).or_insert_with(|| Referrers {
                seeded: fresh,
                ..Referrers::default()
            });
            list.maybe_twice |= !known;
            reserve_tight(&mut list.entries);
            list.entries.push(Ref {
                field,
                other: from.clone(),
                first_seen,
            });
        }
    }

    /// Adds the updates of `key` found in the store; the record is seeded.
    fn seed<'a>(
        &self,
        key: &RecordKey,
        found: impl IntoIterator<Item = &'a UpdateDocument>,
    ) -> dashmap::mapref::one::RefMut<'_, RecordKey, Tracked> {
        let mut tracked = self.records.entry(key.clone()).or_default();
        for update in found {
            tracked.insert(Indexed::of(update));
        }
        tracked.seeded = true;
        tracked.generation += 1;
        tracked
    }

    /// The plan to read `key`'s state at `at`, given its memo; `None` if the
    /// record is not seeded from the store yet.
    pub(crate) fn plan(&self, key: &RecordKey, at: Timestamp, memo: Option<&Memo>) -> Option<Plan> {
        match self.records.get(key) {
            None => self.fresh().then_some(Plan::Hit(None)),
            Some(t) if !t.seeded => None,
            Some(t) => Some(self.plan_of(&t, key, at, memo)),
        }
    }

    /// Seeds `key` with the updates found in the store, then plans as
    /// [`plan`](Self::plan).
    pub(crate) fn seed_then_plan<'a>(
        &self,
        key: &RecordKey,
        found: impl IntoIterator<Item = &'a UpdateDocument>,
        at: Timestamp,
        memo: Option<&Memo>,
    ) -> Plan {
        let tracked = self.seed(key, found);
        self.plan_of(&tracked, key, at, memo)
    }

    fn plan_of(&self, tracked: &Tracked, key: &RecordKey, at: Timestamp, memo: Option<&Memo>) -> Plan {
        let n = tracked.updates.partition_point(|u| u.commit_time <= at);
        let latest = n == tracked.updates.len();
        let generation = tracked.generation;
        let base = memo.filter(|m| m.generation == generation && m.n <= n);
        let (base, from) = match base {
            Some(m) if m.n == n => return Plan::Hit(m.state.clone()),
            Some(m) => (Some(m.state.clone()), m.n),
            None => (None, 0),
        };
        Plan::Fold {
            base,
            paths: self.paths_of(tracked, key, from, n),
            generation,
            n,
            latest,
        }
    }

    /// The object keys of `key`'s updates committed at or before `up_to`, in
    /// (commit time, source) order (ties are to be ordered by position once
    /// loaded); `None` if the record is not seeded yet.
    pub(crate) fn paths(&self, key: &RecordKey, up_to: Timestamp) -> Option<Vec<String>> {
        match self.records.get(key) {
            None => self.fresh().then(Vec::new),
            Some(t) if !t.seeded => None,
            Some(t) => Some(self.paths_up_to(&t, key, up_to)),
        }
    }

    /// Seeds `key` with the updates found in the store, then answers as
    /// [`paths`](Self::paths).
    pub(crate) fn seed_then_paths<'a>(
        &self,
        key: &RecordKey,
        found: impl IntoIterator<Item = &'a UpdateDocument>,
        up_to: Timestamp,
    ) -> Vec<String> {
        let tracked = self.seed(key, found);
        self.paths_up_to(&tracked, key, up_to)
    }

    fn paths_up_to(&self, tracked: &Tracked, key: &RecordKey, up_to: Timestamp) -> Vec<String> {
        let n = tracked.updates.partition_point(|u| u.commit_time <= up_to);
        self.paths_of(tracked, key, 0, n)
    }

    fn paths_of(&self, tracked: &Tracked, key: &RecordKey, from: usize, to: usize) -> Vec<String> {
        tracked.updates[from..to]
            .iter()
            .map(|u| self.store.update_path_of(key, u.commit_time, &u.digest))
            .collect()
    }

    /// The references of `key` (its master document); `None` if not seeded
    /// from the store yet.
    pub(crate) fn references(&self, key: &RecordKey) -> Option<Vec<ReferenceEntry>> {
        match self.records.get(key) {
            None => self.fresh().then(Vec::new),
            Some(t) if !t.refs_seeded => None,
            Some(t) => Some(Self::reference_entries(key, &t)),
        }
    }

    /// Adds the references of `key` found in the store (the truth: the
    /// first stored wins there) and returns its master document.
    pub(crate) fn seed_references(&self, key: &RecordKey, found: Vec<ReferenceEntry>) -> Vec<ReferenceEntry> {
        let mut tracked = self.records.entry(key.clone()).or_default();
        let mut refs: Vec<Ref> = found
            .into_iter()
            .map(|e| Ref {
                field: self.field(&e.reference.field),
                other: e.reference.target,
                first_seen: e.first_seen,
            })
            .collect();
        for r in std::mem::take(&mut tracked.refs) {
            if !refs.iter().any(|s| s.field == r.field && s.other == r.other) {
                refs.push(r);
            }
        }
        tracked.refs = refs;
        tracked.refs_seeded = true;
        Self::reference_entries(key, &tracked)
    }

    fn reference_entries(key: &RecordKey, tracked: &Tracked) -> Vec<ReferenceEntry> {
        tracked.refs.iter().map(|r| r.entry(key, &r.other)).collect()
    }

    /// The records that reference `key` (the reverse index); `None` if not
    /// seeded from the store yet.
    pub(crate) fn referrers(&self, key: &RecordKey) -> Option<Vec<ReferenceEntry>> {
        match self.referrers.get(key) {
            None => self.fresh().then(Vec::new),
            Some(list) if !list.seeded => None,
            Some(list) => Some(Self::referrer_entries(key, &list)),
        }
    }

    /// Adds the reverse-index entries of `key` found in the store and
    /// returns the records that reference it.
    pub(crate) fn seed_referrers(&self, key: &RecordKey, found: Vec<ReferenceEntry>) -> Vec<ReferenceEntry> {
        let mut list = self.referrers.entry(key.clone()).or_default();
        list.maybe_twice |= !list.entries.is_empty();
        list.entries.extend(found.into_iter().map(|e| Ref {
            field: self.field(&e.reference.field),
            other: e.from,
            first_seen: e.first_seen,
        }));
        list.seeded = true;
        Self::referrer_entries(key, &list)
    }

    fn referrer_entries(key: &RecordKey, list: &Referrers) -> Vec<ReferenceEntry> {
        let mut entries: Vec<&Ref> = list.entries.iter().collect();
        if list.maybe_twice {
            // The earliest of a reference held twice.
            entries
                .sort_by(|a, b| (&a.other, &a.field, a.first_seen).cmp(&(&b.other, &b.field, b.first_seen)));
            entries.dedup_by(|b, a| a.other == b.other && a.field == b.field);
        }
        entries.into_iter().map(|r| r.entry(&r.other, key)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Operation, SourceId, SourcePosition};

    fn update(id: &str, secs: i64) -> UpdateDocument {
        UpdateDocument {
            key: RecordKey::new("transfers", id).unwrap(),
            source: SourceId::new("s").unwrap(),
            position: SourcePosition::from_numbers(&[secs as u64]),
            commit_time: Timestamp::from_secs(secs),
            ingested_at: Timestamp::from_secs(secs),
            operation: Operation::Update,
            format: crate::model::Format::new("json").unwrap(),
            raw: bytes::Bytes::from_static(b"{}"),
            references: Vec::new(),
        }
    }

    /// Folding an update into its record's memo is the costly part of
    /// indexing it: it runs with the record's shard unlocked, so that reads
    /// and writes of that shard's other records go on meanwhile.
    #[tokio::test]
    async fn the_latest_update_is_folded_with_its_shard_unlocked() {
        let index = Index::new(Store::in_memory());
        assert!(index.start().await.unwrap(), "an empty store");
        for secs in 1..=3 {
            let u = update("t-1", secs);
            let path = format!("updates/transfers/t-1/{secs}.pb");
            let mut folded = None;
            index.add_update(&path, &u, |generation, n| {
                let unlocked = index.records.try_get_mut(&u.key).is_present();
                folded = Some((generation, n, unlocked));
            });
            assert_eq!(folded, Some((0, secs as usize, true)));
        }
        // An update that goes before the others is not the latest: nothing
        // to fold (a read folds the record again).
        let mut called = false;
        index.add_update("updates/transfers/t-1/0.pb", &update("t-1", 0), |_, _| {
            called = true
        });
        assert!(!called);
    }

    #[test]
    fn short_lists_hold_no_spare_room_and_long_ones_still_grow_geometrically() {
        let mut list = Vec::new();
        let mut growths = 0;
        for i in 0..10_000u64 {
            let before = list.capacity();
            reserve_tight(&mut list);
            list.push(i);
            if list.capacity() != before {
                growths += 1;
            }
            if list.len() <= 4 {
                assert_eq!(list.capacity(), list.len());
            }
        }
        // 4 single steps, then doubling: not one reallocation per element.
        assert!(growths < 20, "{growths} reallocations");
    }
}
