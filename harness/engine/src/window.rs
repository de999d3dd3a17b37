//! Time windows over an event stream: which events a fingerprint is learned from.
//!
//! A window is half-open, `since` included and `until` left out, so that `--until +30s` and
//! `--since +30s` split a stream in two with no event in both. Either end may be open.
//!
//! An end is written as one of ([`TimeBound`]'s `FromStr`):
//! * an RFC 3339 time with its UTC offset: `2024-11-28T08:00:30Z`,
//!   `2024-11-28T09:00:30.5+01:00` (nanoseconds are kept). A time without an offset is
//!   refused rather than guessed to be UTC or local time.
//! * a duration after the stream's first event: `+30s`, `+1m30s`, `+1.5s`, `+250ms`, `+2h`
//!   (jiff's "friendly" format; ISO 8601 `+PT30S` too). The first event is that of the whole
//!   stream, whichever container it belongs to, once the stream is in time order.
//!
//! A bare number (`30`) is refused: it could be seconds after the first event or since 1970.
//! Parsing needs no clock: "first event" is given to [`TimeBound::resolve`].

use std::fmt;
use std::str::FromStr;

use jiff::{SignedDuration, Timestamp};

/// The accepted forms, for messages and `--help`.
pub const TIME_FORMS: &str = "an RFC 3339 time with its UTC offset (2024-11-28T08:00:30Z) or a duration after the first event (+30s, +1m30s, +1.5s, +250ms)";

/// One end of a time window, as a user writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeBound {
    /// An instant, in nanoseconds since the Unix epoch (the events' `ts`).
    At(u64),
    /// So many nanoseconds after the stream's first event.
    AfterFirst(u64),
}

/// A time that is none of the [`TIME_FORMS`].
#[derive(Clone, Debug, thiserror::Error)]
#[error("`{input}` is not a time: {problem}; give {TIME_FORMS}")]
pub struct TimeBoundError {
    /// The text as given.
    pub input: String,
    pub problem: NotATime,
}

/// Why a text is not a time (see [`TimeBoundError`]).
#[derive(Clone, Debug, thiserror::Error)]
pub enum NotATime {
    #[error("it is empty")]
    Empty,
    /// After `+`, what jiff could not read as a duration.
    #[error("{0}")]
    Duration(jiff::Error),
    #[error("the duration after the first event is negative")]
    NegativeDuration,
    #[error("the duration is too long")]
    DurationTooLong,
    #[error("durations count forward from the first event and start with `+`")]
    Backwards,
    #[error(
        "a bare number could be seconds after the first event or since 1970: write `+30s` for the first"
    )]
    BareNumber,
    /// What jiff could not read as an RFC 3339 time with its offset.
    #[error("{0}")]
    Time(jiff::Error),
    #[error("it is before 1970, and no event is")]
    Before1970,
}

impl FromStr for TimeBound {
    type Err = TimeBoundError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        let fail = |problem: NotATime| TimeBoundError {
            input: s.to_string(),
            problem,
        };
        if input.is_empty() {
            return Err(fail(NotATime::Empty));
        }
        if let Some(rest) = input.strip_prefix('+') {
            let duration: SignedDuration = rest
                .trim_start()
                .parse()
                .map_err(|e| fail(NotATime::Duration(e)))?;
            if duration.is_negative() {
                return Err(fail(NotATime::NegativeDuration));
            }
            let ns =
                u64::try_from(duration.as_nanos()).map_err(|_| fail(NotATime::DurationTooLong))?;
            return Ok(TimeBound::AfterFirst(ns));
        }
        if input.starts_with('-') {
            return Err(fail(NotATime::Backwards));
        }
        if input.parse::<f64>().is_ok() {
            return Err(fail(NotATime::BareNumber));
        }
        let at: Timestamp = input.parse().map_err(|e| fail(NotATime::Time(e)))?;
        let ns = u64::try_from(at.as_nanosecond()).map_err(|_| fail(NotATime::Before1970))?;
        Ok(TimeBound::At(ns))
    }
}

impl TimeBound {
    /// The instant this bound stands for, in a stream whose first event is at `first_ts`.
    pub fn resolve(self, first_ts: u64) -> u64 {
        match self {
            TimeBound::At(ns) => ns,
            TimeBound::AfterFirst(ns) => first_ts.saturating_add(ns),
        }
    }
}

impl fmt::Display for TimeBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TimeBound::At(ns) => f.write_str(&rfc3339_ns(ns)),
            TimeBound::AfterFirst(ns) => {
                let d = SignedDuration::from_nanos(i64::try_from(ns).unwrap_or(i64::MAX));
                // `{:#}` is jiff's friendly form: `1m 30s`.
                write!(f, "+{d:#}")
            }
        }
    }
}

/// Epoch nanoseconds as RFC 3339 UTC, with as many fractional digits as it needs.
pub fn rfc3339_ns(ns: u64) -> String {
    Timestamp::from_nanosecond(i128::from(ns))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{ns} ns after 1970"))
}

/// The events from `since` (included) to `until` (left out), in nanoseconds since the Unix
/// epoch; `None` leaves that end open. The default is the whole stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeWindow {
    pub since: Option<u64>,
    pub until: Option<u64>,
}

/// A window that can hold no event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the window is empty: it starts at {} and ends at {}, no later", rfc3339_ns(*since), rfc3339_ns(*until))]
pub struct EmptyWindow {
    pub since: u64,
    pub until: u64,
}

impl TimeWindow {
    /// The whole stream.
    pub const ALL: TimeWindow = TimeWindow {
        since: None,
        until: None,
    };

    /// A window of the two ends, refused when it can hold nothing (`until` not after `since`).
    pub fn new(since: Option<u64>, until: Option<u64>) -> Result<Self, EmptyWindow> {
        if let (Some(since), Some(until)) = (since, until)
            && until <= since
        {
            return Err(EmptyWindow { since, until });
        }
        Ok(TimeWindow { since, until })
    }

    /// The window of two bounds in a stream whose first event is at `first_ts`.
    pub fn resolve(
        since: Option<TimeBound>,
        until: Option<TimeBound>,
        first_ts: u64,
    ) -> Result<Self, EmptyWindow> {
        TimeWindow::new(
            since.map(|b| b.resolve(first_ts)),
            until.map(|b| b.resolve(first_ts)),
        )
    }

    pub fn is_all(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }

    /// Where `ts` falls: before the window, in it, or after it.
    pub fn place(&self, ts: u64) -> Place {
        if self.since.is_some_and(|s| ts < s) {
            Place::Before
        } else if self.until.is_some_and(|u| ts >= u) {
            Place::After
        } else {
            Place::Within
        }
    }

    pub fn contains(&self, ts: u64) -> bool {
        self.place(ts) == Place::Within
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Before,
    Within,
    After,
}

/// `from X until Y`, `from X on`, `until Y`, or `the whole stream`.
impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.since, self.until) {
            (Some(s), Some(u)) => write!(f, "from {} until {}", rfc3339_ns(s), rfc3339_ns(u)),
            (Some(s), None) => write!(f, "from {} on", rfc3339_ns(s)),
            (None, Some(u)) => write!(f, "until {}", rfc3339_ns(u)),
            (None, None) => f.write_str("the whole stream"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_732_780_800_000_000_000; // 2024-11-28T08:00:00Z

    fn bound(s: &str) -> TimeBound {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn refused(s: &str) -> String {
        match s.parse::<TimeBound>() {
            Ok(b) => panic!("`{s}` was taken as {b:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rfc3339_times_with_offsets_to_the_nanosecond() {
        assert_eq!(bound("2024-11-28T08:00:00Z"), TimeBound::At(T0));
        assert_eq!(
            bound("2024-11-28T09:00:30.5+01:00"),
            TimeBound::At(T0 + 30_500_000_000)
        );
        assert_eq!(
            bound("2024-11-28T08:00:00.000000001Z"),
            TimeBound::At(T0 + 1)
        );
        // Lower case and a space, as RFC 3339 allows.
        assert_eq!(bound("2024-11-28 08:00:00z"), TimeBound::At(T0));
    }

    #[test]
    fn durations_after_the_first_event() {
        assert_eq!(bound("+30s"), TimeBound::AfterFirst(30_000_000_000));
        assert_eq!(bound("+1m30s"), TimeBound::AfterFirst(90_000_000_000));
        assert_eq!(bound("+1.5s"), TimeBound::AfterFirst(1_500_000_000));
        assert_eq!(bound("+250ms"), TimeBound::AfterFirst(250_000_000));
        assert_eq!(bound("+2h"), TimeBound::AfterFirst(7_200_000_000_000));
        assert_eq!(bound("+PT30S"), TimeBound::AfterFirst(30_000_000_000));
        assert_eq!(bound("+0s"), TimeBound::AfterFirst(0));
        assert_eq!(bound("+30s").resolve(T0), T0 + 30_000_000_000);
        assert_eq!(bound("2024-11-28T08:00:00Z").resolve(5), T0);
    }

    #[test]
    fn what_is_not_a_time_is_refused_with_the_forms_that_are() {
        for (input, says) in [
            ("", "empty"),
            ("30", "bare number"),
            ("1732780800", "bare number"),
            ("-30s", "start with `+`"),
            ("+30s ago", "negative"),
            ("+-30s", "negative"),
            ("+30", "unit"),
            ("+thirty seconds", "+thirty seconds"),
            ("2024-11-28T08:00:00", "offset"),
            ("2024-11-28", "2024-11-28"),
            ("1969-12-31T23:59:59Z", "before 1970"),
            ("yesterday", "yesterday"),
        ] {
            let message = refused(input);
            assert!(message.contains(says), "{input}: {message}");
            assert!(message.contains("+1m30s"), "{input}: {message}");
        }
    }

    #[test]
    fn a_refusal_names_its_problem() {
        let problem = |s: &str| s.parse::<TimeBound>().map(|_| ()).unwrap_err().problem;
        assert!(matches!(problem(""), NotATime::Empty));
        assert!(matches!(problem("+-30s"), NotATime::NegativeDuration));
        assert!(matches!(problem("+30"), NotATime::Duration(_)));
        assert!(matches!(problem("-30s"), NotATime::Backwards));
        assert!(matches!(problem("30"), NotATime::BareNumber));
        assert!(matches!(problem("yesterday"), NotATime::Time(_)));
        assert!(matches!(
            problem("1969-12-31T23:59:59Z"),
            NotATime::Before1970
        ));
        let err = "+30".parse::<TimeBound>().unwrap_err();
        assert_eq!(err.input, "+30");
    }

    #[test]
    fn bounds_print_as_they_are_written() {
        assert_eq!(bound("+1m30s").to_string(), "+1m 30s");
        assert_eq!(
            bound("2024-11-28T09:00:30.5+01:00").to_string(),
            "2024-11-28T08:00:30.5Z"
        );
    }

    #[test]
    fn windows_print_in_words() {
        let w = |s, u| TimeWindow::new(s, u).unwrap().to_string();
        assert_eq!(
            w(Some(T0), Some(T0 + 1_500_000_000)),
            "from 2024-11-28T08:00:00Z until 2024-11-28T08:00:01.5Z"
        );
        assert_eq!(w(Some(T0), None), "from 2024-11-28T08:00:00Z on");
        assert_eq!(w(None, Some(T0)), "until 2024-11-28T08:00:00Z");
        assert_eq!(w(None, None), "the whole stream");
    }

    #[test]
    fn a_window_is_half_open() {
        let w = TimeWindow::new(Some(10), Some(20)).unwrap();
        assert_eq!(
            [9, 10, 19, 20].map(|t| w.place(t)),
            [Place::Before, Place::Within, Place::Within, Place::After]
        );
        assert!(TimeWindow::ALL.contains(0) && TimeWindow::ALL.contains(u64::MAX));
        assert!(TimeWindow::new(None, Some(20)).unwrap().contains(0));
        assert!(!TimeWindow::new(Some(10), None).unwrap().contains(9));
    }

    #[test]
    fn a_window_that_can_hold_nothing_is_refused() {
        assert_eq!(
            TimeWindow::new(Some(20), Some(20)),
            Err(EmptyWindow {
                since: 20,
                until: 20
            })
        );
        assert!(TimeWindow::new(Some(21), Some(20)).is_err());
        // Relative ends are resolved against the first event before they are compared.
        let err = TimeWindow::resolve(Some(bound("+10s")), Some(bound("+5s")), T0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the window is empty: it starts at 2024-11-28T08:00:10Z and ends at 2024-11-28T08:00:05Z, no later"
        );
        assert_eq!(
            TimeWindow::resolve(Some(bound("+10s")), Some(bound("2024-11-28T08:00:11Z")), T0),
            Ok(TimeWindow {
                since: Some(T0 + 10_000_000_000),
                until: Some(T0 + 11_000_000_000)
            })
        );
    }
}
