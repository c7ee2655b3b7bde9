//! Reading an origin response's `Cache-Control` (RFC 9111 §5.2.2, RFC 5861),
//! `Expires`, `Date` and `Age` into [`Freshness`].
//!
//! Parsing is forgiving the way caches must be: directive names are
//! case-insensitive, values may be quoted, several `Cache-Control` headers
//! are one list, and anything unparseable is ignored rather than failing the
//! response. Where a directive appears twice with different values the
//! smaller one wins, so a confused origin errs towards freshness.

use std::time::Duration;

use http::HeaderMap;

use super::Freshness;

/// The freshness an origin's headers allow.
///
/// - `no-store` and `private` (with or without a field list) → not stored.
/// - `no-cache` (with or without a field list) → stored, `max_age` 0: every
///   use revalidates.
/// - `s-maxage` is preferred over `max-age`; without either, `Expires` less
///   `Date` (an `Expires` that is not a valid date, like `0`, means already
///   stale; without `Date` a valid `Expires` is not used). `Age` is
///   subtracted.
/// - `must-revalidate` and `proxy-revalidate` forbid serving stale: both
///   stale windows are `Some(0)`.
/// - `stale-while-revalidate=N` and `stale-if-error=N` are passed on.
/// - `Pragma` is not read.
pub fn freshness_from_headers(headers: &HeaderMap) -> Freshness {
    let mut directives = Directives::default();
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        // A value that is not visible ASCII is garbage: ignore it.
        if let Ok(text) = value.to_str() {
            directives.read(text);
        }
    }
    let age = headers
        .get(http::header::AGE)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| parse_seconds(text.trim()))
        .unwrap_or(Duration::ZERO);
    let max_age = if directives.no_cache {
        Some(Duration::ZERO)
    } else {
        directives
            .s_maxage
            .or(directives.max_age)
            .or_else(|| lifetime_from_expires(headers))
            .map(|max_age| max_age.saturating_sub(age))
    };
    let (stale_while_revalidate, stale_if_error) = if directives.must_revalidate {
        (Some(Duration::ZERO), Some(Duration::ZERO))
    } else {
        (directives.stale_while_revalidate, directives.stale_if_error)
    };
    Freshness {
        store: !directives.no_store && !directives.private,
        max_age,
        stale_while_revalidate,
        stale_if_error,
    }
}

/// `Expires - Date` (RFC 9111 §4.2.1), computed from the origin's own clock
/// so skew between it and this server does not matter.
fn lifetime_from_expires(headers: &HeaderMap) -> Option<Duration> {
    let expires = headers.get(http::header::EXPIRES)?;
    let Some(expires) = expires.to_str().ok().and_then(parse_http_date) else {
        // RFC 9111 §5.3: an invalid date, especially "0", is in the past.
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(http::header::DATE)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_http_date)?;
    Some(Duration::from_secs(expires.saturating_sub(date)))
}

/// Seconds since the Unix epoch of an IMF-fixdate (`Sun, 06 Nov 1994
/// 08:49:37 GMT`), the form RFC 9110 requires senders to use. The obsolete
/// forms are treated as invalid.
fn parse_http_date(text: &str) -> Option<u64> {
    let text = text.trim();
    let (_weekday, rest) = text.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let number = |text: &str, digits: usize| -> Option<u64> {
        (text.len() == digits && text.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    let day = number(day, 2)?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|name| name == month)? as u64
        + 1;
    let year = number(year, 4)?;
    let clock: Vec<&str> = time.split(':').collect();
    let [hour, minute, second] = clock.as_slice() else {
        return None;
    };
    let (hour, minute, second) = (number(hour, 2)?, number(minute, 2)?, number(second, 2)?);
    if year < 1970 || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), for years from 1970.
    let (shifted_year, shifted_month) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = shifted_year / 400;
    let year_of_era = shifted_year - era * 400;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[derive(Default)]
struct Directives {
    no_store: bool,
    private: bool,
    no_cache: bool,
    must_revalidate: bool,
    max_age: Option<Duration>,
    s_maxage: Option<Duration>,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
}

impl Directives {
    fn read(&mut self, text: &str) {
        for item in split_list(text) {
            let (name, value) = match item.split_once('=') {
                Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
                None => (item.trim(), None),
            };
            let seconds = || value.as_deref().and_then(parse_seconds);
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "no-store" => self.no_store = true,
                "private" => self.private = true,
                "no-cache" => self.no_cache = true,
                "must-revalidate" | "proxy-revalidate" => self.must_revalidate = true,
                "max-age" => keep_smaller(&mut self.max_age, seconds()),
                "s-maxage" => keep_smaller(&mut self.s_maxage, seconds()),
                "stale-while-revalidate" => {
                    keep_smaller(&mut self.stale_while_revalidate, seconds())
                }
                "stale-if-error" => keep_smaller(&mut self.stale_if_error, seconds()),
                _ => {}
            }
        }
    }
}

fn keep_smaller(slot: &mut Option<Duration>, value: Option<Duration>) {
    if let Some(value) = value {
        *slot = Some(slot.map_or(value, |current| current.min(value)));
    }
}

/// Splits a header value at commas outside quoted strings.
fn split_list(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (index, character) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match character {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect()
}

/// Removes the quotes of a quoted string and its backslash escapes.
fn unquote(value: &str) -> String {
    match value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
    {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for character in inner.chars() {
                if character == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                escaped = false;
                out.push(character);
            }
            out
        }
        None => value.to_string(),
    }
}

/// Delta-seconds: digits only; values too large to hold are the largest
/// (RFC 9111 §1.2.2 says to treat overflow as 2^31).
fn parse_seconds(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let seconds = text.parse::<u64>().unwrap_or(u64::MAX).min(1 << 31);
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Freshness {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(http::header::CACHE_CONTROL, value.parse().unwrap());
        }
        freshness_from_headers(&headers)
    }

    fn secs(seconds: u64) -> Option<Duration> {
        Some(Duration::from_secs(seconds))
    }

    /// No header: store, no limit, no stale windows.
    #[test]
    fn nothing_means_store() {
        assert_eq!(
            parse(&[]),
            Freshness {
                store: true,
                max_age: None,
                stale_while_revalidate: None,
                stale_if_error: None
            }
        );
    }

    /// The usual directives.
    #[test]
    fn common_directives() {
        assert_eq!(parse(&["max-age=60"]).max_age, secs(60));
        assert_eq!(
            parse(&["public, max-age=60, s-maxage=10"]).max_age,
            secs(10)
        );
        assert_eq!(parse(&["s-maxage=10, max-age=60"]).max_age, secs(10));
        assert!(!parse(&["no-store"]).store);
        assert!(!parse(&["private, max-age=60"]).store);
        assert!(!parse(&["private=\"set-cookie, x\""]).store);
        let no_cache = parse(&["no-cache"]);
        assert!(no_cache.store);
        assert_eq!(no_cache.max_age, secs(0));
        assert_eq!(
            parse(&["no-cache=\"set-cookie\", max-age=60"]).max_age,
            secs(0)
        );
        let stale = parse(&["max-age=1, stale-while-revalidate=30, stale-if-error=86400"]);
        assert_eq!(stale.stale_while_revalidate, secs(30));
        assert_eq!(stale.stale_if_error, secs(86400));
        let strict = parse(&["max-age=1, must-revalidate, stale-if-error=60"]);
        assert_eq!(strict.stale_if_error, secs(0));
        assert_eq!(strict.stale_while_revalidate, secs(0));
        assert_eq!(parse(&["proxy-revalidate"]).stale_if_error, secs(0));
    }

    /// Case, quoting, whitespace, several headers and garbage.
    #[test]
    fn robust_parsing() {
        assert_eq!(parse(&["MAX-AGE=60"]).max_age, secs(60));
        assert_eq!(parse(&["Max-Age=\"60\""]).max_age, secs(60));
        assert_eq!(parse(&["  max-age = 60 ,"]).max_age, secs(60));
        assert!(!parse(&["max-age=60", "No-Store"]).store);
        assert_eq!(parse(&["public", "max-age=5"]).max_age, secs(5));
        // Smaller of duplicates.
        assert_eq!(parse(&["max-age=60, max-age=5"]).max_age, secs(5));
        assert_eq!(parse(&["max-age=5", "max-age=60"]).max_age, secs(5));
        // Garbage values are ignored, not fatal.
        for garbage in [
            "max-age=-1",
            "max-age=abc",
            "max-age=",
            "max-age",
            "max-age=1.5",
            "=,,=",
            ",,,",
            "\"unterminated, max-age=9",
            "max-age=\"",
            "🙂",
        ] {
            let mut headers = HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_str(garbage) {
                headers.append(http::header::CACHE_CONTROL, value);
            }
            let freshness = freshness_from_headers(&headers);
            assert!(freshness.store, "{garbage}");
            assert_eq!(freshness.max_age, None, "{garbage}");
        }
        // A comma inside quotes does not split.
        let quoted = parse(&["no-cache=\"a, no-store\", max-age=7"]);
        assert!(quoted.store);
        assert_eq!(quoted.max_age, secs(0));
        // Escaped quote inside a quoted string.
        assert!(parse(&["x=\"a\\\", no-store\", max-age=3"]).store);
        // Non-ASCII bytes make the header unreadable; it is ignored.
        let mut headers = HeaderMap::new();
        headers.append(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_bytes(b"no-store \xff").unwrap(),
        );
        headers.append(http::header::CACHE_CONTROL, "max-age=4".parse().unwrap());
        let freshness = freshness_from_headers(&headers);
        assert!(freshness.store);
        assert_eq!(freshness.max_age, secs(4));
        // Overflow is clamped, not wrapped.
        assert_eq!(
            parse(&["max-age=99999999999999999999999"]).max_age,
            secs(1 << 31)
        );
    }

    /// Without max-age, `Expires - Date` is the lifetime; a bad `Expires` is
    /// already stale; max-age wins over `Expires`.
    #[test]
    fn expires_and_date() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Wed, 29 Feb 2024 23:59:60 GMT"),
            Some(1_709_251_200)
        );
        for bad in [
            "0",
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        let headers = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            freshness_from_headers(&headers).max_age
        };
        let date = ("date", "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            headers(&[date, ("expires", "Sun, 06 Nov 1994 08:59:37 GMT")]),
            secs(600)
        );
        assert_eq!(
            headers(&[
                date,
                ("expires", "Sun, 06 Nov 1994 08:59:37 GMT"),
                ("age", "100")
            ]),
            secs(500)
        );
        assert_eq!(
            headers(&[date, ("expires", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            secs(0)
        );
        assert_eq!(headers(&[date, ("expires", "0")]), secs(0));
        assert_eq!(headers(&[("expires", "0")]), secs(0));
        assert_eq!(
            headers(&[("expires", "Sun, 06 Nov 1994 08:59:37 GMT")]),
            None
        );
        assert_eq!(
            headers(&[date, ("expires", "0"), ("cache-control", "max-age=60")]),
            secs(60)
        );
    }

    /// `Age` is subtracted from the lifetime, never below zero.
    #[test]
    fn age_is_subtracted() {
        let mut headers = HeaderMap::new();
        headers.append(http::header::CACHE_CONTROL, "max-age=60".parse().unwrap());
        headers.append(http::header::AGE, "20".parse().unwrap());
        assert_eq!(freshness_from_headers(&headers).max_age, secs(40));
        headers.insert(http::header::AGE, "600".parse().unwrap());
        assert_eq!(freshness_from_headers(&headers).max_age, secs(0));
        headers.insert(http::header::AGE, "junk".parse().unwrap());
        assert_eq!(freshness_from_headers(&headers).max_age, secs(60));
    }
}
