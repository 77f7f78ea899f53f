//! The TLS crypto provider: ring's, as rustls builds it, with the AES-GCM cipher suites only
//! and no client keys.
//!
//! ChaCha20-Poly1305 is left out because it cost the stripped HTTPS library 64,440 bytes
//! (ring's assembly for it, with and without AVX2, measured on x86_64) and buys no server: every TLS 1.3 server must offer
//! `TLS_AES_128_GCM_SHA256` (RFC 8446 §9.1), TLS 1.2 servers offer ECDHE with AES-GCM, and
//! rustls's own order offers AES-GCM first, so a server that follows the client's order
//! picked AES-GCM already. A host that wants other suites installs its own provider
//! (`CryptoProvider::install_default`), which is used instead.
//!
//! Built field by field rather than from `rustls::crypto::ring::default_provider()`:
//! that function's suite list names ChaCha20, which keeps its code in the library even
//! when the list is replaced.

use rustls::crypto::ring::{cipher_suite, ALL_KX_GROUPS};
use rustls::crypto::{CryptoProvider, GetRandomFailed, SecureRandom, WebPkiSupportedAlgorithms};
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::SigningKey;
use rustls::SignatureScheme;
use std::sync::Arc;
use webpki::ring as algs;

/// Whether HTTPS offers what ours does (no provider installed by the host), which errors
/// may then name.
pub(super) fn ours_in_use() -> bool {
    CryptoProvider::get_default().is_none()
}

/// The process's default provider if the host installed one, else ours.
pub(super) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(evergreen_provider()))
}

/// ring's provider, AES-GCM only, without client keys (see the module's documentation).
fn evergreen_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: ALL_KX_GROUPS.to_vec(),
        signature_verification_algorithms: SIGNATURE_ALGORITHMS,
        secure_random: &SystemRandom,
        key_provider: &NoClientKeys,
    }
}

/// The signatures webpki verifies with ring: the same list, and the same mapping from
/// TLS signature schemes, as rustls's ring provider. (For TLS 1.2 the scheme does not fix
/// the curve, hence two algorithms for each ECDSA scheme.)
static SIGNATURE_ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        algs::ECDSA_P256_SHA256,
        algs::ECDSA_P256_SHA384,
        algs::ECDSA_P384_SHA256,
        algs::ECDSA_P384_SHA384,
        algs::ED25519,
        algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        algs::RSA_PKCS1_2048_8192_SHA256,
        algs::RSA_PKCS1_2048_8192_SHA384,
        algs::RSA_PKCS1_2048_8192_SHA512,
        algs::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
        algs::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
        algs::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    ],
    mapping: &[
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[algs::ECDSA_P384_SHA384, algs::ECDSA_P256_SHA384],
        ),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[algs::ECDSA_P256_SHA256, algs::ECDSA_P384_SHA256],
        ),
        (SignatureScheme::ED25519, &[algs::ED25519]),
        (
            SignatureScheme::RSA_PSS_SHA512,
            &[algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA384,
            &[algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA256,
            &[algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA512,
            &[algs::RSA_PKCS1_2048_8192_SHA512],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA384,
            &[algs::RSA_PKCS1_2048_8192_SHA384],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA256,
            &[algs::RSA_PKCS1_2048_8192_SHA256],
        ),
    ],
};

/// The operating system's random numbers (`getrandom`), as ring's own generator reads them.
#[derive(Debug)]
struct SystemRandom;

impl SecureRandom for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        getrandom::fill(buf).map_err(|_| GetRandomFailed)
    }
}

/// The key provider for devices: a device authenticates the server, never itself (no
/// client certificates), so no private key is ever loaded, and ring's private-key parsers
/// and signers stay out of the library.
#[derive(Debug)]
struct NoClientKeys;

impl rustls::crypto::KeyProvider for NoClientKeys {
    fn load_private_key(
        &self,
        _key: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        Err(rustls::Error::General(
            "expected no client certificate (Evergreen authenticates the server only), found a private key to load".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same signature support as rustls's ring provider: an algorithm left out here
    /// would make a server whose certificate uses it unreachable.
    #[test]
    fn verifies_every_signature_rustls_ring_verifies() {
        let ours = evergreen_provider().signature_verification_algorithms;
        let ring = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        assert_eq!(format!("{:?}", ours.all), format!("{:?}", ring.all));
        assert_eq!(format!("{:?}", ours.mapping), format!("{:?}", ring.mapping));
        let groups = |p: CryptoProvider| -> Vec<String> {
            p.kx_groups
                .iter()
                .map(|g| format!("{:?}", g.name()))
                .collect()
        };
        let ours = groups(evergreen_provider());
        assert_eq!(ours, groups(rustls::crypto::ring::default_provider()));
        assert_eq!(ours, ["X25519", "secp256r1", "secp384r1"]);
    }

    /// Every suite of rustls's ring provider but ChaCha20-Poly1305, in its order.
    #[test]
    fn offers_rustls_ring_suites_but_chacha20() {
        let names = |p: CryptoProvider| -> Vec<String> {
            p.cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect()
        };
        let expected: Vec<String> = names(rustls::crypto::ring::default_provider())
            .into_iter()
            .filter(|n| !n.contains("CHACHA20"))
            .collect();
        assert_eq!(names(evergreen_provider()), expected);
        assert_eq!(expected.len(), 6);
    }

    #[test]
    fn refuses_client_keys_and_gives_random_bytes() {
        let p = evergreen_provider();
        let key = PrivateKeyDer::Pkcs8(vec![0u8; 16].into());
        let err = p.key_provider.load_private_key(key).unwrap_err();
        assert!(err.to_string().contains("expected no client certificate"));
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        p.secure_random.fill(&mut a).unwrap();
        p.secure_random.fill(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
