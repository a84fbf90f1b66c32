use std::time::Duration;

use overseer_core::{DataView, Record, Verdict, check};

#[derive(serde::Deserialize, Record)]
#[record(model = "transfers")]
struct Transfer {}

#[derive(DataView)]
struct TransferView {
    #[root]
    transfer: Transfer,
}

#[check(strategy = Duration::from_secs(60))]
async fn paid(_view: TransferView) -> Verdict {
    Verdict::pass()
}

fn main() {}
