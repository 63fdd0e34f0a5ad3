//! What each frame from the peer does to the session, whichever carrier
//! brought it (the rules of docs/protocol.md's "Frames"): DATA and FIN to
//! the receiving side, ACK to the replay buffer, CLOSE to its end.

use super::{Cut, State, CLOSE_DONE};
use crate::session::frame::Frame;
use crate::session::Config;

impl State {
    /// Applies one frame; one that breaks the protocol is a
    /// `Cut::Protocol` saying how.
    pub(super) fn apply(&mut self, frame: Frame, config: &Config) -> Result<(), Cut> {
        let protocol = |why: String| Err(Cut::Protocol(why));
        match frame {
            Frame::Data { offset, payload } => {
                let end = offset + payload.len() as u64;
                if end <= self.received {
                    // A duplicate: resent after a resume, or the same bytes
                    // arriving late on a retired carrier (FIN or not).
                    return Ok(());
                }
                if self.peer_fin {
                    return protocol(format!("DATA at {offset} after FIN at {}", self.received));
                }
                if offset > self.received {
                    return protocol(format!(
                        "DATA at {offset} leaves a gap after {}",
                        self.received
                    ));
                }
                if end > self.consumed + config.window as u64 {
                    return protocol(format!(
                        "DATA up to {end} exceeds the window ({} consumed + {})",
                        self.consumed, config.window
                    ));
                }
                let fresh = payload.slice((self.received - offset) as usize..);
                self.received = end;
                if self.draining {
                    self.consumed = end;
                } else {
                    self.inbox_len += fresh.len();
                    self.inbox.push_back(fresh);
                    self.wake_read = true;
                }
            }
            Frame::Ack { consumed } => {
                let limit = self.replay.end() + u64::from(self.fin_queued);
                if consumed > limit {
                    return protocol(format!("ACK of {consumed} but only {limit} sent"));
                }
                if consumed > self.peer_acked {
                    self.peer_acked = consumed;
                    self.replay.ack(consumed);
                    self.wake_write = true;
                }
            }
            Frame::Fin { offset } => {
                if offset != self.received {
                    return protocol(format!("FIN at {offset} but {} received", self.received));
                }
                if !self.peer_fin {
                    self.peer_fin = true;
                    self.eof_read |= self.draining;
                    self.wake_read = true;
                }
            }
            Frame::Close { code: CLOSE_DONE } => {
                if !self.peer_fin {
                    return protocol("CLOSE before FIN".into());
                }
                self.peer_done = true;
                self.wake_write = true;
            }
            Frame::Close { code } => return Err(Cut::Reset(code)),
        }
        Ok(())
    }

    /// The application will read no more: what it left unread, and all
    /// that comes, is consumed (and so acknowledged).
    pub(super) fn drain(&mut self) {
        self.draining = true;
        self.consumed = self.received;
        self.inbox.clear();
        self.inbox_len = 0;
        self.eof_read |= self.peer_fin;
    }
}
