//! Connecting a checked destination: Happy Eyeballs (RFC 8305) across the
//! addresses the policy let through, in the resolver's order with the
//! families interleaved, a new attempt every 250 ms or as soon as one
//! fails, the first to connect winning; all under one deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::policy::Refusal;
use super::wire::Code;

/// RFC 8305 §5's recommended Connection Attempt Delay.
pub(crate) const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects one of `addrs` (never any other address) within `limit`.
pub(crate) async fn dial(
    addrs: &[SocketAddr],
    limit: Duration,
) -> Result<(TcpStream, SocketAddr), Refusal> {
    let order = interleave(addrs);
    match tokio::time::timeout(limit, race(&order)).await {
        Ok(r) => r,
        Err(_) => Err(Refusal::new(
            Code::TimedOut,
            "dial_timeout",
            format!("no answer from {} within {limit:?}", list(&order)),
        )),
    }
}

async fn race(order: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), Refusal> {
    let mut attempts = JoinSet::new();
    let mut next = order.iter();
    let mut last = None;
    loop {
        if let Some(&addr) = next.next() {
            attempts.spawn(async move { (addr, TcpStream::connect(addr).await) });
        } else if attempts.is_empty() {
            let e = last.unwrap_or_else(|| std::io::Error::other("no address to dial"));
            return Err(classify(&e, order));
        }
        let wait = tokio::time::sleep(ATTEMPT_DELAY);
        tokio::select! {
            Some(done) = attempts.join_next() => match done {
                Ok((addr, Ok(sock))) => {
                    let _ = sock.set_nodelay(true);
                    return Ok((sock, addr));
                }
                Ok((_, Err(e))) => last = Some(e),
                Err(e) => last = Some(std::io::Error::other(e.to_string())),
            },
            () = wait, if next.len() > 0 => {}
        }
        // A failure starts the next attempt at once; so does the delay.
    }
}

/// The resolver's order, families alternating from the first answer's.
fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut same, mut other): (Vec<_>, Vec<_>) =
        addrs.iter().partition(|a| a.is_ipv4() == first.is_ipv4());
    same.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(addrs.len());
    while let Some(a) = same.pop() {
        out.push(a);
        if let Some(b) = other.pop() {
            out.push(b);
        }
    }
    out.extend(other.into_iter().rev());
    out
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The answer code for a failed connect.
fn classify(e: &std::io::Error, order: &[SocketAddr]) -> Refusal {
    // ENETUNREACH, EHOSTUNREACH: by number, the ErrorKinds being newer than
    // this crate's minimum Rust.
    let (code, label) = match (e.kind(), e.raw_os_error()) {
        (std::io::ErrorKind::ConnectionRefused, _) => (Code::Refused, "dial_refused"),
        (std::io::ErrorKind::TimedOut, _) => (Code::TimedOut, "dial_timeout"),
        (_, Some(101)) => (Code::NetworkUnreachable, "network_unreachable"),
        (_, Some(113)) => (Code::HostUnreachable, "host_unreachable"),
        _ => (Code::Failed, "dial_failed"),
    };
    Refusal::new(code, label, format!("{}: {e}", list(order)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_alternate_from_the_first() {
        let a: Vec<SocketAddr> = ["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let got = interleave(&a);
        assert_eq!(got, vec![a[0], a[3], a[1], a[2]]);
    }

    #[tokio::test]
    async fn a_refused_address_gives_way_to_the_next() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let (_, addr) = dial(&[dead_addr, live_addr], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(addr, live_addr);
        let err = dial(&[dead_addr], Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Refused, "{err:?}");
    }
}
