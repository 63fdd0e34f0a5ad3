//! The deny list under the broadest rules, in every spelling; the policy's
//! rules, ports and globs; the wire format.

use std::net::IpAddr;

use super::deny::{self, Class};
use super::policy::{Policy, PolicyFile, Verdict};
use super::wire::{Answer, Code, Destination, Host};
use crate::authz::PeerIdentity;

fn policy(toml_text: &str) -> Policy {
    let file: PolicyFile = toml::from_str(toml_text).expect("policy toml");
    Policy::from_file(file).expect("valid policy")
}

fn id(dns: &str) -> PeerIdentity {
    PeerIdentity {
        dns_names: vec![dns.to_owned()],
        ..PeerIdentity::default()
    }
}

fn decide(p: &Policy, who: &str, dest: &str) -> Verdict {
    let dest = Destination::new(
        match dest.rsplit_once(':').unwrap().0 {
            h if h.starts_with('[') => Host::Ip(h.trim_matches(['[', ']']).parse().unwrap()),
            h => Host::Name(h.to_owned()),
        },
        dest.rsplit_once(':').unwrap().1.parse().unwrap(),
    )
    .unwrap_or_else(|e| panic!("{dest}: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(p.decide(&id(who), &dest))
}

const BROAD: &str = r#"
hosts = { "rebind.test" = ["10.0.0.1", "127.0.0.1"], "meta.test" = ["169.254.169.254"] }
[[rule]]
name = "everything"
allow = ["dns:a.example"]
to = ["0.0.0.0/0", "::/0", "*.test"]
ports = ["1-65535"]
"#;

/// Every spelling of a denied address that the tests know, as a SOCKS
/// client or a `--to` flag could send it (a name, which the server reads as
/// the address it spells), and the class it must be refused as.
const SPELLINGS: &[(&str, Class)] = &[
    ("127.0.0.1", Class::Loopback),
    ("127.1", Class::Loopback),
    ("127.0.0.1.", Class::Loopback),
    ("127.000.000.001", Class::Loopback),
    ("2130706433", Class::Loopback),
    ("0x7f000001", Class::Loopback),
    ("0x7f.1", Class::Loopback),
    ("0x7F.0.0.1", Class::Loopback),
    ("0177.0.0.1", Class::Loopback),
    ("0177.1", Class::Loopback),
    ("127.255.255.254", Class::Loopback),
    ("[::1]", Class::Loopback),
    ("[::ffff:127.0.0.1]", Class::Loopback),
    ("[::ffff:7f00:1]", Class::Loopback),
    ("[::127.0.0.1]", Class::Loopback),
    ("[64:ff9b::127.0.0.1]", Class::Loopback),
    ("[64:ff9b:1::7f00:1]", Class::Loopback),
    ("[2002:7f00:1::]", Class::Loopback),
    ("169.254.169.254", Class::Metadata),
    ("2852039166", Class::Metadata),
    ("0xa9.0xfe.0xa9.0xfe", Class::Metadata),
    ("0251.0376.0251.0376", Class::Metadata),
    ("169.254.43518", Class::Metadata),
    ("[::ffff:169.254.169.254]", Class::Metadata),
    ("[64:ff9b::a9fe:a9fe]", Class::Metadata),
    ("[2002:a9fe:a9fe::]", Class::Metadata),
    ("[fd00:ec2::254]", Class::Metadata),
    ("169.254.0.1", Class::LinkLocal),
    ("[fe80::1]", Class::LinkLocal),
    ("[::ffff:169.254.1.1]", Class::LinkLocal),
    ("0.0.0.0", Class::Unspecified),
    ("0", Class::Unspecified),
    ("0x0", Class::Unspecified),
    ("[::]", Class::Unspecified),
    ("[::ffff:0.0.0.0]", Class::Unspecified),
    ("224.0.0.1", Class::Multicast),
    ("239.255.255.250", Class::Multicast),
    ("[ff02::1]", Class::Multicast),
    ("[::ffff:224.0.0.251]", Class::Multicast),
    ("255.255.255.255", Class::Broadcast),
    ("4294967295", Class::Broadcast),
    ("0xffffffff", Class::Broadcast),
    ("[::ffff:255.255.255.255]", Class::Broadcast),
];

fn literal_ip(spelling: &str) -> IpAddr {
    deny::literal(spelling)
        .unwrap_or_else(|e| panic!("{spelling}: {e}"))
        .unwrap_or_else(|| panic!("{spelling} is read as a name"))
}

#[test]
fn every_spelling_is_the_address_it_means_and_is_held() {
    assert!(SPELLINGS.len() > 40);
    for &(spelling, class) in SPELLINGS {
        let ip = literal_ip(spelling);
        let held =
            deny::check(ip).unwrap_or_else(|| panic!("{spelling} ({ip}) passed the deny list"));
        assert_eq!(held.class, class, "{spelling} ({ip})");
    }
}

#[test]
fn a_broad_rule_opens_no_spelling() {
    let p = policy(BROAD);
    for &(spelling, class) in SPELLINGS {
        let name = spelling.trim_matches(['[', ']']);
        let as_name = Destination::new(Host::Name(spelling.to_owned()), 80).map(|d| d.host);
        // Names as a SOCKS client sends them, and addresses as addresses.
        let mut hosts = vec![Host::Ip(literal_ip(spelling))];
        if let Ok(h) = as_name {
            hosts.push(h);
        } else {
            hosts.push(Host::Name(name.to_owned()));
        }
        for host in hosts {
            let dest = Destination {
                host: host.clone(),
                port: 80,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            match rt.block_on(p.decide(&id("a.example"), &dest)) {
                Verdict::Refused(r) => {
                    assert_eq!(r.code, Code::NotAllowed, "{host:?}: {r:?}");
                    let want = if class == Class::Metadata {
                        "metadata"
                    } else {
                        "deny_list"
                    };
                    assert_eq!(r.label, want, "{host:?}: {r:?}");
                }
                v => panic!("{host:?} ({spelling}) allowed under 0.0.0.0/0 + ::/0: {v:?}"),
            }
        }
    }
}

#[test]
fn an_ordinary_address_passes_a_broad_rule() {
    let p = policy(BROAD);
    for dest in ["10.1.2.3:5432", "[2001:db8::1]:22", "167772161:80"] {
        assert!(
            matches!(decide(&p, "a.example", dest), Verdict::Allowed { .. }),
            "{dest}"
        );
    }
}

#[test]
fn the_metadata_server_by_name_never_opens() {
    let p = policy(
        r#"
[[rule]]
name = "meta"
allow = ["dns:a.example"]
to = ["169.254.169.254/32", "169.254.0.0/16", "metadata.google.internal", "fd00:ec2::254/128"]
ports = [80]
"#,
    );
    for dest in [
        "metadata.google.internal:80",
        "METADATA.Google.Internal.:80",
        "metadata:80",
        "169.254.169.254:80",
        "[fd00:ec2::254]:80",
    ] {
        match decide(&p, "a.example", dest) {
            Verdict::Refused(r) => assert_eq!(r.label, "metadata", "{dest}"),
            v => panic!("{dest}: {v:?}"),
        }
    }
    // The rest of link-local does open to a rule naming it.
    assert!(matches!(
        decide(&p, "a.example", "169.254.1.1:80"),
        Verdict::Allowed { .. }
    ));
}

#[test]
fn a_denied_range_opens_only_to_a_rule_naming_it() {
    let p = policy(
        r#"
hosts = { "web.test" = ["127.0.0.2"] }
[[rule]]
name = "loopback"
allow = ["dns:a.example"]
to = ["127.0.0.0/8", "web.test"]
ports = [8080]
[[rule]]
name = "wide"
allow = ["dns:b.example"]
to = ["0.0.0.0/0", "96.0.0.0/3", "web.test"]
ports = [8080]
"#,
    );
    match decide(&p, "a.example", "127.0.0.9:8080") {
        Verdict::Allowed { rule, .. } => assert_eq!(rule, "loopback"),
        v => panic!("{v:?}"),
    }
    assert!(matches!(
        decide(&p, "a.example", "web.test:8080"),
        Verdict::Allowed { .. }
    ));
    assert!(matches!(
        decide(&p, "a.example", "0x7f.2:8080"),
        Verdict::Allowed { .. }
    ));
    for dest in ["127.0.0.9:8080", "web.test:8080", "[::1]:8080"] {
        assert!(
            matches!(decide(&p, "b.example", dest), Verdict::Refused(_)),
            "{dest} opened by a rule that does not name loopback"
        );
    }
}

#[test]
fn identities_ports_and_names_are_each_checked() {
    let p = policy(
        r#"
hosts = { "db.corp.test" = ["10.0.0.5"], "x.other.test" = ["10.0.0.6"], "corp.test" = ["10.0.0.7"] }
[[rule]]
name = "db"
allow = ["dns:a.example"]
to = ["*.corp.test", "10.9.0.0/16"]
ports = [5432, "8000-8001"]
"#,
    );
    let refused = |who, dest| match decide(&p, who, dest) {
        Verdict::Refused(r) => r.label,
        v => panic!("{who} {dest}: {v:?}"),
    };
    assert!(matches!(
        decide(&p, "a.example", "db.corp.test:5432"),
        Verdict::Allowed { .. }
    ));
    assert!(matches!(
        decide(&p, "a.example", "10.9.3.4:8001"),
        Verdict::Allowed { .. }
    ));
    assert_eq!(refused("b.example", "db.corp.test:5432"), "no_rule");
    assert_eq!(refused("a.example", "db.corp.test:22"), "port");
    assert_eq!(refused("a.example", "x.other.test:5432"), "destination");
    assert_eq!(refused("a.example", "10.8.0.1:5432"), "destination");
    assert_eq!(
        refused("a.example", "corp.test:5432"),
        "destination",
        "*. needs a label"
    );
    assert_eq!(refused("a.example", "1.2.3.4.5:5432"), "bad_request");
}

#[test]
fn partly_denied_answers_keep_only_the_allowed() {
    let p = policy(BROAD);
    match decide(&p, "a.example", "rebind.test:80") {
        Verdict::Allowed { addrs, dropped, .. } => {
            assert_eq!(addrs, vec!["10.0.0.1:80".parse().unwrap()]);
            assert_eq!(dropped, 1);
        }
        v => panic!("{v:?}"),
    }
    match decide(&p, "a.example", "meta.test:80") {
        Verdict::Refused(r) => assert_eq!(r.label, "metadata"),
        v => panic!("{v:?}"),
    }
}

#[test]
fn bad_policies_name_the_entry() {
    for (text, needle) in [
        (
            "[[rule]]\nname='r'\nallow=[]\nto=['10.0.0.0/8']\nports=[1]",
            "allow is empty",
        ),
        (
            "[[rule]]\nname='r'\nallow=['dns:a']\nto=['10.0.0.1/8']\nports=[1]",
            "bits set",
        ),
        (
            "[[rule]]\nname='r'\nallow=['dns:a']\nto=['10.0.0.0/8']\nports=['9-1']",
            "ports[0]",
        ),
        (
            "[[rule]]\nname='r'\nallow=['dns:a']\nto=['10.0.0.0/8']\nports=[]",
            "ports is empty",
        ),
        (
            "[[rule]]\nname='r'\nallow=['dns:a']\nto=['0x7f.1']\nports=[1]",
            "is an address",
        ),
        (
            "[[rule]]\nname='r'\nallow=['nope']\nto=['10.0.0.0/8']\nports=[1]",
            "allow[0]",
        ),
        ("dial_timeout = 'soon'", "dial_timeout"),
    ] {
        let file: PolicyFile = toml::from_str(text).expect(text);
        let e = format!("{:#}", Policy::from_file(file).expect_err(text));
        assert!(e.contains(needle), "{text}: {e}");
    }
    assert!(toml::from_str::<PolicyFile>(
        "[[rule]]\nname='r'\nallow=['dns:a']\nto=['x']\nport=[1]"
    )
    .is_err());
}

#[test]
fn no_rule_means_nothing() {
    let p = policy("");
    match decide(&p, "a.example", "10.0.0.1:22") {
        Verdict::Refused(r) => assert_eq!((r.code, r.label), (Code::NotAllowed, "no_rule")),
        v => panic!("{v:?}"),
    }
}

#[test]
fn requests_and_answers_round_trip() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for text in ["db.internal:5432", "10.0.0.1:22", "[2001:db8::1]:443"] {
        let d: Destination = text.parse().unwrap();
        assert_eq!(d.to_string(), text);
        let bytes = d.encode();
        let back = rt.block_on(Destination::read(&mut &bytes[..])).unwrap();
        assert_eq!(back, d);
    }
    let a = Answer::new(Code::Refused, "x".repeat(300));
    assert_eq!(a.text.len(), 255);
    let bytes = a.encode();
    assert_eq!(rt.block_on(Answer::read(&mut &bytes[..])).unwrap(), a);
    for bad in [
        "db:0",
        "db",
        "::1:22",
        "db:99999",
        &format!("{}:1", "a".repeat(254)),
    ] {
        assert!(bad.parse::<Destination>().is_err(), "{bad}");
    }
}
