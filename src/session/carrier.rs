//! What a session runs over.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::transport::stream::H2Stream;

/// What a session can run over: an `H2Stream` in production, anything
/// byte-stream-shaped in tests.
pub trait Carrier: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The HTTP/2 stream this carrier is, if it is one: DATA payloads then
    /// pass it without a copy, both ways. A `Box<dyn Carrier>` is itself a
    /// `Carrier` (and not an `H2Stream`): ask what it holds, `(*boxed).as_h2()`.
    fn as_h2(&mut self) -> Option<&mut H2Stream>;
}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Carrier for T {
    fn as_h2(&mut self) -> Option<&mut H2Stream> {
        (self as &mut dyn std::any::Any).downcast_mut()
    }
}
