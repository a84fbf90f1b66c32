use overseer_core::{DataView, Record};

#[derive(serde::Deserialize, Record)]
#[record(model = "transfers")]
struct Transfer {}

#[derive(serde::Deserialize)]
struct BankPayment {}

#[derive(DataView)]
struct TransferView {
    #[root]
    transfer: Transfer,
    #[join(on = "transfer_id")]
    payment: Option<BankPayment>,
}


struct NotDeserialize;

#[derive(DataView)]
struct UntypedView {
    #[root(model = "transfers")]
    transfer: NotDeserialize,
}

fn main() {}
