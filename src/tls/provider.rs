//! The crypto provider every rustls configuration in Postern uses. A leaf:
//! PEM loading and the configs both build on it.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// Whose AES-GCM seals and opens the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordCiphers {
    /// aws-lc-rs: chosen where its AVX-512 AES-GCM runs.
    AwsLc,
    /// *ring*: everywhere else (its VAES/AVX2 or AES-NI code).
    Ring,
}

impl RecordCiphers {
    /// The faster of the two on this CPU (see [`provider`]).
    pub fn here() -> RecordCiphers {
        if aws_lc_has_avx512_gcm() {
            RecordCiphers::AwsLc
        } else {
            RecordCiphers::Ring
        }
    }

    /// The name the bench's first line and the start-up log lines give.
    pub fn name(self) -> &'static str {
        match self {
            RecordCiphers::AwsLc => "aws-lc-rs (AVX-512)",
            RecordCiphers::Ring => "ring",
        }
    }
}

/// Whether aws-lc would take its AVX-512 AES-GCM here: it asks for VAES,
/// VPCLMULQDQ and AVX-512 F, DQ, BW, VL and IFMA, with the OS saving the
/// 512-bit registers (which the standard library's detection checks too).
fn aws_lc_has_avx512_gcm() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512ifma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The crypto provider for every config: aws-lc-rs for key exchange,
/// signatures and randomness; the record ciphers from whichever of
/// aws-lc-rs and *ring* is faster on this CPU ([`RecordCiphers::here`]),
/// with AES-128-GCM preferred.
///
/// Every tunnelled byte is sealed and opened twice (inner and outer TLS), and
/// AES-GCM is the largest single cost in the byte path (a third of both
/// processes' CPU in a bulk profile). Which library is faster depends on the
/// CPU. aws-lc-rs has an AVX-512 AES-GCM and, below that, only AES-NI;
/// *ring* has a VAES/AVX2 one. Sealing 16 KiB records with AES-128-GCM:
/// on an Intel Xeon VM where aws-lc did not take its AVX-512 code, *ring*
/// 6.3–7.6 GB/s against aws-lc-rs 3.2–4.0; on an AMD EPYC VM with the
/// whole AVX-512 set, aws-lc-rs 10.1–10.5 GB/s against *ring* 5.5–6.9.
/// AES-128 (10 rounds against 14) is the suite TLS 1.3 makes mandatory;
/// AES-256 and ChaCha20 stay on offer. Servers follow the client's order,
/// so a Postern client picks it for both layers. Figures are in
/// docs/performance.md.
///
/// Key exchange stays at the aws-lc-rs default order (X25519 key share
/// first; X25519MLKEM768 offered for servers that ask for it). Sending the
/// hybrid post-quantum share first measured 745 new tunnels/s against
/// 890–990 and roughly doubled the per-tunnel handshake time at 0 ms RTT.
pub fn provider() -> Arc<CryptoProvider> {
    let base = rustls::crypto::aws_lc_rs::default_provider();
    let mut suites = match RecordCiphers::here() {
        RecordCiphers::AwsLc => base.cipher_suites.clone(),
        RecordCiphers::Ring => rustls::crypto::ring::default_provider().cipher_suites,
    };
    // A stable sort keeps the rest of the default order as it was.
    suites.sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(CryptoProvider {
        cipher_suites: suites,
        ..base
    })
}
