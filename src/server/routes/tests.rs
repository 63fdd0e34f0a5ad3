//! Route selection, and the routes file's format and errors.

#![allow(clippy::disallowed_methods)] // test fixtures are written before anything runs

use crate::authz::Allow;
use crate::server::config_file::{load_config, parse_config};
use crate::server::routes::{Route, Routes};

fn route(path: &str, sni: Option<&str>, backend: &str) -> Route {
    Route {
        name: format!("{path}{sni:?}"),
        path: path.into(),
        sni: sni.map(Into::into),
        backend: backend.into(),
        allow: Allow::default(),
        proxy_protocol: false,
        inner: None,
    }
}

#[test]
fn select_precedence() {
    let routes = Routes::new(vec![
        route("/db", None, "127.0.0.1:1"),
        route("/db", Some("Special.Internal"), "127.0.0.1:2"),
        route("/only-sni", Some("a.internal"), "127.0.0.1:3"),
        route("/other", None, "127.0.0.1:4"),
    ])
    .expect("valid");
    let backend = |p, s| routes.select(p, s).map(|r| r.backend.as_str());
    assert_eq!(backend("/db", None), Some("127.0.0.1:1"));
    assert_eq!(backend("/db", Some("other.internal")), Some("127.0.0.1:1"));
    assert_eq!(
        backend("/db", Some("special.internal")),
        Some("127.0.0.1:2")
    );
    assert_eq!(
        backend("/db", Some("SPECIAL.internal")),
        Some("127.0.0.1:2")
    );
    assert_eq!(
        backend("/only-sni", Some("a.internal")),
        Some("127.0.0.1:3")
    );
    assert_eq!(backend("/only-sni", Some("b.internal")), None);
    assert_eq!(backend("/only-sni", None), None);
    assert_eq!(backend("/db/", None), None);
    assert_eq!(backend("/DB", None), None);
    assert_eq!(backend("/", None), None);
    assert_eq!(
        routes.paths().collect::<Vec<_>>(),
        ["/db", "/only-sni", "/other"]
    );
    assert_eq!(routes.iter().count(), 4);

    let single = Routes::single("/t".into(), "h:1".into(), Allow::default(), true);
    let r = single.select("/t", Some("whatever")).expect("route");
    assert!(r.proxy_protocol);
    assert_eq!(r.name, "/t");
}

const EXAMPLE: &str = r#"
[[route]]
name = "db"
path = "/db"
sni = "db.internal"
backend = "127.0.0.1:5432"
allow = ["spiffe://example.org/ns/prod/*", "dns:client.example.com", "cn:ops"]
proxy_protocol = true

[[route]]
path = "/db"
backend = "[::1]:5433"

[[route]]
path = "/ssh"
backend = "bastion.internal:22"
allow = ["cn:ops"]
"#;

#[test]
fn parse_valid_example() {
    let routes = parse_config(EXAMPLE).expect("valid");
    let all: Vec<&Route> = routes.iter().collect();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].name, "db");
    assert_eq!(all[0].sni.as_deref(), Some("db.internal"));
    assert!(all[0].proxy_protocol);
    assert_eq!(all[0].allow.patterns().len(), 3);
    assert_eq!(all[1].name, "/db");
    assert!(all[1].allow.is_any());
    assert!(!all[1].proxy_protocol);
    assert_eq!(
        routes
            .select("/db", Some("DB.internal"))
            .map(|r| r.name.as_str()),
        Some("db")
    );
    assert_eq!(
        routes.select("/db", None).map(|r| r.name.as_str()),
        Some("/db")
    );
    assert_eq!(routes.paths().collect::<Vec<_>>(), ["/db", "/ssh"]);
}

#[test]
fn parse_errors() {
    // (config text, text the error must contain)
    let fixtures: &[(&str, &str)] = &[
        ("", "no routes"),
        ("[[route]]\npath = \"/a\"\nbackend = \"h:1\"\nalow = [\"cn:x\"]\n", "alow"),
        ("routes = 1\n", "routes"),
        ("[[route]]\npath = \"/a\"\n", "backend"),
        ("[[route]]\npath = \"/a\"\nbackend = \"h:99999\"\n", "99999"),
        ("[[route]]\npath = \"/a\"\nbackend = \"h:0\"\n", "port 0"),
        ("[[route]]\npath = \"/a\"\nbackend = \"h\"\n", "missing ':port'"),
        ("[[route]]\npath = \"/a\"\nbackend = \":80\"\n", "empty host"),
        ("[[route]]\npath = \"/a\"\nbackend = \"::1:80\"\n", "brackets"),
        ("[[route]]\npath = \"a\"\nbackend = \"h:1\"\n", "must start with '/'"),
        ("[[route]]\npath = \"/a?b\"\nbackend = \"h:1\"\n", "query"),
        ("[[route]]\npath = \"/a\"\nsni = \"\"\nbackend = \"h:1\"\n", "sni"),
        (
            "[[route]]\npath = \"/a\"\nbackend = \"h:1\"\nallow = [\"dns:*.com\"]\n",
            "dns:*.com",
        ),
        (
            "[[route]]\nname = \"x\"\npath = \"/a\"\nbackend = \"h:1\"\nallow = [\"cn:o\", \"bogus\"]\n",
            "allow[1]",
        ),
        (
            "[[route]]\npath = \"/a\"\nbackend = \"h:1\"\n[[route]]\npath = \"/a\"\nbackend = \"h:2\"\n",
            "duplicate",
        ),
        (
            "[[route]]\npath = \"/a\"\nsni = \"X\"\nbackend = \"h:1\"\n[[route]]\npath = \"/a\"\nsni = \"x\"\nbackend = \"h:2\"\n",
            "duplicate",
        ),
        ("[[route]]\npath = \"/a\"\nbackend = \"h:1\"\nproxy_protocol = \"yes\"\n", "proxy_protocol"),
    ];
    let mut n = 0;
    for (text, want) in fixtures {
        let e = parse_config(text).expect_err(text);
        let msg = format!("{e:#}");
        assert!(
            msg.contains(want),
            "error for {text:?} was {msg:?}, wanted {want:?}"
        );
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn unknown_key_error_names_key_and_line() {
    let text = "[[route]]\npath = \"/a\"\nbackend = \"h:1\"\nalow = [\"cn:x\"]\n";
    let msg = format!("{:#}", parse_config(text).expect_err("unknown key"));
    assert!(msg.contains("alow"), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");
}

#[test]
fn load_config_names_file() {
    let dir = std::env::temp_dir().join(format!("postern-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let good = dir.join("good.toml");
    let bad = dir.join("bad.toml");
    std::fs::write(&good, EXAMPLE).expect("write");
    std::fs::write(&bad, "[[route]]\npath = \"/a\"\nbackend = \"h:x\"\n").expect("write");
    assert_eq!(load_config(&good).expect("good").iter().count(), 3);
    let msg = load_config(&bad).expect_err("bad").to_string();
    assert!(msg.contains("bad.toml") && msg.contains("\"h:x\""), "{msg}");
    let missing = dir.join("missing.toml");
    let msg = format!("{:#}", load_config(&missing).expect_err("missing"));
    assert!(msg.contains("missing.toml"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}
