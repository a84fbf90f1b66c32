//! [`MemoryStore`]: an [`ObjectStore`] in memory, sized for millions of
//! small objects.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::{DELIMITER, Path};
use object_store::{
    Attributes, CopyMode, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    UploadPart,
};

const NAME: &str = "MemoryStore";

/// An [`ObjectStore`] that keeps every object in memory: the store behind
/// [`Store::in_memory`](super::Store::in_memory).
///
/// It behaves as `object_store`'s `InMemory` does (create-only and
/// conditional puts, ranges, preconditions, listings, copies, multipart
/// uploads, attributes) and differs only in what it keeps per object.
/// Overseer stores millions of objects of a few hundred bytes, and
/// `InMemory` keeps beside each one's key and bytes an entry with an
/// attribute map, a timestamp and an e-tag (128 bytes in its tree's slot),
/// and shares the bytes through a reference-counted header. This store
/// keeps an object's bytes in one allocation of their exact size and its
/// key, modification time and e-tag in a 64-byte slot; attributes only for
/// an object that has some. A read copies the bytes it returns.
///
/// ```
/// use overseer_core::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
/// use overseer_core::object_store::path::Path;
/// use overseer_core::store::MemoryStore;
///
/// # async fn demo() -> overseer_core::object_store::Result<()> {
/// let store = MemoryStore::new();
/// let path = Path::from("updates/transfers/t1/1.pb");
/// store.put(&path, PutPayload::from_static(b"event")).await?;
/// assert_eq!(store.get(&path).await?.bytes().await?.as_ref(), b"event");
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    objects: RwLock<BTreeMap<Path, Object>>,
    /// The e-tag of the last object written.
    last_e_tag: AtomicU64,
}

#[derive(Debug, Clone)]
struct Object {
    data: Box<[u8]>,
    modified_micros: i64,
    e_tag: u64,
    attributes: Option<Box<Attributes>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Display for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NAME)
    }
}

impl Inner {
    // Nothing panics while holding the lock, and every write leaves the
    // map whole, so a poisoned lock still guards a consistent map.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Path, Object>> {
        self.objects.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<Path, Object>> {
        self.objects.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn object(data: Box<[u8]>, e_tag: u64, attributes: Attributes) -> Object {
        Object {
            data,
            modified_micros: Utc::now().timestamp_micros(),
            e_tag,
            attributes: (!attributes.is_empty()).then(|| Box::new(attributes)),
        }
    }

    fn next_e_tag(&self) -> u64 {
        self.last_e_tag.fetch_add(1, Ordering::Relaxed) + 1
    }
}

fn e_tag(e_tag: u64) -> String {
    format!("\"{e_tag}\"")
}

fn meta(location: Path, object: &Object) -> ObjectMeta {
    ObjectMeta {
        location,
        last_modified: DateTime::from_timestamp_micros(object.modified_micros).unwrap_or_default(),
        size: object.data.len() as u64,
        e_tag: Some(e_tag(object.e_tag)),
        version: None,
    }
}

fn not_found(location: &Path) -> object_store::Error {
    object_store::Error::NotFound {
        path: location.to_string(),
        source: format!("no object at {location}").into(),
    }
}

fn already_exists(location: &Path) -> object_store::Error {
    object_store::Error::AlreadyExists {
        path: location.to_string(),
        source: format!("an object is stored at {location}").into(),
    }
}

/// Stores `object` at `location`, replacing any object there, or, when
/// `create_only`, only if there is none.
fn place(
    objects: &mut BTreeMap<Path, Object>,
    location: &Path,
    object: Object,
    create_only: bool,
) -> Result<()> {
    if !create_only {
        objects.insert(location.clone(), object);
        return Ok(());
    }
    match objects.entry(location.clone()) {
        Entry::Occupied(_) => Err(already_exists(location)),
        Entry::Vacant(slot) => {
            slot.insert(object);
            Ok(())
        }
    }
}

/// The bytes of a payload in one allocation of their exact size.
fn boxed(payload: &PutPayload) -> Box<[u8]> {
    let mut data = Vec::with_capacity(payload.content_length());
    for part in payload {
        data.extend_from_slice(part);
    }
    data.into_boxed_slice()
}

/// The part of `key` below `prefix` (a whole number of segments), if `key`
/// is strictly below it.
fn below<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return (!key.is_empty()).then_some(key);
    }
    key.strip_prefix(prefix)?
        .strip_prefix(DELIMITER)
        .filter(|rest| !rest.is_empty())
}

/// The keys strictly below `prefix`, in order, with the part of each below
/// it and their objects.
fn under<'a>(
    objects: &'a BTreeMap<Path, Object>,
    prefix: &'a Path,
) -> impl Iterator<Item = (&'a Path, &'a str, &'a Object)> + 'a {
    objects
        .range(prefix..)
        .take_while(move |(key, _)| key.as_ref().starts_with(prefix.as_ref()))
        .filter_map(move |(key, object)| Some((key, below(key.as_ref(), prefix.as_ref())?, object)))
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let data = boxed(&payload);
        let mut objects = self.inner.write();
        let tag = self.inner.next_e_tag();
        let object = Inner::object(data, tag, opts.attributes);
        match opts.mode {
            PutMode::Overwrite => place(&mut objects, location, object, false)?,
            PutMode::Create => place(&mut objects, location, object, true)?,
            PutMode::Update(version) => {
                let Some(existing) = objects.get_mut(location) else {
                    return Err(object_store::Error::Precondition {
                        path: location.to_string(),
                        source: format!("no object at {location} to update").into(),
                    });
                };
                let expected = version.e_tag.ok_or_else(|| object_store::Error::Generic {
                    store: NAME,
                    source: "a conditional update needs the e-tag of the object it replaces".into(),
                })?;
                let found = e_tag(existing.e_tag);
                if found != expected {
                    return Err(object_store::Error::Precondition {
                        path: location.to_string(),
                        source: format!("e-tag {found} does not match {expected}").into(),
                    });
                }
                *existing = object;
            }
        }
        Ok(PutResult {
            e_tag: Some(e_tag(tag)),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(Upload {
            store: self.clone(),
            location: location.clone(),
            attributes: opts.attributes,
            parts: Vec::new(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let objects = self.inner.read();
        let object = objects.get(location).ok_or_else(|| not_found(location))?;
        let meta = meta(location.clone(), object);
        options.check_preconditions(&meta)?;
        let range = match &options.range {
            Some(range) => range
                .as_range(meta.size)
                .map_err(|e| object_store::Error::Generic {
                    store: NAME,
                    source: Box::new(e),
                })?,
            None => 0..meta.size,
        };
        // Within the object's length: `as_range` checked it.
        let data = if options.head {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(
                object
                    .data
                    .get(range.start as usize..range.end as usize)
                    .unwrap_or_default(),
            )
        };
        let attributes = object.attributes.as_deref().cloned().unwrap_or_default();
        drop(objects);
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(data) }).boxed()),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        locations
            .map(move |location| {
                let location = location?;
                inner.write().remove(&location);
                Ok(location)
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let root = Path::default();
        let prefix = prefix.unwrap_or(&root);
        let objects = self.inner.read();
        let found: Vec<Result<ObjectMeta>> = under(&objects, prefix)
            .map(|(key, _, object)| Ok(meta(key.clone(), object)))
            .collect();
        stream::iter(found).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let root = Path::default();
        let prefix = prefix.unwrap_or(&root);
        let mut common_prefixes: Vec<Path> = Vec::new();
        let mut found = Vec::new();
        let objects = self.inner.read();
        for (key, rest, object) in under(&objects, prefix) {
            if !rest.contains(DELIMITER) {
                found.push(meta(key.clone(), object));
                continue;
            }
            // The directory's segment as stored (joining a `PathPart`
            // does not escape it again).
            let Some(directory) = key.prefix_match(prefix).and_then(|mut parts| parts.next()) else {
                continue;
            };
            // Keys are ordered, so a directory's keys are adjacent.
            let directory = prefix.clone().join(directory);
            if common_prefixes.last() != Some(&directory) {
                common_prefixes.push(directory);
            }
        }
        Ok(ListResult {
            common_prefixes,
            objects: found,
            extensions: Default::default(),
        })
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let mut objects = self.inner.write();
        let source = objects.get(from).ok_or_else(|| not_found(from))?;
        let mut copy = source.clone();
        copy.e_tag = self.inner.next_e_tag();
        copy.modified_micros = Utc::now().timestamp_micros();
        place(&mut objects, to, copy, options.mode == CopyMode::Create)
    }
}

/// A multipart upload: its parts are kept until it completes, and then
/// put as one object.
#[derive(Debug)]
struct Upload {
    store: MemoryStore,
    location: Path,
    attributes: Attributes,
    parts: Vec<PutPayload>,
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, payload: PutPayload) -> UploadPart {
        self.parts.push(payload);
        Box::pin(async { Ok(()) })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let payload: PutPayload = std::mem::take(&mut self.parts).into_iter().flatten().collect();
        let opts = PutOptions {
            attributes: std::mem::take(&mut self.attributes),
            ..PutOptions::default()
        };
        self.store.put_opts(&self.location, payload, opts).await
    }

    async fn abort(&mut self) -> Result<()> {
        self.parts.clear();
        Ok(())
    }
}
