//! The built-in deny list: addresses no broad rule opens (loopback,
//! link-local, unspecified, multicast, broadcast), the metadata server that
//! nothing opens, and the other spellings of each: IPv4 written in decimal,
//! octal or hex (`2130706433`, `0x7f.1`, `0177.0.0.1`), with a trailing dot,
//! and IPv4 inside IPv6 (mapped, compatible, NAT64, 6to4).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::net::Net;

/// Why the deny list holds an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The cloud metadata server (169.254.169.254, fd00:ec2::254,
    /// `metadata.google.internal`): never opened.
    Metadata,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
}

impl Class {
    /// A stable label (logs, metrics, the refusal's text).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Class::Metadata => "metadata",
            Class::Loopback => "loopback",
            Class::LinkLocal => "link_local",
            Class::Unspecified => "unspecified",
            Class::Multicast => "multicast",
            Class::Broadcast => "broadcast",
        }
    }
}

/// An address the deny list holds: its class, and the built-in range a
/// rule must name (or name part of) to open it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Denied {
    /// Why.
    pub class: Class,
    /// The built-in range; `None` for an embedded form (NAT64, 6to4),
    /// which no rule opens.
    pub range: Option<Net>,
}

const V4: &[(Class, [u8; 4], u8)] = &[
    (Class::Metadata, [169, 254, 169, 254], 32),
    (Class::Unspecified, [0, 0, 0, 0], 8),
    (Class::Loopback, [127, 0, 0, 0], 8),
    (Class::LinkLocal, [169, 254, 0, 0], 16),
    (Class::Multicast, [224, 0, 0, 0], 4),
    (Class::Broadcast, [255, 255, 255, 255], 32),
];

const V6: &[(Class, u128, u8)] = &[
    (
        Class::Metadata,
        0xfd00_0ec2_0000_0000_0000_0000_0000_0254,
        128,
    ),
    (Class::Unspecified, 0, 128),
    (Class::Loopback, 1, 128),
    (Class::LinkLocal, 0xfe80 << 112, 10),
    (Class::Multicast, 0xff00 << 112, 8),
];

/// Names that are the metadata server whatever they resolve to.
const METADATA_NAMES: &[&str] = &["metadata.google.internal", "metadata"];

/// What the deny list says of `ip` (None: not on it). IPv4-mapped and
/// -compatible addresses are the IPv4 address; NAT64 (64:ff9b::/96,
/// 64:ff9b:1::/48) and 6to4 (2002::/16) addresses are held when the IPv4
/// address inside is, and no rule opens them.
pub(crate) fn check(ip: IpAddr) -> Option<Denied> {
    match canonical(ip) {
        IpAddr::V4(v4) => check_v4(v4).map(|(class, range)| Denied {
            class,
            range: Some(range),
        }),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            for &(class, base, len) in V6 {
                let net = Net::new(IpAddr::V6(Ipv6Addr::from(base)), len);
                if net.contains(IpAddr::V6(v6)) {
                    return Some(Denied {
                        class,
                        range: Some(net),
                    });
                }
            }
            embedded(bits).and_then(check_v4).map(|(class, _)| Denied {
                class: if class == Class::Metadata {
                    Class::Metadata
                } else {
                    class
                },
                range: None,
            })
        }
    }
}

fn check_v4(v4: Ipv4Addr) -> Option<(Class, Net)> {
    V4.iter().find_map(|&(class, base, len)| {
        let net = Net::new(IpAddr::V4(Ipv4Addr::from(base)), len);
        net.contains(IpAddr::V4(v4)).then_some((class, net))
    })
}

/// The address itself for IPv4, IPv4-mapped (`::ffff:a.b.c.d`) and
/// IPv4-compatible (`::a.b.c.d`) IPv6 as the IPv4 address they carry.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            // Mapped, or compatible (but :: and ::1 stay themselves).
            if bits >> 32 == 0xffff || (bits >> 32 == 0 && bits > 1) {
                IpAddr::V4(Ipv4Addr::from(bits as u32))
            } else {
                ip
            }
        }
    }
}

/// The IPv4 address a NAT64 or 6to4 address stands for.
fn embedded(bits: u128) -> Option<Ipv4Addr> {
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 || bits >> 80 == 0x0064_ff9b_0001 {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// Whether a name is the metadata server's (any case, trailing dots).
pub(crate) fn metadata_name(name: &str) -> bool {
    let bare = name.trim_end_matches('.').to_ascii_lowercase();
    METADATA_NAMES.contains(&bare.as_str())
}

/// The address a host name spells, if it spells one: IPv6 (bracketed or
/// not), and IPv4 as `inet_aton` reads it (one to four parts, each decimal,
/// octal with a leading `0` or hex with `0x`; the last part fills the
/// remaining bytes), with or without trailing dots. `Err`: it looks like an
/// address (its last label is numeric) but is not a valid one, and must not
/// be handed to a resolver, which might read it another way.
pub(crate) fn literal(name: &str) -> Result<Option<IpAddr>, String> {
    let bare = name.trim_end_matches('.');
    let unbracketed = bare
        .strip_prefix('[')
        .and_then(|b| b.strip_suffix(']'))
        .unwrap_or(bare);
    if let Ok(v6) = unbracketed.parse::<Ipv6Addr>() {
        return Ok(Some(IpAddr::V6(v6)));
    }
    if let Some(v4) = inet_aton(bare) {
        return Ok(Some(IpAddr::V4(v4)));
    }
    let last = bare.rsplit('.').next().unwrap_or("");
    let numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .or_else(|| last.strip_prefix("0X"))
                .is_some());
    if numeric || unbracketed.contains(':') {
        return Err(format!("{name:?} looks like an address but is not one"));
    }
    Ok(None)
}

/// IPv4 as the C library's `inet_aton` reads it.
pub(crate) fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for p in &parts {
        values.push(part(p)?);
    }
    let (last, head) = values.split_last()?;
    if head.iter().any(|&v| v > 255) {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if room < 32 && *last >> room != 0 {
        return None;
    }
    let mut n: u32 = 0;
    for (i, &v) in head.iter().enumerate() {
        n |= (v as u32) << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(n | *last as u32))
}

fn part(p: &str) -> Option<u64> {
    if p.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() {
        // "0x" alone is 0 to inet_aton.
        return (radix == 16).then_some(0);
    }
    let v = u64::from_str_radix(digits, radix).ok()?;
    (v <= u32::MAX as u64).then_some(v)
}
