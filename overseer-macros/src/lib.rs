//! Procedural macros for Overseer: `#[check]`, `#[derive(DataView)]` and
//! `#[derive(Record)]`.
//!
//! Use them through `overseer_core`, which re-exports them next to the
//! traits they implement (`overseer_core::{check, DataView, Record}`); the
//! generated code names everything through `::overseer_core`, so a crate
//! using the macros depends on `overseer-core` only (not on this crate, nor
//! on `inventory`).

mod check;
mod data_view;
mod errors;
mod options;
mod record;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Registers an `async fn` over a data view as a check.
///
/// ```
/// use overseer_core::{DataView, Record, Verdict, check};
///
/// # #[derive(serde::Deserialize, Record)]
/// # #[record(model = "transfers")]
/// # struct Transfer { status: String }
/// # #[derive(serde::Deserialize, Record)]
/// # #[record(model = "bank_payments")]
/// # struct BankPayment { state: String }
/// #[derive(DataView)]
/// struct TransferView {
///     #[root]
///     transfer: Transfer,
///     #[join(on = "transfer_id")]
///     payment: Option<BankPayment>,
/// }
///
/// #[check(on = ["transfers"], delay = "10m", timeout = "5s", escalate = pagerduty)]
/// async fn completed_transfers_are_paid(view: TransferView) -> Verdict {
///     if view.transfer.status == "completed" && view.payment.is_none() {
///         return Verdict::fail("completed transfer has no bank payment after 10 minutes");
///     }
///     Verdict::pass()
/// }
/// # fn main() {}
/// ```
///
/// The function must be a non-generic `async fn` taking exactly one argument
/// whose type implements `DataView`, and returning `Verdict` or
/// `Result<(), Failure>`. It stays as written (tests call it directly with a
/// hand-built view); the macro adds a hidden
/// `__overseer_check_<name>() -> Check` and registers it, so
/// `overseer_core::registered()` finds it.
///
/// Options, comma-separated, each at most once:
///
/// | option | effect |
/// |---|---|
/// | `name = "..."` | the check's unique name (default `module_path::fn_name`) |
/// | `on = ["transfers", ...]` or `on = "transfers"` | only updates of these models trigger it (default: every model the view reads) |
/// | `strategy = <expr>` | any `ExecutionStrategy` value (default `Freshness`) |
/// | `delay = "10m"` | `FixedDelay` of that duration (parsed at compile time) |
/// | `immediate` | the `Immediate` strategy |
/// | `timeout = "5s"` | gives up an execution after that long (default 5 s) |
/// | `escalate = pagerduty` / `escalate = "pagerduty"` | the escalation, looked up by name at startup (default `log`) |
///
/// `strategy`, `delay` and `immediate` exclude each other. Durations use
/// humantime's syntax: `500ms`, `5s`, `10m`, `1h`, `1h30m`.
#[proc_macro_attribute]
pub fn check(args: TokenStream, item: TokenStream) -> TokenStream {
    check::expand(args.into(), item.into()).into()
}

/// Derives `DataView` for a struct: one `#[root]` field and any number of
/// `#[join(..)]` fields.
///
/// ```
/// use overseer_core::{DataView, Record};
///
/// # #[derive(serde::Deserialize, Record)]
/// # #[record(model = "transfers")]
/// # struct Transfer { account_id: String }
/// # #[derive(serde::Deserialize, Record)]
/// # #[record(model = "ledger_entries")]
/// # struct LedgerEntry { amount_minor: i64 }
/// # #[derive(serde::Deserialize, Record)]
/// # #[record(model = "bank_payments")]
/// # struct BankPayment { state: String }
/// #[derive(DataView)]
/// struct TransferView {
///     /// The record the view is about (`Transfer: Record`).
///     #[root]
///     transfer: Transfer,
///     /// Every ledger entry whose `transfer_id` points at the transfer.
///     #[join(on = "transfer_id")]
///     ledger: Vec<LedgerEntry>,
///     /// At most one bank payment pointing at the transfer.
///     #[join(on = "transfer_id")]
///     payment: Option<BankPayment>,
///     /// Exactly one record the transfer's `account_id` points at, of a
///     /// model named here because `serde_json::Value` has no `Record` impl.
///     #[join(via = "account_id", model = "accounts")]
///     account: serde_json::Value,
/// }
/// # fn main() {}
/// ```
///
/// - `#[root]` loads the root record; its model is `<T as Record>::MODEL`,
///   or named with `#[root(model = "...")]` for any `DeserializeOwned` type.
/// - `#[join(on = "field")]`: the records of the joined model whose `field`
///   points at the root (`JoinDirection::Referrers`).
/// - `#[join(via = "field")]`: the records the root's `field` points at
///   (`JoinDirection::Referenced`).
/// - `model = "..."` on a join names its model, else `<T as Record>::MODEL`.
/// - A join field of type `Vec<T>` holds every record found, `Option<T>`
///   at most one, and `T` exactly one (none is `ViewError::Missing`; more
///   than one fitting is `ViewError::Cardinality`).
#[proc_macro_derive(DataView, attributes(root, join))]
pub fn derive_data_view(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    data_view::expand(input).into()
}

/// Derives `Record`, binding a type to the model whose records deserialize
/// into it. The type must also derive (or implement) serde's `Deserialize`.
///
/// ```
/// use overseer_core::Record;
///
/// #[derive(serde::Deserialize, Record)]
/// #[record(model = "transfers")]
/// struct Transfer {
///     status: String,
///     amount_minor: i64,
/// }
///
/// assert_eq!(<Transfer as Record>::MODEL, "transfers");
/// ```
#[proc_macro_derive(Record, attributes(record))]
pub fn derive_record(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    record::expand(input).into()
}
