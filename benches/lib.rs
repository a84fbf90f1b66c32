//! Shared helpers for the benchmarks: realistic MongoDB change events of a
//! payments `transfers` collection, generated deterministically.

use bytes::Bytes;

/// A small deterministic PRNG (SplitMix64), so runs are reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// `n` MongoDB change events (relaxed Extended JSON v2) of a `transfers`
/// collection: each transfer is inserted, then updated four times (dotted
/// paths, an array element, a removed field), 20 transfers in flight at a
/// time. `records` bounds the number of distinct transfers (the rest of the
/// events update existing ones), so a record can get many updates.
pub fn mongo_events(n: usize, seed: u64) -> impl Iterator<Item = Bytes> {
    let mut rng = Rng::new(seed);
    let start_ms: i64 = 1_700_000_000_000;
    (0..n).map(move |i| {
        let transfer = i / 5;
        let step = i % 5;
        let ms = start_ms + i as i64 * 3;
        let (t, inc) = (ms / 1000, (ms % 1000) as u64 + 1);
        let id = format!("tr-{transfer:08}");
        let head = format!(
            r#"{{"_id":{{"_data":"82{t:08X}{inc:08X}2B042C0100296E5A1004"}},"operationType":"{op}","clusterTime":{{"$timestamp":{{"t":{t},"i":{inc}}}}},"wallTime":{{"$date":"{wall}"}},"ns":{{"db":"payments","coll":"transfers"}},"documentKey":{{"_id":"{id}"}}"#,
            op = if step == 0 { "insert" } else { "update" },
            wall = iso(ms),
        );
        let body = match step {
            0 => format!(
                r#","fullDocument":{{"_id":"{id}","user_id":"u-{user:06}","amount":{{"$numberDecimal":"{units}.{cents:02}"}},"currency":"USD","status":"created","channel":"card","meta":{{"ip":"10.1.{a}.{b}","region":"eu-west-1","attempt":1}},"status_history":[{{"status":"created","at":{{"$date":"{wall}"}}}}],"created_at":{{"$date":"{wall}"}},"updated_at":{{"$date":"{wall}"}}}}}}"#,
                user = rng.below(50_000),
                units = rng.below(5_000),
                cents = rng.below(100),
                a = rng.below(256),
                b = rng.below(256),
                wall = iso(ms),
            ),
            1 => format!(
                r#","updateDescription":{{"updatedFields":{{"status":"processing","status_history.1":{{"status":"processing","at":{{"$date":"{wall}"}}}},"updated_at":{{"$date":"{wall}"}}}},"removedFields":[],"truncatedArrays":[]}}}}"#,
                wall = iso(ms)
            ),
            2 => format!(
                r#","updateDescription":{{"updatedFields":{{"meta.attempt":2,"meta.risk_score":{score},"updated_at":{{"$date":"{wall}"}}}},"removedFields":["meta.ip"],"truncatedArrays":[]}}}}"#,
                score = rng.below(100),
                wall = iso(ms)
            ),
            3 => format!(
                r#","updateDescription":{{"updatedFields":{{"status":"completed","ledger_tx_id":"lt-{transfer:08}","completed_at":{{"$date":"{wall}"}},"status_history.2":{{"status":"completed","at":{{"$date":"{wall}"}}}}}},"removedFields":[],"truncatedArrays":[]}}}}"#,
                wall = iso(ms)
            ),
            _ => format!(
                r#","updateDescription":{{"updatedFields":{{"updated_at":{{"$date":"{wall}"}}}},"removedFields":[],"truncatedArrays":[{{"field":"status_history","newSize":2}}]}}}}"#,
                wall = iso(ms)
            ),
        };
        Bytes::from(head + &body)
    })
}

/// `updates` MongoDB change events of ONE transfer: an insert, then updates
/// of its fields, one millisecond apart, starting at the returned time (ms).
pub fn one_record_events(updates: usize) -> (i64, Vec<Bytes>) {
    let start_ms: i64 = 1_700_000_000_000;
    let events = (0..updates)
        .map(|i| {
            let ms = start_ms + i as i64;
            let (t, inc) = (ms / 1000, (ms % 1000) as u64 + 1);
            let head = format!(
                r#"{{"_id":{{"_data":"82{t:08X}{inc:08X}"}},"operationType":"{op}","clusterTime":{{"$timestamp":{{"t":{t},"i":{inc}}}}},"wallTime":{{"$date":"{wall}"}},"ns":{{"db":"payments","coll":"transfers"}},"documentKey":{{"_id":"tr-hot"}}"#,
                op = if i == 0 { "insert" } else { "update" },
                wall = iso(ms),
            );
            let body = if i == 0 {
                r#","fullDocument":{"_id":"tr-hot","status":"created","n":0,"meta":{"attempt":0}}}"#.to_owned()
            } else {
                format!(r#","updateDescription":{{"updatedFields":{{"n":{i},"meta.attempt":{i}}},"removedFields":[],"truncatedArrays":[]}}}}"#)
            };
            Bytes::from(head + &body)
        })
        .collect();
    (start_ms, events)
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_and_iso_dates_are_right() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        for e in mongo_events(10, 1).chain(one_record_events(3).1) {
            let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
            assert!(v.get("documentKey").is_some());
        }
    }
}
