//! The one parser behind every duration flag: `100us`, `500ms`, `10s`, `5m`
//! (a bare number is seconds). A leaf: it imports nothing of Postern's, so
//! every command's flags can use it.

use std::time::Duration;

/// Parses `90`, `90s`, `500ms`, `5m` or `100us` (also `100µs`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with an optional unit us, ms, s or m"))?;
    let d = match unit {
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use us, ms, s or m)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// Like [`parse_duration`], but zero is allowed: for intervals where `0`
/// turns the feature off.
pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" | "0s" | "0ms" | "0m" | "0us" | "0µs" => Ok(Duration::ZERO),
        _ => parse_duration(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_allow_zero_and_durations_do_not() {
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert_eq!(parse_interval("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_interval("20ms"), Ok(Duration::from_millis(20)));
        assert!(parse_duration("0").is_err());
        assert!(parse_interval("-1").is_err());
    }

    #[test]
    fn microseconds_parse() {
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("100µs"), Ok(Duration::from_micros(100)));
        let err = parse_duration("5x").unwrap_err();
        assert!(err.contains("unknown unit \"x\""), "{err}");
    }

    #[test]
    fn every_spelling_of_zero_is_an_interval() {
        for zero in ["0", "0s", "0ms", "0m", "0us", "0µs", " 0s "] {
            assert_eq!(parse_interval(zero), Ok(Duration::ZERO), "{zero:?}");
        }
    }
}
