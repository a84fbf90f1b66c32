//! The data-quality faults of `transform_buggy.sql`, and how verification's
//! findings name them.

use std::collections::BTreeSet;
use std::fmt;

use overseer_builders::migrate::verify::VerifyReport;
use serde::Serialize;

/// A kind of fault of the buggy transformation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Both entries of the transaction are missing.
    Dropped,
    /// The debit entry (`2T`) has the wrong sign.
    WrongSign,
    /// The credit entry (`2T + 1`) is rounded to whole units.
    Rounding,
}

impl FaultKind {
    /// The kind's name: `dropped`, `wrong_sign`, `rounding`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Dropped => "dropped",
            FaultKind::WrongSign => "wrong_sign",
            FaultKind::Rounding => "rounding",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fault: its kind and the legacy transaction id it hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Fault {
    /// The kind.
    pub kind: FaultKind,
    /// The legacy transaction id (`tx_id`; its entries are `2T` and `2T + 1`).
    pub tx: i64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on transaction {}", self.kind, self.tx)
    }
}

/// The faults `transform_buggy.sql` applies to legacy transaction `tx` (the
/// same conditions as the SQL file; a dropped transaction has no other).
pub fn faults_of(tx: i64) -> Vec<FaultKind> {
    if tx % 1499 == 2 {
        return vec![FaultKind::Dropped];
    }
    let mut kinds = Vec::new();
    if tx % 1201 == 3 {
        kinds.push(FaultKind::WrongSign);
    }
    if tx % 997 == 1 {
        kinds.push(FaultKind::Rounding);
    }
    kinds
}

/// What verification's findings say, as faults, and the findings it could
/// not attribute to a known fault.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Classified {
    /// Findings recognized as faults.
    pub faults: BTreeSet<Fault>,
    /// Findings that match no known fault, described.
    pub other: Vec<String>,
}

/// Names the faults behind verification's findings: a missing pair of
/// entries is a dropped transaction, a negated debit a wrong sign, a credit
/// equal to the legacy amount rounded to whole units a rounding error.
/// `confirmed` keeps only the entry ids still differing after in-flight
/// writes settled (see `recheck` in the runner).
pub fn classify(report: &VerifyReport, confirmed: &BTreeSet<i64>) -> Classified {
    let mut out = Classified::default();
    let Some(cmp) = &report.comparison else {
        return out;
    };
    let missing: BTreeSet<i64> = cmp
        .missing_in_new
        .items
        .iter()
        .copied()
        .filter(|id| confirmed.contains(id))
        .collect();
    for &id in &missing {
        let tx = id.div_euclid(2);
        let pair = [tx * 2, tx * 2 + 1];
        if pair.iter().all(|e| missing.contains(e)) {
            out.faults.insert(Fault {
                kind: FaultKind::Dropped,
                tx,
            });
        } else {
            out.other.push(format!("entry {id} is missing in the new store"));
        }
    }
    for id in cmp
        .missing_in_legacy
        .items
        .iter()
        .filter(|id| confirmed.contains(id))
    {
        out.other.push(format!("entry {id} is in the new store only"));
    }
    for row in cmp.differing.items.iter().filter(|r| confirmed.contains(&r.id)) {
        let tx = row.id.div_euclid(2);
        let debit = row.id.rem_euclid(2) == 0;
        let mut recognized = false;
        if let [field] = row.fields.as_slice() {
            let parse = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<i64>().ok());
            if let (true, Some(legacy), Some(new)) = (
                field.column == "amount_minor",
                parse(&field.legacy),
                parse(&field.new),
            ) {
                if debit && new == -legacy && legacy != 0 {
                    out.faults.insert(Fault {
                        kind: FaultKind::WrongSign,
                        tx,
                    });
                    recognized = true;
                } else if !debit && new == round_units(legacy) {
                    out.faults.insert(Fault {
                        kind: FaultKind::Rounding,
                        tx,
                    });
                    recognized = true;
                }
            }
        }
        if !recognized {
            let fields: Vec<String> = row
                .fields
                .iter()
                .map(|f| format!("{}: legacy {:?} new {:?}", f.column, f.legacy, f.new))
                .collect();
            out.other
                .push(format!("entry {} differs: {}", row.id, fields.join(", ")));
        }
    }
    out
}

/// `minor` (cents) rounded half away from zero to whole units, in cents:
/// what `round(numeric) * 100` gives.
fn round_units(minor: i64) -> i64 {
    let units = (minor.abs() + 50) / 100;
    units * 100 * minor.signum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_sql_round() {
        assert_eq!(round_units(1234), 1200);
        assert_eq!(round_units(1250), 1300);
        assert_eq!(round_units(-1250), -1300);
        assert_eq!(round_units(49), 0);
    }

    #[test]
    fn dropped_excludes_the_others() {
        // 1499 * 1201 * 997 is far beyond any run, but the precedence holds.
        assert_eq!(faults_of(2), vec![FaultKind::Dropped]);
        assert_eq!(faults_of(3), vec![FaultKind::WrongSign]);
        assert_eq!(faults_of(1), vec![FaultKind::Rounding]);
        assert!(faults_of(4).is_empty());
    }
}
