//! Exponential back-off with jitter, and the "log once on the way down, once
//! on the way up" rule for a forge's health. Pure logic.

use std::time::Duration;

/// Exponential back-off: `base`, doubling per failure, capped, with ±20 %
/// jitter so that many runners do not hammer a recovering forge in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure and returns how long to wait before the next try.
    /// `jitter` is a number in `[0, 1)` (random in the daemon, fixed in tests).
    pub fn fail(&mut self, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(16);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        raw.mul_f64(factor).min(self.cap)
    }

    /// Records a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What to log after a call, so that an outage gives two lines, not one per poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    /// Nothing new to say.
    Same,
    /// The forge just became unreachable (or started failing).
    Down,
    /// The forge answers again after `failures` failed calls.
    Up { failures: u32 },
}

/// Tracks whether a forge currently answers.
#[derive(Debug, Default, Clone)]
pub struct Health {
    down: bool,
    failures: u32,
}

impl Health {
    pub fn is_down(&self) -> bool {
        self.down
    }

    pub fn failed(&mut self) -> HealthChange {
        self.failures += 1;
        if self.down {
            HealthChange::Same
        } else {
            self.down = true;
            HealthChange::Down
        }
    }

    pub fn succeeded(&mut self) -> HealthChange {
        let failures = std::mem::take(&mut self.failures);
        if std::mem::take(&mut self.down) {
            HealthChange::Up { failures }
        } else {
            HealthChange::Same
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
        let waits: Vec<u64> = (0..8).map(|_| b.fail(0.5).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        let lo = b.fail(0.0);
        let mut b2 = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
        assert_eq!(b2.fail(0.0), Duration::from_millis(1600));
        assert_eq!(b2.fail(0.999_999).as_millis(), 4800 - 1);
        assert!(lo >= Duration::from_secs(48) && lo <= Duration::from_secs(60));
        b.reset();
        assert_eq!(b.fail(0.5), Duration::from_secs(2));
        // Many failures never overflow.
        for _ in 0..1000 {
            assert!(b.fail(0.7) <= Duration::from_secs(60));
        }
    }

    #[test]
    fn health_reports_only_transitions() {
        let mut h = Health::default();
        assert_eq!(h.succeeded(), HealthChange::Same);
        assert_eq!(h.failed(), HealthChange::Down);
        assert_eq!(h.failed(), HealthChange::Same);
        assert_eq!(h.failed(), HealthChange::Same);
        assert_eq!(h.succeeded(), HealthChange::Up { failures: 3 });
        assert_eq!(h.succeeded(), HealthChange::Same);
    }
}
