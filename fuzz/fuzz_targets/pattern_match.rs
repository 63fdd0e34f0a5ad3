//! Identity patterns: parsing arbitrary text, matching arbitrary identities,
//! and the promises of the syntax (an exact pattern matches its own value, a
//! wildcard matches one step below it, never the bare prefix).
#![no_main]

use std::str::FromStr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use postern::authz::identity::PeerIdentity;
use postern::authz::policy::{Allow, Pattern};

#[derive(Arbitrary, Debug)]
struct Input {
    patterns: Vec<String>,
    uris: Vec<String>,
    dns_names: Vec<String>,
    common_name: Option<String>,
}

fuzz_target!(|input: Input| {
    let id = PeerIdentity {
        uris: input.uris,
        dns_names: input.dns_names,
        ips: vec![],
        common_name: input.common_name,
        not_after: 0,
    };
    let mut parsed = Vec::new();
    for text in &input.patterns {
        let Ok(p) = Pattern::from_str(text) else { continue };
        let _ = p.matches(&id);
        // Display gives back the syntax FromStr takes.
        assert_eq!(Pattern::from_str(&p.to_string()).as_ref(), Ok(&p));
        let own = |uris: Vec<String>, dns: Vec<String>, cn: Option<String>| PeerIdentity {
            uris,
            dns_names: dns,
            common_name: cn,
            ..Default::default()
        };
        match &p {
            Pattern::Uri(u) => match u.strip_suffix('*') {
                None => assert!(p.matches(&own(vec![u.clone()], vec![], None))),
                Some(prefix) => {
                    assert!(p.matches(&own(vec![format!("{prefix}x")], vec![], None)));
                    let bare = prefix.trim_end_matches('/').to_owned();
                    assert!(!p.matches(&own(vec![bare], vec![], None)));
                }
            },
            Pattern::Dns(d) => match d.strip_prefix('*') {
                None => assert!(p.matches(&own(vec![], vec![d.to_ascii_uppercase()], None))),
                Some(suffix) => {
                    assert!(p.matches(&own(vec![], vec![format!("a{suffix}")], None)));
                    assert!(!p.matches(&own(vec![], vec![format!("a.b{suffix}")], None)));
                    assert!(!p.matches(&own(vec![], vec![suffix[1..].to_owned()], None)));
                }
            },
            Pattern::CommonName(c) => assert!(p.matches(&own(vec![], vec![], Some(c.clone())))),
        }
        parsed.push(p);
    }
    let allow = Allow::new(parsed.clone());
    let verdict = allow.check(&id);
    if !parsed.is_empty() {
        assert_eq!(verdict.is_ok(), parsed.iter().any(|p| p.matches(&id)));
    }
});
