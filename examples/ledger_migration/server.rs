//! The Postgres server the example runs against: one it starts itself with
//! `scripts/pg.sh` (stopped by a guard on every exit path), or one given by
//! URL; and the example's two databases on it.

use std::path::{Path, PathBuf};
use std::process::Command;

use overseer_builders::migrate::url_with_database;
use tokio_postgres::{Client, NoTls};

use super::Error;

/// The marker comment on the databases this example creates: only databases
/// carrying it are dropped and recreated by a later run.
const MARKER: &str = "overseer ledger_migration example";

/// `scripts/pg.sh` of this repository.
pub fn default_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("pg.sh")
}

/// A throwaway server started with `scripts/pg.sh start DIR`; dropping it
/// runs `scripts/pg.sh stop DIR` (also when the run fails, panics or is
/// interrupted) and removes DIR.
#[derive(Debug)]
pub struct PgGuard {
    script: PathBuf,
    dir: Option<tempfile::TempDir>,
    url: String,
}

impl PgGuard {
    /// Starts a server in a new temporary directory.
    pub fn start(script: &Path) -> Result<Self, Error> {
        if !script.is_file() {
            return Err(Error::Server {
                reason: format!(
                    "{} not found; pass --database-url URL to use a running server",
                    script.display()
                ),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("overseer-ledger-pg.")
            .tempdir_in(std::env::temp_dir())
            .map_err(|source| Error::Io {
                what: "creating the server's temporary directory".into(),
                source,
            })?;
        // From here on, the guard stops whatever the script started, even
        // when `start` fails half-way.
        let mut guard = PgGuard {
            script: script.to_owned(),
            dir: Some(dir),
            url: String::new(),
        };
        let dir_path = guard.dir_path();
        let output = Command::new("bash")
            .arg(&guard.script)
            .arg("start")
            .arg(&dir_path)
            .output()
            .map_err(|source| Error::Io {
                what: format!("running bash {} start", guard.script.display()),
                source,
            })?;
        if !output.status.success() {
            return Err(Error::Server {
                reason: format!(
                    "{} start {} failed ({}): {}",
                    guard.script.display(),
                    dir_path.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        let url = std::fs::read_to_string(dir_path.join("url")).map_err(|source| Error::Io {
            what: format!("reading {}", dir_path.join("url").display()),
            source,
        })?;
        guard.url = url.trim().to_owned();
        Ok(guard)
    }

    /// The server's URL (database `postgres`).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn dir_path(&self) -> PathBuf {
        self.dir.as_ref().map(|d| d.path().to_owned()).unwrap_or_default()
    }
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        let dir = self.dir_path();
        match Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&dir)
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "ledger_migration: stopping the server in {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!(
                "ledger_migration: cannot run {} stop {}: {e}",
                self.script.display(),
                dir.display()
            ),
        }
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

/// Connects to `url`, driving the connection on a spawned task.
pub async fn connect(url: &str, what: &str) -> Result<Client, Error> {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|source| Error::Connect {
                what: what.to_owned(),
                url: redact(url),
                source,
            })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_owned(),
    }
}

/// Creates database `name` on the server at `server_url`, dropping it first
/// when an earlier run of this example created it; refuses to touch a
/// database it did not create. Returns its URL.
pub async fn fresh_database(server_url: &str, name: &str) -> Result<String, Error> {
    let admin = connect(server_url, "the server (to create the databases)").await?;
    let sql = |step: &str| {
        let step = step.to_owned();
        move |source| Error::Sql {
            step: step.clone(),
            source,
        }
    };
    let existing = admin
        .query_opt(
            "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(sql(&format!("looking up database {name}")))?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    if let Some(row) = existing {
        let comment: String = row.get(0);
        if comment != MARKER {
            return Err(Error::Server {
                reason: format!(
                    "database {name:?} already exists and was not created by this example; \
                     drop it or choose other names with --db-prefix"
                ),
            });
        }
        admin
            .batch_execute(&format!("DROP DATABASE {quoted} WITH (FORCE)"))
            .await
            .map_err(sql(&format!("dropping the previous run's database {name}")))?;
    }
    admin
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
        .map_err(sql(&format!("creating database {name}")))?;
    admin
        .batch_execute(&format!("COMMENT ON DATABASE {quoted} IS '{MARKER}'"))
        .await
        .map_err(sql(&format!("marking database {name}")))?;
    Ok(url_with_database(server_url, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_and_redaction() {
        assert_eq!(
            url_with_database("postgres://u@h:5/postgres?sslmode=disable", "ledger"),
            "postgres://u@h:5/ledger?sslmode=disable"
        );
        assert_eq!(url_with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
