//! Durations as configuration writes them: a whole number and a unit,
//! `250ms`, `180s`, `3m`, `1h`, `30d`; or a bare `0`. Nothing else: no
//! spaces, signs, fractions, compound forms (`1h30m`) or other units, so a
//! typo is an error instead of a surprise.

use std::time::Duration;

/// The longest duration accepted: 100 years, far beyond any sensible
/// setting and far from where the engine's date arithmetic could overflow.
pub(crate) const MAX: Duration = Duration::from_secs(36_500 * 86_400);

/// The units, longest name first where one is a prefix of another.
const UNITS: [(&str, u64); 5] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)];

/// Parses `text`; the error says what is wrong with it (the caller names the
/// key).
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let hint = "write a whole number and a unit: ms, s, m, h or d (e.g. \"250ms\", \"180s\", \"3m\", \"1h\", \"30d\")";
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(if text.is_empty() { format!("empty duration: {hint}") } else { format!("{text:?}: {hint}") });
    }
    if unit.is_empty() {
        return if number.bytes().all(|b| b == b'0') {
            Ok(Duration::ZERO)
        } else {
            Err(format!("{text:?} has no unit: {hint}"))
        };
    }
    let Some(&(_, millis_per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!("{text:?}: unknown unit {unit:?}; {hint}"));
    };
    let too_long = || format!("{text:?} is too long (at most 36500d)");
    let count: u64 = number.parse().map_err(|_| too_long())?;
    let millis = count.checked_mul(millis_per_unit).ok_or_else(too_long)?;
    let duration = Duration::from_millis(millis);
    if duration > MAX {
        return Err(too_long());
    }
    Ok(duration)
}

/// Writes `duration` in the largest unit that divides it exactly (so that
/// [`parse`] reads it back unchanged); sub-millisecond parts are dropped.
pub(crate) fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let (name, per) =
        UNITS.iter().rev().find(|(_, per)| millis.is_multiple_of(u128::from(*per))).copied().unwrap_or(("ms", 1));
    format!("{}{name}", millis / u128::from(per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("180s"), Ok(Duration::from_secs(180)));
        assert_eq!(parse("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("000"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("007s"), Ok(Duration::from_secs(7)));
        assert_eq!(parse("36500d"), Ok(MAX));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for (text, says) in [
            ("", "empty duration"),
            ("5", "has no unit"),
            ("s", "write a whole number"),
            ("5x", "unknown unit \"x\""),
            ("5 s", "unknown unit \" s\""),
            (" 5s", "write a whole number"),
            ("5s ", "unknown unit \"s \""),
            ("-5s", "write a whole number"),
            ("+5s", "write a whole number"),
            ("1.5h", "unknown unit \".5h\""),
            ("1h30m", "unknown unit \"h30m\""),
            ("5S", "unknown unit \"S\""),
            ("5sec", "unknown unit \"sec\""),
            ("5min", "unknown unit \"min\""),
            ("5µs", "unknown unit"),
            ("36501d", "too long"),
            ("99999999999999999999999s", "too long"),
            ("18446744073709551615d", "too long"),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.contains(says), "{text:?}: {error:?} does not say {says:?}");
        }
    }

    #[test]
    fn formatting_reads_back() {
        for (millis, text) in [
            (0, "0s"),
            (250, "250ms"),
            (1_500, "1500ms"),
            (180_000, "3m"),
            (90_000, "90s"),
            (3_600_000, "1h"),
            (86_400_000, "1d"),
            (30 * 86_400_000, "30d"),
        ] {
            let duration = Duration::from_millis(millis);
            assert_eq!(format(duration), text);
            assert_eq!(parse(text), Ok(duration));
        }
    }
}
