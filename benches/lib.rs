//! Shared helpers for the benchmarks: realistic MongoDB change events of a
//! payments `transfers` collection, generated deterministically.

use bytes::Bytes;

/// The deterministic generator of the `payments` simulation (SplitMix64).
pub use overseer_examples::payments::sim::Rng;

fn iso(ms: i64) -> String {
    overseer_examples::payments::sim::iso_millis(ms * 1000)
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
    record_events(
        "tr-hot",
        updates,
        r#"{"_id":"tr-hot","status":"created","n":0,"meta":{"attempt":0}}"#,
        |i| format!(r#"{{"n":{i},"meta.attempt":{i}}}"#),
    )
}

/// The change stream of one `transfers` record `id`, one event per
/// millisecond: an insert of `document` (its JSON text), then `updates - 1`
/// updates whose `updatedFields` are `fields(i)` (JSON text), for `i` from 1.
/// Returns the first event's time in milliseconds, and the events.
pub fn record_events(
    id: &str,
    updates: usize,
    document: &str,
    fields: impl Fn(usize) -> String,
) -> (i64, Vec<Bytes>) {
    let start_ms: i64 = 1_700_000_000_000;
    let events = (0..updates)
        .map(|i| {
            let ms = start_ms + i as i64;
            let (t, inc) = (ms / 1000, (ms % 1000) as u64 + 1);
            let head = format!(
                r#"{{"_id":{{"_data":"82{t:08X}{inc:08X}"}},"operationType":"{op}","clusterTime":{{"$timestamp":{{"t":{t},"i":{inc}}}}},"wallTime":{{"$date":"{wall}"}},"ns":{{"db":"payments","coll":"transfers"}},"documentKey":{{"_id":"{id}"}}"#,
                op = if i == 0 { "insert" } else { "update" },
                wall = iso(ms),
            );
            let body = if i == 0 {
                format!(r#","fullDocument":{document}}}"#)
            } else {
                format!(
                    r#","updateDescription":{{"updatedFields":{},"removedFields":[],"truncatedArrays":[]}}}}"#,
                    fields(i)
                )
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
