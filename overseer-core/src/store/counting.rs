//! An [`ObjectStore`] wrapper that counts requests: on S3 every request is
//! billed, so requests per event is the running cost of a layout.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Request counts of a [`CountingStore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Puts (including conditional puts that found the object already there).
    pub puts: u64,
    /// Gets (including ranged gets).
    pub gets: u64,
    /// List calls (one per `list`, `list_with_offset` or `list_with_delimiter`).
    pub lists: u64,
    /// Deletes, copies, renames and multipart uploads.
    pub other: u64,
    /// Bytes sent by puts (the payloads, whether or not the object was new).
    pub put_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    lists: AtomicU64,
    other: AtomicU64,
    put_bytes: AtomicU64,
}

/// Wraps an object store and counts the requests made through it.
///
/// ```
/// use std::sync::Arc;
/// use overseer_core::object_store::memory::InMemory;
/// use overseer_core::store::CountingStore;
/// use overseer_core::Store;
///
/// let counting = Arc::new(CountingStore::new(InMemory::new()));
/// let store = Store::new(counting.clone());
/// assert_eq!(counting.counts().puts, 0);
/// ```
///
/// Counts are per request, and [`RequestCounts::put_bytes`] sums the
/// payloads sent: the two cost figures of an object store.
#[derive(Debug)]
pub struct CountingStore<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S: ObjectStore> CountingStore<S> {
    /// Counts the requests made to `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> RequestCounts {
        RequestCounts {
            puts: self.counters.puts.load(Ordering::Relaxed),
            gets: self.counters.gets.load(Ordering::Relaxed),
            lists: self.counters.lists.load(Ordering::Relaxed),
            other: self.counters.other.load(Ordering::Relaxed),
            put_bytes: self.counters.put_bytes.load(Ordering::Relaxed),
        }
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        for c in [
            &self.counters.puts,
            &self.counters.gets,
            &self.counters.lists,
            &self.counters.other,
            &self.counters.put_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

impl<S: ObjectStore> fmt::Display for CountingStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for CountingStore<S> {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        bump(&self.counters.puts);
        let bytes = u64::try_from(payload.content_length()).unwrap_or(u64::MAX);
        self.counters.put_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        bump(&self.counters.other);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        bump(&self.counters.gets);
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        bump(&self.counters.gets);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let counters = self.counters.clone();
        let counted = locations
            .map(move |l| {
                bump(&counters.other);
                l
            })
            .boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        bump(&self.counters.lists);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        bump(&self.counters.lists);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        bump(&self.counters.lists);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        bump(&self.counters.other);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        bump(&self.counters.other);
        self.inner.rename_opts(from, to, options).await
    }
}
