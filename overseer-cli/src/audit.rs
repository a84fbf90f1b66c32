//! `overseer audit`: check executions and incidents.

use std::io::Write;

use overseer_core::RecordKey;
use overseer_core::store::{AuditEntry, IncidentEntry};
use overseer_core::{Store, Timestamp};
use serde_json::json;

use crate::cli::AuditArgs;
use crate::{Error, output};

pub(crate) async fn run(store: Store, args: &AuditArgs, out: &mut dyn Write) -> Result<(), Error> {
    let root = match (&args.model, &args.id) {
        (Some(model), Some(id)) => Some(RecordKey::new(model, id).map_err(|e| Error::Usage(e.to_string()))?),
        (None, None) => None,
        _ => {
            return Err(Error::Usage(
                "--model and --id go together: give both or neither".into(),
            ));
        }
    };
    if args.incidents {
        let incidents: Vec<IncidentEntry> = store
            .incidents()
            .await?
            .into_iter()
            .filter(|i| args.all || i.resolved_at.is_none())
            .filter(|i| args.check.as_deref().is_none_or(|c| c == i.check))
            .filter(|i| root.as_ref().is_none_or(|r| r == &i.root))
            .collect();
        if incidents.is_empty() {
            check_has_run(&store, args.check.as_deref()).await?;
            record_exists(&store, root.as_ref()).await?;
            let _ = writeln!(
                std::io::stderr(),
                "no {}incidents",
                if args.all { "" } else { "open " }
            );
        }
        for i in &incidents {
            if args.json {
                output::json_line(out, &incident_json(i))?;
            } else {
                output::line(out, &incident_line(i))?;
            }
        }
        return Ok(());
    }
    let entries = store.audit(args.check.as_deref(), root.as_ref()).await?;
    let entries: Vec<&AuditEntry> = entries
        .iter()
        .filter(|e| args.outcome.as_deref().is_none_or(|o| o == e.outcome.as_str()))
        .collect();
    if entries.is_empty() {
        check_has_run(&store, args.check.as_deref()).await?;
        record_exists(&store, root.as_ref()).await?;
        let _ = writeln!(std::io::stderr(), "no executions");
    }
    for e in entries {
        if args.json {
            output::json_line(out, &entry_json(e))?;
        } else {
            output::line(out, &entry_line(e))?;
        }
    }
    Ok(())
}

/// Fails with [`Error::NotFound`] when `check` is given and has neither
/// executions nor incidents in the store (a mistyped or unknown name, which
/// would otherwise read as "no executions"), naming the checks that have.
async fn check_has_run(store: &Store, check: Option<&str>) -> Result<(), Error> {
    let Some(check) = check else {
        return Ok(());
    };
    let known = store.checks().await?;
    if known.iter().any(|k| k == check) {
        return Ok(());
    }
    let known = if known.is_empty() {
        "no check has run in this store".to_owned()
    } else {
        format!("checks that have run: {}", known.join(", "))
    };
    Err(Error::NotFound(format!(
        "check {check:?} has no executions or incidents in this store ({known})"
    )))
}

/// Fails with [`Error::NotFound`] when `root` is given and has no updates
/// in the store (a mistyped model or id, which would otherwise read as "no
/// executions"), as `overseer history` does.
async fn record_exists(store: &Store, root: Option<&RecordKey>) -> Result<(), Error> {
    let Some(root) = root else {
        return Ok(());
    };
    if store.list_updates(root, Timestamp::MAX).await?.is_empty() {
        return Err(Error::NotFound(crate::record::no_updates(root)));
    }
    Ok(())
}

fn entry_line(e: &AuditEntry) -> String {
    [
        e.executed_at.to_string(),
        output::field(&e.check),
        output::field(&e.root.to_string()),
        e.outcome.as_str().to_owned(),
        e.as_of.to_string(),
        output::field(&e.trigger_key.to_string()),
        output::field_or_dash(&e.message),
    ]
    .join("\t")
}

fn entry_json(e: &AuditEntry) -> serde_json::Value {
    json!({
        "executed_at": e.executed_at.to_string(),
        "check": e.check,
        "root": {"model": e.root.model.as_str(), "id": e.root.id.as_str()},
        "outcome": e.outcome.as_str(),
        "as_of": e.as_of.to_string(),
        "trigger": {
            "model": e.trigger_key.model.as_str(),
            "id": e.trigger_key.id.as_str(),
            "source": e.trigger_source.as_str(),
            "commit_time": e.trigger_commit_time.to_string(),
        },
        "message": e.message,
        "details": e.details,
        "duration_us": u64::try_from(e.duration.as_micros()).unwrap_or(u64::MAX),
        "lagging_sources": e.lagging_sources,
        "coalesced": e.coalesced,
    })
}

fn incident_line(i: &IncidentEntry) -> String {
    [
        i.opened_at.to_string(),
        i.resolved_at.map_or_else(|| "open".to_owned(), |t| t.to_string()),
        output::field(&i.check),
        output::field(&i.root.to_string()),
        i.failures.to_string(),
        i.updated_at.to_string(),
        output::field_or_dash(&i.message),
    ]
    .join("\t")
}

fn incident_json(i: &IncidentEntry) -> serde_json::Value {
    json!({
        "opened_at": i.opened_at.to_string(),
        "resolved_at": i.resolved_at.map(|t| t.to_string()),
        "check": i.check,
        "root": {"model": i.root.model.as_str(), "id": i.root.id.as_str()},
        "dedup_key": i.dedup_key,
        "failures": i.failures,
        "updated_at": i.updated_at.to_string(),
        "message": i.message,
        "details": i.details,
        "trigger_commit_time": i.trigger_commit_time.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use overseer_core::{RecordKey, Timestamp};

    use super::*;

    /// An incident whose failure has no message shows `-`, as an
    /// execution's line does, not an empty field.
    #[test]
    fn an_incident_without_a_message_shows_a_dash() {
        let incident = |message: &str| IncidentEntry {
            check: "paid".into(),
            root: RecordKey::new("transfers", "t1").unwrap(),
            dedup_key: "k".into(),
            opened_at: Timestamp::from_secs(60),
            updated_at: Timestamp::from_secs(120),
            resolved_at: None,
            failures: 2,
            message: message.into(),
            details: serde_json::Value::Null,
            trigger_commit_time: Timestamp::from_secs(59),
        };
        assert_eq!(
            incident_line(&incident("")),
            "1970-01-01T00:01:00Z\topen\tpaid\ttransfers/t1\t2\t1970-01-01T00:02:00Z\t-"
        );
        assert!(incident_line(&incident("late\tpayment")).ends_with("\tlate\\tpayment"));
    }
}
