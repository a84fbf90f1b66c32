use overseer_core::{DataView, Record, Verdict, check};

#[derive(serde::Deserialize, Record)]
#[record(model = "transfers")]
struct Transfer {}

#[derive(DataView)]
struct TransferView {
    #[root]
    transfer: Transfer,
}

#[check(delay = "ten minutes")]
async fn paid(_view: TransferView) -> Verdict {
    Verdict::pass()
}

#[check(timeout = 5s)]
async fn unquoted(_view: TransferView) -> Verdict {
    Verdict::pass()
}

fn main() {}
