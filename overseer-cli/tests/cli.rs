//! The `overseer` binary, run on temporary stores.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_overseer");

fn overseer(args: &[&str]) -> Output {
    overseer_with_stdin(args, None)
}

fn overseer_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("OVERSEER_STORE")
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the overseer binary runs");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes()).expect("stdin is written");
    }
    child.wait_with_output().expect("the overseer binary ends")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("the process exited")
}

#[track_caller]
fn assert_code(o: &Output, expected: i32) {
    assert_eq!(
        code(o),
        expected,
        "exit code; stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

fn write_file(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("input is written");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// The `label: N` lines of an ingest summary.
fn summary(o: &Output) -> Vec<(String, u64)> {
    stdout(o)
        .lines()
        .map(|l| {
            let (label, n) = l.split_once(':').expect("summary lines are `label: N`");
            (label.to_owned(), n.trim().parse().expect("counts are numbers"))
        })
        .collect()
}

fn counts(read: u64, stored: u64, duplicates: u64, dead: u64, control: u64) -> Vec<(String, u64)> {
    [
        ("events read", read),
        ("updates stored", stored),
        ("duplicates skipped", duplicates),
        ("dead-lettered", dead),
        ("control events", control),
    ]
    .into_iter()
    .map(|(l, n)| (l.to_owned(), n))
    .collect()
}

const TRANSFERS: [&str; 4] = [
    r#"{"id": "t-1", "status": "pending", "amount": 10, "updated_at": "2024-05-01T12:00:00Z"}"#,
    r#"{"id": "t-2", "status": "pending", "amount": 20, "updated_at": "2024-05-01T12:01:00Z"}"#,
    "this is not json",
    r#"{"id": "t-1", "status": "done", "amount": 10, "updated_at": "2024-05-01T12:05:00Z"}"#,
];

/// Ingests `lines` as json `transfers` into `store`.
fn ingest_transfers(store: &Path, dir: &Path, lines: &[&str]) -> Output {
    let file = write_file(dir, "transfers.jsonl", lines);
    overseer(&[
        "ingest",
        "--store",
        s(store),
        "--format",
        "json",
        "--model",
        "transfers",
        s(&file),
    ])
}

// ---------------------------------------------------------------- help

#[test]
fn help_lists_commands_and_exit_codes() {
    let o = overseer(&["--help"]);
    assert_code(&o, 0);
    let text = stdout(&o);
    for word in [
        "ingest",
        "view",
        "history",
        "dead-letters",
        "audit",
        "check audit",
        "--verbose",
        "Exit codes",
        "0 ",
        "1 ",
        "2 ",
    ] {
        assert!(text.contains(word), "{word:?} missing from:\n{text}");
    }
}

#[test]
fn help_of_every_command() {
    let cases: [(&str, &[&str]); 4] = [
        (
            "ingest",
            &[
                "--store",
                "--format",
                "--model",
                "--source",
                "--ref",
                "--key-column",
                "--id-field",
                "--time-field",
                "--batch-size",
                "--json",
                "mongo",
                "wal2json",
                "pgoutput",
                "debezium",
                "stdin",
                "Exit codes",
            ],
        ),
        (
            "view",
            &["--store", "--at", "--compact", "RFC 3339", "Exit codes"],
        ),
        ("history", &["--store", "--json", "Exit codes"]),
        ("dead-letters", &["--store", "--json", "200", "Exit codes"]),
    ];
    for (command, words) in cases {
        let o = overseer(&[command, "--help"]);
        assert_code(&o, 0);
        let text = stdout(&o);
        for word in words {
            assert!(text.contains(word), "{command}: {word:?} missing from:\n{text}");
        }
        let o = overseer(&["help", command]);
        assert_code(&o, 0);
    }
}

#[test]
fn no_command_is_a_usage_error() {
    assert_code(&overseer(&[]), 2);
    assert_code(&overseer(&["frobnicate"]), 2);
}

// ---------------------------------------------------------------- exit codes, no format needed

#[test]
fn unknown_format_lists_the_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let o = overseer(&["ingest", "--store", s(dir.path()), "--format", "xml", "-"]);
    assert_code(&o, 2);
    let text = stderr(&o);
    for name in ["mongo", "wal2json", "pgoutput", "debezium", "json"] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(stdout(&o).is_empty());
}

#[test]
fn unreadable_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let missing = dir.path().join("no-such-events.jsonl");
    let o = overseer(&["ingest", "--store", s(&store), "--format", "mongo", s(&missing)]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("no-such-events.jsonl"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());

    // A directory is not an input either.
    let o = overseer(&["ingest", "--store", s(&store), "--format", "mongo", s(dir.path())]);
    assert_code(&o, 2);
}

#[test]
fn bad_ingest_arguments_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "e.jsonl", &[]);
    let base = ["ingest", "--store", s(dir.path()), "--format", "mongo"];
    for extra in [
        &["--batch-size", "0"][..],
        &["--batch-size", "many"],
        &["--ref", "owner_id"],
        &["--ref", "=users"],
        &["--ref", "toys -> users"],
        &["--model", ""],
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().chain([s(&file)]).collect();
        let o = overseer(&args);
        assert_code(&o, 2);
    }
    // No file at all.
    assert_code(&overseer(&base), 2);
}

#[test]
fn ingest_creates_a_missing_store_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("a").join("new-store");
    let file = write_file(dir.path(), "empty.jsonl", &["", "   "]);
    let o = overseer(&["ingest", "--store", s(&store), "--format", "mongo", s(&file)]);
    assert_code(&o, 0);
    assert!(store.is_dir());
    assert_eq!(summary(&o), counts(0, 0, 0, 0, 0));

    let o = overseer(&[
        "ingest",
        "--store",
        s(&store),
        "--format",
        "mongo",
        "--json",
        s(&file),
    ]);
    assert_code(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["events_read"], 0);
    assert_eq!(v["inputs"][0]["source"], "empty.jsonl");
}

#[test]
fn view_of_an_empty_store_exits_1_with_nothing_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let o = overseer(&["view", "--store", s(dir.path()), "toys", "t-1"]);
    assert_code(&o, 1);
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("toys/t-1"), "{}", stderr(&o));

    let o = overseer(&["history", "--store", s(dir.path()), "toys", "t-1"]);
    assert_code(&o, 1);
    assert!(stdout(&o).is_empty());

    let o = overseer(&["dead-letters", "--store", s(dir.path())]);
    assert_code(&o, 0);
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("no dead letters"), "{}", stderr(&o));
}

#[test]
fn view_with_a_bad_time_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for at in ["yesterday", "2024-13-01T00:00:00Z", ""] {
        let o = overseer(&["view", "--store", s(dir.path()), "toys", "t-1", "--at", at]);
        assert_code(&o, 2);
        assert!(stdout(&o).is_empty());
    }
}

#[test]
fn read_commands_on_a_missing_store_exit_2_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("typo");
    for args in [
        &["view", "--store", s(&store), "toys", "t-1"][..],
        &["history", "--store", s(&store), "toys", "t-1"],
        &["dead-letters", "--store", s(&store)],
    ] {
        let o = overseer(args);
        assert_code(&o, 2);
        assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    }
    assert!(!store.exists());
}

/// A path that is a file, a directory that is not a store, or a store's own
/// area is an error naming the problem, not an empty answer.
#[test]
fn read_commands_on_what_is_not_a_store_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "events.jsonl", &[r#"{"id":"t-1","updated_at":1}"#]);
    let store = dir.path().join("store");
    let o = ingest_transfers(&store, dir.path(), &[r#"{"id":"t-1","updated_at":1}"#]);
    assert_code(&o, 0);
    let area = store.join("updates");
    let not_a_store = format!("{} is not an Overseer store", s(dir.path()));
    let area_of_a_store = format!("it is the area of a store: pass {}", s(&store));
    let cases: [(&Path, &str); 3] = [
        (&file, "is not a directory"),
        // Holds the input files and the store, but is not itself a store.
        (dir.path(), &not_a_store),
        (&area, &area_of_a_store),
    ];
    for (path, message) in cases {
        for args in [
            &["view", "--store", s(path), "transfers", "t-1"][..],
            &["history", "--store", s(path), "transfers", "t-1"],
            &["dead-letters", "--store", s(path)],
            &["audit", "--store", s(path)],
            &["audit", "--store", s(path), "--incidents"],
        ] {
            let o = overseer(args);
            assert_code(&o, 2);
            assert!(stdout(&o).is_empty(), "{}", stdout(&o));
            let err = stderr(&o);
            assert!(err.contains(message), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
    // A relative area names the current directory.
    let o = Command::new(BIN)
        .args(["audit", "--store", "updates"])
        .current_dir(&store)
        .env_remove("OVERSEER_STORE")
        .output()
        .unwrap();
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains("updates is not an Overseer store") && stderr(&o).contains("pass .)"),
        "{}",
        stderr(&o)
    );
    // The store itself, and an empty directory (an empty store), are read.
    assert_code(
        &overseer(&["history", "--store", s(&store), "transfers", "t-1"]),
        0,
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_code(&overseer(&["audit", "--store", s(&empty)]), 0);
}

#[test]
fn empty_ids_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert_code(&overseer(&["view", "--store", s(dir.path()), "toys", ""]), 2);
    assert_code(&overseer(&["history", "--store", s(dir.path()), "", "t-1"]), 2);
}

// ---------------------------------------------------------------- json format

#[test]
fn json_format_requires_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "t.jsonl", &TRANSFERS[..1]);
    let o = overseer(&["ingest", "--store", s(dir.path()), "--format", "json", s(&file)]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("model"), "{}", stderr(&o));
}

#[test]
fn ingest_counts_and_reingest_stores_only_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let o = ingest_transfers(&store, dir.path(), &TRANSFERS);
    assert_code(&o, 0);
    assert_eq!(summary(&o), counts(4, 3, 0, 1, 0));

    let o = ingest_transfers(&store, dir.path(), &TRANSFERS);
    assert_code(&o, 0);
    assert_eq!(summary(&o), counts(4, 0, 3, 1, 0));

    // In small batches, as JSON.
    let file = dir.path().join("transfers.jsonl");
    let o = overseer(&[
        "ingest",
        "--store",
        s(&store),
        "--format",
        "json",
        "--model",
        "transfers",
        "--batch-size",
        "1",
        "--json",
        s(&file),
    ]);
    assert_code(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["events_read"], 4);
    assert_eq!(v["updates_stored"], 0);
    assert_eq!(v["duplicates_skipped"], 3);
    assert_eq!(v["dead_lettered"], 1);
    assert_eq!(v["control_events"], 0);
}

#[test]
fn malformed_lines_are_dead_lettered_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let long = format!(r#"{{"oops": "{}"}}"#, "x".repeat(300));
    let mut lines = TRANSFERS.to_vec();
    lines.push(&long);
    let o = ingest_transfers(&store, dir.path(), &lines);
    assert_code(&o, 0);
    assert_eq!(summary(&o), counts(5, 3, 0, 2, 0));

    let o = overseer(&["dead-letters", "--store", s(&store)]);
    assert_code(&o, 0);
    let text = stdout(&o);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in &rows {
        assert_eq!(row.len(), 6, "{row:?}");
        assert_eq!(row[1], "transfers.jsonl");
        assert_eq!(row[2], "json");
        assert!(!row[4].is_empty());
    }
    // In the order they arrived in.
    let raws: Vec<&str> = rows.iter().map(|r| r[5]).collect();
    assert_eq!(raws[0], "this is not json", "{raws:?}");
    let cut = raws[1];
    assert!(cut.starts_with("{\"oops\""), "{cut}");
    assert_eq!(cut.chars().count(), 201, "200 characters and an ellipsis: {cut}");

    let o = overseer(&["dead-letters", "--store", s(&store), "--json"]);
    assert_code(&o, 0);
    let letters: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[1]["raw"], long.as_str());
    let indices: Vec<&Value> = letters.iter().map(|l| &l["batch_index"]).collect();
    assert_eq!(indices, [2, 4], "their places in the one batch ingested");
    assert!(
        letters
            .iter()
            .all(|l| l["source"] == "transfers.jsonl" && l["format"] == "json")
    );
}

#[test]
fn view_before_and_after_an_update_and_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut lines = TRANSFERS.to_vec();
    lines.push(r#"{"id": "t-2", "_deleted": true, "updated_at": "2024-05-01T13:00:00Z"}"#);
    assert_code(&ingest_transfers(&store, dir.path(), &lines), 0);

    let view = |id: &str, at: &str| overseer(&["view", "--store", s(&store), "transfers", id, "--at", at]);

    let o = view("t-1", "2024-05-01T11:59:59Z");
    assert_code(&o, 1);
    assert!(stdout(&o).is_empty());

    let o = view("t-1", "2024-05-01T12:00:00Z");
    assert_code(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["status"], "pending");
    assert!(stdout(&o).contains("\n  "), "pretty by default");

    // 12:05 as Unix seconds.
    let o = view("t-1", "1714565100");
    assert_code(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["status"], "done");

    // Default: now.
    let o = overseer(&["view", "--store", s(&store), "transfers", "t-1", "--compact"]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 1);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["status"], "done");

    assert_code(&view("t-2", "2024-05-01T12:30:00Z"), 0);
    let o = view("t-2", "2024-05-01T13:00:00Z");
    assert_code(&o, 1);
    assert!(stdout(&o).is_empty());
    assert_code(&view("t-3", "2024-05-01T13:00:00Z"), 1);
}

#[test]
fn custom_id_and_time_fields() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let file = write_file(
        dir.path(),
        "accounts.jsonl",
        &[
            r#"{"key": "a-1", "ts": 1714564800000, "balance": 5}"#,
            r#"{"key": "a-1", "ts": 1714564860000, "balance": 7}"#,
        ],
    );
    let o = overseer(&[
        "ingest",
        "--store",
        s(&store),
        "--format",
        "json",
        "--model",
        "accounts",
        "--id-field",
        "key",
        "--time-field",
        "ts",
        "--source",
        "ledger",
        s(&file),
    ]);
    assert_code(&o, 0);
    assert_eq!(summary(&o), counts(2, 2, 0, 0, 0));
    let o = overseer(&[
        "view",
        "--store",
        s(&store),
        "accounts",
        "a-1",
        "--at",
        "1714564800",
    ]);
    assert_code(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["balance"], 5);
    let o = overseer(&["history", "--store", s(&store), "accounts", "a-1"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).lines().all(|l| l.split('\t').nth(2) == Some("ledger")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn history_lines_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_code(&ingest_transfers(&store, dir.path(), &TRANSFERS), 0);

    let o = overseer(&["history", "--store", s(&store), "transfers", "t-1"]);
    assert_code(&o, 0);
    let text = stdout(&o);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(rows[0][0], "2024-05-01T12:00:00Z");
    assert_eq!(rows[1][0], "2024-05-01T12:05:00Z");
    for row in &rows {
        assert_eq!(row.len(), 5, "{row:?}");
        assert_eq!(row[2], "transfers.jsonl");
        assert!(!row[3].is_empty());
    }
    let first: Vec<&str> = rows[0][4].split(',').collect();
    assert!(
        first.contains(&"status") && first.contains(&"amount"),
        "{first:?}"
    );
    let second: Vec<&str> = rows[1][4].split(',').collect();
    assert!(second.contains(&"status"), "{second:?}");
    assert!(
        !second.contains(&"amount") && !second.contains(&"id"),
        "{second:?}"
    );

    let o = overseer(&["history", "--store", s(&store), "transfers", "t-1", "--json"]);
    assert_code(&o, 0);
    let entries: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    for key in [
        "commit_time",
        "operation",
        "source",
        "position",
        "changed_fields",
        "ingested_at",
        "format",
        "references",
    ] {
        assert!(entries[0].get(key).is_some(), "{key} missing from {}", entries[0]);
    }
    assert_eq!(entries[1]["commit_time"], "2024-05-01T12:05:00Z");
    assert_eq!(entries[1]["format"], "json");
    assert_eq!(entries[1]["source"], "transfers.jsonl");

    let o = overseer(&["history", "--store", s(&store), "transfers", "t-9"]);
    assert_code(&o, 1);
    assert!(stdout(&o).is_empty());
}

#[test]
fn references_from_ref_flags() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let file = write_file(
        dir.path(),
        "toys.jsonl",
        &[r#"{"id": "t-1", "owner_id": "u-1", "updated_at": "2024-05-01T12:00:00Z"}"#],
    );
    let o = overseer(&[
        "ingest",
        "--store",
        s(&store),
        "--format",
        "json",
        "--model",
        "toys",
        "--ref",
        "owner_id=users",
        s(&file),
    ]);
    assert_code(&o, 0);
    let o = overseer(&["history", "--store", s(&store), "toys", "t-1", "--json"]);
    assert_code(&o, 0);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        v["references"],
        json!([{"field": "owner_id", "model": "users", "id": "u-1"}])
    );
}

#[test]
fn ingest_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let input = TRANSFERS.join("\n");
    let args = [
        "ingest",
        "--store",
        s(&store),
        "--format",
        "json",
        "--model",
        "transfers",
        "-",
    ];
    let o = overseer_with_stdin(&args, Some(&input));
    assert_code(&o, 0);
    assert_eq!(summary(&o), counts(4, 3, 0, 1, 0));
    let o = overseer(&["history", "--store", s(&store), "transfers", "t-2"]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o).split('\t').nth(2), Some("stdin"));
}

// ---------------------------------------------------------------- mongo format

#[test]
fn mongo_view_at_before_and_after_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let file = write_file(
        dir.path(),
        "toys.jsonl",
        &[
            r#"{"_id": "toy-1", "fullDocument": {"_id": "toy-1", "name": "Rex", "type": "car"}, "clusterTime": 1658224073}"#,
            r#"{"_id": "toy-1", "updateDescription": {"updatedFields": {"type": "balloon"}}, "clusterTime": 1658224074}"#,
        ],
    );
    let o = overseer(&[
        "ingest",
        "--store",
        s(&store),
        "--format",
        "mongo",
        "--model",
        "toys",
        s(&file),
    ]);
    assert_code(&o, 0);
    assert_eq!(summary(&o), counts(2, 2, 0, 0, 0));

    let view = |at: &str| overseer(&["view", "--store", s(&store), "toys", "toy-1", "--at", at]);
    let o = view("1658224072");
    assert_code(&o, 1);
    assert!(stdout(&o).is_empty());
    let o = view("1658224073");
    assert_code(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (v["name"].as_str(), v["type"].as_str()),
        (Some("Rex"), Some("car"))
    );
    let o = view("2022-07-19T09:47:54Z");
    assert_code(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (v["name"].as_str(), v["type"].as_str()),
        (Some("Rex"), Some("balloon"))
    );

    let o = overseer(&["history", "--store", s(&store), "toys", "toy-1"]);
    assert_code(&o, 0);
    let rows: Vec<Vec<String>> = stdout(&o)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], "2022-07-19T09:47:53Z");
    assert_eq!(rows[1][1], "update");
    assert_eq!(rows[1][4], "type");
}

#[test]
fn mongo_object_id_records_are_addressed_by_hex() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let event = json!({
        "_id": {"_data": "8264B7F0C2000000012B022C0100296E5A100464B7F0C2A1B2C3D4E5F6071846645F696400646"},
        "operationType": "insert",
        "clusterTime": {"$timestamp": {"t": 1689776322, "i": 1}},
        "wallTime": {"$date": "2023-07-19T14:18:42.000Z"},
        "ns": {"db": "shop", "coll": "toys"},
        "documentKey": {"_id": {"$oid": "64b7f0c2a1b2c3d4e5f60718"}},
        "fullDocument": {"_id": {"$oid": "64b7f0c2a1b2c3d4e5f60718"}, "name": "Rex", "type": "car"}
    })
    .to_string();
    let file = write_file(dir.path(), "shop.jsonl", &[&event]);
    let o = overseer(&["ingest", "--store", s(&store), "--format", "mongo", s(&file)]);
    assert_code(&o, 0);
    assert_eq!(summary(&o), counts(1, 1, 0, 0, 0));

    let o = overseer(&[
        "view",
        "--store",
        s(&store),
        "toys",
        "64b7f0c2a1b2c3d4e5f60718",
        "--compact",
    ]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).starts_with(r#"{"_id":{"$oid":"64b7f0c2a1b2c3d4e5f60718"}"#),
        "{}",
        stdout(&o)
    );
    let o = overseer(&["view", "--store", s(&store), "toys", "64b7f0c2a1b2c3d4e5f60718"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).starts_with("{\n  \"_id\": {\n    \"$oid\": \"64b7f0c2a1b2c3d4e5f60718\"\n  },"),
        "{}",
        stdout(&o)
    );
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["type"], "car");
}

#[test]
fn refs_without_a_model_apply_to_every_collection() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let event = |coll: &str, id: &str, t: u64| {
        json!({
            "_id": {"_data": format!("82{t:X}{id}")},
            "operationType": "insert",
            "clusterTime": {"$timestamp": {"t": t, "i": 1}},
            "ns": {"db": "shop", "coll": coll},
            "documentKey": {"_id": id},
            "fullDocument": {"_id": id, "owner_id": "u-1"}
        })
        .to_string()
    };
    let (a, b) = (
        event("toys", "toy-1", 1689776322),
        event("orders", "o-1", 1689776323),
    );
    let file = write_file(dir.path(), "shop.jsonl", &[&a, &b]);
    let o = overseer(&[
        "ingest",
        "--store",
        s(&store),
        "--format",
        "mongo",
        "--ref",
        "owner_id=users",
        "--batch-size",
        "1",
        s(&file),
    ]);
    assert_code(&o, 0);
    assert_eq!(summary(&o), counts(2, 2, 0, 0, 0));
    for (model, id) in [("toys", "toy-1"), ("orders", "o-1")] {
        let o = overseer(&["history", "--store", s(&store), model, id, "--json"]);
        assert_code(&o, 0);
        let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(
            v["references"],
            json!([{"field": "owner_id", "model": "users", "id": "u-1"}]),
            "{model}"
        );
    }
}

// ---------------------------------------------------------------- relational formats

#[test]
fn wal2json_with_key_columns_counts_control_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let ts = "2024-05-01 12:00:00.000000+00";
    let lines = [
        json!({"action": "B", "xid": 1, "timestamp": ts, "lsn": "0/16B3740"}),
        json!({"action": "I", "schema": "public", "table": "accounts", "timestamp": ts, "lsn": "0/16B3748",
               "columns": [{"name": "acct", "type": "text", "value": "a-1"},
                           {"name": "balance", "type": "integer", "value": 5},
                           {"name": "note", "type": "text", "value": "big"}]}),
        json!({"action": "C", "xid": 1, "timestamp": ts, "lsn": "0/16B3750"}),
        json!({"action": "U", "schema": "public", "table": "accounts", "timestamp": "2024-05-01 12:05:00+00",
               "lsn": "0/16B3800",
               "columns": [{"name": "acct", "type": "text", "value": "a-1"},
                           {"name": "balance", "type": "integer", "value": 7}]}),
    ]
    .map(|v| v.to_string());
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let file = write_file(dir.path(), "pg.jsonl", &lines);
    let o = overseer(&[
        "ingest",
        "--store",
        s(&store),
        "--format",
        "wal2json",
        "--key-column",
        "acct",
        s(&file),
    ]);
    assert_code(&o, 0);
    assert_eq!(summary(&o), counts(4, 2, 0, 0, 2));

    let o = overseer(&["view", "--store", s(&store), "accounts", "a-1", "--compact"]);
    assert_code(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v, json!({"acct": "a-1", "balance": 7, "note": "big"}));
    let o = overseer(&[
        "view",
        "--store",
        s(&store),
        "accounts",
        "a-1",
        "--at",
        "2024-05-01T12:04:59Z",
    ]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["balance"], 5);
}

#[test]
fn an_error_naming_a_hostile_id_is_one_line_without_terminal_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let o = overseer(&[
        "view",
        "--store",
        s(dir.path()),
        "lines",
        "x\nforged: line\u{1b}[2J",
    ]);
    assert_code(&o, 1);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
    // Escaped, not dropped: the operator still sees what the id held.
    assert!(err.contains(r"x\nforged: line\u{1b}[2J"), "{err:?}");
}
