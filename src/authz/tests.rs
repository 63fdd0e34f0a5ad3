//! Pattern syntax and matching, and allow-list checks.

use crate::authz::{Allow, Pattern, PeerIdentity};

fn uri_id(u: &str) -> PeerIdentity {
    PeerIdentity {
        uris: vec![u.to_owned()],
        ..Default::default()
    }
}

fn dns_id(d: &str) -> PeerIdentity {
    PeerIdentity {
        dns_names: vec![d.to_owned()],
        ..Default::default()
    }
}

fn cn_id(c: &str) -> PeerIdentity {
    PeerIdentity {
        common_name: Some(c.to_owned()),
        ..Default::default()
    }
}

fn pat(s: &str) -> Pattern {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn uri_patterns() {
    let table: &[(&str, &str, bool)] = &[
        (
            "spiffe://example.org/ns/prod/sa/a",
            "spiffe://example.org/ns/prod/sa/a",
            true,
        ),
        (
            "spiffe://example.org/ns/prod/sa/a",
            "spiffe://example.org/ns/prod/sa/ab",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/sa/a",
            "spiffe://example.org/ns/prod/sa",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/sa/a",
            "SPIFFE://example.org/ns/prod/sa/a",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/ns/prod/sa/a",
            true,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/ns/prod/x",
            true,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/ns/production/x",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/ns/prod",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/ns/prod/",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/ns/prod//x",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/ns/prod/../admin",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/ns/prod/./x",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/ns/prod/x?y",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/ns/dev/x",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "spiffe://evil.org/ns/prod/x",
            false,
        ),
        (
            "spiffe://example.org/ns/prod/*",
            "xspiffe://example.org/ns/prod/x",
            false,
        ),
        (
            "spiffe://example.org/*",
            "spiffe://example.org/anything/at/all",
            true,
        ),
        (
            "spiffe://example.org/*",
            "spiffe://example.org.evil/x",
            false,
        ),
        (
            "uri:https://ops.example.com/team",
            "https://ops.example.com/team",
            true,
        ),
        ("uri:urn:example:client", "urn:example:client", true),
    ];
    let mut n = 0;
    for (p, u, want) in table {
        assert_eq!(pat(p).matches(&uri_id(u)), *want, "{p} vs {u}");
        // A URI pattern never matches the same text in another field.
        assert!(!pat(p).matches(&dns_id(u)), "{p} vs dns {u}");
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn dns_patterns() {
    let table: &[(&str, &str, bool)] = &[
        ("dns:client.example.com", "client.example.com", true),
        ("dns:client.example.com", "CLIENT.Example.COM", true),
        ("dns:Client.Example.com", "client.example.com", true),
        ("dns:client.example.com", "client.example.com.evil", false),
        ("dns:client.example.com", "xclient.example.com", false),
        ("dns:client.example.com", "a.client.example.com", false),
        ("dns:*.example.com", "a.example.com", true),
        ("dns:*.example.com", "A.EXAMPLE.COM", true),
        ("dns:*.example.com", "example.com", false),
        ("dns:*.example.com", ".example.com", false),
        ("dns:*.example.com", "a.b.example.com", false),
        ("dns:*.example.com", "aexample.com", false),
        ("dns:*.example.com", "a.example.com.evil", false),
        ("dns:*.example.com", "*.example.com", false),
        ("dns:*.example.com", "é.example.com", true),
        ("dns:*.example.com", "a.exampleécom", false),
    ];
    let mut n = 0;
    for (p, d, want) in table {
        assert_eq!(pat(p).matches(&dns_id(d)), *want, "{p} vs {d}");
        assert!(!pat(p).matches(&cn_id(d)), "{p} vs cn {d}");
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn cn_patterns() {
    let table: &[(&str, &str, bool)] = &[
        ("cn:ops", "ops", true),
        ("cn:ops", "OPS", false),
        ("cn:ops", "ops2", false),
        ("cn:ops", "op", false),
        ("cn:ops team", "ops team", true),
        ("cn:*", "anything", false),
        ("cn:*", "*", true),
    ];
    let mut n = 0;
    for (p, c, want) in table {
        assert_eq!(pat(p).matches(&cn_id(c)), *want, "{p} vs {c}");
        assert!(!pat(p).matches(&dns_id(c)), "{p} vs dns {c}");
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn matches_any_san_element() {
    let id = PeerIdentity {
        uris: vec!["spiffe://a.org/x".into(), "spiffe://b.org/ns/prod/y".into()],
        dns_names: vec!["one.example.com".into(), "two.example.net".into()],
        common_name: Some("ops".into()),
        ..Default::default()
    };
    assert!(pat("spiffe://b.org/ns/prod/*").matches(&id));
    assert!(pat("dns:*.example.net").matches(&id));
    assert!(pat("cn:ops").matches(&id));
    assert!(!pat("dns:*.example.org").matches(&id));
}

#[test]
fn pattern_parsing() {
    assert_eq!(
        pat("spiffe://x.org/a"),
        Pattern::Uri("spiffe://x.org/a".into())
    );
    assert_eq!(
        pat("uri:spiffe://x.org/*"),
        Pattern::Uri("spiffe://x.org/*".into())
    );
    assert_eq!(
        pat("dns:A.Example.COM"),
        Pattern::Dns("a.example.com".into())
    );
    assert_eq!(pat("cn:ops"), Pattern::CommonName("ops".into()));
    assert_eq!(pat("dns:*.Example.com").to_string(), "dns:*.example.com");

    let bad = [
        "",
        "ops",
        "foo:bar",
        "uri:",
        "uri:not a uri",
        "uri:nocolon",
        "uri:spiffe://x.org/a*",
        "uri:spiffe://x.org/*/a",
        "uri:spiffe://x.org/**",
        "spiffe://*",
        "spiffe:///*",
        "spiffe://*.org/a",
        "dns:",
        "dns:*",
        "dns:*.com",
        "dns:a*.example.com",
        "dns:a.*.example.com",
        "dns:example..com",
        "dns:example.com.",
        "dns:exa mple.com",
        "cn:",
    ];
    let mut n = 0;
    for b in bad {
        let e = b.parse::<Pattern>().expect_err(b);
        let msg = e.to_string();
        assert!(msg.contains(&format!("{b:?}")), "{msg} should name {b:?}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn allow_check() {
    let any = Allow::default();
    assert!(any.is_any());
    assert_eq!(any.check(&PeerIdentity::default()).as_deref(), Ok("any"));

    let allow = Allow::new(vec![pat("spiffe://example.org/ns/prod/*"), pat("cn:ops")]);
    assert!(!allow.is_any());
    assert_eq!(
        allow
            .check(&uri_id("spiffe://example.org/ns/prod/sa/a"))
            .as_deref(),
        Ok("uri:spiffe://example.org/ns/prod/*")
    );
    assert_eq!(allow.check(&cn_id("ops")).as_deref(), Ok("cn:ops"));

    let denied = allow
        .check(&uri_id("spiffe://example.org/ns/production/x"))
        .expect_err("must deny");
    assert!(denied
        .identity
        .contains("spiffe://example.org/ns/production/x"));
    let msg = denied.to_string();
    assert!(
        msg.contains("spiffe://example.org/ns/production/x"),
        "{msg}"
    );
    assert!(msg.contains("not allowed"), "{msg}");
    let anon = allow
        .check(&PeerIdentity::default())
        .expect_err("must deny");
    assert!(anon.to_string().contains("<anonymous>"));
}
