use overseer_core::{DataView, Record};

#[derive(serde::Deserialize, Record)]
#[record(model = "transfers")]
struct Transfer {}

#[derive(serde::Deserialize, Record)]
#[record(model = "ledger_entries")]
struct LedgerEntry {}

#[derive(DataView)]
struct TwoRoots {
    #[root]
    transfer: Transfer,
    #[root]
    again: Transfer,
    #[join(on = "transfer_id", via = "ledger_id")]
    ledger: Vec<LedgerEntry>,
    unmarked: Vec<LedgerEntry>,
}

#[derive(DataView)]
struct Tuple(#[root] Transfer);

#[derive(DataView)]
enum NotAStruct {
    Transfer(Transfer),
}

fn main() {}
