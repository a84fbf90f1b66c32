//! [`MemoryStore`]: an [`ObjectStore`] in memory, sized for millions of
//! small objects.

use std::borrow::Borrow;
use std::cmp::Ordering as KeyOrder;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::DateTime;
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
/// keeps an object's key and bytes together in one allocation of their
/// exact size, and its modification time and e-tag in a 48-byte slot;
/// attributes only for an object that has some. A read copies the bytes it
/// returns.
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

/// The objects, ordered by key (the order of their keys' bytes, which is
/// the order of the keys as text).
type Objects = BTreeSet<Object>;

#[derive(Debug, Default)]
struct Inner {
    objects: RwLock<Objects>,
    /// The e-tag of the last object written.
    last_e_tag: AtomicU64,
}

/// An object and its key: found in the set by its key's bytes.
#[derive(Debug, Clone)]
struct Object {
    /// The key's bytes, then the object's.
    buf: Box<[u8]>,
    key_len: u32,
    e_tag: u64,
    modified_micros: i64,
    attributes: Option<Box<Attributes>>,
}

impl Object {
    /// An object at `key` holding the bytes of `data`'s parts, in one
    /// allocation of their exact size.
    fn new<'a>(
        key: &str,
        data: impl IntoIterator<Item = &'a [u8]>,
        data_len: usize,
        e_tag: u64,
        attributes: Option<Box<Attributes>>,
    ) -> Result<Self> {
        let key_len = u32::try_from(key.len()).map_err(|_| object_store::Error::Generic {
            store: NAME,
            source: format!("a key of {} bytes is too long for this store", key.len()).into(),
        })?;
        let mut buf = Vec::with_capacity(key.len() + data_len);
        buf.extend_from_slice(key.as_bytes());
        for part in data {
            buf.extend_from_slice(part);
        }
        Ok(Self {
            buf: buf.into_boxed_slice(),
            key_len,
            e_tag,
            modified_micros: crate::time::Timestamp::now().as_micros(),
            attributes,
        })
    }

    fn key(&self) -> &[u8] {
        self.buf.get(..self.key_len as usize).unwrap_or_default()
    }

    fn data(&self) -> &[u8] {
        self.buf.get(self.key_len as usize..).unwrap_or_default()
    }

    /// The object's key as a path.
    fn path(&self) -> Result<Path> {
        path_of(self.key())
    }

    fn meta(&self, location: Path) -> ObjectMeta {
        ObjectMeta {
            location,
            last_modified: DateTime::from_timestamp_micros(self.modified_micros).unwrap_or_default(),
            size: self.data().len() as u64,
            e_tag: Some(e_tag(self.e_tag)),
            version: None,
        }
    }
}

impl Borrow<[u8]> for Object {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Object {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Object {}

impl PartialOrd for Object {
    fn partial_cmp(&self, other: &Self) -> Option<KeyOrder> {
        Some(self.cmp(other))
    }
}

impl Ord for Object {
    fn cmp(&self, other: &Self) -> KeyOrder {
        self.key().cmp(other.key())
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores each `(key, bytes)` create-only, all under one lock: for
    /// each, whether it was stored (`false`: an object was already at its
    /// key, and is kept). What a create-only `put` does for each, without a
    /// future, a payload and an e-tag text per object.
    ///
    /// Each key must be a valid path as text (what `Path::parse` keeps as
    /// it is): the store's layout builds its keys so.
    pub(crate) fn create_all<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<Result<bool>> {
        // Allocated before the lock is taken.
        let objects: Vec<Result<Object>> = items
            .into_iter()
            .map(|(key, bytes)| {
                debug_assert!(
                    Path::parse(key).is_ok_and(|p| p.as_ref() == key),
                    "{key:?} is not a path as text"
                );
                Object::new(key, [bytes], bytes.len(), 0, None)
            })
            .collect();
        let mut stored = self.inner.write();
        objects
            .into_iter()
            .map(|object| {
                let mut object = object?;
                object.e_tag = self.inner.next_e_tag();
                Ok(stored.insert(object))
            })
            .collect()
    }
}

impl fmt::Display for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NAME)
    }
}

impl Inner {
    // Nothing panics while holding the lock, and every write leaves the
    // set whole, so a poisoned lock still guards a consistent set.
    fn read(&self) -> RwLockReadGuard<'_, Objects> {
        self.objects.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Objects> {
        self.objects.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_e_tag(&self) -> u64 {
        self.last_e_tag.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// An e-tag as text: the number, quoted.
fn e_tag(e_tag: u64) -> String {
    format!("\"{e_tag}\"")
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

fn key_of(location: &Path) -> &[u8] {
    location.as_ref().as_bytes()
}

/// The path whose key (or key prefix) is `key`. Keys are stored from paths,
/// so this fails only if the store's memory is corrupted.
fn path_of(key: &[u8]) -> Result<Path> {
    let invalid = |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
        store: NAME,
        source,
    };
    let key = std::str::from_utf8(key).map_err(|e| invalid(Box::new(e)))?;
    Path::parse(key).map_err(|e| invalid(Box::new(e)))
}

/// Stores `object` at its key, replacing any object there, or, when
/// `create_only`, only if there is none.
fn place(objects: &mut Objects, location: &Path, object: Object, create_only: bool) -> Result<()> {
    if create_only {
        // One walk down the tree: `insert` keeps what is there.
        if !objects.insert(object) {
            return Err(already_exists(location));
        }
    } else {
        objects.replace(object);
    }
    Ok(())
}

/// The part of `key` below `prefix` (a whole number of segments), if `key`
/// is strictly below it.
fn below<'a>(key: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if prefix.is_empty() {
        return (!key.is_empty()).then_some(key);
    }
    key.strip_prefix(prefix)?
        .strip_prefix(DELIMITER.as_bytes())
        .filter(|rest| !rest.is_empty())
}

/// The objects strictly below `prefix`, in order, with the part of each
/// one's key below it.
fn under<'a>(objects: &'a Objects, prefix: &'a Path) -> impl Iterator<Item = (&'a [u8], &'a Object)> + 'a {
    let prefix = key_of(prefix);
    objects
        .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |object| object.key().starts_with(prefix))
        .filter_map(move |object| Some((below(object.key(), prefix)?, object)))
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let attributes = (!opts.attributes.is_empty()).then(|| Box::new(opts.attributes));
        let parts = payload.iter().map(|part| part.as_ref());
        let mut object = Object::new(location.as_ref(), parts, payload.content_length(), 0, attributes)?;
        let mut objects = self.inner.write();
        let tag = self.inner.next_e_tag();
        object.e_tag = tag;
        match opts.mode {
            PutMode::Overwrite => place(&mut objects, location, object, false)?,
            PutMode::Create => place(&mut objects, location, object, true)?,
            PutMode::Update(version) => {
                let Some(existing) = objects.get(key_of(location)) else {
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
                objects.replace(object);
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
        let object = objects.get(key_of(location)).ok_or_else(|| not_found(location))?;
        let meta = object.meta(location.clone());
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
                    .data()
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
                inner.write().remove(key_of(&location));
                Ok(location)
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let root = Path::default();
        let prefix = prefix.unwrap_or(&root);
        let objects = self.inner.read();
        let found: Vec<Result<ObjectMeta>> = under(&objects, prefix)
            .map(|(_, object)| Ok(object.meta(object.path()?)))
            .collect();
        stream::iter(found).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let root = Path::default();
        let prefix = prefix.unwrap_or(&root);
        let mut common_prefixes: Vec<Path> = Vec::new();
        let mut found = Vec::new();
        let objects = self.inner.read();
        // The key of the last directory found, to skip its other keys
        // (keys are ordered, so a directory's keys are adjacent).
        let mut last_directory: Option<&[u8]> = None;
        for (rest, object) in under(&objects, prefix) {
            let delimiter = DELIMITER.as_bytes();
            let Some(end) = rest.windows(delimiter.len()).position(|w| w == delimiter) else {
                found.push(object.meta(object.path()?));
                continue;
            };
            // The key up to the end of its first segment below `prefix`.
            let directory = object
                .key()
                .get(..object.key().len() - rest.len() + end)
                .unwrap_or_default();
            if last_directory != Some(directory) {
                last_directory = Some(directory);
                common_prefixes.push(path_of(directory)?);
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
        let source = objects.get(key_of(from)).ok_or_else(|| not_found(from))?;
        let data = source.data();
        let copy = Object::new(
            to.as_ref(),
            [data],
            data.len(),
            self.inner.next_e_tag(),
            source.attributes.clone(),
        )?;
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

#[cfg(test)]
mod tests {
    use super::Object;

    /// What the store keeps per object beside its key and bytes (one
    /// allocation) is one slot of its tree.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_object_beside_its_key_and_bytes_is_a_48_byte_slot() {
        assert_eq!(std::mem::size_of::<Object>(), 48);
    }
}
