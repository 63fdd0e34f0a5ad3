//! Every `postern` path the tests reach, re-exported in one place: when the
//! library's layout changes, this file (and `hooks.rs` for the test-only
//! hooks) is the whole of the tests' adaptation.

pub(crate) use postern::client::{self, Connector, Forward, Target};
pub(crate) use postern::cmd::parse_args;
pub(crate) use postern::demo;
pub(crate) use postern::pki::{self, serial_of, Ca, Issued, KeyAlg, LeafSpec, Usage};
pub(crate) use postern::server::backend::BANNER;
pub(crate) use postern::server::{self, Config, ReloadStatus};
pub(crate) use postern::testing::transport::stream::H2Stream;
pub(crate) use postern::testing::transport::workers;
pub(crate) use postern::tls::pem::{self, PemError};
pub(crate) use postern::tls::{self, CertSlot};
