//! Comparing a legacy result with a new one: the [`Compare`] trait and the
//! option-built JSON [`Comparator`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Compares the legacy and the new result of one call, both serialized to
/// JSON with serde.
///
/// Implement it for custom comparisons; [`Comparator`] covers the usual ones
/// (ignored fields, numeric tolerance, an old→new shape mapping). A closure
/// `Fn(&str, &Value, &Value) -> Comparison` is a `Compare` too.
///
/// Comparisons run on a blocking thread off the caller's path; they should
/// still be cheap, since a slow comparator fills the comparison queue and
/// later comparisons are then sampled away. A comparator that panics is
/// contained and counted ([`MigrationStats::comparator_panics`](super::MigrationStats)).
///
/// ```
/// use overseer_core::migration::{Compare, Comparison, Difference};
/// use serde_json::{Value, json};
///
/// /// Balances must match to the cent; everything else is ignored.
/// fn balances(_operation: &str, legacy: &Value, new: &Value) -> Comparison {
///     if legacy["cents"] == new["balance_minor"] {
///         Comparison::matched()
///     } else {
///         Comparison::differs(vec![Difference::new("cents", Some(legacy["cents"].clone()), None)])
///     }
/// }
/// assert!(balances.compare("get", &json!({"cents": 5}), &json!({"balance_minor": 5})).is_match());
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot compare migration results",
    note = "use `Comparator::new()` with options, a closure `|operation: &str, legacy: &Value, new: &Value| -> Comparison`, or implement `Compare`"
)]
pub trait Compare: Send + Sync + 'static {
    /// Compares the results of `operation`: `legacy` from the legacy store,
    /// `new` from the new one.
    fn compare(&self, operation: &str, legacy: &Value, new: &Value) -> Comparison;
}

impl<F> Compare for F
where
    F: Fn(&str, &Value, &Value) -> Comparison + Send + Sync + 'static,
{
    fn compare(&self, operation: &str, legacy: &Value, new: &Value) -> Comparison {
        self(operation, legacy, new)
    }
}

/// The outcome of one comparison: the differences found (none: a match).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// What differs, in document order (capped by
    /// [`Comparator::max_differences`]).
    pub differences: Vec<Difference>,
}

impl Comparison {
    /// The results match.
    pub fn matched() -> Self {
        Self::default()
    }

    /// The results differ as described (an empty list is a match).
    pub fn differs(differences: Vec<Difference>) -> Self {
        Self { differences }
    }

    /// Whether the results match.
    pub fn is_match(&self) -> bool {
        self.differences.is_empty()
    }
}

/// One difference between the legacy and the new result.
///
/// Stored in discrepancy records as `{"path": .., "legacy": .., "new": ..}`;
/// a side where the field is missing has no key (a `null` value is kept as
/// `null`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// Where: a dotted path into the new shape (`balance.amount`, `lines.2`;
    /// empty for the whole value).
    pub path: String,
    /// The legacy value there (`None`: missing).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub legacy: Option<Value>,
    /// The new value there (`None`: missing).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub new: Option<Value>,
}

impl Difference {
    /// A difference at `path`.
    pub fn new(path: impl Into<String>, legacy: Option<Value>, new: Option<Value>) -> Self {
        Self {
            path: path.into(),
            legacy,
            new,
        }
    }
}

/// Deserializes a field that is present (even as `null`) into `Some`; with
/// `#[serde(default)]`, a missing field is `None`.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A dotted path pattern, split into segments; `*` matches any one segment.
#[derive(Clone, Debug, PartialEq)]
struct Pattern(Vec<String>);

impl Pattern {
    fn parse(path: &str) -> Self {
        Self(
            path.split('.')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    fn matches(&self, path: &[String]) -> bool {
        self.0.len() == path.len() && self.0.iter().zip(path).all(|(p, s)| p == "*" || p == s)
    }
}

type MapFn = Arc<dyn Fn(Value) -> Value + Send + Sync>;

/// The JSON comparator, built from options.
///
/// Both results are serialized with serde; then, in this order:
///
/// 1. [`map_legacy`](Self::map_legacy) turns the legacy value into the new
///    shape (any function), then every [`rename`](Self::rename) moves a
///    legacy field to its new path;
/// 2. the values are walked together: objects field by field (fields of
///    either side), arrays index by index, anything else by value;
/// 3. [`ignore`](Self::ignore)d paths are skipped; numbers are equal when
///    they differ by at most the [tolerance](Self::tolerance) of their path
///    (`1` equals `1.0`); with [`numeric_strings`](Self::numeric_strings),
///    `"10.50"` equals `10.5`; with
///    [`null_equals_missing`](Self::null_equals_missing), a `null` field
///    equals an absent one.
///
/// Paths are dotted (`balance.amount`, array indices as numbers:
/// `lines.0.amount`); in patterns, `*` matches any one segment
/// (`lines.*.id`).
///
/// ```
/// use overseer_core::migration::{Compare, Comparator};
/// use serde_json::json;
///
/// let comparator = Comparator::new()
///     .ignore("updated_at")
///     .ignore("lines.*.internal_id")
///     .tolerance_at("fx_rate", 1e-6)
///     .rename("amount_cents", "amount.minor");
/// let legacy = json!({"amount_cents": 1050, "fx_rate": 1.0000001, "updated_at": "x",
///                     "lines": [{"internal_id": 1, "sku": "a"}]});
/// let new = json!({"amount": {"minor": 1050}, "fx_rate": 1.0, "updated_at": "y",
///                  "lines": [{"internal_id": 9, "sku": "a"}]});
/// assert!(comparator.compare("get_payment", &legacy, &new).is_match());
///
/// let new = json!({"amount": {"minor": 1049}, "fx_rate": 1.0, "lines": [{"sku": "a"}]});
/// let found = comparator.compare("get_payment", &legacy, &new);
/// assert_eq!(found.differences.len(), 1);
/// assert_eq!(found.differences[0].path, "amount.minor");
/// ```
#[derive(Clone)]
pub struct Comparator {
    ignored: Vec<Pattern>,
    tolerance: f64,
    tolerances: Vec<(Pattern, f64)>,
    numeric_strings: bool,
    null_equals_missing: bool,
    renames: Vec<(Vec<String>, Vec<String>)>,
    map_legacy: Option<MapFn>,
    max_differences: usize,
}

impl fmt::Debug for Comparator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Comparator")
            .field("ignored", &self.ignored)
            .field("tolerance", &self.tolerance)
            .field("tolerances", &self.tolerances)
            .field("numeric_strings", &self.numeric_strings)
            .field("null_equals_missing", &self.null_equals_missing)
            .field("renames", &self.renames)
            .field("map_legacy", &self.map_legacy.is_some())
            .field("max_differences", &self.max_differences)
            .finish()
    }
}

impl Default for Comparator {
    fn default() -> Self {
        Self::new()
    }
}

/// The default cap on the differences kept per comparison.
pub const DEFAULT_MAX_DIFFERENCES: usize = 32;

/// A tolerance as given: negative values count as their magnitude, NaN as 0.
fn sane_tolerance(t: f64) -> f64 {
    if t.is_nan() { 0.0 } else { t.abs() }
}

impl Comparator {
    /// Exact comparison: no field ignored, no tolerance, no mapping.
    pub fn new() -> Self {
        Self {
            ignored: Vec::new(),
            tolerance: 0.0,
            tolerances: Vec::new(),
            numeric_strings: false,
            null_equals_missing: false,
            renames: Vec::new(),
            map_legacy: None,
            max_differences: DEFAULT_MAX_DIFFERENCES,
        }
    }

    /// Skips the field at `path` (a dotted pattern; `*` matches any one
    /// segment) and everything below it.
    pub fn ignore(mut self, path: &str) -> Self {
        self.ignored.push(Pattern::parse(path));
        self
    }

    /// The absolute tolerance of every number (default 0: numerically
    /// equal). A negative tolerance counts as its magnitude, NaN as 0.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = sane_tolerance(tolerance);
        self
    }

    /// The absolute tolerance of the numbers at `path` (a pattern), instead
    /// of the global one. The first matching pattern wins.
    pub fn tolerance_at(mut self, path: &str, tolerance: f64) -> Self {
        self.tolerances
            .push((Pattern::parse(path), sane_tolerance(tolerance)));
        self
    }

    /// Compares strings that hold numbers (`"10.50"`) numerically with
    /// numbers and with each other: for stores that keep decimals as text.
    pub fn numeric_strings(mut self) -> Self {
        self.numeric_strings = true;
        self
    }

    /// Treats a field that is `null` like a field that is absent.
    pub fn null_equals_missing(mut self) -> Self {
        self.null_equals_missing = true;
        self
    }

    /// Moves the legacy field at `legacy_path` to `new_path` before
    /// comparing (object fields only, no `*`; intermediate objects are
    /// created). Renames apply in the order given, after
    /// [`map_legacy`](Self::map_legacy).
    pub fn rename(mut self, legacy_path: &str, new_path: &str) -> Self {
        self.renames
            .push((Pattern::parse(legacy_path).0, Pattern::parse(new_path).0));
        self
    }

    /// Maps the whole legacy value into the new shape before comparing
    /// (for shapes that renames cannot express). Replaces an earlier mapping.
    pub fn map_legacy(mut self, map: impl Fn(Value) -> Value + Send + Sync + 'static) -> Self {
        self.map_legacy = Some(Arc::new(map));
        self
    }

    /// At most `max` differences are kept per comparison (default
    /// [`DEFAULT_MAX_DIFFERENCES`]; at least 1).
    pub fn max_differences(mut self, max: usize) -> Self {
        self.max_differences = max.max(1);
        self
    }

    /// The legacy value in the new shape: mapped, then renamed.
    pub fn to_new_shape(&self, legacy: &Value) -> Value {
        let mut value = match &self.map_legacy {
            Some(map) => map(legacy.clone()),
            None => legacy.clone(),
        };
        for (from, to) in &self.renames {
            if let Some(moved) = take_path(&mut value, from)
                && let Err(moved) = put_path(&mut value, to, moved)
            {
                // The new path is blocked by a non-object: leave the
                // field where it was, so the difference shows.
                let _ = put_path(&mut value, from, moved);
            }
        }
        value
    }

    fn tolerance_for(&self, path: &[String]) -> f64 {
        self.tolerances
            .iter()
            .find(|(p, _)| p.matches(path))
            .map_or(self.tolerance, |(_, t)| *t)
    }

    fn walk(
        &self,
        path: &mut Vec<String>,
        legacy: Option<&Value>,
        new: Option<&Value>,
        out: &mut Vec<Difference>,
    ) {
        if out.len() >= self.max_differences || self.ignored.iter().any(|p| p.matches(path)) {
            return;
        }
        match (legacy, new) {
            (None, None) => {}
            (Some(Value::Object(a)), Some(Value::Object(b))) => self.walk_objects(path, a, b, out),
            (Some(Value::Array(a)), Some(Value::Array(b))) => {
                for i in 0..a.len().max(b.len()) {
                    path.push(i.to_string());
                    self.walk(path, a.get(i), b.get(i), out);
                    path.pop();
                }
            }
            (Some(a), Some(b)) if self.scalars_equal(path, a, b) => {}
            (a, b) => out.push(Difference::new(path.join("."), a.cloned(), b.cloned())),
        }
    }

    fn normalize<'v>(&self, value: Option<&'v Value>) -> Option<&'v Value> {
        match value {
            Some(Value::Null) if self.null_equals_missing => None,
            other => other,
        }
    }

    fn walk_objects(
        &self,
        path: &mut Vec<String>,
        a: &Map<String, Value>,
        b: &Map<String, Value>,
        out: &mut Vec<Difference>,
    ) {
        for (k, va) in a {
            path.push(k.clone());
            self.walk(path, self.normalize(Some(va)), self.normalize(b.get(k)), out);
            path.pop();
        }
        for (k, vb) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
            path.push(k.clone());
            self.walk(path, None, self.normalize(Some(vb)), out);
            path.pop();
        }
    }

    fn number_of(&self, v: &Value) -> Option<Num> {
        match v {
            Value::Number(n) => Num::of(n),
            Value::String(s) if self.numeric_strings => {
                let s = s.trim();
                if let Ok(i) = s.parse::<i128>() {
                    Some(Num::Int(i))
                } else {
                    s.parse::<f64>().ok().filter(|f| f.is_finite()).map(Num::Float)
                }
            }
            _ => None,
        }
    }

    fn scalars_equal(&self, path: &[String], a: &Value, b: &Value) -> bool {
        if a == b {
            return true;
        }
        match (self.number_of(a), self.number_of(b)) {
            (Some(x), Some(y)) => x.within(y, self.tolerance_for(path)),
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn of(n: &serde_json::Number) -> Option<Self> {
        if let Some(i) = n.as_i64() {
            Some(Num::Int(i128::from(i)))
        } else if let Some(u) = n.as_u64() {
            Some(Num::Int(i128::from(u)))
        } else {
            n.as_f64().map(Num::Float)
        }
    }

    fn within(self, other: Num, tolerance: f64) -> bool {
        match (self, other) {
            // Exact for integers of any size: no rounding through f64.
            (Num::Int(a), Num::Int(b)) => {
                let d = a.abs_diff(b);
                d == 0 || (d as f64) <= tolerance
            }
            // An integral float within range compares exactly with an
            // integer (no rounding of the integer through f64).
            (Num::Int(i), Num::Float(f)) | (Num::Float(f), Num::Int(i))
                if f.fract() == 0.0 && f.abs() < 1.0e38 =>
            {
                Num::Int(i).within(Num::Int(f as i128), tolerance)
            }
            (a, b) => (a.as_f64() - b.as_f64()).abs() <= tolerance,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

impl Compare for Comparator {
    fn compare(&self, _operation: &str, legacy: &Value, new: &Value) -> Comparison {
        let legacy = self.to_new_shape(legacy);
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), Some(&legacy), Some(new), &mut out);
        Comparison::differs(out)
    }
}

/// Removes and returns the value at an object path.
fn take_path(value: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut at = value;
    for seg in parents {
        at = at.as_object_mut()?.get_mut(seg)?;
    }
    at.as_object_mut()?.remove(last)
}

/// Puts a value at an object path, creating objects on the way; a
/// non-object on the way gives the value back.
fn put_path(value: &mut Value, path: &[String], moved: Value) -> Result<(), Value> {
    let Some((last, parents)) = path.split_last() else {
        *value = moved;
        return Ok(());
    };
    let mut at = value;
    for seg in parents {
        let Some(map) = at.as_object_mut() else {
            return Err(moved);
        };
        at = map
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    match at.as_object_mut() {
        Some(map) => {
            map.insert(last.clone(), moved);
            Ok(())
        }
        None => Err(moved),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paths(c: &Comparator, legacy: Value, new: Value) -> Vec<String> {
        c.compare("op", &legacy, &new)
            .differences
            .into_iter()
            .map(|d| d.path)
            .collect()
    }

    #[test]
    fn exact_by_default() {
        let c = Comparator::new();
        assert!(paths(&c, json!({"a": 1, "b": [1, 2]}), json!({"a": 1, "b": [1, 2]})).is_empty());
        assert_eq!(paths(&c, json!({"a": 1}), json!({"a": 2})), ["a"]);
        assert_eq!(paths(&c, json!({"a": 1}), json!({"b": 1})), ["a", "b"]);
        assert_eq!(paths(&c, json!([1]), json!([1, 2])), ["1"]);
        assert_eq!(paths(&c, json!(1), json!("1")), [""]);
        // Numerically equal numbers match.
        assert!(paths(&c, json!({"a": 1}), json!({"a": 1.0})).is_empty());
        assert_eq!(paths(&c, json!({"a": 1}), json!({"a": 1.001})), ["a"]);
    }

    #[test]
    fn differences_carry_both_sides() {
        let found = Comparator::new().compare("op", &json!({"a": null, "b": 1}), &json!({"c": 2}));
        assert_eq!(
            found.differences,
            vec![
                Difference::new("a", Some(Value::Null), None),
                Difference::new("b", Some(json!(1)), None),
                Difference::new("c", None, Some(json!(2))),
            ]
        );
        // Missing stays missing through serde, null stays null.
        let text = serde_json::to_string(&found.differences).unwrap();
        assert_eq!(
            text,
            r#"[{"path":"a","legacy":null},{"path":"b","legacy":1},{"path":"c","new":2}]"#
        );
        let back: Vec<Difference> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, found.differences);
    }

    #[test]
    fn ignored_fields_and_wildcards() {
        let c = Comparator::new()
            .ignore("updated_at")
            .ignore("lines.*.id")
            .ignore("meta");
        let legacy = json!({"updated_at": 1, "meta": {"x": 1}, "lines": [{"id": 1, "q": 2}], "k": 1});
        let new = json!({"updated_at": 2, "lines": [{"id": 7, "q": 2}], "k": 1});
        assert!(paths(&c, legacy.clone(), new).is_empty());
        let new = json!({"updated_at": 2, "lines": [{"id": 7, "q": 3}], "k": 1});
        assert_eq!(paths(&c, legacy, new), ["lines.0.q"]);
    }

    #[test]
    fn numeric_tolerance_global_and_per_field() {
        let c = Comparator::new().tolerance(0.01).tolerance_at("rate", 0.0);
        assert!(paths(&c, json!({"a": 1.0, "n": 100}), json!({"a": 1.005, "n": 100.005})).is_empty());
        assert_eq!(paths(&c, json!({"a": 1.0}), json!({"a": 1.02})), ["a"]);
        assert_eq!(paths(&c, json!({"rate": 1.0}), json!({"rate": 1.005})), ["rate"]);
        // Big integers compare exactly, without rounding through f64.
        let c = Comparator::new();
        assert_eq!(
            paths(
                &c,
                json!(9_007_199_254_740_993_u64),
                json!(9_007_199_254_740_992_u64)
            ),
            [""]
        );
        // Invalid tolerances are made harmless.
        let c = Comparator::new().tolerance(f64::NAN);
        assert_eq!(paths(&c, json!(1.0), json!(1.5)), [""]);
        let c = Comparator::new().tolerance(-1.0);
        assert!(paths(&c, json!(1.0), json!(1.5)).is_empty());
    }

    #[test]
    fn numeric_strings_and_nulls() {
        let c = Comparator::new().numeric_strings();
        assert!(paths(&c, json!({"a": "10.50"}), json!({"a": 10.5})).is_empty());
        assert!(paths(&c, json!({"a": "7"}), json!({"a": "7.0"})).is_empty());
        assert_eq!(paths(&c, json!({"a": "abc"}), json!({"a": 1})), ["a"]);
        assert_eq!(
            paths(&Comparator::new(), json!({"a": "1"}), json!({"a": 1})),
            ["a"]
        );

        let c = Comparator::new().null_equals_missing();
        assert!(paths(&c, json!({"a": null, "b": 1}), json!({"b": 1})).is_empty());
        assert_eq!(paths(&c, json!({"a": null}), json!({"a": 0})), ["a"]);
    }

    #[test]
    fn old_to_new_mapping() {
        let c = Comparator::new()
            .map_legacy(|mut v| {
                // The legacy store kept the status as a code.
                if let Some(code) = v.get("status_code").and_then(Value::as_i64) {
                    let status = if code == 1 { "active" } else { "closed" };
                    if let Some(map) = v.as_object_mut() {
                        map.remove("status_code");
                        map.insert("status".into(), json!(status));
                    }
                }
                v
            })
            .rename("balance_cents", "balance.minor")
            .rename("currency", "balance.currency");
        let legacy = json!({"status_code": 1, "balance_cents": 500, "currency": "EUR"});
        let new = json!({"status": "active", "balance": {"minor": 500, "currency": "EUR"}});
        assert!(paths(&c, legacy.clone(), new).is_empty());
        let new = json!({"status": "closed", "balance": {"minor": 501, "currency": "EUR"}});
        assert_eq!(paths(&c, legacy.clone(), new), ["balance.minor", "status"]);
        // The mapping does not change the caller's value.
        assert_eq!(legacy["balance_cents"], 500);
        // A rename whose source is missing does nothing; one blocked by a
        // non-object leaves the field where it was.
        let c = Comparator::new().rename("missing", "x").rename("a", "b.c");
        assert_eq!(paths(&c, json!({"a": 1, "b": 2}), json!({"b": 2})), ["a"]);
    }

    #[test]
    fn differences_are_capped() {
        let c = Comparator::new().max_differences(2);
        let found = c.compare("op", &json!([1, 2, 3, 4]), &json!([5, 6, 7, 8]));
        assert_eq!(found.differences.len(), 2);
        let c = Comparator::new().max_differences(0);
        assert_eq!(
            c.compare("op", &json!([1, 2]), &json!([5, 6])).differences.len(),
            1
        );
    }

    #[test]
    fn closures_are_comparators() {
        let always = |_: &str, _: &Value, _: &Value| Comparison::matched();
        assert!(always.compare("op", &json!(1), &json!(2)).is_match());
    }
}
