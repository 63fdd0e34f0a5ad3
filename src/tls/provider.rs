//! The crypto provider every rustls configuration in Postern uses. A leaf:
//! PEM loading and the configs both build on it.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The crypto provider for every config: aws-lc-rs for key exchange,
/// signatures and randomness, with the record ciphers taken from *ring* and
/// AES-128-GCM preferred.
///
/// Every tunnelled byte is sealed and opened twice (inner and outer TLS), and
/// AES-GCM is the largest single cost in the byte path (a third of both
/// processes' CPU in a bulk profile). *ring* carries a VAES/AVX2 AES-GCM
/// that aws-lc-rs lacks (it has only the AVX-512 one): sealing 16 KiB
/// records measured 6.3–7.6 GB/s against 3.2–4.0 GB/s with aws-lc-rs on
/// this AVX2 machine. AES-128 (10 rounds against 14) is the suite TLS 1.3
/// makes mandatory; AES-256 and ChaCha20 stay on offer. Servers follow the
/// client's order, so a Postern client picks it for both layers. Figures
/// are in the README's Performance section.
///
/// Key exchange stays at the aws-lc-rs default order (X25519 key share
/// first; X25519MLKEM768 offered for servers that ask for it). Sending the
/// hybrid post-quantum share first measured 745 new tunnels/s against
/// 890–990 and roughly doubled the per-tunnel handshake time at 0 ms RTT.
pub fn provider() -> Arc<CryptoProvider> {
    let mut suites = rustls::crypto::ring::default_provider().cipher_suites;
    // A stable sort keeps the rest of the default order as it was.
    suites.sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    Arc::new(provider)
}
