use overseer_core::{DataView, Record};

#[derive(serde::Deserialize, Record)]
#[record(model = "ledger_entries")]
struct LedgerEntry {}

#[derive(DataView)]
struct TransferView {
    #[join(on = "transfer_id")]
    ledger: Vec<LedgerEntry>,
}

fn main() {}
