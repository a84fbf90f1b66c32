//! Compression of raw events at rest: zstd with one dictionary per source,
//! trained on the source's first events.
//!
//! CDC events are small (hundreds of bytes) and alike: compressed one by
//! one they shrink little, but against a dictionary trained on their
//! siblings they shrink several times. A source's first events are kept as
//! received while the store collects them as training samples; then the
//! dictionary is trained (once, in the background, on a blocking thread:
//! events keep being stored as received meanwhile), stored create-only
//! under `dictionaries/<source>/`, and every later event of the source is
//! stored as a zstd frame against it. A store opened later finds the
//! dictionary there: writers reuse it, readers fetch it by the id that each
//! compressed update names.
//!
//! Only the raw event is compressed; the envelope's metadata stays readable
//! without the dictionary.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use prost::Message;
use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

use super::codec;
use crate::model::{SourceId, UpdateDocument};

/// How the raw events of updates are stored.
///
/// The default is [`Compression::Zstd`] with [`ZstdOptions::default`]: a
/// source's first mebibyte of events is stored as received, the rest
/// against a dictionary trained on it. Reading never depends on this
/// setting: a store reads whatever it finds.
///
/// ```
/// use overseer_core::{Compression, Store, ZstdOptions};
///
/// let plain = Store::in_memory().with_compression(Compression::None);
/// let eager = Store::in_memory().with_compression(Compression::Zstd(ZstdOptions {
///     training_bytes: 256 * 1024,
///     ..ZstdOptions::default()
/// }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Raw events are stored exactly as received.
    None,
    /// zstd against a dictionary trained per source.
    Zstd(ZstdOptions),
}

impl Default for Compression {
    fn default() -> Self {
        Self::Zstd(ZstdOptions::default())
    }
}

/// Settings of [`Compression::Zstd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZstdOptions {
    /// The zstd compression level of raw events (default 1: on events of
    /// this size, higher levels gain under 1 % and cost time).
    pub level: i32,
    /// The zstd compression level of audit batches (default -1). A batch
    /// holds one check's executions of one round of the runner, a few
    /// hundred bytes to a few kilobytes, compressed without a dictionary on
    /// the runner's path: at level -1 compressing them took 2.4 times fewer
    /// instructions than at level 1 in the payments example, for 1.4 % more
    /// bytes.
    pub audit_level: i32,
    /// The largest dictionary to train, in bytes (default 16 KiB).
    pub dictionary_bytes: usize,
    /// How many bytes of a source's events are collected to train its
    /// dictionary (default 1 MiB); those events are stored as received.
    /// Too few samples for zstd (a handful of events) make training fail:
    /// the source's events are then stored as received until the next run.
    /// Each source holds its samples in memory until it trains, so with
    /// many quiet sources, budget up to this much per source.
    pub training_bytes: usize,
}

impl Default for ZstdOptions {
    fn default() -> Self {
        Self {
            level: 1,
            audit_level: -1,
            dictionary_bytes: 16 * 1024,
            training_bytes: 1024 * 1024,
        }
    }
}

/// Events larger than this are not used as training samples.
const MAX_SAMPLE: usize = 64 * 1024;

/// The largest raw event a frame may claim to hold when read back (a bound
/// against corrupt objects, far above any change event).
const MAX_RAW: u64 = 1 << 30;

/// The most bytes a frame may hold per byte of frame (above
/// [`MIN_CONTENT_BOUND`]). zstd reaches 32,768 on a run of one byte, so a
/// 32 KiB object could otherwise claim a gibibyte: a frame is written only
/// within this ratio (else the bytes are stored as they are) and read only
/// within it, so what an object makes a reader allocate is bounded by the
/// object's own size.
const MAX_RATIO: u64 = 256;

/// What any frame may hold, however small.
const MIN_CONTENT_BOUND: u64 = 1 << 20;

/// The most bytes a frame of `frame_len` bytes may hold.
fn content_bound(frame_len: usize) -> u64 {
    (frame_len as u64)
        .saturating_mul(MAX_RATIO)
        .clamp(MIN_CONTENT_BOUND, MAX_RAW)
}

thread_local! {
    static CCTX: RefCell<Option<CCtx<'static>>> = RefCell::new(CCtx::try_create());
    static DCTX: RefCell<Option<DCtx<'static>>> = RefCell::new(DCtx::try_create());
}

/// The id a zstd dictionary declares; `None` if the bytes are not one.
pub(crate) fn dictionary_id(dictionary: &[u8]) -> Option<u32> {
    zstd_safe::get_dict_id_from_dict(dictionary).map(|id| id.get())
}

/// One frame of `bytes`, made by `run` with this thread's context, if it
/// is smaller than `bytes`.
fn compress_with(
    bytes: &[u8],
    run: impl FnOnce(&mut CCtx<'static>, &mut Vec<u8>) -> zstd_safe::SafeResult,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(bytes.len()));
    let written = CCTX.with(|cctx| cctx.borrow_mut().as_mut().map(|cctx| run(cctx, &mut out)));
    match written {
        Some(Ok(_)) if out.len() < bytes.len() && bytes.len() as u64 <= content_bound(out.len()) => Some(out),
        _ => None,
    }
}

/// The content of one frame, decompressed by `run` with this thread's
/// context; the size the frame states is checked and bounded.
fn decompress_with(
    frame: &[u8],
    run: impl FnOnce(&mut DCtx<'static>, &mut Vec<u8>) -> zstd_safe::SafeResult,
) -> Result<Vec<u8>, String> {
    let size = zstd_safe::get_frame_content_size(frame)
        .map_err(|_| "not a zstd frame".to_owned())?
        .ok_or_else(|| "the zstd frame does not state its size".to_owned())?;
    if size > content_bound(frame.len()) {
        return Err(format!(
            "the zstd frame of {} bytes claims {size} bytes (at most {} read from a frame of its size)",
            frame.len(),
            content_bound(frame.len())
        ));
    }
    let mut out = Vec::with_capacity(size as usize);
    let result = DCTX.with(|dctx| dctx.borrow_mut().as_mut().map(|dctx| run(dctx, &mut out)));
    match result {
        Some(Ok(n)) if n as u64 == size => Ok(out),
        Some(Ok(n)) => Err(format!(
            "the zstd frame holds {n} bytes, not the {size} it states"
        )),
        Some(Err(code)) => Err(format!("zstd: {}", zstd_safe::get_error_name(code))),
        None => Err("zstd could not allocate a decompression context".to_owned()),
    }
}

/// `bytes` as one zstd frame (no dictionary), if that is smaller.
///
/// The frame is sized to its content: it is stored as it is (an audit
/// batch), and the buffer it was written into was sized for the worst case.
pub(crate) fn compress(bytes: &[u8], level: i32) -> Option<Vec<u8>> {
    let mut frame = compress_with(bytes, |cctx, out| cctx.compress(out, bytes, level))?;
    frame.shrink_to_fit();
    Some(frame)
}

/// The content of one zstd frame made by [`compress`].
pub(crate) fn decompress(frame: &[u8]) -> Result<Vec<u8>, String> {
    decompress_with(frame, |dctx, out| dctx.decompress(out, frame))
}

/// A trained dictionary, prepared for compression.
pub(crate) struct Encoder {
    pub(crate) id: u32,
    cdict: CDict<'static>,
}

impl Encoder {
    /// Prepares a dictionary (its bytes as stored); `None` if they are not
    /// a zstd dictionary.
    pub(crate) fn new(dictionary: &[u8], level: i32) -> Option<Self> {
        let id = dictionary_id(dictionary)?;
        let cdict = CDict::try_create(dictionary, level)?;
        Some(Self { id, cdict })
    }

    /// The frame of `raw` against this dictionary, if it is smaller than `raw`.
    pub(crate) fn compress(&self, raw: &[u8]) -> Option<Vec<u8>> {
        compress_with(raw, |cctx, out| cctx.compress_using_cdict(out, raw, &self.cdict))
    }
}

/// A dictionary prepared for decompression.
pub(crate) struct Decoder(DDict<'static>);

impl Decoder {
    /// Prepares a dictionary that must have id `id`.
    pub(crate) fn new(dictionary: &[u8], id: u32) -> Result<Self, String> {
        match dictionary_id(dictionary) {
            Some(found) if found == id => {}
            Some(found) => return Err(format!("it holds dictionary {found}, not {id}")),
            None => return Err("it is not a zstd dictionary".to_owned()),
        }
        DDict::try_create(dictionary)
            .map(Self)
            .ok_or_else(|| "zstd could not load it".to_owned())
    }

    /// The content of `frame`.
    pub(crate) fn decompress(&self, frame: &[u8]) -> Result<Vec<u8>, String> {
        decompress_with(frame, |dctx, out| {
            dctx.decompress_using_ddict(out, frame, &self.0)
        })
    }
}

/// Where a source's writer stands.
enum Writer {
    /// Collecting training samples.
    Sampling { data: Vec<u8>, sizes: Vec<usize> },
    /// Training (or storing) its dictionary.
    Training,
    /// Compressing against a dictionary.
    Ready(Arc<Encoder>),
    /// Training failed: this process stores the source's events as received.
    Off,
}

/// What a batch's source needs from the store before its events are
/// encoded.
pub(crate) enum Step {
    /// Compress with this dictionary, or store as received.
    Use(Option<Arc<Encoder>>),
    /// Look for a dictionary stored by an earlier run.
    Load,
    /// Train a dictionary on these samples.
    Train { data: Vec<u8>, sizes: Vec<usize> },
}

/// The compression state of one store: each source's writer and the
/// dictionaries read so far.
#[derive(Default)]
pub(crate) struct Dictionaries {
    writers: Mutex<HashMap<SourceId, Writer>>,
    readers: RwLock<HashMap<(SourceId, u32), Arc<Decoder>>>,
    /// Trainings running in the background.
    training: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for Dictionaries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let readers = self.readers.read().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("Dictionaries").field("loaded", &readers).finish()
    }
}

impl Dictionaries {
    /// Decides what `source` needs before `docs` (its events of one batch)
    /// are stored, taking them as samples while it is collecting them.
    pub(crate) fn step(&self, source: &SourceId, docs: &[UpdateDocument], options: &ZstdOptions) -> Step {
        let Ok(mut writers) = self.writers.lock() else {
            return Step::Use(None);
        };
        let Some(writer) = writers.get_mut(source) else {
            // Marked as sampling now, so a concurrent batch does not load too.
            writers.insert(
                source.clone(),
                Writer::Sampling {
                    data: Vec::new(),
                    sizes: Vec::new(),
                },
            );
            return Step::Load;
        };
        match writer {
            Writer::Ready(encoder) => Step::Use(Some(encoder.clone())),
            Writer::Training | Writer::Off => Step::Use(None),
            Writer::Sampling { data, sizes } => {
                for doc in docs.iter().filter(|d| d.source == *source) {
                    if data.len() >= options.training_bytes {
                        break;
                    }
                    // Trained on what is compressed: the event with its metadata.
                    let sample = codec::sealed_update(doc).encode_to_vec();
                    if sample.len() <= MAX_SAMPLE {
                        data.extend_from_slice(&sample);
                        sizes.push(sample.len());
                    }
                }
                if data.len() < options.training_bytes {
                    return Step::Use(None);
                }
                let data = std::mem::take(data);
                let sizes = std::mem::take(sizes);
                *writer = Writer::Training;
                Step::Train { data, sizes }
            }
        }
    }

    /// Records the dictionary `source` compresses against from now on
    /// (loaded or trained); `None` after a failed training: stored as
    /// received until the next run.
    pub(crate) fn settle(&self, source: &SourceId, encoder: Option<Arc<Encoder>>) {
        if let Ok(mut writers) = self.writers.lock() {
            writers.insert(source.clone(), encoder.map_or(Writer::Off, Writer::Ready));
        }
    }

    /// Keeps a background training, so that it can be waited for.
    pub(crate) fn add_training(&self, training: tokio::task::JoinHandle<()>) {
        if let Ok(mut running) = self.training.lock() {
            running.retain(|t| !t.is_finished());
            running.push(training);
        }
    }

    /// The background trainings not waited for yet.
    pub(crate) fn take_training(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.training
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }

    /// A dictionary read before.
    pub(crate) fn decoder(&self, source: &SourceId, id: u32) -> Option<Arc<Decoder>> {
        self.readers.read().ok()?.get(&(source.clone(), id)).cloned()
    }

    /// Remembers a dictionary read from the store.
    pub(crate) fn add_decoder(&self, source: &SourceId, id: u32, decoder: Arc<Decoder>) {
        if let Ok(mut readers) = self.readers.write() {
            readers.insert((source.clone(), id), decoder);
        }
    }
}

/// Trains a dictionary of at most `max_bytes` on samples.
pub(crate) fn train(data: &[u8], sizes: &[usize], max_bytes: usize) -> Result<Vec<u8>, String> {
    zstd::dict::from_continuous(data, sizes, max_bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut data = Vec::new();
        let mut sizes = Vec::new();
        for i in 0..n {
            let event = format!(
                r#"{{"op":"u","after":{{"id":{i},"transfer_id":"t-{:06}","amount_minor":{},"currency":"EUR","state":"{}"}},"source":{{"lsn":{}}}}}"#,
                i * 7 % 1000,
                i * 31 % 10_000,
                ["pending", "settled", "rejected"][i % 3],
                1000 + i
            );
            data.extend_from_slice(event.as_bytes());
            sizes.push(event.len());
        }
        (data, sizes)
    }

    #[test]
    fn a_trained_dictionary_round_trips_and_shrinks_events() {
        let (data, sizes) = samples(2000);
        let dictionary = train(&data, &sizes, 4096).expect("enough samples to train");
        let encoder = Encoder::new(&dictionary, 1).expect("a dictionary");
        let decoder = Decoder::new(&dictionary, encoder.id).expect("same dictionary");
        let event = &data[..sizes[0]];
        let frame = encoder.compress(event).expect("compressible");
        assert!(
            frame.len() * 2 < event.len(),
            "{} of {}",
            frame.len(),
            event.len()
        );
        assert_eq!(decoder.decompress(&frame).expect("round trip"), event);
    }

    #[test]
    fn wrong_dictionaries_and_broken_frames_are_errors() {
        let (data, sizes) = samples(2000);
        let dictionary = train(&data, &sizes, 4096).expect("enough samples to train");
        let encoder = Encoder::new(&dictionary, 1).expect("a dictionary");
        let err = Decoder::new(&dictionary, encoder.id.wrapping_add(1)).err();
        assert!(err.is_some_and(|e| e.contains("holds dictionary")));
        assert!(Decoder::new(b"not a dictionary", 7).is_err());
        let decoder = Decoder::new(&dictionary, encoder.id).expect("same dictionary");
        let frame = encoder.compress(&data[..sizes[0]]).expect("compressible");
        let truncated = decoder.decompress(&frame[..frame.len() - 3]);
        assert!(truncated.is_err());
        assert!(
            decoder
                .decompress(b"{\"plain\":1}")
                .is_err_and(|e| e.contains("not a zstd frame"))
        );
    }

    #[test]
    fn too_few_samples_are_a_training_error_not_a_panic() {
        let (data, sizes) = samples(1);
        assert!(train(&data, &sizes, 4096).is_err());
        assert!(train(&[], &[], 4096).is_err());
        assert!(train(&data, &[sizes[0] + 1], 4096).is_err());
    }

    #[test]
    fn incompressible_events_are_kept_as_received() {
        let (data, sizes) = samples(2000);
        let dictionary = train(&data, &sizes, 4096).expect("enough samples to train");
        let encoder = Encoder::new(&dictionary, 1).expect("a dictionary");
        assert!(encoder.compress(b"x").is_none());
    }

    #[test]
    fn a_plain_frame_round_trips_and_holds_no_spare_capacity() {
        let (data, _) = samples(200);
        let frame = compress(&data, 1).expect("repetitive samples compress");
        assert!(frame.len() < data.len() / 2, "{} of {}", frame.len(), data.len());
        // The frame is stored as it is: its buffer must not keep the room
        // reserved for the worst case.
        assert_eq!(frame.capacity(), frame.len());
        assert_eq!(decompress(&frame).expect("a valid frame"), data);
    }
}
