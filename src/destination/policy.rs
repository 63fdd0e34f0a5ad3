//! The destination policy (`[destinations]` in the server's config file):
//! named rules, each letting identities (the route allow-list syntax) reach
//! address ranges, host names (with a leading `*.` glob) and ports. Deny by
//! default; the built-in deny list ([`super::deny`]) holds under any rule
//! that does not name the denied range itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;

use super::deny::{self, Class};
use super::net::Net;
use super::wire::{check_name, Code, Destination, Host};
use crate::authz::{Allow, Pattern, PeerIdentity};

/// `[destinations]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    dial_timeout: Option<String>,
    max_tunnels_per_identity: Option<usize>,
    dials_per_minute_per_identity: Option<u32>,
    #[serde(default)]
    hosts: HashMap<String, Vec<String>>,
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    allow: Vec<String>,
    to: Vec<String>,
    ports: Vec<PortFile>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortFile {
    One(u16),
    Text(String),
}

/// The validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The rules, tried in order.
    pub rules: Vec<Rule>,
    /// Limit for resolving and connecting a destination.
    pub dial_timeout: Duration,
    /// Most open destination tunnels per identity.
    pub max_tunnels: usize,
    /// Most dials per identity per minute (None: no limit).
    pub dials_per_minute: Option<u32>,
    /// Names answered from the config instead of DNS (answers checked as
    /// DNS answers are).
    pub hosts: HashMap<String, Vec<IpAddr>>,
}

/// One named rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// For logs and metrics.
    pub name: String,
    allow: Allow,
    nets: Vec<Net>,
    names: Vec<String>,
    ports: Vec<(u16, u16)>,
}

/// The policy's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Dial these addresses (all checked), under this rule.
    Allowed {
        /// The rule's name.
        rule: String,
        /// The checked addresses, in the resolver's order.
        addrs: Vec<SocketAddr>,
        /// Answers left out because the rule does not allow them.
        dropped: usize,
    },
    /// Refused before any connection.
    Refused(Refusal),
}

/// A refusal: the code for the client, a label for metrics, the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What the client is told.
    pub code: Code,
    /// A stable label (metrics: `reason`).
    pub label: &'static str,
    /// Words for the log and the client.
    pub reason: String,
}

impl Refusal {
    /// A refusal of `code` with `label` and `reason`.
    pub fn new(code: Code, label: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            label,
            reason: reason.into(),
        }
    }
}

/// Defaults: 10 s to resolve and connect; 64 tunnels per identity.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TUNNELS: usize = 64;

impl Policy {
    /// Validates `[destinations]`; errors name the rule and the entry.
    pub fn from_file(file: PolicyFile) -> anyhow::Result<Policy> {
        let dial_timeout = match &file.dial_timeout {
            Some(t) => crate::duration::parse_duration(t)
                .map_err(|e| anyhow!("destinations.dial_timeout: {e}"))?,
            None => DIAL_TIMEOUT,
        };
        let mut hosts = HashMap::new();
        for (name, addrs) in file.hosts {
            check_name(&name).map_err(|e| anyhow!("destinations.hosts: {e}"))?;
            let addrs = addrs
                .iter()
                .map(|a| {
                    a.parse::<IpAddr>().map_err(|_| {
                        anyhow!("destinations.hosts.{name:?}: {a:?} is not an address")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            hosts.insert(normal_name(&name), addrs);
        }
        let mut rules = Vec::new();
        for (i, r) in file.rule.into_iter().enumerate() {
            let ctx = format!("destination rule {:?} (#{})", r.name, i + 1);
            rules.push(Rule::from_file(r).context(ctx)?);
        }
        Ok(Policy {
            rules,
            dial_timeout,
            max_tunnels: file.max_tunnels_per_identity.unwrap_or(MAX_TUNNELS),
            dials_per_minute: file.dials_per_minute_per_identity,
            hosts,
        })
    }

    /// Decides `dest` for `identity`: which rule, which addresses. Names
    /// are resolved once here (only when some rule could allow them) and
    /// every answer is checked; the caller dials only what comes back.
    pub async fn decide(&self, identity: &PeerIdentity, dest: &Destination) -> Verdict {
        let mine: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.allow.check(identity).is_ok())
            .collect();
        if mine.is_empty() {
            return refuse(
                Code::NotAllowed,
                "no_rule",
                "no destination rule for this identity",
            );
        }
        let mine: Vec<&Rule> = mine.into_iter().filter(|r| r.port(dest.port)).collect();
        if mine.is_empty() {
            return refuse(
                Code::NotAllowed,
                "port",
                format!("port {} is not allowed", dest.port),
            );
        }
        let (ip, name) = match &dest.host {
            Host::Ip(ip) => (Some(*ip), None),
            Host::Name(n) => {
                if deny::metadata_name(n) {
                    return refuse(
                        Code::NotAllowed,
                        "metadata",
                        "the metadata server is never a destination",
                    );
                }
                match deny::literal(n) {
                    Ok(Some(ip)) => (Some(ip), None),
                    Ok(None) => match check_name(n) {
                        Ok(()) => (None, Some(normal_name(n))),
                        Err(e) => return refuse(Code::BadRequest, "bad_request", e),
                    },
                    Err(e) => return refuse(Code::BadRequest, "bad_request", e),
                }
            }
        };
        if let Some(ip) = ip {
            let mut why = None;
            for r in &mine {
                match r.admits(ip, false) {
                    Ok(()) => {
                        return Verdict::Allowed {
                            rule: r.name.clone(),
                            addrs: vec![SocketAddr::new(ip, dest.port)],
                            dropped: 0,
                        }
                    }
                    Err(e) => why = why.or(e),
                }
            }
            return refused_address(ip, why);
        }
        let name = name.unwrap_or_default();
        // Resolve only for a rule that could take the answer: a name no rule
        // covers is not even looked up.
        let could: Vec<&Rule> = mine
            .into_iter()
            .filter(|r| r.named(&name) || !r.nets.is_empty())
            .collect();
        if could.is_empty() {
            return refuse(
                Code::NotAllowed,
                "destination",
                format!("{name} is not an allowed destination"),
            );
        }
        let answers = match self.resolve(&name, dest.port).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                return refuse(
                    Code::NameNotResolved,
                    "unresolved",
                    format!("{name}: no addresses"),
                )
            }
            Err(e) => return refuse(Code::NameNotResolved, "unresolved", format!("{name}: {e}")),
        };
        let mut why = None;
        for r in &could {
            let by_name = r.named(&name);
            let mut addrs = Vec::new();
            for a in &answers {
                match r.admits(a.ip(), by_name) {
                    Ok(()) => addrs.push(*a),
                    Err(e) => why = why.or(e),
                }
            }
            if !addrs.is_empty() {
                return Verdict::Allowed {
                    rule: r.name.clone(),
                    dropped: answers.len() - addrs.len(),
                    addrs,
                };
            }
        }
        match why {
            Some(class) => refuse(
                Code::NotAllowed,
                deny_label(class),
                format!(
                    "{name} resolves only to {} addresses",
                    class.label().replace('_', "-")
                ),
            ),
            None => refuse(
                Code::NotAllowed,
                "destination",
                format!("{name} resolves to no allowed address"),
            ),
        }
    }

    /// One lookup: the config's `hosts`, else the system resolver.
    async fn resolve(&self, name: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(addrs) = self.hosts.get(name) {
            return Ok(addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        let lookup = tokio::net::lookup_host((name, port));
        let found = tokio::time::timeout(self.dial_timeout, lookup)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "lookup timed out"))??;
        let mut seen = Vec::new();
        for a in found {
            if !seen.contains(&a) {
                seen.push(a);
            }
        }
        Ok(seen)
    }
}

fn refuse(code: Code, label: &'static str, reason: impl Into<String>) -> Verdict {
    Verdict::Refused(Refusal::new(code, label, reason))
}

fn refused_address(ip: IpAddr, why: Option<Class>) -> Verdict {
    match why {
        Some(class) => refuse(
            Code::NotAllowed,
            deny_label(class),
            format!("{ip} is on the built-in deny list ({})", class.label()),
        ),
        None => refuse(
            Code::NotAllowed,
            "destination",
            format!("{ip} is not an allowed destination"),
        ),
    }
}

fn deny_label(class: Class) -> &'static str {
    match class {
        Class::Metadata => "metadata",
        _ => "deny_list",
    }
}

/// Lower case, without trailing dots.
fn normal_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Rule {
    fn from_file(r: RuleFile) -> anyhow::Result<Rule> {
        if r.name.is_empty() || r.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("a rule needs a name without spaces");
        }
        if r.allow.is_empty() {
            bail!("allow is empty: name the identities this rule is for");
        }
        let patterns = r
            .allow
            .iter()
            .enumerate()
            .map(|(j, p)| p.parse::<Pattern>().with_context(|| format!("allow[{j}]")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (mut nets, mut names) = (Vec::new(), Vec::new());
        for (j, t) in r.to.iter().enumerate() {
            let t = t.trim();
            if t.contains('/') || t.parse::<IpAddr>().is_ok() {
                nets.push(t.parse::<Net>().map_err(|e| anyhow!("to[{j}]: {e}"))?);
            } else {
                let bare = t.strip_prefix("*.").unwrap_or(t);
                check_name(bare).map_err(|e| anyhow!("to[{j}]: {e}"))?;
                if deny::literal(bare).ok().flatten().is_some() || deny::literal(bare).is_err() {
                    bail!(
                        "to[{j}]: {t:?} is an address: write it as one (a.b.c.d or a CIDR range)"
                    );
                }
                names.push(normal_name(t));
            }
        }
        if nets.is_empty() && names.is_empty() {
            bail!("to is empty: name the ranges or hosts this rule opens");
        }
        let mut ports = Vec::new();
        for (j, p) in r.ports.iter().enumerate() {
            ports.push(port_range(p).map_err(|e| anyhow!("ports[{j}]: {e}"))?);
        }
        if ports.is_empty() {
            bail!("ports is empty: name the ports this rule opens (\"1-65535\" for all)");
        }
        Ok(Rule {
            name: r.name,
            allow: Allow::new(patterns),
            nets,
            names,
            ports,
        })
    }

    fn port(&self, port: u16) -> bool {
        self.ports.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    /// Whether a name matches: exactly, or under a `*.` glob (any depth).
    fn named(&self, name: &str) -> bool {
        self.names.iter().any(|g| match g.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => g == name,
        })
    }

    /// Whether this rule lets a tunnel dial `ip` (`by_name`: the name asked
    /// matched one of its globs). `Err(Some(class))`: the deny list holds it.
    fn admits(&self, ip: IpAddr, by_name: bool) -> Result<(), Option<Class>> {
        let canon = deny::canonical(ip);
        match deny::check(ip) {
            Some(d) if d.class == Class::Metadata => Err(Some(Class::Metadata)),
            // A denied range opens only to a rule naming it, or part of it.
            Some(d) => match d.range {
                Some(range)
                    if self
                        .nets
                        .iter()
                        .any(|n| n.contains(canon) && range.covers(n)) =>
                {
                    Ok(())
                }
                _ => Err(Some(d.class)),
            },
            None if by_name || self.nets.iter().any(|n| n.contains(canon)) => Ok(()),
            None => Err(None),
        }
    }
}

fn port_range(p: &PortFile) -> Result<(u16, u16), String> {
    let (lo, hi) = match p {
        PortFile::One(n) => (*n, *n),
        PortFile::Text(t) => {
            let num = |s: &str| {
                s.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("{t:?}: not a port or LOW-HIGH range"))
            };
            match t.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(t)?, num(t)?),
            }
        }
    };
    if lo == 0 || lo > hi {
        return Err(format!("{lo}-{hi}: ports run from 1 to 65535, low to high"));
    }
    Ok((lo, hi))
}
