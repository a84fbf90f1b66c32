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

use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::change::State;
use crate::error::Result;
use crate::model::{RecordKey, Reference, SourceId, SourcePosition, UpdateDocument};
use crate::store::{ReferenceEntry, Store};
use crate::time::Timestamp;

/// One stored update of a record, as the index knows it.
#[derive(Clone, Debug)]
pub(crate) struct Indexed {
    pub(crate) commit_time: Timestamp,
    pub(crate) source: SourceId,
    pub(crate) position: SourcePosition,
    pub(crate) path: Box<str>,
}

impl Indexed {
    pub(crate) fn new(path: &str, update: &UpdateDocument) -> Self {
        Self {
            commit_time: update.commit_time,
            source: update.source.clone(),
            position: update.position.clone(),
            path: path.into(),
        }
    }

    fn order(&self) -> (Timestamp, &SourceId, &SourcePosition) {
        (self.commit_time, &self.source, &self.position)
    }
}

#[derive(Debug, Default)]
struct Tracked {
    /// Holds every update stored before tracking began too.
    seeded: bool,
    /// Changes whenever an update is inserted before others (so a fold of
    /// the first `n` updates is no longer one of the same updates).
    generation: u64,
    /// Ordered by (commit time, source, position).
    updates: Vec<Indexed>,
}

impl Tracked {
    /// Inserts in order; `false` if the path is already there.
    fn insert(&mut self, entry: Indexed) -> bool {
        let at = self.updates.partition_point(|u| u.order() <= entry.order());
        if self.updates[..at]
            .iter()
            .rev()
            .take_while(|u| u.order() == entry.order())
            .any(|u| u.path == entry.path)
        {
            return false;
        }
        if at < self.updates.len() {
            self.generation += 1;
        }
        self.updates.insert(at, entry);
        true
    }
}

#[derive(Debug, Default)]
struct RefList {
    seeded: bool,
    /// One entry per (referencing record, reference): the first stored
    /// wins, as in the store's create-only reference objects.
    entries: std::collections::HashMap<(RecordKey, Reference), Timestamp>,
}

impl RefList {
    fn add(&mut self, entry: ReferenceEntry) {
        self.entries
            .entry((entry.from, entry.reference))
            .or_insert(entry.first_seen);
    }

    fn to_vec(&self) -> Vec<ReferenceEntry> {
        self.entries
            .iter()
            .map(|((from, reference), first_seen)| ReferenceEntry {
                from: from.clone(),
                reference: reference.clone(),
                first_seen: *first_seen,
            })
            .collect()
    }
}

/// The folded state of a record's first `n` updates (of one generation).
#[derive(Debug)]
pub(crate) struct Memo {
    pub(crate) generation: u64,
    pub(crate) n: usize,
    pub(crate) state: Option<Arc<State>>,
    pub(crate) weight: u64,
}

/// What reading a record's state at a time needs.
pub(crate) enum Plan {
    /// The record is not seeded from the store yet.
    Unseeded,
    /// The memo is exactly the state asked for.
    Hit(Option<Arc<State>>),
    /// Fold these updates, on top of `base` when given (the memo of an
    /// earlier prefix of the same generation).
    Fold {
        base: Option<Option<Arc<State>>>,
        paths: Vec<Box<str>>,
        generation: u64,
        n: usize,
        /// Whether these are all of the record's updates (worth a memo).
        latest: bool,
    },
}

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Index {
    records: DashMap<RecordKey, Tracked>,
    forward: DashMap<RecordKey, RefList>,
    reverse: DashMap<RecordKey, RefList>,
    fresh: tokio::sync::OnceCell<bool>,
}

impl Index {
    /// Asks the store, once, whether it held anything when tracking began.
    /// Must complete before this process stores anything.
    pub(crate) async fn start(&self, store: &Store) -> Result<bool> {
        self.fresh
            .get_or_try_init(|| async { Ok(!store.holds_records().await?) })
            .await
            .copied()
    }

    fn fresh(&self) -> bool {
        self.fresh.get().copied().unwrap_or(false)
    }

    /// Write-through: an update was stored at `path`. When it is the
    /// record's latest of a seeded record, `extend` is called (under the
    /// record's lock) with the record's generation and update count.
    pub(crate) fn add_update(&self, path: &str, update: &UpdateDocument, extend: impl FnOnce(u64, usize)) {
        let fresh = self.fresh();
        let mut tracked = self.records.entry(update.key.clone()).or_insert_with(|| Tracked {
            seeded: fresh,
            ..Tracked::default()
        });
        let generation = tracked.generation;
        if tracked.insert(Indexed::new(path, update)) && tracked.seeded && tracked.generation == generation {
            extend(generation, tracked.updates.len());
        }
    }

    /// Write-through: `from`'s update committed at `first_seen` carried
    /// `references` (stored).
    pub(crate) fn add_references(&self, from: &RecordKey, references: &[Reference], first_seen: Timestamp) {
        let fresh = self.fresh();
        for reference in references {
            let entry = ReferenceEntry {
                from: from.clone(),
                reference: reference.clone(),
                first_seen,
            };
            for (map, key) in [(&self.forward, from), (&self.reverse, &reference.target)] {
                map.entry(key.clone())
                    .or_insert_with(|| RefList {
                        seeded: fresh,
                        ..RefList::default()
                    })
                    .add(entry.clone());
            }
        }
    }

    /// Adds the updates of `key` found in the store; the record is seeded.
    pub(crate) fn seed_updates(&self, key: &RecordKey, found: Vec<Indexed>) {
        let mut tracked = self.records.entry(key.clone()).or_default();
        for entry in found {
            tracked.insert(entry);
        }
        tracked.seeded = true;
        tracked.generation += 1;
    }

    /// The plan to read `key`'s state at `at`, given its memo.
    pub(crate) fn plan(&self, key: &RecordKey, at: Timestamp, memo: Option<&Memo>) -> Plan {
        let Some(tracked) = self.records.get(key) else {
            return if self.fresh() {
                Plan::Hit(None)
            } else {
                Plan::Unseeded
            };
        };
        if !tracked.seeded {
            return Plan::Unseeded;
        }
        let n = tracked.updates.partition_point(|u| u.commit_time <= at);
        let latest = n == tracked.updates.len();
        let generation = tracked.generation;
        let base = memo.filter(|m| m.generation == generation && m.n <= n);
        match base {
            Some(m) if m.n == n => Plan::Hit(m.state.clone()),
            Some(m) => Plan::Fold {
                base: Some(m.state.clone()),
                paths: tracked.updates[m.n..n].iter().map(|u| u.path.clone()).collect(),
                generation,
                n,
                latest,
            },
            None => Plan::Fold {
                base: None,
                paths: tracked.updates[..n].iter().map(|u| u.path.clone()).collect(),
                generation,
                n,
                latest,
            },
        }
    }

    /// The paths of `key`'s updates committed at or before `up_to`, in
    /// order; `None` if the record is not seeded yet.
    pub(crate) fn paths(&self, key: &RecordKey, up_to: Timestamp) -> Option<Vec<Box<str>>> {
        match self.records.get(key) {
            None => self.fresh().then(Vec::new),
            Some(t) if !t.seeded => None,
            Some(t) => Some(
                t.updates
                    .iter()
                    .take_while(|u| u.commit_time <= up_to)
                    .map(|u| u.path.clone())
                    .collect(),
            ),
        }
    }

    /// The references of `key` (`forward`) or to `key` (not `forward`);
    /// `None` if not seeded yet.
    pub(crate) fn references(&self, key: &RecordKey, forward: bool) -> Option<Vec<ReferenceEntry>> {
        let map = if forward { &self.forward } else { &self.reverse };
        match map.get(key) {
            None => self.fresh().then(Vec::new),
            Some(list) if !list.seeded => None,
            Some(list) => Some(list.to_vec()),
        }
    }

    /// Adds the references found in the store; the list is seeded.
    pub(crate) fn seed_references(&self, key: &RecordKey, forward: bool, found: Vec<ReferenceEntry>) {
        let map = if forward { &self.forward } else { &self.reverse };
        let mut list = match map.entry(key.clone()) {
            Entry::Occupied(e) => e.into_ref(),
            Entry::Vacant(e) => e.insert(RefList::default()),
        };
        // The store's entries are the truth (the first stored wins there).
        for entry in found {
            list.entries
                .insert((entry.from, entry.reference), entry.first_seen);
        }
        list.seeded = true;
    }
}
