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

#[check]
async fn impl_trait(_view: impl DataView) -> Verdict {
    Verdict::pass()
}

#[check]
async unsafe fn not_safe(_view: TransferView) -> Verdict {
    Verdict::pass()
}

#[check]
async fn no_return(_view: TransferView) {}

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
