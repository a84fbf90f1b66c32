use overseer_core::{DataView, Record};

#[derive(serde::Deserialize, Record)]
#[record(model = "transfers")]
struct Transfer {}

#[derive(serde::Deserialize, Record)]
#[record(model = "ledger_entries")]
struct LedgerEntry {}

#[derive(DataView)]
struct TransferView {
    #[root]
    transfer: Transfer,
    #[join]
    ledger: Vec<LedgerEntry>,
    #[join(model = "bank_payments")]
    payments: Vec<serde_json::Value>,
}

fn main() {}
