//! `overseer migrate plan|run|status|reset` against a real Postgres (see
//! `scripts/pg.sh`), and their usage errors.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use overseer_tests::{PgDatabase, pg_database};

const BIN: &str = env!("CARGO_BIN_EXE_overseer");

fn overseer(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the overseer binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_code(o: &Output, expected: i32) {
    assert_eq!(
        o.status.code(),
        Some(expected),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// A legacy and a target database, and a configuration file pointing at them.
struct Setup {
    _legacy: PgDatabase,
    target: PgDatabase,
    dir: tempfile::TempDir,
    config: PathBuf,
}

async fn setup(name: &str) -> Option<Setup> {
    let legacy = pg_database(&format!("{name}_legacy")).await?;
    let target = pg_database(&format!("{name}_target")).await?;
    legacy
        .client()
        .batch_execute(
            "CREATE TABLE entries (n bigint, label text);
             INSERT INTO entries SELECT i, 'e' || i FROM generate_series(1, 250) i;",
        )
        .await
        .unwrap();
    target
        .client()
        .batch_execute(
            "CREATE TABLE ledger (id bigint PRIMARY KEY, label text NOT NULL);
             CREATE INDEX ledger_label_idx ON ledger (label);
             INSERT INTO ledger VALUES (1, 'live');",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sql")).unwrap();
    std::fs::write(
        dir.path().join("sql/ledger.sql"),
        "SELECT n AS id, label FROM entries;\n",
    )
    .unwrap();
    let config = dir.path().join("backfill.toml");
    std::fs::write(
        &config,
        format!(
            "legacy_url = {:?}\ntarget_url = {:?}\ndata_dir = \"data\"\n\n[[tables]]\nname = \"public.ledger\"\ntransform = \"sql/ledger.sql\"\nchunk_rows = 100\nthrottle_ms = 1\n",
            legacy.url(),
            target.url()
        ),
    )
    .unwrap();
    Some(Setup {
        _legacy: legacy,
        target,
        dir,
        config,
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn plan_prints_every_steps_sql() {
    let Some(st) = setup("cli_bf_plan").await else {
        return;
    };
    let o = overseer(&["migrate", "plan", "--config", s(&st.config)]);
    assert_code(&o, 0);
    let text = stdout(&o);
    for (n, step) in [
        "copy", "triggers", "generate", "import", "resolve", "index", "flip",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            text.contains(&format!("-- public.ledger step {n} {step}: ")),
            "no step {step}:\n{text}"
        );
    }
    for needle in [
        "COPY (\nSELECT n AS id, label FROM entries\n) TO STDOUT;",
        "CREATE TABLE \"public\".\"ledger_backfill\" (LIKE \"public\".\"ledger\"",
        "CREATE TRIGGER overseer_backfill",
        "COPY \"public\".\"ledger_backfill\" (\"id\", \"label\") FROM STDIN;",
        "CREATE INDEX CONCURRENTLY \"ledger_label_idx_bf\"",
        "CREATE UNIQUE INDEX CONCURRENTLY \"ledger_pkey_bf\"",
        "ALTER TABLE \"public\".\"ledger_backfill\" RENAME TO \"ledger\";",
    ] {
        assert!(text.contains(needle), "the plan lacks {needle:?}:\n{text}");
    }
    let o = overseer(&["migrate", "plan", "--config", s(&st.config), "--json"]);
    assert_code(&o, 0);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(plan["steps"].as_array().unwrap().len(), 7);
    assert_eq!(plan["steps"][6]["step"], "flip");
    // Planning changes nothing in the target.
    let n: i64 = st
        .target
        .client()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'ledger_backfill'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn run_and_status_follow_the_steps() {
    let Some(st) = setup("cli_bf_status").await else {
        return;
    };
    let status = |json: bool| {
        let mut args = vec!["migrate", "status", "--config", s(&st.config)];
        if json {
            args.push("--json");
        }
        let o = overseer(&args);
        assert_code(&o, 0);
        stdout(&o)
    };
    let before = status(false);
    let lines: Vec<&str> = before.lines().collect();
    assert_eq!(lines.len(), 7, "{before}");
    assert_eq!(lines[0], "public.ledger\t*0\tcopy\tpending\t-\t-");
    assert_eq!(lines[6], "public.ledger\t 6\tflip\tpending\t-\t-");

    let o = overseer(&["migrate", "run", "--config", s(&st.config), "--until", "import"]);
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "public.ledger\tsteps: copy,triggers,generate,import\tgenerated: 250\timported: 250 rows in 3 chunks\treplaced: 0\tlive rows: 0\n"
    );
    assert!(
        stderr(&o).contains("public.ledger import: chunk 3/3: 50 rows"),
        "{}",
        stderr(&o)
    );
    assert!(st.dir.path().join("data/public.ledger/manifest.json").is_file());
    let middle = status(false);
    let lines: Vec<&str> = middle.lines().collect();
    assert!(
        lines[3].starts_with("public.ledger\t 3\timport\tdone\t250 rows in 3 chunks\t20"),
        "{middle}"
    );
    assert!(
        lines[4].starts_with("public.ledger\t*4\tresolve\tpending"),
        "{middle}"
    );

    let o = overseer(&["migrate", "run", "--config", s(&st.config), "--json"]);
    assert_code(&o, 0);
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        report["tables"][0]["executed"],
        serde_json::json!(["resolve", "index", "flip"])
    );
    let done: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(done["current"], serde_json::Value::Null);
    assert!(
        done["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "done")
    );

    let rows: Vec<(i64, String)> = st
        .target
        .client()
        .query("SELECT id, label FROM ledger ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows.len(), 250);
    assert_eq!(rows[0], (1, "live".to_owned()), "live writes win");
    assert_eq!(rows[249], (250, "e250".to_owned()));

    let o = overseer(&["migrate", "reset", "--config", s(&st.config)]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "public.ledger\treset\n");
    assert!(status(false).starts_with("public.ledger\t*0\tcopy\tpending"));
}

#[test]
fn configuration_errors_exit_2_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let o = overseer(&["migrate", "status", "--config", s(&missing)]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));

    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "legacy_url = \"\"\ntarget_url = \"postgres://127.0.0.1:1/x\"\ndata_dir = \"d\"\n[[tables]]\nname = \"t\"\ntransform = \"missing.sql\"\n",
    )
    .unwrap();
    let o = overseer(&["migrate", "plan", "--config", s(&config)]);
    assert_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("legacy_url: is empty") && err.contains("missing.sql"),
        "{err}"
    );

    std::fs::write(&config, "legacy_url = \"a\"\nsurprise = 1\n").unwrap();
    let o = overseer(&["migrate", "plan", "--config", s(&config)]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("unknown field `surprise`"), "{}", stderr(&o));

    // An unreachable database is exit code 2 as well.
    std::fs::write(dir.path().join("t.sql"), "SELECT 1 AS id").unwrap();
    std::fs::write(
        &config,
        "legacy_url = \"postgres://127.0.0.1:1/x\"\ntarget_url = \"postgres://127.0.0.1:1/x\"\ndata_dir = \"d\"\n[[tables]]\nname = \"t\"\ntransform = \"t.sql\"\n",
    )
    .unwrap();
    let o = overseer(&["migrate", "status", "--config", s(&config)]);
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains("cannot connect to the target database"),
        "{}",
        stderr(&o)
    );
    // `plan` and `status` only read: they create no data_dir.
    let o = overseer(&["migrate", "plan", "--config", s(&config)]);
    assert_code(&o, 2);
    assert!(!dir.path().join("d").exists(), "plan and status created data_dir");

    let o = overseer(&["migrate", "run", "--config", s(&config), "--until", "later"]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("unknown step"), "{}", stderr(&o));
}

#[test]
fn help_documents_the_migrate_commands() {
    let o = overseer(&["migrate", "--help"]);
    assert_code(&o, 0);
    let text = stdout(&o);
    for cmd in ["plan", "run", "status", "reset"] {
        assert!(text.contains(cmd), "{text}");
    }
    let o = overseer(&["migrate", "run", "--help"]);
    assert_code(&o, 0);
    let text = stdout(&o);
    assert!(
        text.contains("--until <STEP>") && text.contains("Exit codes:"),
        "{text}"
    );
}
