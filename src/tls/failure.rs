//! Inner handshake failures, classified for the tunnel's log line and the
//! handshake-failure metric.

use std::fmt;

use rustls::CertificateError;

/// Why an inner handshake failed, reduced to the few cases an operator acts
/// on; used for the tunnel's log line and the handshake-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client sent no certificate.
    NoCertificate,
    /// The certificate does not chain to a trusted CA (or its signature is bad).
    UnknownCa,
    /// The certificate (or one in its chain) has expired.
    Expired,
    /// The certificate is not valid yet.
    NotYetValid,
    /// The certificate is not for TLS client authentication (EKU).
    WrongUsage,
    /// A CRL revokes the certificate.
    Revoked,
    /// The verified identity is not on the route's allow-list.
    NotAllowed,
    /// The peer aborted with an alert or by resetting the stream (for
    /// example, it rejected our certificate).
    PeerAlert,
    /// Anything else: malformed records, unsupported parameters, I/O.
    Other,
}

impl HandshakeFailure {
    /// Classifies the error a failed `tokio_rustls` handshake returned,
    /// looking through the layers of `io::Error` wrapping for the TLS error
    /// or the stream reset underneath.
    pub fn of(err: &std::io::Error) -> Self {
        let mut current: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
        let mut reset = matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        );
        while let Some(e) = current {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Self::of_tls(tls);
            }
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                reset |= h2.is_reset() || h2.is_go_away();
            }
            // io::Error's source() skips the error it wraps; get_ref() does not.
            current = match e.downcast_ref::<std::io::Error>() {
                Some(io) => io.get_ref().map(|i| i as _),
                None => e.source(),
            };
        }
        // A client that rejects our certificate may reset its stream before
        // its alert gets through; to us that is the same thing.
        if reset {
            Self::PeerAlert
        } else {
            Self::Other
        }
    }

    fn of_tls(tls: &rustls::Error) -> Self {
        use rustls::Error as E;
        match tls {
            E::NoCertificatesPresented => Self::NoCertificate,
            E::AlertReceived(_) => Self::PeerAlert,
            E::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Self::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Self::NotYetValid
                }
                CertificateError::Revoked => Self::Revoked,
                CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownCa,
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => Self::WrongUsage,
                CertificateError::ApplicationVerificationFailure => Self::NotAllowed,
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }

    /// A stable snake_case label (metrics, JSON logs).
    pub fn label(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongUsage => "wrong_usage",
            Self::Revoked => "revoked",
            Self::NotAllowed => "not_allowed",
            Self::PeerAlert => "peer_alert",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoCertificate => "no client certificate",
            Self::UnknownCa => "client certificate not issued by a trusted CA",
            Self::Expired => "client certificate expired",
            Self::NotYetValid => "client certificate not yet valid",
            Self::WrongUsage => "client certificate not for client authentication (EKU)",
            Self::Revoked => "client certificate revoked",
            Self::NotAllowed => "client identity not allowed on this route",
            Self::PeerAlert => "client aborted the handshake",
            Self::Other => "TLS error",
        })
    }
}
