//! Every `postern` path the tests reach, re-exported in one place: when the
//! library's layout changes, this file (and `hooks.rs` for the test-only
//! hooks) is the whole of the tests' adaptation.

pub use postern::client::{self, Connector, Forward, Target};
pub use postern::cmd::parse_args;
pub use postern::demo;
pub use postern::pki::{self, serial_of, Ca, Issued, KeyAlg, LeafSpec, Usage};
pub use postern::server::backend::BANNER;
pub use postern::server::{self, Config, ReloadStatus};
pub use postern::tls::pem::{self, PemError};
pub use postern::tls::{self, CertSlot};
pub use postern::transport::stream::H2Stream;
pub use postern::transport::workers;
