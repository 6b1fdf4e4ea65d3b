//! The fiscal-year calendar of SPEC §1: April 1 to March 31, labelled `"2021-2022"`, with day
//! boundaries at local midnight in `America/Toronto` (daylight saving included).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::America::Toronto;
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The time zone of every day boundary.
pub const ZONE: Tz = Toronto;

/// A fiscal year, identified by the calendar year in which it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiscalYear(i32);

/// A fiscal-year label that is not `YYYY-YYYY` with consecutive years.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fiscal_year must be YYYY-YYYY with consecutive years, such as 2021-2022")]
pub struct FiscalYearError;

impl FiscalYear {
    /// Returns the fiscal year that starts on April 1 of `start_year`.
    pub const fn starting_in(start_year: i32) -> Self {
        FiscalYear(start_year)
    }

    /// Returns the calendar year in which the fiscal year starts.
    pub const fn start_year(self) -> i32 {
        self.0
    }

    /// Returns the fiscal year before this one.
    pub const fn previous(self) -> Self {
        FiscalYear(self.0 - 1)
    }

    /// Returns the fiscal year after this one.
    pub const fn next(self) -> Self {
        FiscalYear(self.0 + 1)
    }

    /// Returns the fiscal year of a local calendar date.
    pub fn of_date(date: NaiveDate) -> Self {
        if date.month() >= 4 {
            FiscalYear(date.year())
        } else {
            FiscalYear(date.year() - 1)
        }
    }

    /// Returns the fiscal year of an instant, by its local date in `America/Toronto`.
    pub fn of_instant<Z: TimeZone>(instant: &DateTime<Z>) -> Self {
        Self::of_date(instant.with_timezone(&ZONE).date_naive())
    }

    /// Returns the fiscal year of an instant given in milliseconds since the Unix epoch.
    pub fn of_millis(ms: i64) -> Self {
        let instant = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
        Self::of_instant(&instant)
    }

    /// Returns the first instant of the fiscal year: April 1, 00:00 local time.
    pub fn start(self) -> DateTime<Utc> {
        local_midnight(NaiveDate::from_ymd_opt(self.0, 4, 1).expect("april 1 exists"))
    }

    /// Returns the first instant after the fiscal year.
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }
}

/// Returns the instant of local midnight at the start of `date` in `America/Toronto`.
pub fn local_midnight(date: NaiveDate) -> DateTime<Utc> {
    // Midnight always exists in Toronto: daylight saving switches at 02:00.
    ZONE.from_local_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
        .earliest()
        .expect("midnight exists in America/Toronto")
        .with_timezone(&Utc)
}

impl fmt::Display for FiscalYear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:04}", self.0, self.0 + 1)
    }
}

impl FromStr for FiscalYear {
    type Err = FiscalYearError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 9 || bytes[4] != b'-' {
            return Err(FiscalYearError);
        }
        let (first, second) = (&s[..4], &s[5..]);
        if !first.bytes().chain(second.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(FiscalYearError);
        }
        let start: i32 = first.parse().map_err(|_| FiscalYearError)?;
        let end: i32 = second.parse().map_err(|_| FiscalYearError)?;
        if end != start + 1 {
            return Err(FiscalYearError);
        }
        Ok(FiscalYear(start))
    }
}

impl Serialize for FiscalYear {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FiscalYear {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let label = String::deserialize(deserializer)?;
        label.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn fy_of(rfc3339: &str) -> String {
        FiscalYear::of_instant(&DateTime::parse_from_rfc3339(rfc3339).unwrap()).to_string()
    }

    #[test]
    fn parses_only_consecutive_years() {
        assert_eq!("2021-2022".parse::<FiscalYear>(), Ok(FiscalYear::starting_in(2021)));
        for bad in ["2021-2023", "2021", "21-22", "2021/2022", "2022-2021", "２０２１-2022", " 2021-2022", "abcd-efgh"] {
            assert_eq!(bad.parse::<FiscalYear>(), Err(FiscalYearError), "{bad}");
        }
    }

    #[test]
    fn splits_at_local_midnight_on_april_first_in_edt() {
        // April 1 is in daylight time (UTC-4): the year turns at 04:00 UTC.
        assert_eq!(fy_of("2022-04-01T03:59:59.999Z"), "2021-2022");
        assert_eq!(fy_of("2022-04-01T04:00:00Z"), "2022-2023");
        assert_eq!(fy_of("2022-03-31T23:59:59-04:00"), "2021-2022");
        assert_eq!(FiscalYear::starting_in(2022).start().to_rfc3339(), "2022-04-01T04:00:00+00:00");
    }

    #[test]
    fn uses_standard_time_when_the_day_is_in_est() {
        // A January boundary is in standard time (UTC-5): local midnight is 05:00 UTC.
        let jan = NaiveDate::from_ymd_opt(2022, 1, 15).unwrap();
        assert_eq!(local_midnight(jan).to_rfc3339(), "2022-01-15T05:00:00+00:00");
        assert_eq!(fy_of("2022-01-01T04:59:59Z"), "2021-2022");
    }

    #[test]
    fn serializes_as_its_label() {
        let fy = FiscalYear::starting_in(2023);
        assert_eq!(serde_json::to_string(&fy).unwrap(), "\"2023-2024\"");
        assert_eq!(FiscalYear::of_millis(fy.end().timestamp_millis()), fy.next());
        assert_eq!(FiscalYear::of_millis(fy.end().timestamp_millis() - 1), fy);
    }
}
