//! Keeping the guest's clock in step with the host's.
//!
//! A guest reads its wall clock from the emulated RTC at boot, in whole
//! seconds, and a TCG guest can fall behind under load. A guest behind the
//! host sees files stamped by the host as coming from the future (`tar`, `make`
//! warn about them). At job start (in the setup probe) and after long steps
//! the executor reads the guest's clock, compares it with the host's and, when
//! it is off and the guest lets it (root, or passwordless `sudo -n`), sets it
//! from the host's. Nothing of this reaches the job log: the commands run in
//! their own execs and what they print is kept; results go to `tracing` at
//! debug level.
//!
//! Portable: GNU `date` (`%N`, `-s @SECONDS.NANOS`), busybox (`adjtimex` for
//! microseconds; `date MMDDhhmmCCYY.SS`) and illumos (`perl` for
//! microseconds; `date -u mmddHHMMccyy.SS`, no `-s`). A guest whose `date`
//! sets only whole seconds is set at a whole second of the host's clock (the
//! command sleeps until then). The clock is only ever set to the host's time
//! as it was when the command was sent, so a set guest is behind the host by
//! the command's latency, never ahead of it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prefix of the line the reading prints.
pub const PREFIX: &str = "solstice-clock=";

/// Guest shell that prints `solstice-clock=KIND SECONDS[.FRACTION]` and
/// nothing else (KIND: `gnu` where `date` has `%N`, `fine` for another
/// sub-second source, `coarse` for whole seconds). POSIX sh.
pub const READ: &str = "solstice_t=$(date -u +%s.%N 2>/dev/null); \
case \"$solstice_t\" in \
*.[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]) solstice_k=gnu ;; \
*) solstice_k=fine; \
solstice_t=$(adjtimex 2>/dev/null | awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {if (s != \"\") printf \"%d.%06d\", s, u}' 2>/dev/null); \
[ -n \"$solstice_t\" ] || solstice_t=$(perl -MTime::HiRes=time -e 'printf \"%.6f\", time' 2>/dev/null); \
[ -n \"$solstice_t\" ] || { solstice_k=coarse; solstice_t=$(date -u +%s 2>/dev/null); } ;; \
esac; \
echo \"solstice-clock=$solstice_k $solstice_t\"";

/// How the guest reported its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `date` prints nanoseconds; `date -s @S.N` is tried first to set it.
    Gnu,
    /// Sub-second reading from another tool; set in whole seconds.
    Fine,
    /// Whole seconds only.
    Coarse,
}

/// One reading of the guest's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub kind: Kind,
    /// Seconds since the epoch (UTC).
    pub secs: f64,
}

/// Parses the `solstice-clock=` line out of a command's output.
pub fn parse(output: &str) -> Option<Reading> {
    let line = output.lines().find_map(|l| l.trim().strip_prefix(PREFIX))?;
    let (kind, value) = line.split_once(' ')?;
    let kind = match kind {
        "gnu" => Kind::Gnu,
        "fine" => Kind::Fine,
        "coarse" => Kind::Coarse,
        _ => return None,
    };
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs > 0.0).then_some(Reading { kind, secs })
}

/// Seconds since the epoch of a host instant.
pub fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The guest's offset from the host (positive: the guest is ahead), from a
/// reading whose line reached the host at `received`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offset {
    /// The guest is at least this far ahead (negative: behind). It leaves out
    /// only the time the line took to reach the host, so it errs towards
    /// "behind".
    pub low: f64,
    /// Best estimate (`low`, plus half a second for a whole-second reading).
    pub estimate: f64,
    /// The reading's resolution: 0 or 1 s.
    pub resolution: f64,
    pub kind: Kind,
}

pub fn offset(reading: Reading, received: SystemTime) -> Offset {
    let resolution = if reading.kind == Kind::Coarse {
        1.0
    } else {
        0.0
    };
    let low = reading.secs - epoch_secs(received);
    Offset {
        low,
        estimate: low + resolution / 2.0,
        resolution,
        kind: reading.kind,
    }
}

/// How far behind the host the guest may be before it is set.
pub const TOLERANCE: f64 = 0.5;
/// After a step that ran at least this long, the clock is checked again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(30);

/// Whether to set the guest's clock. A guest surely behind by more than
/// [`TOLERANCE`] is set forward. A guest surely ahead is set back only at job
/// start, before the job has written anything: later, stepping back would
/// make the job's own files lie in the future.
pub fn should_set(off: &Offset, at_start: bool) -> bool {
    let surely_behind = off.low + off.resolution < -TOLERANCE;
    let surely_ahead = off.low > 0.0;
    surely_behind || (at_start && surely_ahead)
}

/// Printed by [`set_command`] when the clock was set.
pub const SET_OK: &str = "solstice-clock-set";

/// UTC `MMDDhhmmCCYY.SS` (the `date` operand GNU, busybox and illumos accept).
fn posix_date(secs: i64) -> String {
    let c = crate::civil::Civil::from_unix(secs);
    format!(
        "{:02}{:02}{:02}{:02}{:04}.{:02}",
        c.month, c.day, c.hour, c.min, c.year, c.sec
    )
}

/// The guest command that sets its clock to `now` (the host's time as the
/// command is sent). `sudo`: the guest user is not root. Prints [`SET_OK`]
/// when it worked and nothing else.
///
/// With `Kind::Gnu`, `date -u -s @S.N` sets the exact time. Otherwise (or when
/// that fails) the command sleeps until the host's next whole second `N` and
/// sets `N` with the POSIX operand; if `sleep` takes no fraction, it sets
/// `N - 1` at once (behind by less than a second, never ahead).
pub fn set_command(now: SystemTime, kind: Kind, sudo: bool) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let nanos = d.subsec_nanos();
    let s = if sudo { "sudo -n " } else { "" };
    let next = secs + 1;
    let wait = format!("0.{:09}", 1_000_000_000 - nanos);
    let whole = format!(
        "if sleep {wait} 2>/dev/null; then solstice_v={}; else solstice_v={}; fi; \
         {s}date -u \"$solstice_v\" >/dev/null 2>&1",
        posix_date(next),
        posix_date(secs)
    );
    let cmd = if kind == Kind::Gnu {
        format!("{s}date -u -s @{secs}.{nanos:09} >/dev/null 2>&1 || {{ {whole}; }}")
    } else {
        whole
    };
    format!("{{ {cmd}; }} </dev/null && echo {SET_OK}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings() {
        let r = parse("x\nsolstice-clock=gnu 1700000000.123456789\n").unwrap();
        assert_eq!(r.kind, Kind::Gnu);
        assert!((r.secs - 1_700_000_000.123_456).abs() < 1e-5, "{r:?}");
        assert_eq!(
            parse("solstice-clock=fine 1700000000.5").map(|r| r.kind),
            Some(Kind::Fine)
        );
        assert_eq!(
            parse("solstice-clock=coarse 1700000000").map(|r| r.secs),
            Some(1_700_000_000.0)
        );
        for bad in [
            "solstice-clock=coarse ",
            "solstice-clock=fine 1700000000.%N",
            "solstice-clock=odd 1",
            "solstice-clock=gnu -5",
            "nothing",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn decisions() {
        let at = |secs: f64| UNIX_EPOCH + Duration::from_secs_f64(secs);
        let r = |kind, secs| Reading { kind, secs };
        // 0.8 s behind: set, at start and later.
        let o = offset(r(Kind::Gnu, 1000.0), at(1000.8));
        assert!((o.low + 0.8).abs() < 1e-6);
        assert!(should_set(&o, true) && should_set(&o, false));
        // 0.3 s behind: within tolerance.
        let o = offset(r(Kind::Fine, 1000.0), at(1000.3));
        assert!(!should_set(&o, true) && !should_set(&o, false));
        // Ahead: set back at start only.
        let o = offset(r(Kind::Gnu, 1000.2), at(1000.0));
        assert!(should_set(&o, true) && !should_set(&o, false));
        // Whole seconds: 1.2 s "behind" may be 0.2 s; 1.6 s is surely 0.6 s.
        let o = offset(r(Kind::Coarse, 1000.0), at(1001.2));
        assert!(!should_set(&o, false));
        assert!((o.estimate + 0.7).abs() < 1e-6);
        assert!(should_set(
            &offset(r(Kind::Coarse, 1000.0), at(1001.6)),
            false
        ));
    }

    #[test]
    fn posix_dates() {
        assert_eq!(posix_date(0), "010100001970.00");
        assert_eq!(posix_date(1_700_000_000), "111422132023.20");
        assert_eq!(posix_date(951_782_400), "022900002000.00");
        assert_eq!(posix_date(4_102_444_799), "123123592099.59");
    }

    #[test]
    fn set_commands() {
        let now = UNIX_EPOCH + Duration::new(1_700_000_000, 250_000_000);
        let c = set_command(now, Kind::Gnu, true);
        assert!(
            c.starts_with("{ sudo -n date -u -s @1700000000.250000000 >/dev/null 2>&1 || { "),
            "{c}"
        );
        assert!(c.contains("if sleep 0.750000000 2>/dev/null; then solstice_v=111422132023.21; else solstice_v=111422132023.20; fi; sudo -n date -u \"$solstice_v\""), "{c}");
        assert!(c.ends_with("&& echo solstice-clock-set"), "{c}");
        let c = set_command(now, Kind::Coarse, false);
        assert!(c.starts_with("{ if sleep 0.750000000"), "{c}");
        assert!(!c.contains("sudo") && !c.contains("-s @"), "{c}");
    }
}
