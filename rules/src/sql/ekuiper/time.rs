//! eKuiper's notations of time, read once when a rule is translated: `format_time`'s
//! Java-style patterns (`yyyy-MM-dd HH:mm:ss`) as the strftime patterns of `to_char`,
//! and Go durations (`1h30m`, `-500ms`) as intervals.
//!
//! The gateway keeps time in UTC, so the zone letters print UTC's name and offset.

/// A `format_time` pattern as a `to_char` (chrono strftime) pattern.
pub(super) fn strftime(pattern: &str) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // How many times `c` repeats from here.
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        let mut used = run;
        match c {
            '\\' => {
                let Some(&next) = chars.get(i + 1) else {
                    return Err(format!("`{pattern}` ends with an escape (\\)"));
                };
                literal(&mut out, next);
                used = 2;
            }
            '\'' => {
                if chars.get(i + 1) == Some(&'\'') {
                    out.push('\'');
                    used = 2;
                } else {
                    let text: String = chars[i + 1..].iter().take_while(|&&x| x != '\'').collect();
                    for t in text.chars() {
                        literal(&mut out, t);
                    }
                    used = text.chars().count() + 2;
                }
            }
            'Y' | 'y' => {
                out.push_str(match run {
                    4 => "%Y",
                    2 => "%y",
                    _ => return Err(format!("`{pattern}`: a year is YYYY or YY")),
                });
            }
            'G' => {
                out.push_str("AD");
                used = 1;
            }
            'M' => {
                used = run.min(4);
                out.push_str(["%-m", "%m", "%b", "%B"][used - 1]);
            }
            'd' => {
                used = run.min(2);
                out.push_str(["%-d", "%d"][used - 1]);
            }
            'E' => {
                out.push_str(match run {
                    3 => "%a",
                    4 => "%A",
                    _ => return Err(format!("`{pattern}`: a day of the week is EEE or EEEE")),
                });
            }
            'H' => {
                if run != 2 {
                    return Err(format!("`{pattern}`: an hour of the day is HH"));
                }
                out.push_str("%H");
            }
            'h' => {
                used = run.min(2);
                out.push_str(["%-I", "%I"][used - 1]);
            }
            'a' => {
                out.push_str("%p");
                used = 1;
            }
            'm' => {
                used = run.min(2);
                out.push_str(["%-M", "%M"][used - 1]);
            }
            's' => {
                used = run.min(2);
                out.push_str(["%-S", "%S"][used - 1]);
            }
            'S' => {
                out.push_str(match run {
                    3 => "%.3f",
                    6 => "%.6f",
                    9 => "%.9f",
                    _ => {
                        return Err(format!(
                            "`{pattern}`: a fraction of a second is SSS, SSSSSS or SSSSSSSSS"
                        ));
                    }
                });
            }
            'z' => {
                out.push_str("UTC");
                used = 1;
            }
            'Z' => {
                out.push_str("+0000");
                used = 1;
            }
            'X' => {
                used = run.min(3);
                out.push_str(["+00", "+0000", "+00:00"][used - 1]);
            }
            other => {
                literal(&mut out, other);
                used = 1;
            }
        }
        i += used;
    }
    Ok(out)
}

fn literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

/// A Go duration (`1h30m10s100ms200us300ns`, a sign in front, fractions allowed) in
/// nanoseconds.
pub(super) fn duration_ns(text: &str) -> Result<i128, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration: write a number and a unit (ns, us, ms, s, m, h), \
             e.g. 1h30m or -500ms"
        )
    };
    let (sign, mut rest) = match text.strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Ok(sign * total.round() as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_strftime() {
        assert_eq!(
            strftime("YYYY-MM-dd T HH:mm:ss").as_deref(),
            Ok("%Y-%m-%d T %H:%M:%S")
        );
        assert_eq!(
            strftime("YYYY/MM/dd HH:mm:ssSSS XXX").as_deref(),
            Ok("%Y/%m/%d %H:%M:%S%.3f +00:00")
        );
        assert_eq!(
            strftime("yyyy-MM-ddTHH:mm:ss\\ZXX").as_deref(),
            Ok("%Y-%m-%dT%H:%M:%SZ+0000")
        );
        assert_eq!(
            strftime("EEEE, MMMM d, h a").as_deref(),
            Ok("%A, %B %-d, %-I %p")
        );
        assert_eq!(strftime("'at' HH 100%").as_deref(), Ok("at %H 100%%"));
        assert!(strftime("YYY").is_err());
        assert!(strftime("ss.S").is_err());
    }

    #[test]
    fn durations_in_nanoseconds() {
        assert_eq!(duration_ns("1h"), Ok(3_600_000_000_000));
        assert_eq!(
            duration_ns("1h30m10s100ms200us300ns"),
            Ok(5_410_100_200_300)
        );
        assert_eq!(duration_ns("-1.5h"), Ok(-5_400_000_000_000));
        assert_eq!(duration_ns("250ms"), Ok(250_000_000));
        assert!(duration_ns("10").is_err());
        assert!(duration_ns("1d").is_err());
        assert!(duration_ns("").is_err());
    }
}
