use overseer_core::{DataView, Record, Verdict, check};

#[derive(serde::Deserialize, Record)]
#[record(model = "transfers")]
struct Transfer {}

#[derive(DataView)]
struct TransferView {
    #[root]
    transfer: Transfer,
}

#[check]
fn not_async(_view: TransferView) -> Verdict {
    Verdict::pass()
}

fn main() {}
