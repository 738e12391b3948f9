//! Configuration: sources, precedence, validation errors.

use super::*;

fn source(file: &str, ext: &str, env: &[(&str, &str)]) -> (tempfile::TempDir, ConfigSource) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("agent.{ext}"));
    std::fs::write(&path, file).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let src = ConfigSource::new(Some(path), env, RawConfig::default());
    (dir, src)
}

const FULL: &str =
    "base_url = \"https://h.example/some/prefix\"\nclient_id = \"c\"\nclient_secret = \"s3cret\"\nagent_id = \"a\"\n";

#[test]
fn a_full_file_validates_with_defaults() {
    let (_d, src) = source(FULL, "toml", &[]);
    let c = src.load().unwrap();
    assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
    assert_eq!(c.token_url().as_str(), "https://h.example/some/prefix/oauth2/token");
    assert_eq!(c.ws_url().as_str(), "wss://h.example/ws/agent");
    assert!(!format!("{c:?}").contains("s3cret"), "the secret never prints");
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let (_d, mut src) =
        source(FULL, "toml", &[("EDGE_AGENT_AGENT_ID", "from-env"), ("EDGE_AGENT_HEARTBEAT_INTERVAL", "2.5")]);
    let c = src.load().unwrap();
    assert_eq!(c.agent_id, "from-env");
    assert_eq!(c.heartbeat_interval, Duration::from_millis(2500));
    src.flags.agent_id = Some("from-flag".into());
    assert_eq!(src.load().unwrap().agent_id, "from-flag");
}

#[test]
fn medplum_properties_are_accepted() {
    let props = "baseUrl=http://localhost:8103/\nclientId=c\nclientSecret=s\nagentId=a\nlogLevel=INFO\n";
    let (_d, src) = source(props, "properties", &[]);
    let c = src.load().unwrap();
    assert_eq!((c.client_id.as_str(), c.agent_id.as_str()), ("c", "a"));
    assert_eq!(c.ws_url().as_str(), "ws://localhost:8103/ws/agent");
}

#[test]
fn each_bad_value_names_its_key() {
    let cases = [
        ("client_id = \"c\"\nclient_secret = \"s\"\nagent_id = \"a\"\n", "`base_url` is missing"),
        (&FULL.replace("agent_id = \"a\"\n", ""), "EDGE_AGENT_AGENT_ID"),
        (&FULL.replace("https://h.example/some/prefix", "ftp://x"), "`base_url` = \"ftp://x\" is invalid"),
        (&format!("{FULL}heartbeat_interval = -1\n"), "`heartbeat_interval`"),
        (&format!("{FULL}log_format = \"xml\"\n"), "expected text or json"),
        (&format!("{FULL}base_ur = \"x\"\n"), "unknown field `base_ur`"),
        (&format!("{FULL}reconnect_min_delay = 5\nreconnect_max_delay = 2\n"), "must not be below"),
        ("base_url = ", "not valid TOML"),
    ];
    for (file, expected) in cases {
        let (_d, src) = source(file, "toml", &[]);
        let err = src.load().unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        assert!(!err.contains("s3cret"));
    }
}

#[test]
fn a_named_file_must_exist_but_the_default_may_not() {
    let named = ConfigSource::new(Some("/nonexistent/agent.toml".into()), [], RawConfig::default());
    assert!(matches!(named.load(), Err(ConfigError::Unreadable { .. })));
    let mut default = ConfigSource::new(None, [], RawConfig::default());
    default.path = "/nonexistent/agent.toml".into();
    assert!(matches!(default.load(), Err(ConfigError::Missing { key: "base_url", .. })));
}

#[test]
fn proxy_keys_win_over_the_environment_and_their_errors_name_them() {
    let env = [("HTTPS_PROXY", "http://u:pw@envproxy:3128"), ("NO_PROXY", "other"), ("PATH", "/bin")];
    let wss = Url::parse("wss://h.example/ws/agent").unwrap();
    let (_d, src) = source(FULL, "toml", &env);
    assert!(!src.env.contains_key("PATH"), "only the proxy variables are kept from the environment");
    let c = src.load().unwrap();
    assert_eq!(c.proxy.route(&wss).to_string(), "via the proxy http://u@envproxy:3128 (from HTTPS_PROXY)");
    assert!(!format!("{c:?}").contains("pw"), "proxy credentials never print");
    let (_d, src) = source(&format!("{FULL}proxy_url = \"\"\n"), "toml", &env);
    assert_eq!(src.load().unwrap().proxy.route(&wss).to_string(), "direct (proxy_url = \"\" turns proxies off)");
    let (d, mut src) = source(&format!("{FULL}no_proxy = \"h.example\"\n"), "toml", &env);
    assert_eq!(src.load().unwrap().proxy.route(&wss).to_string(), "direct (it matches no_proxy)");
    let auth = d.path().join("proxy.auth");
    std::fs::write(&auth, "agent:filepw\n").unwrap();
    src.flags.proxy_auth = Some(auth.clone());
    let c = src.load().unwrap();
    assert_eq!(c.proxy.https.unwrap().auth.unwrap().password(), "filepw");
    src.flags.proxy_auth = Some(d.path().join("missing"));
    let e = src.load().unwrap_err().to_string();
    assert!(e.contains("`proxy_auth`") && e.contains("cannot read it"), "{e}");
    src.flags.proxy_auth = None;
    src.flags.proxy_url = Some("socks5://p:1080".into());
    let e = src.load().unwrap_err().to_string();
    assert!(e.contains("`proxy_url`") && e.contains("socks5 proxies are not supported"), "{e}");
}

const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

#[test]
fn releases_must_be_signed_unless_allow_unsigned_says_otherwise() {
    let load = |file: &str, env: &[(&str, &str)]| source(file, "toml", env).1.load();
    let none = load(FULL, &[]).unwrap();
    assert_eq!(none.trust, ReleaseTrust::NotConfigured, "an old-style configuration trusts nothing");
    assert!(none.trust.warning().unwrap().contains("add trusted_keys = ["), "{:?}", none.trust.warning());
    let signed = load(&format!("{FULL}trusted_keys = [\"{KEY}\"]\n"), &[]).unwrap();
    assert_eq!((signed.trust.keys(), signed.trust.warning()), (&[KEY.to_string()][..], None));
    let unsigned = load(&format!("{FULL}allow_unsigned = true\n"), &[]).unwrap();
    assert_eq!(unsigned.trust, ReleaseTrust::Unsigned);
    assert!(unsigned.trust.warning().unwrap().starts_with("allow_unsigned = true"));
    // The environment and the flag forms, as every key has them.
    assert_eq!(load(FULL, &[("EDGE_AGENT_ALLOW_UNSIGNED", "1")]).unwrap().trust, ReleaseTrust::Unsigned);
    let err = load(FULL, &[("EDGE_AGENT_ALLOW_UNSIGNED", "maybe")]).unwrap_err().to_string();
    assert!(err.contains("EDGE_AGENT_ALLOW_UNSIGNED must be true or false"), "{err}");
    let (_d, mut src) = source(FULL, "toml", &[]);
    src.flags.allow_unsigned = Some(true);
    assert_eq!(src.load().unwrap().trust, ReleaseTrust::Unsigned);
    // Keys and allow_unsigned together is a contradiction, refused with what to do.
    let both = load(&format!("{FULL}trusted_keys = [\"{KEY}\"]\nallow_unsigned = true\n"), &[]).unwrap_err();
    assert!(both.to_string().contains("remove allow_unsigned"), "{both}");
    assert_eq!(load(&format!("{FULL}allow_unsigned = false\n"), &[]).unwrap().trust, ReleaseTrust::NotConfigured);
}
