//! Human durations, as every flag of the raftkv tools (`raftkv`, `raftkv-bench`)
//! takes them: `5s`, `500ms`, `2m`, `1h`, `1.5s`, `1m30s`, `10 s`, or a bare number
//! of seconds (`3`). Parsed by `humantime` (so `2min`, `1hour` and `1d` work too),
//! plus the bare number.

use std::time::Duration;

/// The longest duration accepted (about 31 years): longer ones are typos, and adding
/// them to an `Instant` could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(1_000_000_000);

/// Parses a duration (see the module documentation). Used as a clap value parser; the
/// message names the value and shows the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration; use e.g. 5s, 500ms or 2m".into());
    }
    let parsed = if text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        humantime::parse_duration(&format!("{text}s"))
    } else {
        humantime::parse_duration(text)
    };
    match parsed {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(format!("duration '{s}' is over the limit of {}s", MAX_DURATION.as_secs())),
        Err(e) => Err(format!("invalid duration '{s}': {e}; use e.g. 5s, 500ms or 2m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_both_tools_accepted() {
        let cases = [
            ("5s", 5_000),
            ("500ms", 500),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1.5s", 1_500),
            ("1m30s", 90_000),
            ("3", 3_000),
            ("0.25", 250),
            (" 10 s ", 10_000),
            ("2sec", 2_000),
            ("2secs", 2_000),
            ("3min", 180_000),
            ("1mins", 60_000),
            ("1hr", 3_600_000),
            ("1hour", 3_600_000),
            ("2hours", 7_200_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_naming_it() {
        for bad in ["", "s", "5x", "abc", "-1s", "1..2s", "1.", "1e400", "5 parsecs"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("5s, 500ms or 2m"), "{bad}: {err}");
            if !bad.is_empty() {
                assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
            }
        }
        assert!(parse_duration("40years").unwrap_err().contains("over the limit"));
        assert_eq!(parse_duration("1000000000"), Ok(MAX_DURATION));
    }
}
