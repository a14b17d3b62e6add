//! Value types the command line parses into: durations and byte sizes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration written as a number and a unit: `500ms`, `2s`, `1.5m`, `1h`.
/// A bare number means seconds, as curl's `--connect-timeout` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let value: f64 = number.parse().map_err(|_| {
            format!("invalid duration {s:?}: expected a number and a unit, like 500ms, 2s, 1m or 1h")
        })?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!("invalid duration unit {other:?} in {s:?}: use ms, s, m or h"));
            }
        };
        Duration::try_from_secs_f64(value * scale)
            .map(HumanDuration)
            .map_err(|_| format!("duration {s:?} is out of range"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A size in bytes with an optional binary unit, as aria2's `-k` and
/// curl's `--limit-rate` take it: `512K`, `64M`, `1G`, `1.5G` (`KiB`,
/// `MB` and lower case are accepted; every unit is a power of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected a number and a unit, like 64M"))?;
        let unit = unit.trim().to_ascii_uppercase();
        let unit = unit.strip_suffix("IB").or_else(|| unit.strip_suffix('B')).unwrap_or(&unit);
        let shift = match unit {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(format!("invalid size unit in {s:?}: use K, M, G or T")),
        };
        let bytes = value * (1u64 << shift) as f64;
        if !(bytes.is_finite() && bytes < u64::MAX as f64) {
            return Err(format!("size {s:?} is out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("2", Duration::from_secs(2)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
            (" 10ms ", Duration::from_millis(10)),
        ];
        for (input, want) in ok {
            assert_eq!(input.parse::<HumanDuration>(), Ok(HumanDuration(want)), "{input}");
        }
        for bad in ["", "s", "1d", "-1s", "1..2s", "ms", "1e3s", "99999999999999999999h"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn sizes() {
        let ok = [
            ("0", 0),
            ("1000", 1000),
            ("512K", 512 << 10),
            ("64M", 64 << 20),
            ("64MiB", 64 << 20),
            ("64mb", 64 << 20),
            ("1.5G", 3 << 29),
            ("2T", 2 << 40),
            (" 8 M ", 8 << 20),
        ];
        for (input, want) in ok {
            assert_eq!(input.parse::<ByteSize>(), Ok(ByteSize(want)), "{input}");
        }
        for bad in ["", "M", "1X", "-1M", "1..2M", "99999999999T"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} should not parse");
        }
    }
}
