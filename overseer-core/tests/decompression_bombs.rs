//! A small compressed object (an update, an audit batch) whose zstd
//! frame expands to a gibibyte. Reading it must stay bounded by what the
//! object justifies: a typed error, not a gibibyte allocation per object.
//!
//! Peak memory is read from `/proc/self/status` (Linux only).
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use bytes::Bytes;
use overseer_core::object_store::path::Path;
use overseer_core::object_store::{ObjectStoreExt, PutPayload};
use overseer_core::testing::LinesConsumer;
use overseer_core::{Compression, Dal, Error, RecordKey, Store, Timestamp, proto};
use prost::Message;

/// This process's peak resident set (VmHWM), in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// How far the peak resident set grows while `f` runs.
async fn peak_during<T>(f: impl Future<Output = T>) -> (T, usize) {
    // Resets VmHWM to the current resident set.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let base = peak_rss();
    let out = f.await;
    (out, peak_rss() - base)
}

/// Just under the 1 GiB a frame may claim.
const GIB: u64 = (1 << 30) - 4096;
const BLOCK: u64 = 128 * 1024;

/// One zstd frame (no dictionary id, 1 MiB window) stating its content
/// size, holding `prefix`, then `fill_len` bytes `fill` as RLE blocks,
/// then `suffix`. A gibibyte of fill takes 32 KiB.
fn frame(prefix: &[u8], fill: u8, fill_len: u64, suffix: &[u8]) -> Vec<u8> {
    let total = prefix.len() as u64 + fill_len + suffix.len() as u64;
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0xC0, 10 << 3];
    f.extend_from_slice(&total.to_le_bytes());
    let header = |f: &mut Vec<u8>, last: bool, kind: u32, size: u64| {
        let v = u32::from(last) | kind << 1 | (size as u32) << 3;
        f.extend_from_slice(&v.to_le_bytes()[..3]);
    };
    header(&mut f, false, 0, prefix.len() as u64);
    f.extend_from_slice(prefix);
    let mut left = fill_len;
    while left > 0 {
        let n = left.min(BLOCK);
        header(&mut f, false, 1, n);
        f.push(fill);
        left -= n;
    }
    header(&mut f, true, 0, suffix.len() as u64);
    f.extend_from_slice(suffix);
    f
}

/// A field header (tag and length) of a length-delimited protobuf field.
fn len_field(field: u32, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(len, &mut out);
    out
}

#[tokio::test(flavor = "current_thread")]
async fn a_32_kib_update_expanding_to_a_gibibyte_is_refused() {
    let store = Store::in_memory().with_compression(Compression::None);
    // A genuine dictionary of the source.
    let samples: Vec<u8> = (0..2000).flat_map(|i| format!("a {i}\n").into_bytes()).collect();
    let sizes: Vec<usize> = (0..2000).map(|i| format!("a {i}\n").len()).collect();
    let dictionary = zstd::dict::from_continuous(&samples, &sizes, 4096).unwrap();
    let id = u32::from_le_bytes(dictionary[4..8].try_into().unwrap());
    let dict_path = Path::from(format!("dictionaries/app/{id:010}.zdict").as_str());
    store
        .object_store()
        .put(&dict_path, PutPayload::from(dictionary))
        .await
        .unwrap();

    // A sealed update of `lines/a` whose raw event is "a " and a gibibyte of '1'.
    let rest = proto::SealedUpdate {
        raw: Bytes::new(),
        key: Some(proto::RecordKey {
            model: "lines".into(),
            id: "a".into(),
        }),
        position: "p".into(),
        format: "lines".into(),
        references: vec![],
    }
    .encode_to_vec();
    let mut prefix = len_field(1, 2 + GIB);
    prefix.extend_from_slice(b"a ");
    let sealed = frame(&prefix, b'1', GIB, &rest);
    assert!(sealed.len() < 40 * 1024, "{}", sealed.len());
    let envelope = proto::UpdateEnvelope {
        version: 3,
        source: "app".into(),
        commit_time_micros: 1_000_000,
        ingested_at_micros: 1_000_000,
        operation: proto::Operation::Insert.into(),
        raw_dictionary: id,
        sealed: Bytes::from(sealed),
        ..Default::default()
    };
    let key = RecordKey::new("lines", "a").unwrap();
    // Named as the store names it: the digest of its source and position.
    use sha2::Digest;
    let digest = sha2::Sha256::digest(b"app\0p");
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let path = format!("updates/lines/a/00000000000001000000-{hex}.pb");
    store
        .object_store()
        .put(
            &Path::from(path.as_str()),
            PutPayload::from(envelope.encode_to_vec()),
        )
        .await
        .unwrap();

    let dal = Dal::new(store.clone()).with_builder(LinesConsumer);
    let (result, peak) = peak_during(dal.history(&key, Timestamp::MAX)).await;
    let object_bytes = envelope.encoded_len();
    assert!(
        peak < 64 << 20,
        "reading one {object_bytes}-byte update grew the peak resident set by {peak} bytes ({:?})",
        result.map(|h| h.len())
    );
    assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_32_kib_audit_batch_expanding_to_a_gibibyte_is_refused() {
    let store = Store::in_memory();
    // An audit batch of one record whose message is a gibibyte of 'x'.
    let record_rest = proto::AuditRecord {
        check: "c".into(),
        root: Some(proto::RecordKey {
            model: "m".into(),
            id: "i".into(),
        }),
        trigger_key: Some(proto::RecordKey {
            model: "m".into(),
            id: "i".into(),
        }),
        trigger_source: "s".into(),
        verdict: proto::VerdictKind::Fail.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let message = len_field(9, GIB); // AuditRecord.message
    let record_len = record_rest.len() as u64 + message.len() as u64 + GIB;
    let mut prefix = len_field(1, record_len); // AuditBatch.records
    prefix.extend_from_slice(&record_rest);
    prefix.extend_from_slice(&message);
    let bomb = frame(&prefix, b'x', GIB, b"");
    assert!(bomb.len() < 40 * 1024, "{}", bomb.len());
    let path = Path::from("audit/c/00000000000001000000-00000000000000000000000000000000.pb.zst");
    store
        .object_store()
        .put(&path, PutPayload::from(bomb.clone()))
        .await
        .unwrap();

    let (result, peak) = peak_during(store.audit(None, None)).await;
    assert!(
        peak < 64 << 20,
        "reading one {}-byte audit batch grew the peak resident set by {peak} bytes ({:?})",
        bomb.len(),
        result.map(|a| a.iter().map(|e| e.message.len()).collect::<Vec<_>>())
    );
    assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
}
