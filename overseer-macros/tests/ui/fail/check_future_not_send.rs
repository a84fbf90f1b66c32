use std::rc::Rc;

use overseer_core::{DataView, Record, Verdict, check};

#[derive(serde::Deserialize, Record)]
#[record(model = "transfers")]
struct Transfer {}

#[derive(DataView)]
struct TransferView {
    #[root]
    transfer: Transfer,
}

async fn elsewhere() {}

#[check]
async fn holds_an_rc(_view: TransferView) -> Verdict {
    let shared = Rc::new(1);
    elsewhere().await;
    if *shared == 1 { Verdict::pass() } else { Verdict::not_applicable() }
}

fn main() {}
