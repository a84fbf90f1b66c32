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
async fn generic<V: DataView>(_view: V) -> Verdict {
    Verdict::pass()
}

struct Checks;

impl Checks {
    #[check]
    async fn method(self, _view: TransferView) -> Verdict {
        Verdict::pass()
    }
}

#[check]
struct NotAFunction;

fn main() {}
