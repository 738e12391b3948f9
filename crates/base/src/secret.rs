//! Secrets kept out of messages and logs.

/// A database or Redis connection string with its password, wherever it is, replaced by `***`:
/// in a URL's user info (`postgres://u:***@db/x`), in a `password=` query parameter, or in
/// libpq's key=value form (`host=db password=***`), so that it can be named in a message.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return redact_pairs(url, ' ') };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let path = match path.split_once('?') {
        Some((before, query)) => format!("{before}?{}", redact_pairs(query, '&')),
        None => path.to_string(),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => format!("{scheme}://{authority}{path}"),
        },
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// `key=value` pairs separated by `sep`, with the value of `password` hidden.
fn redact_pairs(text: &str, sep: char) -> String {
    let hide = |pair: &str| match pair.split_once('=') {
        Some((key, _)) if key.trim().eq_ignore_ascii_case("password") => format!("{key}=***"),
        _ => pair.to_string(),
    };
    text.split(sep).map(hide).collect::<Vec<_>>().join(&sep.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        assert_eq!(
            redact_url("postgres://app:s3cr@t@db:5432/edge?sslmode=require"),
            "postgres://app:***@db:5432/edge?sslmode=require"
        );
        assert_eq!(redact_url("rediss://:pw@cache:6380/0"), "rediss://:***@cache:6380/0");
        assert_eq!(redact_url("redis://cache:6379/0"), "redis://cache:6379/0");
        assert_eq!(redact_url("postgres://app@db/edge"), "postgres://app@db/edge");
        assert_eq!(
            redact_url("host=db user=app password=x sslmode=require"),
            "host=db user=app password=*** sslmode=require"
        );
        assert_eq!(redact_url("postgres://db/edge?user=app&password=x"), "postgres://db/edge?user=app&password=***");
    }
}
