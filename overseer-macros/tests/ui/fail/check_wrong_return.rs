use overseer_core::{DataView, Record, check};

#[derive(serde::Deserialize, Record)]
#[record(model = "transfers")]
struct Transfer {}

#[derive(DataView)]
struct TransferView {
    #[root]
    transfer: Transfer,
}

#[check]
async fn returns_bool(_view: TransferView) -> bool {
    true
}

fn main() {}
