//! Every `postern` path the tests reach, re-exported in one place: when the
//! library's layout changes, this file (and `hooks.rs` for the test-only
//! hooks) is the whole of the tests' adaptation.

pub use postern::client::connector::{Connector, Target};
pub use postern::client::{self, Forward};
pub use postern::cmd::parse_args;
pub use postern::demo::{self, front};
pub use postern::pki::{self, serial_of, Ca, Issued, KeyAlg, LeafSpec, Usage};
pub use postern::server::backend::BANNER;
pub use postern::server::reload::ReloadStatus;
pub use postern::server::{self, Config};
pub use postern::tls::pem::{self, PemError};
pub use postern::tls::{self, CertSlot};
pub use postern::transport::stream::H2Stream;
pub use postern::transport::workers;
