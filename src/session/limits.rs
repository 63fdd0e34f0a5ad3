//! What a resume can be refused for, and the limits on detached sessions
//! with the running totals they are checked against.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;

/// Why a resume was refused. Each has its own status and label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such session here: never existed, ended, or on another instance.
    #[error("unknown session")]
    UnknownSession,
    /// The proof does not match the session's key.
    #[error("wrong resume proof")]
    WrongProof,
    /// The named offset is not in what the replay buffer holds.
    #[error("offset {received} outside the replay window {base}..={end}")]
    OffsetOutsideWindow {
        /// The offset the resume named.
        received: u64,
        /// The oldest unit still held.
        base: u64,
        /// One past the newest (a FIN counts one).
        end: u64,
    },
    /// The resume names a carrier the session has already moved past (a
    /// stale or replayed request, or two resumes racing).
    #[error("session already attached (carrier {current}, resume names {named})")]
    AlreadyAttached {
        /// The session's carrier count.
        current: u64,
        /// The count the request named.
        named: u64,
    },
}

impl Refusal {
    /// The HTTP status a refused resume is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::UnknownSession => StatusCode::NOT_FOUND,
            Refusal::WrongProof => StatusCode::FORBIDDEN,
            Refusal::OffsetOutsideWindow { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Refusal::AlreadyAttached { .. } => StatusCode::CONFLICT,
        }
    }

    /// A stable snake_case reason (logs, metrics, `postern-resume-refused`).
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::UnknownSession => "unknown_session",
            Refusal::WrongProof => "wrong_proof",
            Refusal::OffsetOutsideWindow { .. } => "offset_outside_window",
            Refusal::AlreadyAttached { .. } => "already_attached",
        }
    }
}

/// Limits on what detached sessions may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Detached sessions at most.
    pub max_detached: usize,
    /// Bytes all detached sessions may hold together.
    pub max_detached_bytes: usize,
}

impl Default for Limits {
    /// 1024 sessions and 256 MiB: a detached interactive session holds a
    /// few KiB, a bulk one up to its two windows; see docs/protocol.md.
    fn default() -> Self {
        Limits {
            max_detached: 1024,
            max_detached_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The detached sessions' running totals, shared by every session of one
/// registry.
#[derive(Debug)]
pub(crate) struct Budget {
    pub(super) limits: Limits,
    pub(super) detached: AtomicUsize,
    pub(super) bytes: AtomicUsize,
}

impl Budget {
    /// Counts one more detached session of `bytes`, if the limits allow.
    pub(crate) fn admit(&self, bytes: usize) -> bool {
        let count = self.detached.fetch_add(1, Ordering::AcqRel) + 1;
        let total = self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if count > self.limits.max_detached || total > self.limits.max_detached_bytes {
            self.release(bytes);
            return false;
        }
        true
    }

    pub(crate) fn release(&self, bytes: usize) {
        self.detached.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}
