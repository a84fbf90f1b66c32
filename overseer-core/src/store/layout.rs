//! Key encoding of the store layout (documented in `docs/store-layout.md`).
//!
//! Every name that comes from the outside world (models, record ids, sources,
//! field names) is encoded into exactly one key segment that
//! `object_store` never re-encodes and that can never be `.` or `..`:
//!
//! * bytes in `[A-Za-z0-9_.-]` are kept, except a leading `.`;
//! * every other byte is written `+XX` (two uppercase hex digits);
//! * if the result is longer than [`MAX_SEGMENT`] bytes, the segment is
//!   `+H` followed by the 64 hex digits of the SHA-256 of the raw name
//!   (`H` is not a hex digit, so the two forms cannot collide).

use std::borrow::Cow;

use sha2::{Digest, Sha256};

/// The longest encoded segment kept readable; longer names are hashed, which
/// keeps every segment well under the 255-byte file name limit of local
/// file systems.
pub const MAX_SEGMENT: usize = 120;

/// The top-level directories (key prefixes) of a store, one per area of
/// the layout: a directory that holds none of them is not a store.
pub const AREAS: [&str; 8] = [
    "updates",
    "dictionaries",
    "refs",
    "referrers",
    "dead-letters",
    "sources",
    "audit",
    "incidents",
];

/// Encodes one untrusted name into a safe key segment: the name itself
/// when it needs no escaping (the common case, which allocates nothing).
///
/// ```
/// use overseer_core::store::layout::encode_segment;
/// assert_eq!(encode_segment("42"), "42");
/// assert_eq!(encode_segment("a/b"), "a+2Fb");
/// assert_eq!(encode_segment(".."), "+2E.");
/// assert!(encode_segment(&"x".repeat(1000)).starts_with("+H"));
/// ```
pub fn encode_segment(name: &str) -> Cow<'_, str> {
    let keep = |i: usize, b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
    if name.len() <= MAX_SEGMENT && name.bytes().enumerate().all(|(i, b)| keep(i, b)) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if keep(i, b) {
            out.push(char::from(b));
        } else {
            out.push('+');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0x0f));
        }
        if out.len() > MAX_SEGMENT {
            return Cow::Owned(format!("+H{}", hex(&Sha256::digest(name.as_bytes()))));
        }
    }
    Cow::Owned(out)
}

/// Decodes a segment written by [`encode_segment`]; `None` for a hashed
/// segment (whose name is kept in the object's body) or a malformed one.
pub fn decode_segment(segment: &str) -> Option<String> {
    if segment.starts_with("+H") {
        return None;
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hi = from_hex(*bytes.get(i + 1)?, UPPER_HEX)?;
            let lo = from_hex(*bytes.get(i + 2)?, UPPER_HEX)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The first 128 bits of the SHA-256 of `bytes`, as 32 hex digits.
pub fn short_digest(bytes: &[u8]) -> String {
    let mut digest = String::with_capacity(32);
    push_short_digest(&mut digest, bytes);
    digest
}

/// Appends [`short_digest`] of `bytes` to `out`.
pub(crate) fn push_short_digest(out: &mut String, bytes: &[u8]) {
    push_hex(out, &short_digest_bytes(bytes));
}

/// The digest naming an update object: the first 128 bits of the SHA-256 of
/// its source and position.
pub(crate) fn update_digest(source: &str, position: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0u8]);
    h.update(position.as_bytes());
    first_128_bits(h)
}

/// Appends the file name of a record's object to `out`: a time in
/// microseconds (20 digits, so that names sort by time; negative times as
/// 0), a dash, a 128-bit digest in hex and `.pb`. An update is named by its
/// commit time and the [`update_digest`] of its source and position; a
/// reference list by its earliest entry's time and the [`short_digest`] of
/// its bytes.
pub(crate) fn push_object_file_name(out: &mut String, micros: i64, digest: &[u8; 16]) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros.max(0));
    out.extend(std::iter::repeat_n('0', 20usize.saturating_sub(digits.len())));
    out.push_str(digits);
    out.push('-');
    push_hex(out, digest);
    out.push_str(".pb");
}

/// The first 128 bits of the SHA-256 of `bytes`: what [`short_digest`]
/// writes in hex.
pub(crate) fn short_digest_bytes(bytes: &[u8]) -> [u8; 16] {
    first_128_bits(Sha256::new_with_prefix(bytes))
}

/// The first 128 bits of what `h` has hashed.
fn first_128_bits(h: Sha256) -> [u8; 16] {
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&h.finalize()[..16]);
    digest
}

/// Reads the [`update_digest`] back from an update object's key (or file
/// name).
pub(crate) fn update_digest_of(path: &str) -> Option<[u8; 16]> {
    let hex = path.strip_suffix(".pb")?;
    let hex = hex.get(hex.len().checked_sub(32)?..)?.as_bytes();
    let mut digest = [0u8; 16];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let &[hi, lo] = pair else { return None };
        *byte = from_hex(hi, LOWER_HEX)? << 4 | from_hex(lo, LOWER_HEX)?;
    }
    Some(digest)
}

/// Reads the commit time back from an update object's file name.
pub(crate) fn commit_micros_of(file_name: &str) -> Option<i64> {
    file_name.get(..20)?.parse().ok()
}

/// Hex digits of escapes in segments ([`encode_segment`]).
const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";
/// Hex digits of digests ([`push_hex`]).
const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_digit(n: u8) -> char {
    char::from(UPPER_HEX[usize::from(n & 0x0f)])
}

/// The value of the hex digit `c` among `digits` (one case only).
fn from_hex(c: u8, digits: &[u8; 16]) -> Option<u8> {
    digits
        .iter()
        .position(|&d| d == c)
        .and_then(|v| u8::try_from(v).ok())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends `bytes` as lower-case hex, two digits a byte.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(char::from(LOWER_HEX[usize::from(b >> 4)]));
        out.push(char::from(LOWER_HEX[usize::from(b & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update_file_name(commit_micros: i64, source: &str, position: &str) -> String {
        let mut name = String::new();
        push_object_file_name(&mut name, commit_micros, &update_digest(source, position));
        name
    }

    #[test]
    fn hostile_names_round_trip_and_stay_in_one_safe_segment() {
        let names = [
            "..",
            ".",
            "a/../../etc/passwd",
            "%2F",
            "with space",
            "tab\tnew\nline\0nul",
            "emoji 🦀",
            "+2F",
            "+H00",
            "C:\\windows",
            "~user",
            "a.b",
        ];
        for name in names {
            let seg = encode_segment(name);
            assert!(seg != "." && seg != "..", "{name:?} -> {seg:?}");
            assert!(
                seg.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-+".contains(&b)),
                "{name:?} -> {seg:?}"
            );
            assert!(!seg.starts_with('.'), "{name:?} -> {seg:?}");
            assert_eq!(decode_segment(&seg).as_deref(), Some(name), "{seg}");
        }
    }

    #[test]
    fn long_names_are_hashed_and_distinct() {
        let a = "x".repeat(1024);
        let b = format!("{}y", "x".repeat(1023));
        assert!(encode_segment(&a).len() <= MAX_SEGMENT);
        assert_ne!(encode_segment(&a), encode_segment(&b));
        assert_eq!(decode_segment(&encode_segment(&a)), None);
    }

    #[test]
    fn file_names_write_the_time_as_twenty_digits() {
        let digest = [0xab; 16];
        for micros in [0, 7, 1_700_000_000_000_000, i64::MAX] {
            let mut name = String::new();
            push_object_file_name(&mut name, micros, &digest);
            assert_eq!(name, format!("{micros:020}-{}.pb", "ab".repeat(16)));
        }
        let mut name = String::new();
        push_object_file_name(&mut name, -5, &digest);
        assert!(name.starts_with("00000000000000000000-"), "{name}");
        assert_eq!(hex(&short_digest_bytes(b"list")), short_digest(b"list"));
    }

    #[test]
    fn update_file_names_sort_by_time() {
        let a = update_file_name(5, "s", "p");
        let b = update_file_name(40, "s", "a");
        assert!(a < b);
        assert_eq!(commit_micros_of(&b), Some(40));
    }

    #[test]
    fn an_update_s_digest_reads_back_from_its_key() {
        let digest = update_digest("ledger", "0/16B3748");
        let mut key = String::from("updates/ledger_entries/7/");
        push_object_file_name(&mut key, 1_700_000_000_000_000, &digest);
        assert_eq!(update_digest_of(&key), Some(digest));
        assert_eq!(
            update_digest_of(&update_file_name(5, "ledger", "0/16B3748")),
            Some(digest)
        );
        for not_an_update in [
            "",
            ".pb",
            "updates/x/y/short.pb",
            "refs/x/y/00000000000000000005-0123.pb",
        ] {
            assert_eq!(update_digest_of(not_an_update), None, "{not_an_update}");
        }
        let upper = key.to_uppercase().replace(".PB", ".pb");
        assert_eq!(update_digest_of(&upper), None);
    }
}
