//! Per-identity limits on destination tunnels: how many may be open at
//! once, and (optionally) how many dials a minute. Kept by the process, not
//! the policy, so a reload changes the limits but not the counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::policy::{Policy, Refusal};
use super::wire::Code;

/// The counts of every identity with a destination tunnel open.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    counts: Mutex<HashMap<String, Count>>,
}

#[derive(Debug)]
struct Count {
    open: usize,
    /// Token bucket for dials: tokens left and when it was last filled.
    tokens: f64,
    filled: Instant,
}

/// One open tunnel's place under its identity's limit; given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    gate: Arc<Gate>,
    identity: String,
}

impl Gate {
    /// Takes a slot for `identity` under `policy`'s limits, or says which
    /// limit it has reached.
    pub(crate) fn enter(
        self: &Arc<Self>,
        identity: &str,
        policy: &Policy,
    ) -> Result<Slot, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let rate = policy.dials_per_minute.map(f64::from);
        let count = counts.entry(identity.to_owned()).or_insert(Count {
            open: 0,
            tokens: rate.unwrap_or(0.0),
            filled: now,
        });
        if count.open >= policy.max_tunnels {
            return Err(Refusal::new(
                Code::LimitReached,
                "tunnel_limit",
                format!(
                    "this identity has {} destination tunnels open, the most allowed",
                    count.open
                ),
            ));
        }
        if let Some(per_minute) = rate {
            let earned = now.duration_since(count.filled).as_secs_f64() * per_minute / 60.0;
            count.tokens = (count.tokens + earned).min(per_minute);
            count.filled = now;
            if count.tokens < 1.0 {
                return Err(Refusal::new(
                    Code::LimitReached,
                    "dial_rate",
                    format!("this identity dialled more than {per_minute} times a minute"),
                ));
            }
            count.tokens -= 1.0;
        }
        count.open += 1;
        Ok(Slot {
            gate: self.clone(),
            identity: identity.to_owned(),
        })
    }

    /// Forgets identities with nothing open and a full bucket.
    fn tidy(counts: &mut HashMap<String, Count>) {
        if counts.len() > 1024 {
            let now = Instant::now();
            counts.retain(|_, c| {
                c.open > 0 || now.duration_since(c.filled) < Duration::from_secs(60)
            });
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.gate.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = counts.get_mut(&self.identity) {
            c.open = c.open.saturating_sub(1);
        }
        Gate::tidy(&mut counts);
    }
}
