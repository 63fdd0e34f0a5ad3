//! A tunnel that names its destination (docs/protocol.md §8): after the
//! inner handshake has authenticated the client, read its request, ask the
//! policy, take a slot under the identity's limits, dial the checked
//! address, answer, and only then copy. Nothing is dialled for a client
//! the policy does not allow, and only addresses it checked are dialled.

use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio_rustls::server::TlsStream;
use tracing::{debug, field};

use crate::destination::{dial, Answer, Code, Destination, Refusal, Verdict};
use crate::server::report::{DestinationReport, TunnelError, TunnelReport};
use crate::server::tunnel::Tunnel;
use crate::server::watchdog::{Activity, Metered};
use crate::session::{Abort, Carried};

impl Tunnel {
    /// Serves the destination request that follows the client's Finished.
    pub(super) async fn destination<S: Carried + 'static>(
        &self,
        mut tls: TlsStream<S>,
        deadline: tokio::time::Instant,
        report: &mut TunnelReport,
    ) -> Result<(), TunnelError> {
        // The request rides with the client's Finished: the handshake's
        // deadline covers it too.
        let asked = match tokio::time::timeout_at(deadline, Destination::read(&mut tls)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                let refusal = Refusal::new(Code::BadRequest, "bad_request", e.to_string());
                return self.refuse(tls, "?", refusal, None).await;
            }
            Err(_) => return Err(TunnelError::HandshakeTimeout),
        };
        let asked_text = asked.to_string();
        tracing::Span::current().record("destination", field::display(&asked_text));
        report.destination = Some(DestinationReport {
            asked: asked_text.clone(),
            ..DestinationReport::default()
        });
        let Some(policy) = self.material.destinations.clone() else {
            let refusal = Refusal::new(
                Code::NoPolicy,
                "no_policy",
                "this server has no destination policy",
            );
            return self.refuse(tls, &asked_text, refusal, None).await;
        };
        let Some(identity) = report.identity.clone() else {
            let refusal = Refusal::new(Code::NotAllowed, "no_rule", "no identity");
            return self.refuse(tls, &asked_text, refusal, None).await;
        };
        let name = identity.name().to_owned();
        let slot = match self.gate.enter(&name, &policy) {
            Ok(slot) => slot,
            Err(refusal) => return self.refuse(tls, &asked_text, refusal, None).await,
        };
        let (rule, addrs, dropped) = match policy.decide(&identity, &asked).await {
            Verdict::Allowed {
                rule,
                addrs,
                dropped,
            } => (rule, addrs, dropped),
            Verdict::Refused(refusal) => return self.refuse(tls, &asked_text, refusal, None).await,
        };
        if dropped > 0 {
            debug!(
                dropped,
                kept = addrs.len(),
                "answers the rule does not allow left out"
            );
        }
        let started = Instant::now();
        let (sock, dialled) = match dial::dial(&addrs, policy.dial_timeout).await {
            Ok(x) => x,
            Err(refusal) => return self.refuse(tls, &asked_text, refusal, Some(&rule)).await,
        };
        self.metrics.backend_connected(started.elapsed());
        self.metrics.destination(&rule, "allowed");
        if let Some(d) = &mut report.destination {
            d.dialled = Some(dialled);
            d.rule = Some(rule);
        }
        let answer = Answer::new(Code::Connected, dialled.to_string());
        if let Err(e) = answer.write(&mut tls).await {
            return Err(TunnelError::Copy(e));
        }
        let mut backend = Metered::new(sock, Activity::new(), self.metrics.clone());
        let result = self
            .copy(&mut tls, &mut backend, report, |t| t.get_mut().0)
            .await;
        drop(slot);
        result
    }

    /// Answers a refusal, ends the tunnel cleanly (the client has its
    /// reason) and counts it.
    async fn refuse<S: Carried + 'static>(
        &self,
        mut tls: TlsStream<S>,
        asked: &str,
        refusal: Refusal,
        rule: Option<&str>,
    ) -> Result<(), TunnelError> {
        self.metrics
            .destination(rule.unwrap_or_default(), refusal.label);
        let answer = Answer::new(refusal.code, refusal.reason.clone());
        let sent = async {
            answer.write(&mut tls).await?;
            tls.shutdown().await
        };
        let sent = sent.await;
        tls.get_mut().0.end_after(&sent, Abort::Refused).await;
        Err(TunnelError::Destination {
            asked: asked.to_owned(),
            label: refusal.label,
            reason: refusal.reason,
        })
    }
}
