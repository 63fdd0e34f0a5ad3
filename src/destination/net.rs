//! CIDR ranges (`10.0.0.0/8`, `fd00::/8`, a bare address as its /32 or /128).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Net {
    addr: IpAddr,
    len: u8,
}

impl Net {
    /// The range of `len` leading bits of `addr` (bits past them cleared).
    pub(crate) fn new(addr: IpAddr, len: u8) -> Net {
        let len = len.min(max_len(addr));
        Net {
            addr: mask(addr, len),
            len,
        }
    }

    /// Whether `ip` lies in the range (same family only).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.len) == self.addr
            }
            _ => false,
        }
    }

    /// Whether all of `other` lies in this range.
    pub(crate) fn covers(&self, other: &Net) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

impl FromStr for Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: not an address or CIDR range"))?;
        let len = match len {
            None => max_len(addr),
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max_len(addr))
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        };
        if mask(addr, len) != addr {
            return Err(format!(
                "{s:?}: bits set past the prefix (did you mean {}/{len}?)",
                mask(addr, len)
            ));
        }
        Ok(Net { addr, len })
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}
