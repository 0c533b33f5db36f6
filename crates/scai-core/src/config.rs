//! Typed reads of environment variables. Every parse failure names the variable, so a bad
//! value stops start-up with a message an operator can act on.

use std::str::FromStr;
use std::time::Duration;

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: invalid value {value:?}: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
    #[error("{var} is required{hint}")]
    Missing { var: String, hint: String },
}

impl ConfigError {
    pub fn invalid(var: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            var: var.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub fn missing(var: &str, hint: &str) -> Self {
        ConfigError::Missing {
            var: var.to_string(),
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!(" ({hint})")
            },
        }
    }
}

/// The variable's value, or `None` when unset or empty (an empty value means "unset",
/// which is what operators expect from `FOO=` in compose files).
pub fn opt_string(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

pub fn string_or(var: &str, default: &str) -> String {
    opt_string(var).unwrap_or_else(|| default.to_string())
}

pub fn required(var: &str, hint: &str) -> Result<String, ConfigError> {
    opt_string(var).ok_or_else(|| ConfigError::missing(var, hint))
}

/// Parse the variable with `FromStr`, or return `default` when unset.
pub fn parse_or<T>(var: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match opt_string(var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<T>()
            .map_err(|e| ConfigError::invalid(var, &v, e.to_string())),
    }
}

pub fn parse_opt<T>(var: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match opt_string(var) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|e| ConfigError::invalid(var, &v, e.to_string())),
    }
}

/// Booleans accept `1/0`, `true/false`, `yes/no`, `on/off` in any case.
pub fn bool_or(var: &str, default: bool) -> Result<bool, ConfigError> {
    match opt_string(var) {
        None => Ok(default),
        Some(v) => {
            parse_bool(&v).ok_or_else(|| ConfigError::invalid(var, &v, "expected true or false"))
        }
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Durations accept a plain number of seconds or a number with a unit: `500ms`, `30s`, `5m`,
/// `2h`, `7d`.
pub fn duration_or(var: &str, default: Duration) -> Result<Duration, ConfigError> {
    match opt_string(var) {
        None => Ok(default),
        Some(v) => parse_duration(&v).ok_or_else(|| {
            ConfigError::invalid(
                var,
                &v,
                "expected seconds or a duration like 500ms, 30s, 5m, 2h, 7d",
            )
        }),
    }
}

pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Sizes accept bytes or a binary unit: `64KiB`, `4MiB`, `5GiB` (also `K`, `M`, `G`, `MB`...
/// which are read as binary units too, the way operators usually mean them).
pub fn size_or(var: &str, default: u64) -> Result<u64, ConfigError> {
    match opt_string(var) {
        None => Ok(default),
        Some(v) => parse_size(&v)
            .ok_or_else(|| ConfigError::invalid(var, &v, "expected bytes or a size like 4MiB")),
    }
}

pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Comma-separated list, trimmed, empties dropped.
pub fn list(var: &str) -> Vec<String> {
    opt_string(var)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90d"), Some(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("5y"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB"), Some(4 << 20));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("1Q"), None);
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("TRUE"), Some(true));
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
