//! The route table: keys and environment, precedence, `no_proxy`, credentials.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Environment variables, as (name, value).
type Env<'a> = &'a [(&'a str, &'a str)];
/// (proxy_url, no_proxy, environment, URL, the route as text).
type Case<'a> = (Option<&'a str>, Option<&'a str>, Env<'a>, &'a str, &'a str);

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

/// (proxy_url, no_proxy, environment, URL) → the route, written as text: `direct …` or the proxy.
#[test]
fn route_table() {
    let cases: &[Case] = &[
        (None, None, &[], "https://s.example/", "direct (no proxy configured)"),
        (None, None, &[("HTTPS_PROXY", "p:3128")], "https://s.example/", "via http://p:3128 (from HTTPS_PROXY)"),
        (None, None, &[("HTTPS_PROXY", "p:3128")], "wss://s.example/ws/agent", "via http://p:3128 (from HTTPS_PROXY)"),
        (None, None, &[("HTTPS_PROXY", "p:3128")], "http://s.example/", "direct (no proxy configured)"),
        (None, None, &[("HTTP_PROXY", "p:8080")], "ws://s.example/", "via http://p:8080 (from HTTP_PROXY)"),
        (
            None,
            None,
            &[("HTTPS_PROXY", "a:1"), ("https_proxy", "b:2")],
            "https://s/",
            "via http://b:2 (from https_proxy)",
        ),
        (None, None, &[("ALL_PROXY", "a:1")], "http://s/", "via http://a:1 (from ALL_PROXY)"),
        (
            None,
            None,
            &[("ALL_PROXY", "a:1"), ("HTTPS_PROXY", "b:2")],
            "https://s/",
            "via http://b:2 (from HTTPS_PROXY)",
        ),
        (None, None, &[("all_proxy", "a:1"), ("ALL_PROXY", "b:2")], "https://s/", "via http://a:1 (from all_proxy)"),
        (None, None, &[("HTTPS_PROXY", "  ")], "https://s/", "direct (no proxy configured)"),
        (Some("https://c:443"), None, &[("HTTPS_PROXY", "b:2")], "https://s/", "via https://c:443 (from proxy_url)"),
        (Some("c:3128"), None, &[], "http://s/", "via http://c:3128 (from proxy_url)"),
        (Some(""), None, &[("HTTPS_PROXY", "b:2")], "https://s/", "direct (proxy_url = \"\" turns proxies off)"),
        (
            None,
            None,
            &[("HTTPS_PROXY", "b:2"), ("NO_PROXY", ".s.example")],
            "https://api.s.example/",
            "direct (it matches no_proxy)",
        ),
        (
            None,
            None,
            &[("HTTPS_PROXY", "b:2"), ("no_proxy", "x"), ("NO_PROXY", "s")],
            "https://s/",
            "via http://b:2 (from HTTPS_PROXY)",
        ),
        (
            None,
            Some("s"),
            &[("HTTPS_PROXY", "b:2"), ("NO_PROXY", "other")],
            "https://s/",
            "direct (it matches no_proxy)",
        ),
        (
            None,
            Some(""),
            &[("HTTPS_PROXY", "b:2"), ("NO_PROXY", "s")],
            "https://s/",
            "via http://b:2 (from HTTPS_PROXY)",
        ),
        (Some("c:1"), Some("10.0.0.0/8"), &[], "http://10.1.2.3:8103/", "direct (it matches no_proxy)"),
        (None, None, &[("HTTPS_PROXY", "http://u:p%40ss@b:2")], "https://s/", "via http://u@b:2 (from HTTPS_PROXY)"),
    ];
    for (proxy_url, no_proxy, environment, target, want) in cases {
        let environment = env(environment);
        let s = ProxySettings { proxy_url: *proxy_url, no_proxy: *no_proxy, auth: None, env: &environment };
        let proxies = Proxies::resolve(&s).unwrap();
        let got = proxies.route(&url(target)).to_string().replace("via the proxy ", "via ");
        assert_eq!(&got, want, "{proxy_url:?} {no_proxy:?} {environment:?} {target}");
    }
}

#[test]
fn credentials_come_from_the_url_or_the_file_and_never_print() {
    let environment = env(&[("HTTPS_PROXY", "http://u%3Ax:p%40ss@proxy:3128")]);
    let s = ProxySettings { env: &environment, ..Default::default() };
    let p = Proxies::resolve(&s).unwrap().https.unwrap();
    let auth = p.auth.clone().unwrap();
    assert_eq!((auth.user.as_str(), auth.password()), ("u:x", "p@ss"));
    assert_eq!(p.url.as_str(), "http://proxy:3128/", "the URL keeps no credentials");
    assert_eq!(p.url_with_auth().as_str(), "http://u%3Ax:p%40ss@proxy:3128/");
    for shown in [format!("{p}"), format!("{p:?}"), format!("{:?}", Proxies::resolve(&s).unwrap())] {
        assert!(!shown.contains("p@ss") && !shown.contains("p%40ss"), "{shown}");
    }
    let file = Credentials::parse("agent:s3cret:with:colons\nignored\n").unwrap();
    let s = ProxySettings { auth: Some(file), env: &environment, ..Default::default() };
    let auth = Proxies::resolve(&s).unwrap().https.unwrap().auth.unwrap();
    assert_eq!((auth.user.as_str(), auth.password()), ("agent", "s3cret:with:colons"), "the file wins");
    assert_eq!(Credentials::parse("no-colon\n"), None);
    assert_eq!(Credentials::parse(":nouser"), None);
}

#[test]
fn a_setting_that_is_no_usable_proxy_is_named_without_its_password() {
    let cases: &[(Option<&str>, Env, &str, &str)] = &[
        (Some("socks5://u:pw@p:1080"), &[], "proxy_url", "socks5 proxies are not supported"),
        (None, &[("ALL_PROXY", "socks5h://p:1080")], "ALL_PROXY", "proxy_url = \"\" turns proxies off"),
        (Some("http://p:3128/path"), &[], "proxy_url", "no path"),
        (Some("http://:3128"), &[], "proxy_url", "not a URL"),
        (None, &[("HTTPS_PROXY", "b:2"), ("NO_PROXY", "a b/c")], "NO_PROXY", "not a host name"),
    ];
    for (proxy_url, environment, key, problem) in cases {
        let environment = env(environment);
        let s = ProxySettings { proxy_url: *proxy_url, env: &environment, ..Default::default() };
        let e = Proxies::resolve(&s).unwrap_err();
        assert_eq!(e.key, *key, "{e:?}");
        assert!(e.problem.contains(problem), "{e:?}");
        assert!(!e.value.contains("pw"), "{e:?}");
    }
}
