//! Durations as people type them: `500ms`, `30s`, `10m`, `2h`, `1d`, and
//! sums such as `1m30s`. A bare `0` is zero; any other bare number is refused
//! (is `30` seconds or milliseconds?).

use std::time::Duration;

/// Parses a duration; the error says what was wrong, for clap to show.
pub fn parse(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty duration: use e.g. 500ms, 30s, 10m, 2h".into());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = rest.split_at(digits);
        if number.is_empty() {
            return Err(format!(
                "invalid duration '{text}': expected a number at '{rest}'"
            ));
        }
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, next) = after.split_at(unit_len);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration '{text}': {number} is too large"))?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" | "sec" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if next.starts_with('.') => {
                return Err(format!(
                    "invalid duration '{text}': no fractions, use a smaller unit (1500ms, not 1.5s)"
                ))
            }
            "" => {
                return Err(format!(
                    "invalid duration '{text}': {number} needs a unit (ms, s, m, h or d), e.g. {number}s"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration '{text}': unknown unit '{other}' (use ms, s, m, h or d)"
                ))
            }
        };
        let part = value
            .checked_mul(millis_per_unit)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("invalid duration '{text}': too large"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("invalid duration '{text}': too large"))?;
        rest = next;
    }
    Ok(total)
}

/// A short readable form: `850ms`, `4.99s`, `2m05s`, `1h30m` (the
/// client's, so that its messages and ours read alike).
pub fn format(d: Duration) -> String {
    redis_lock_client::human_duration(d)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn accepts_units_and_sums() {
        let cases = [
            ("0", 0),
            ("500ms", 500),
            ("30s", 30_000),
            ("10m", 600_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("1m30s", 90_000),
            ("1h30m", 5_400_000),
            ("2s500ms", 2_500),
            (" 5s ", 5_000),
            ("0s", 0),
            ("10sec", 10_000),
            ("3min", 180_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_ambiguous_or_wrong() {
        let cases = [
            ("", "empty"),
            ("30", "needs a unit"),
            ("5x", "unknown unit 'x'"),
            ("s", "expected a number"),
            ("1.5s", "no fractions"),
            ("-1s", "expected a number"),
            ("99999999999999999999s", "too large"),
            ("999999999999999999d", "too large"),
            ("10 s", "needs a unit"),
        ];
        for (text, why) in cases {
            match parse(text) {
                Ok(d) => panic!("{text:?} parsed as {d:?}"),
                Err(e) => assert!(e.contains(why), "{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn formats_briefly() {
        let cases = [
            (0, "0ms"),
            (850, "850ms"),
            (1_000, "1s"),
            (4_990, "4.99s"),
            (1_500, "1.5s"),
            (1_005, "1s"),
            (125_000, "2m05s"),
            (5_400_000, "1h30m"),
        ];
        for (ms, text) in cases {
            assert_eq!(format(Duration::from_millis(ms)), text, "{ms}");
        }
    }
}
