//! `postern doctor --to HOST:PORT`: one tunnel naming the destination, and
//! the server's answer — its decision under the destination policy and
//! whether it reached the destination (Direct VPC egress can take a minute
//! to work after an instance starts).

use std::time::Instant;

use crate::client::{Args as ClientArgs, Ask, Destinations, Forward};
use crate::destination::{Answer, Code, Destination};

use super::{ms, Report};

/// The destination step.
pub(super) async fn check(
    client: &ClientArgs,
    url: &str,
    to: &Destination,
    r: &mut Report,
) -> anyhow::Result<()> {
    const STEP: &str = "destination";
    let forward = Forward::from_args(client, url)?.with_destinations(Destinations::Route)?;
    // The application's end hears the answer in the wire's own bytes.
    let (mut ours, mut local) = tokio::io::duplex(64 * 1024);
    let ask = Ask::new(to, Some(Answer::encode));
    let started = Instant::now();
    let answer = {
        let tunnel = forward.carry_to(&mut local, Some(&ask));
        tokio::pin!(tunnel);
        tokio::select! {
            a = Answer::read(&mut ours) => a.map_err(anyhow::Error::from),
            (result, _) = &mut tunnel => Err(result.err().unwrap_or_else(|| anyhow::anyhow!("the tunnel ended without an answer"))),
        }
    };
    let took = started.elapsed();
    drop(ours);
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            return Err(r.fail(
                STEP,
                format!("{to}: {e:#}"),
                "the server may predate destinations (upgrade it), or the tunnel failed before its answer: see the steps above",
            ))
        }
    };
    if answer.code == Code::Connected {
        r.ok(
            STEP,
            format!(
                "{to}: allowed, the server connected {} ({} for the whole tunnel)",
                answer.text,
                ms(took)
            ),
        );
        return Ok(());
    }
    let fix = match answer.code {
        Code::NoPolicy => "the server's --config has no [destinations] table: add one with a rule for this identity",
        Code::NotAllowed => "no rule of the server's [destinations] lets this identity reach that host and port (the built-in deny list holds loopback, link-local and the metadata server)",
        Code::LimitReached => "this identity has reached max_tunnels_per_identity or dials_per_minute_per_identity",
        Code::NameNotResolved => "the server cannot resolve the name: private DNS zones need the service's VPC egress",
        Code::TimedOut | Code::NetworkUnreachable | Code::HostUnreachable => "the server cannot reach it: check Direct VPC egress (--network, --subnet, --vpc-egress), firewall rules, and allow a minute after an instance starts",
        Code::Refused => "nothing listens there, or a firewall rejects the server's subnet",
        _ => "see the server's log line for this tunnel",
    };
    Err(r.fail(STEP, format!("{to}: {answer}"), fix))
}
