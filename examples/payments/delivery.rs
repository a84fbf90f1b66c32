//! Delivery: when each source's change events reach Overseer.
//!
//! Each source has its own lag, which drifts slowly between a minimum and a
//! maximum (a piecewise-linear curve with a new random point every 30 s of
//! source time). A change stream is ordered, so an event is never delivered
//! before the one committed before it: delivery time is
//! `max(previous delivery, commit + lag(commit))`. One source may stall: its
//! delivery stops for a while, then everything held back arrives at once.
//!
//! An idle source proves it is alive with heartbeats, as a CDC connector
//! does: "everything committed up to `h` has been delivered", where `h` is
//! the source's own time seen through its lag, and never past the commit
//! time of the next event not yet delivered. A stalled source sends nothing.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::payments::sim::{Micros, Rng};

/// The three sources, in the order used everywhere in this example.
pub const SOURCES: [&str; 3] = ["transfers", "ledger", "bank"];

/// The index of a source named `name`.
pub fn source_index(name: &str) -> Option<usize> {
    SOURCES.iter().position(|s| *s == name)
}

/// A delivery lag: fixed, or drifting between two bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    /// The smallest lag.
    pub min: Duration,
    /// The largest lag.
    pub max: Duration,
}

impl Lag {
    /// The default lag of a source: transfers 50–300 ms, ledger 0.5–1.5 s
    /// (about a second), bank 5–30 s.
    pub fn default_for(source: usize) -> Lag {
        let ms = Duration::from_millis;
        match source {
            0 => Lag {
                min: ms(50),
                max: ms(300),
            },
            1 => Lag {
                min: ms(500),
                max: ms(1500),
            },
            _ => Lag {
                min: ms(5_000),
                max: ms(30_000),
            },
        }
    }
}

/// The longest delivery lag, stall or heartbeat the simulation accepts
/// ([`Config::validate`](crate::payments::Config::validate)).
pub const MAX_LAG: Duration = Duration::from_secs(24 * 3600);

impl FromStr for Lag {
    type Err = String;

    /// `2s` (fixed) or `5s..30s` (drifting between the two).
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |t: &str| {
            humantime::parse_duration(t.trim())
                .map_err(|e| format!("{t:?} is not a duration like 500ms or 5s: {e}"))
        };
        // How long a lag may be, `Config::validate` checks (for lags set in
        // code too).
        match s.split_once("..") {
            Some((a, b)) => {
                let (min, max) = (parse(a)?, parse(b)?);
                if min > max {
                    return Err(format!("lag range {s:?} has its minimum above its maximum"));
                }
                Ok(Lag { min, max })
            }
            None => {
                let d = parse(s)?;
                Ok(Lag { min: d, max: d })
            }
        }
    }
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", humantime::format_duration(self.min))
        } else {
            write!(
                f,
                "{}..{}",
                humantime::format_duration(self.min),
                humantime::format_duration(self.max)
            )
        }
    }
}

/// A lag that drifts over source time.
#[derive(Clone, Debug)]
pub struct LagCurve {
    start: Micros,
    step: Micros,
    knots: Vec<Micros>,
}

impl LagCurve {
    /// A curve for `lag` over `[start, end]` (constant outside).
    pub fn new(lag: Lag, start: Micros, end: Micros, rng: &mut Rng) -> Self {
        let step: Micros = 30_000_000;
        let (lo, hi) = (lag.min.as_micros() as i64, lag.max.as_micros() as i64);
        let n = ((end - start).max(0) / step + 2) as usize;
        let knots = (0..n).map(|_| rng.range(lo, hi)).collect();
        Self { start, step, knots }
    }

    /// The lag at source time `t`.
    pub fn at(&self, t: Micros) -> Micros {
        let offset = (t - self.start).max(0);
        let i = (offset / self.step) as usize;
        let Some(&a) = self.knots.get(i) else {
            return self.knots.last().copied().unwrap_or(0);
        };
        let b = self.knots.get(i + 1).copied().unwrap_or(a);
        let frac = (offset % self.step) as f64 / self.step as f64;
        a + ((b - a) as f64 * frac) as Micros
    }
}

/// A window of delivery time during which a source delivers nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The stalled source (index into [`SOURCES`]).
    pub source: usize,
    /// When delivery stops.
    pub from: Micros,
    /// When it resumes (and the backlog arrives).
    pub until: Micros,
}

impl Stall {
    /// Whether `source` is stalled at delivery time `t`.
    pub fn holds(&self, source: usize, t: Micros) -> bool {
        self.source == source && t >= self.from && t < self.until
    }
}

/// One source's delivery plan.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The lag curve.
    pub curve: LagCurve,
    /// Delivery time of each event, non-decreasing.
    pub at: Vec<Micros>,
}

/// Plans the delivery of one source's events, given their commit times.
pub fn plan(source: usize, commits: &[Micros], curve: LagCurve, stall: Option<Stall>) -> Delivery {
    let mut prev = Micros::MIN;
    let at = commits
        .iter()
        .map(|&commit| {
            let mut d = commit + curve.at(commit);
            if let Some(s) = stall
                && s.holds(source, d)
            {
                d = s.until;
            }
            d = d.max(prev);
            prev = d;
            d
        })
        .collect();
    Delivery { curve, at }
}

/// The heartbeat an idle, live source sends at delivery time `now`:
/// its own time seen through its lag, below the next undelivered commit.
pub fn heartbeat(curve: &LagCurve, now: Micros, next_commit: Option<Micros>) -> Micros {
    let h = now - curve.at(now);
    match next_commit {
        Some(c) => h.min(c - 1),
        None => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_parse() {
        assert_eq!(
            "5s..30s".parse::<Lag>(),
            Ok(Lag {
                min: Duration::from_secs(5),
                max: Duration::from_secs(30)
            })
        );
        assert_eq!("1s".parse::<Lag>().map(|l| l.min), Ok(Duration::from_secs(1)));
        assert!("30s..5s".parse::<Lag>().is_err());
        assert!("soon".parse::<Lag>().is_err());
    }

    #[test]
    fn delivery_is_ordered_and_stalls() {
        let mut rng = Rng::new(3);
        let events: Vec<Micros> = (0..100).map(|i| i * 1_000_000).collect();
        let curve = LagCurve::new(Lag::default_for(2), 0, 100_000_000, &mut rng);
        let stall = Stall {
            source: 2,
            from: 40_000_000,
            until: 70_000_000,
        };
        let d = plan(2, &events, curve, Some(stall));
        assert!(d.at.windows(2).all(|w| w[0] <= w[1]));
        assert!(d.at.iter().all(|&t| !stall.holds(2, t)));
        assert!(d.at.contains(&70_000_000));
    }
}
