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
async fn two_views(_a: TransferView, _b: TransferView) -> Verdict {
    Verdict::pass()
}

fn main() {}
