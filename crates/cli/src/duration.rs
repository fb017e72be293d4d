//! Human durations for flags: `5s`, `500ms`, `2m`, `1h`, `1.5s`, `1m30s`.

use std::time::Duration;

/// Parses a duration: one or more `<number><unit>` parts, unit one of `ms`, `s`, `m`,
/// `h` (a bare number means seconds). Used as a clap value parser.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration; use e.g. 5s, 500ms or 2m".into());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return from_secs(secs, s);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let unit_len = rest[num_len..].find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len() - num_len);
        let (num, unit) = (&rest[..num_len], rest[num_len..num_len + unit_len].trim());
        let value: f64 = num.parse().map_err(|_| format!("invalid duration '{s}'; use e.g. 5s, 500ms or 2m"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            "" => return Err(format!("invalid duration '{s}': a unit is missing (ms, s, m or h)")),
            other => return Err(format!("invalid duration '{s}': unknown unit '{other}' (use ms, s, m or h)")),
        };
        total += value * scale;
        rest = &rest[num_len + unit_len..];
    }
    from_secs(total, s)
}

fn from_secs(secs: f64, s: &str) -> Result<Duration, String> {
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("invalid duration '{s}'"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration(" 10 s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "s", "5x", "abc", "-1s", "1..2s", "5 days", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
