use overseer_core::{DataView, Record, Verdict, check};

#[derive(serde::Deserialize, Record)]
#[record(model = "transfers")]
struct Transfer {}

#[derive(DataView)]
struct TransferView {
    #[root]
    transfer: Transfer,
}

#[check(timeout = "5s", escalate = pagerduty, timeout = "10s")]
async fn paid(_view: TransferView) -> Verdict {
    Verdict::pass()
}

fn main() {}
