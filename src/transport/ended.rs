//! Why an outer connection ended, in the user's words rather than the TLS
//! or HTTP/2 stack's: "peer closed connection without sending TLS
//! close_notify: (a link to rustls's docs)" is what a front end that was killed or
//! restarted looks like from here.

use std::io;

/// Says what ended a connection to the front end, for a log line.
pub(crate) fn in_words(e: &h2::Error) -> String {
    if e.is_go_away() {
        return match e.reason() {
            Some(h2::Reason::NO_ERROR) | None => {
                "the front end closed the connection (GOAWAY)".to_owned()
            }
            Some(reason) => format!("the front end ended the connection with GOAWAY {reason:?}"),
        };
    }
    match e.get_io() {
        Some(io) => io_in_words(io),
        None => e.to_string(),
    }
}

/// The same for an I/O error on the outer connection.
pub(crate) fn io_in_words(e: &io::Error) -> String {
    match e.kind() {
        // rustls's UnexpectedEof: TCP closed with no TLS close_notify.
        io::ErrorKind::UnexpectedEof => {
            "the front end closed the connection without closing TLS (it stopped or restarted)"
                .to_owned()
        }
        io::ErrorKind::ConnectionReset => "the front end reset the connection".to_owned(),
        io::ErrorKind::BrokenPipe => "the front end had already closed the connection".to_owned(),
        io::ErrorKind::TimedOut => "the connection to the front end timed out".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_front_end_killed_mid_tls_reads_as_what_happened() {
        let rustls = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls",
        );
        let words = io_in_words(&rustls);
        assert!(words.contains("front end closed the connection"), "{words}");
        assert!(!words.contains("docs.rs"), "{words}");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(io_in_words(&reset), "the front end reset the connection");
        // Anything else keeps the stack's own words.
        let other = io::Error::other("something else");
        assert_eq!(io_in_words(&other), "something else");
    }
}
