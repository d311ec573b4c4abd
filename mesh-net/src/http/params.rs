//! Query-string and path decoding for the HTTP API.

use std::collections::BTreeMap;

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`). Invalid
/// escapes or non-UTF-8 results are an error message.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("invalid percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 after decoding"))
}

/// Parses a Go duration as Consul's `?wait=` takes it ("10s", "5m",
/// "1m30s", "250ms"); a bare number means seconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {s:?} (use e.g. 10s, 5m, 250ms)");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(1000).ok_or_else(bad);
    }
    let mut total_ns: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let ns = value * unit_ns;
        if !ns.is_finite() || ns > 1e20 {
            return Err(bad());
        }
        total_ns += ns as u128;
    }
    u64::try_from(total_ns / 1_000_000).map_err(|_| bad())
}

/// A decoded query string. Consul flags such as `?recurse` have no value.
#[derive(Debug, Default)]
pub struct Query {
    params: BTreeMap<String, Vec<String>>,
}

impl Query {
    /// Parses `a=1&b&c=x%20y`.
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        let mut params = BTreeMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            params
                .entry(percent_decode(k, true)?)
                .or_insert_with(Vec::new)
                .push(percent_decode(v, true)?);
        }
        Ok(Self { params })
    }

    /// The same query without its blocking parameters (`index`, `wait`):
    /// for the reads that follow a blocking one within one request.
    pub fn without_blocking(&self) -> Query {
        let mut params = self.params.clone();
        params.remove("index");
        params.remove("wait");
        Query { params }
    }

    /// Whether the flag or parameter is present.
    pub fn has(&self, key: &str) -> bool {
        self.params.contains_key(key)
    }

    /// The parameter's value, if present (the last, if repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Every value of a repeatable parameter (`?tag=a&tag=b`), in order.
    pub fn all(&self, key: &str) -> &[String] {
        self.params.get(key).map_or(&[], Vec::as_slice)
    }

    /// A Consul flag such as `?passing`: present and not `false`.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| v != "false" && v != "0")
    }

    /// An unsigned integer parameter; a clear error if malformed.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("invalid value for ?{key}: {v:?} is not an unsigned integer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_duration_ms("7"), Ok(7_000));
        for bad in ["", "s", "10x", "-1s", "1e400s", "ms10"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_strings_decode() {
        let q = Query::parse(Some("recurse&separator=%2F&cas=0&x=a+b")).unwrap();
        assert!(q.has("recurse"));
        assert_eq!(q.get("separator"), Some("/"));
        assert_eq!(q.u64("cas"), Ok(Some(0)));
        assert_eq!(q.get("x"), Some("a b"));
        assert!(Query::parse(Some("a=%zz")).is_err());
        assert!(q.u64("separator").is_err());
    }
}
