use overseer_core::{Verdict, check};

#[check]
async fn no_view() -> Verdict {
    Verdict::pass()
}

fn main() {}
