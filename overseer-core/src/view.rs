//! Data views: what a check declares it reads, and how it is loaded.
//!
//! A data view is a plain struct that knows (1) which models it reads, so
//! the runner can select checks and wait for the right sources, and (2) how
//! to load itself for one root record as of one time. `#[derive(DataView)]`
//! writes both; implementing the trait by hand is equally supported.

use std::future::Future;

use serde::de::DeserializeOwned;

use crate::dal::{Dal, deserialize};
use crate::error::Error;
use crate::model::{Model, RecordKey};
use crate::time::Timestamp;

/// Which way a join goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum JoinDirection {
    /// Records of the joined model whose field points at the root.
    Referrers,
    /// The record(s) of the joined model that the root's field points at.
    Referenced,
}

/// One joined model of a view.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct JoinSpec {
    /// The joined model.
    pub model: &'static str,
    /// The field holding the reference (on the joined record for
    /// [`JoinDirection::Referrers`], on the root for
    /// [`JoinDirection::Referenced`]).
    pub on: &'static str,
    /// Which way the reference points.
    pub direction: JoinDirection,
}

/// What a view reads: the model of its root record and its joins.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ViewSpec {
    /// The model whose records the view is about.
    pub root: &'static str,
    /// The joined models.
    pub joins: Vec<JoinSpec>,
}

impl ViewSpec {
    /// Every model the view reads, root first.
    pub fn models(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.root).chain(self.joins.iter().map(|j| j.model))
    }
}

/// Why a view could not be loaded. Loading failures are *indeterminate*:
/// they say nothing about whether the systems agree, and must never be
/// escalated as a disagreement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// A record the view needs does not exist at the view's time.
    #[error("record {key} does not exist at {at}")]
    Missing {
        /// The record.
        key: RecordKey,
        /// The view's time.
        at: Timestamp,
    },
    /// A join found a number of records its field cannot hold (several
    /// records for a `T` or `Option<T>` field).
    #[error("join of {model} for {root} found {found} records where at most one fits")]
    Cardinality {
        /// The root record.
        root: RecordKey,
        /// The joined model.
        model: &'static str,
        /// How many records were found.
        found: usize,
    },
    /// The store or a builder failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// A user type bound to a model: the records of `MODEL` deserialize into it.
///
/// ```
/// use overseer_core::view::Record;
/// #[derive(serde::Deserialize)]
/// struct LedgerEntry { amount_minor: i64 }
/// impl Record for LedgerEntry { const MODEL: &'static str = "ledger_entries"; }
/// ```
///
/// `#[derive(Record)]` with `#[record(model = "ledger_entries")]` writes it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not bound to a model",
    note = "add `#[derive(Record)]` and `#[record(model = \"...\")]` to `{Self}`, or name the model on the field: `#[join(model = \"...\", on = \"...\")]`"
)]
pub trait Record: DeserializeOwned + Send + 'static {
    /// The model whose records this type reads.
    const MODEL: &'static str;
}

/// Everything a [`DataView`] needs to load itself: the DAL, the root record
/// and the consistent time it is loaded as of.
#[derive(Clone, Copy, Debug)]
pub struct ViewContext<'a> {
    dal: &'a Dal,
    root: &'a RecordKey,
    at: Timestamp,
}

impl<'a> ViewContext<'a> {
    /// A context for loading the view of `root` as of `at`.
    pub fn new(dal: &'a Dal, root: &'a RecordKey, at: Timestamp) -> Self {
        Self { dal, root, at }
    }

    /// The root record.
    pub fn root(&self) -> &RecordKey {
        self.root
    }

    /// The time the view is loaded as of.
    pub fn at(&self) -> Timestamp {
        self.at
    }

    /// The DAL, for views that need more than joins.
    pub fn dal(&self) -> &Dal {
        self.dal
    }

    /// The root record's state as `T`; [`ViewError::Missing`] if it does not exist.
    pub async fn root_as<T: DeserializeOwned>(&self) -> Result<T, ViewError> {
        match self.dal.shared_state_at(self.root, self.at).await? {
            Some(state) => Ok(deserialize(self.root, &state)?),
            None => Err(ViewError::Missing {
                key: self.root.clone(),
                at: self.at,
            }),
        }
    }

    /// The records of `model` whose `on` field points at the root, as `T`,
    /// ordered by id.
    pub async fn referrers_as<T: DeserializeOwned>(
        &self,
        model: &str,
        on: &str,
    ) -> Result<Vec<T>, ViewError> {
        let model = Model::new(model)?;
        let found = self.dal.referrers(self.root, &model, on, self.at).await?;
        Ok(found
            .into_iter()
            .map(|(key, state)| deserialize(&key, &state))
            .collect::<Result<_, Error>>()?)
    }

    /// Exactly one joined record: none is [`ViewError::Missing`] (of the
    /// root), several a [`ViewError::Cardinality`] error.
    pub fn one<T>(&self, model: &'static str, mut found: Vec<T>) -> Result<T, ViewError> {
        match found.len() {
            1 => found.pop().ok_or_else(|| unreachable_missing(self)),
            0 => Err(ViewError::Missing {
                key: self.root.clone(),
                at: self.at,
            }),
            n => Err(ViewError::Cardinality {
                root: self.root.clone(),
                model,
                found: n,
            }),
        }
    }

    /// At most one joined record: several are a [`ViewError::Cardinality`] error.
    pub fn optional<T>(&self, model: &'static str, mut found: Vec<T>) -> Result<Option<T>, ViewError> {
        match found.len() {
            0 | 1 => Ok(found.pop()),
            n => Err(ViewError::Cardinality {
                root: self.root.clone(),
                model,
                found: n,
            }),
        }
    }

    /// The records of `model` that the root's `on` field points at, as `T`.
    pub async fn referenced_as<T: DeserializeOwned>(
        &self,
        on: &str,
        model: &str,
    ) -> Result<Vec<T>, ViewError> {
        let model = Model::new(model)?;
        let found = self.dal.referenced(self.root, on, &model, self.at).await?;
        Ok(found
            .into_iter()
            .map(|(key, state)| deserialize(&key, &state))
            .collect::<Result<_, Error>>()?)
    }
}

fn unreachable_missing(ctx: &ViewContext<'_>) -> ViewError {
    ViewError::Missing {
        key: ctx.root.clone(),
        at: ctx.at,
    }
}

/// A typed, consistent view of the records one check needs.
///
/// Implement it by hand or with `#[derive(DataView)]`:
///
/// ```
/// use overseer_core::view::{DataView, JoinDirection, JoinSpec, ViewContext, ViewError, ViewSpec};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Transfer { status: String }
/// #[derive(Deserialize)]
/// struct LedgerEntry { amount_minor: i64 }
///
/// struct TransferView {
///     transfer: Transfer,
///     ledger: Vec<LedgerEntry>,
/// }
///
/// impl DataView for TransferView {
///     fn spec() -> ViewSpec {
///         ViewSpec {
///             root: "transfers",
///             joins: vec![JoinSpec {
///                 model: "ledger_entries",
///                 on: "transfer_id",
///                 direction: JoinDirection::Referrers,
///             }],
///         }
///     }
///
///     async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> {
///         Ok(Self {
///             transfer: ctx.root_as().await?,
///             ledger: ctx.referrers_as("ledger_entries", "transfer_id").await?,
///         })
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a data view",
    note = "a check takes one argument whose type implements `DataView`: add `#[derive(DataView)]` to `{Self}` or implement the trait by hand"
)]
pub trait DataView: Sized + Send + 'static {
    /// What the view reads.
    fn spec() -> ViewSpec;

    /// Loads the view for the context's root record as of its time.
    fn load(ctx: &ViewContext<'_>) -> impl Future<Output = Result<Self, ViewError>> + Send;
}
