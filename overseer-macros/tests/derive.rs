//! `#[derive(Record)]` and `#[derive(DataView)]` through overseer-core: the
//! derived views load from a real (in-memory) store.

mod support;

use overseer_core::view::{JoinDirection, JoinSpec, ViewSpec};
use overseer_core::{DataView, Record, Timestamp, ViewContext, ViewError};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::{Account, BankPayment, LATER, LedgerEntry, Transfer, TransferView, fixture, transfer};

/// A view whose plain `T` join must find exactly one record, through a field
/// of the root (`via`), of a model named on the field.
#[derive(Debug, DataView)]
struct AccountView {
    #[root]
    transfer: Transfer,
    #[join(via = "account_id", model = "accounts")]
    account: Account,
}

/// A view over plain JSON: every model is named on its field.
#[derive(Debug, DataView)]
struct UntypedView {
    #[root(model = "transfers")]
    transfer: Value,
    #[join(on = "transfer_id", model = "ledger_entries")]
    ledger: Vec<Value>,
    #[join(via = "account_id", model = "accounts")]
    account: Option<Value>,
}

/// A `Record` with generics, to check the derive keeps them (and their bounds).
#[derive(Debug, Deserialize, Record)]
#[record(model = "ledger_entries")]
#[serde(bound = "T: DeserializeOwned")]
struct Generic<T: DeserializeOwned + Send + 'static> {
    amount_minor: T,
}

async fn load<V: DataView>(id: &str, at: Timestamp) -> Result<V, ViewError> {
    let dal = fixture().await;
    let root = transfer(id);
    V::load(&ViewContext::new(&dal, &root, at)).await
}

#[test]
fn record_binds_the_model() {
    assert_eq!(Transfer::MODEL, "transfers");
    assert_eq!(LedgerEntry::MODEL, "ledger_entries");
    assert_eq!(BankPayment::MODEL, "bank_payments");
    assert_eq!(<Generic<i64> as Record>::MODEL, "ledger_entries");
    let entry: Generic<i64> = serde_json::from_value(json!({"amount_minor": 5})).expect("fits");
    assert_eq!(entry.amount_minor, 5);
}

#[test]
fn spec_lists_the_root_and_every_join_in_order() {
    assert_eq!(
        TransferView::spec(),
        ViewSpec {
            root: "transfers",
            joins: vec![
                JoinSpec {
                    model: "ledger_entries",
                    on: "transfer_id",
                    direction: JoinDirection::Referrers,
                },
                JoinSpec {
                    model: "bank_payments",
                    on: "transfer_id",
                    direction: JoinDirection::Referrers,
                },
            ],
        }
    );
    assert_eq!(
        AccountView::spec(),
        ViewSpec {
            root: "transfers",
            joins: vec![JoinSpec {
                model: "accounts",
                on: "account_id",
                direction: JoinDirection::Referenced,
            }],
        }
    );
    assert_eq!(
        UntypedView::spec().models().collect::<Vec<_>>(),
        ["transfers", "ledger_entries", "accounts"]
    );
}

#[tokio::test]
async fn view_loads_root_vec_and_option_joins() {
    let view: TransferView = load("t1", LATER).await.expect("loads");
    assert_eq!(view.transfer.status, "completed");
    assert_eq!(view.transfer.account_id, "a1");
    assert_eq!(
        view.ledger,
        [
            LedgerEntry {
                transfer_id: "t1".into(),
                amount_minor: -1000,
            },
            LedgerEntry {
                transfer_id: "t1".into(),
                amount_minor: 1000,
            },
        ]
    );
    assert_eq!(view.payment, Some(BankPayment { amount_minor: 1000 }));
}

#[tokio::test]
async fn view_is_loaded_as_of_its_time() {
    // The second ledger entry commits at 12 and the payment at 20.
    let view: TransferView = load("t1", Timestamp::from_secs(11)).await.expect("loads");
    assert_eq!(view.ledger.len(), 1);
    assert_eq!(view.payment, None);
    let view: TransferView = load("t1", Timestamp::from_secs(15)).await.expect("loads");
    assert_eq!(view.ledger.len(), 2);
    assert_eq!(view.payment, None);
}

#[tokio::test]
async fn absent_joins_are_empty_and_none() {
    let view: TransferView = load("t2", LATER).await.expect("loads");
    assert_eq!(view.transfer.status, "pending");
    assert!(view.ledger.is_empty());
    assert_eq!(view.payment, None);
}

#[tokio::test]
async fn several_records_for_an_option_join_are_a_cardinality_error() {
    let error = load::<TransferView>("t4", LATER).await.expect_err("two payments");
    assert!(
        matches!(
            error,
            ViewError::Cardinality {
                model: "bank_payments",
                found: 2,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn plain_join_loads_the_referenced_record() {
    let view: AccountView = load("t1", LATER).await.expect("loads");
    assert_eq!(view.transfer.account_id, "a1");
    assert_eq!(
        view.account,
        Account {
            owner: "alice".into()
        }
    );
}

#[tokio::test]
async fn absent_plain_join_is_missing() {
    let error = load::<AccountView>("t3", LATER)
        .await
        .expect_err("no account `nobody`");
    assert!(
        matches!(&error, ViewError::Missing { key, .. } if *key == transfer("t3")),
        "{error:?}"
    );
}

#[tokio::test]
async fn absent_root_is_missing() {
    let error = load::<TransferView>("t404", LATER)
        .await
        .expect_err("no such transfer");
    assert!(
        matches!(&error, ViewError::Missing { key, .. } if *key == transfer("t404")),
        "{error:?}"
    );
    // Before the root was created, it is missing too.
    let error = load::<TransferView>("t1", Timestamp::from_secs(5))
        .await
        .expect_err("not yet");
    assert!(matches!(error, ViewError::Missing { .. }), "{error:?}");
}

#[tokio::test]
async fn untyped_view_names_its_models_on_the_fields() {
    let view: UntypedView = load("t1", LATER).await.expect("loads");
    assert_eq!(view.transfer["status"], json!("completed"));
    assert_eq!(view.ledger.len(), 2);
    assert_eq!(view.account, Some(json!({"owner": "alice"})));
    let view: UntypedView = load("t3", LATER).await.expect("loads");
    assert_eq!(view.account, None);
}
