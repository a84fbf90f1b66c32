//! `overseer view` and `overseer history`: one record's state and updates.

use std::io::Write;

use overseer_core::{Dal, RecordKey, Store, Timestamp, UpdateDocument};
use serde_json::{Value, json};

use crate::cli::{HistoryArgs, ViewArgs};
use crate::{Error, output};

fn record_key(model: &str, id: &str) -> Result<RecordKey, Error> {
    RecordKey::new(model, id).map_err(|e| Error::Usage(e.to_string()))
}

pub(crate) async fn view(store: Store, args: &ViewArgs, out: &mut dyn Write) -> Result<(), Error> {
    let key = record_key(&args.model, &args.id)?;
    let at = args.at.unwrap_or_else(Timestamp::now);
    view_with(&overseer_builders::dal(store), &key, at, args.compact, out).await
}

async fn view_with(
    dal: &Dal,
    key: &RecordKey,
    at: Timestamp,
    compact: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let state = match dal.state_at(key, at).await {
        Ok(state) => state,
        Err(overseer_core::Error::UnknownFormat { format, known }) => {
            return Err(Error::Usage(format!(
                "record {key} has updates of format {format:?}, which this command cannot fold (it \
                 reads {known}): read its state through the Dal of the service that registers that \
                 format's state builder; `overseer history` lists its updates"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let Some(state) = state else {
        return Err(Error::NotFound(absent_reason(dal, key, at).await?));
    };
    let state = Value::Object(state);
    let text = if compact {
        state.to_string()
    } else {
        serde_json::to_string_pretty(&state).map_err(|e| Error::Output(e.into()))?
    };
    output::line(out, &text)
}

/// Why a record has no state at `at`, for the message of exit code 1.
async fn absent_reason(dal: &Dal, key: &RecordKey, at: Timestamp) -> Result<String, Error> {
    let history = dal.history(key, Timestamp::MAX).await?;
    let Some(first) = history.first() else {
        return Ok(no_updates(key));
    };
    let first = first.update.commit_time;
    Ok(if at < first {
        format!("record {key} does not exist at {at}: its first update is at {first}")
    } else {
        format!("record {key} does not exist at {at}: it is deleted then")
    })
}

/// What a read of a record with no stored updates says.
pub(crate) fn no_updates(key: &RecordKey) -> String {
    format!("record {key} not found: no updates are stored for it")
}

pub(crate) async fn history(store: Store, args: &HistoryArgs, out: &mut dyn Write) -> Result<(), Error> {
    let key = record_key(&args.model, &args.id)?;
    history_with(&overseer_builders::dal(store), &key, args.json, out).await
}

async fn history_with(dal: &Dal, key: &RecordKey, as_json: bool, out: &mut dyn Write) -> Result<(), Error> {
    let timeline = match dal.timeline(key).await {
        Ok(timeline) => timeline,
        // A format the CLI cannot fold (a custom consumer of an embedding
        // service): the updates are still listed, without changed fields.
        Err(overseer_core::Error::UnknownFormat { format, .. }) => {
            return history_unfolded(dal.store(), key, &format, as_json, out).await;
        }
        Err(e) => return Err(e.into()),
    };
    if timeline.is_empty() {
        return Err(Error::NotFound(no_updates(key)));
    }
    for entry in &timeline {
        let changed = Some(entry.changed_fields.as_slice());
        if as_json {
            output::json_line(out, &entry_json(&entry.entry.update, changed))?;
        } else {
            output::line(out, &entry_line(&entry.entry.update, changed))?;
        }
    }
    Ok(())
}

/// `overseer history` of a record with updates of a format no built-in
/// builder reads: every update from the store, in history order, with its
/// changed fields unknown (`?` in lines, `null` in JSON).
async fn history_unfolded(
    store: &Store,
    key: &RecordKey,
    format: &str,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let mut updates = Vec::new();
    for object in store.list_updates(key, Timestamp::MAX).await? {
        updates.push(store.get_update(&object.path).await?);
    }
    updates.sort_by(|a, b| a.history_order().cmp(&b.history_order()));
    let _ = writeln!(
        std::io::stderr(),
        "overseer: {}",
        output::field(&format!(
            "record {key} has updates of format {format:?}, which this command cannot fold: \
             the fields each changed are not shown"
        ))
    );
    for update in &updates {
        if as_json {
            output::json_line(out, &entry_json(update, None))?;
        } else {
            output::line(out, &entry_line(update, None))?;
        }
    }
    Ok(())
}

/// One update as a tab-separated line; `changed` is `None` when unknown
/// (`?`).
fn entry_line(u: &UpdateDocument, changed: Option<&[String]>) -> String {
    [
        u.commit_time.to_string(),
        u.operation.to_string(),
        output::field(u.source.as_str()),
        output::field_or_dash(u.position.as_str()),
        changed.map_or_else(|| "?".to_owned(), |c| output::field_or_dash(&c.join(","))),
    ]
    .join("\t")
}

/// One update as a JSON object; `changed_fields` is `null` when unknown.
fn entry_json(u: &UpdateDocument, changed: Option<&[String]>) -> Value {
    let references: Vec<Value> = u
        .references
        .iter()
        .map(|r| {
            json!({
                "field": r.field,
                "model": r.target.model.as_str(),
                "id": r.target.id.as_str(),
            })
        })
        .collect();
    json!({
        "commit_time": u.commit_time.to_string(),
        "operation": u.operation.as_str(),
        "source": u.source.as_str(),
        "position": u.position.as_str(),
        "changed_fields": changed,
        "ingested_at": u.ingested_at.to_string(),
        "format": u.format.as_str(),
        "references": references,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use overseer_core::testing::LinesConsumer;
    use overseer_core::{Ingestor, References, SourceId};

    use super::*;

    async fn store_with(lines: &[&str]) -> Dal {
        let store = Store::in_memory();
        let ingestor = Ingestor::new(
            store.clone(),
            SourceId::new("app").unwrap(),
            Arc::new(LinesConsumer),
            References::new(),
        );
        let batch: Vec<_> = lines.iter().map(|l| l.as_bytes().to_vec().into()).collect();
        ingestor.ingest_and_ack(&batch).await.unwrap();
        Dal::new(store).with_builder(LinesConsumer)
    }

    async fn view_text(dal: &Dal, id: &str, secs: i64, compact: bool) -> Result<String, Error> {
        let mut out = Vec::new();
        let key = RecordKey::new("lines", id).unwrap();
        view_with(dal, &key, Timestamp::from_secs(secs), compact, &mut out).await?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn view_at_times() {
        let dal = store_with(&["a 10", "a 20"]).await;
        assert_eq!(
            view_text(&dal, "a", 15, true).await.unwrap(),
            "{\"id\":\"a\",\"n\":10}\n"
        );
        assert_eq!(
            view_text(&dal, "a", 25, false).await.unwrap(),
            "{\n  \"id\": \"a\",\n  \"n\": 20\n}\n"
        );
        let err = view_text(&dal, "a", 5, true).await.unwrap_err();
        assert!(err.to_string().contains("first update is at"), "{err}");
        let unfolded = Dal::new(dal.store().clone()).with_builder(overseer_builders::json::Json::builder());
        let err = view_text(&unfolded, "a", 15, true).await.unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .starts_with("record lines/a has updates of format \"lines\", which this command cannot fold (it reads json)"),
            "{err}"
        );
        let err = view_text(&dal, "zz", 5, true).await.unwrap_err();
        assert!(err.to_string().contains("no updates"), "{err}");
        assert_eq!(err.exit_code(), 1);
    }

    #[tokio::test]
    async fn history_lines() {
        let dal = store_with(&["a 10", "a 20"]).await;
        let key = RecordKey::new("lines", "a").unwrap();
        let mut out = Vec::new();
        history_with(&dal, &key, false, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0][0], "1970-01-01T00:00:10Z");
        assert_eq!(lines[0][1], "insert");
        assert_eq!(lines[0][2], "app");
        assert_eq!(lines[0][4], "id,n");
        assert_eq!(lines[1][4], "n");

        let mut out = Vec::new();
        history_with(&dal, &key, true, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["format"], "lines");
        assert_eq!(first["changed_fields"], json!(["id", "n"]));
        assert_eq!(first["references"], json!([]));

        // Without the format's builder (a custom format, as the CLI sees
        // it), the updates are still listed, changed fields unknown.
        let unfolded = Dal::new(dal.store().clone());
        let mut out = Vec::new();
        history_with(&unfolded, &key, false, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0][..3], ["1970-01-01T00:00:10Z", "insert", "app"]);
        assert_eq!((lines[0][4], lines[1][4]), ("?", "?"));
        let mut out = Vec::new();
        history_with(&unfolded, &key, true, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["format"], "lines");
        assert_eq!(first["changed_fields"], Value::Null);

        let missing = RecordKey::new("lines", "zz").unwrap();
        let err = history_with(&dal, &missing, false, &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 1);
    }
}
