//! A tiny JSON-lines format and a fixture store shared by the integration
//! tests: `{"model": .., "id": .., "t": .., "pos": .., "data": {..}}` sets a
//! record's whole state at Unix second `t`; `"data": null` deletes it.

#![allow(dead_code)]

use overseer_core::{
    Change, ConsumeError, Consumed, ConsumedRecord, Consumer, Dal, Format, Ingestor, Operation, RecordKey,
    ReferenceSpec, References, SourceId, SourcePosition, StateBuilder, Store, Timestamp, UpdateDocument,
};
use overseer_core::{DataView, Record};
use serde::Deserialize;
use serde_json::{Value, json};

/// A transfer of the app database.
#[derive(Clone, Debug, PartialEq, Deserialize, Record)]
#[record(model = "transfers")]
pub(crate) struct Transfer {
    pub(crate) status: String,
    pub(crate) amount_minor: i64,
    pub(crate) account_id: String,
}

/// A ledger entry of a transfer.
#[derive(Clone, Debug, PartialEq, Deserialize, Record)]
#[record(model = "ledger_entries")]
pub(crate) struct LedgerEntry {
    pub(crate) transfer_id: String,
    pub(crate) amount_minor: i64,
}

/// A bank payment of a transfer.
#[derive(Clone, Debug, PartialEq, Deserialize, Record)]
#[record(model = "bank_payments")]
pub(crate) struct BankPayment {
    pub(crate) amount_minor: i64,
}

/// An account; deliberately not a `Record`, so views name its model.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub(crate) struct Account {
    pub(crate) owner: String,
}

/// A transfer with its ledger entries and its bank payment, if any.
#[derive(Debug, DataView)]
pub(crate) struct TransferView {
    #[root]
    pub(crate) transfer: Transfer,
    #[join(on = "transfer_id")]
    pub(crate) ledger: Vec<LedgerEntry>,
    #[join(on = "transfer_id")]
    pub(crate) payment: Option<BankPayment>,
}

/// The test format.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct JsonLines;

struct Line {
    key: RecordKey,
    t: i64,
    pos: u64,
    change: Change,
}

impl JsonLines {
    fn parse(raw: &[u8]) -> Result<Line, ConsumeError> {
        let reject = |reason: String| ConsumeError::new("test-json", reason);
        let value: Value = serde_json::from_slice(raw).map_err(|e| reject(e.to_string()))?;
        let text = |field: &str| {
            value[field]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| reject(format!("no string `{field}`")))
        };
        let key = RecordKey::new(text("model")?, text("id")?).map_err(|e| reject(e.to_string()))?;
        let t = value["t"]
            .as_i64()
            .ok_or_else(|| reject("no integer `t`".into()))?;
        let pos = value["pos"]
            .as_u64()
            .ok_or_else(|| reject("no integer `pos`".into()))?;
        let change = match &value["data"] {
            Value::Object(state) => Change::Full(state.clone()),
            Value::Null => Change::Delete,
            _ => return Err(reject("`data` is neither an object nor null".into())),
        };
        Ok(Line { key, t, pos, change })
    }
}

impl Consumer for JsonLines {
    fn format(&self) -> Format {
        Format::new("test-json").expect("non-empty")
    }

    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        let line = Self::parse(raw)?;
        Ok(Consumed::Record(ConsumedRecord {
            key: line.key,
            operation: match line.change {
                Change::Delete => Operation::Delete,
                _ => Operation::Insert,
            },
            commit_time: Timestamp::from_secs(line.t),
            position: SourcePosition::from_numbers(&[line.pos]),
            change: line.change,
        }))
    }
}

impl StateBuilder for JsonLines {
    fn format(&self) -> Format {
        Consumer::format(self)
    }

    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        Ok(Self::parse(&update.raw)?.change)
    }
}

/// One event of the test format.
pub(crate) fn line(model: &str, id: &str, t: i64, pos: u64, data: Value) -> String {
    json!({"model": model, "id": id, "t": t, "pos": pos, "data": data}).to_string()
}

/// A store holding:
///
/// - `accounts/a1` (t=1);
/// - `transfers/t1` (completed, 1000, account a1, t=10) with two balanced
///   ledger entries (t=11, t=12) and one bank payment (t=20);
/// - `transfers/t2` (pending, account a1, t=10) with nothing joined;
/// - `transfers/t3` (completed, account `nobody`, which does not exist) with
///   one unbalanced ledger entry (t=11);
/// - `transfers/t4` (completed, account a1) with two bank payments.
///
/// Ledger entries and bank payments reference transfers through
/// `transfer_id`.
pub(crate) async fn fixture() -> Dal {
    let store = Store::in_memory();
    let references = References::new()
        .with(ReferenceSpec::parse("ledger_entries.transfer_id -> transfers").expect("valid"))
        .with(ReferenceSpec::parse("bank_payments.transfer_id -> transfers").expect("valid"));
    let ingestor = Ingestor::new(
        store.clone(),
        SourceId::new("app").expect("valid"),
        JsonLines,
        references,
    );
    let transfer = |id: &str, status: &str, account: &str, pos: u64| {
        line(
            "transfers",
            id,
            10,
            pos,
            json!({"status": status, "amount_minor": 1000, "account_id": account}),
        )
    };
    let report = ingestor
        .ingest_batch(&[
            line("accounts", "a1", 1, 1, json!({"owner": "alice"})).into(),
            transfer("t1", "completed", "a1", 2).into(),
            transfer("t2", "pending", "a1", 3).into(),
            transfer("t3", "completed", "nobody", 4).into(),
            transfer("t4", "completed", "a1", 5).into(),
            line(
                "ledger_entries",
                "l1",
                11,
                6,
                json!({"transfer_id": "t1", "amount_minor": -1000}),
            )
            .into(),
            line(
                "ledger_entries",
                "l2",
                12,
                7,
                json!({"transfer_id": "t1", "amount_minor": 1000}),
            )
            .into(),
            line(
                "ledger_entries",
                "l3",
                11,
                8,
                json!({"transfer_id": "t3", "amount_minor": -1000}),
            )
            .into(),
            line(
                "bank_payments",
                "p1",
                20,
                9,
                json!({"transfer_id": "t1", "amount_minor": 1000}),
            )
            .into(),
            line(
                "bank_payments",
                "p2",
                20,
                10,
                json!({"transfer_id": "t4", "amount_minor": 500}),
            )
            .into(),
            line(
                "bank_payments",
                "p3",
                21,
                11,
                json!({"transfer_id": "t4", "amount_minor": 500}),
            )
            .into(),
        ])
        .await
        .expect("ingested");
    assert_eq!((report.stored, report.dead_lettered), (11, 0), "{report:?}");
    Dal::new(store).with_builder(JsonLines)
}

/// The key of a transfer.
pub(crate) fn transfer(id: &str) -> RecordKey {
    RecordKey::new("transfers", id).expect("valid")
}

/// Long after every fixture event.
pub(crate) const LATER: Timestamp = Timestamp::from_secs(1_000);
