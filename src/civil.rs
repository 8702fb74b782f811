//! UTC calendar dates from Unix time, without a date crate (seeds stamp their
//! files; the guest clock is set with `date`'s calendar operand). Pure.

/// A UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub min: u8,
    pub sec: u8,
}

impl Civil {
    /// The proleptic Gregorian date of `t` seconds since the epoch, after
    /// Howard Hinnant's days-to-civil algorithm.
    pub fn from_unix(t: i64) -> Civil {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (secs / 3600) as u8,
            min: (secs / 60 % 60) as u8,
            sec: (secs % 60) as u8,
        }
    }

    /// Seconds since the epoch of this date and time (the inverse of
    /// [`Civil::from_unix`], Howard Hinnant's days-from-civil). Fields out
    /// of their ranges give a meaningless but defined result.
    pub fn to_unix(&self) -> i64 {
        let month = i64::from(self.month);
        let y = self.year - i64::from(month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = if month > 2 { month - 3 } else { month + 9 };
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + i64::from(self.hour) * 3600 + i64::from(self.min) * 60 + i64::from(self.sec)
    }
}

/// `2026-12-05 21:30:00 UTC`: a point in time for people.
pub fn utc_seconds(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let c = Civil::from_unix(secs);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        c.year, c.month, c.day, c.hour, c.min, c.sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let c = Civil::from_unix(0);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.min, c.sec),
            (1970, 1, 1, 0, 0, 0)
        );
        let c = Civil::from_unix(951_782_400); // a leap day
        assert_eq!((c.year, c.month, c.day), (2000, 2, 29));
        let c = Civil::from_unix(4_102_444_799);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.min, c.sec),
            (2099, 12, 31, 23, 59, 59)
        );
        let c = Civil::from_unix(-1);
        assert_eq!((c.year, c.month, c.day, c.hour), (1969, 12, 31, 23));
        for t in [0, -1, 951_782_400, 4_102_444_799, 1_796_000_123] {
            assert_eq!(Civil::from_unix(t).to_unix(), t);
        }
    }
}
