//! Secrets kept out of messages and logs.

/// A URL with its password, if it has one, replaced by `***` (`postgres://u:***@db/x`), so that a
/// database or Redis URL can be named in a message.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_string() };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_string(),
    }
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
        assert_eq!(redact_url("host=db user=app password=x"), "host=db user=app password=x");
    }
}
