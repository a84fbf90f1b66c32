use overseer_core::{Verdict, check};

struct Transfer {
    status: String,
}

#[check]
async fn not_a_view(transfer: Transfer) -> Verdict {
    if transfer.status == "completed" { Verdict::pass() } else { Verdict::not_applicable() }
}

fn main() {}
