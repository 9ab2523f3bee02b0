//! TLS 1.3 for the relay: the server certificate (configured, or in dev a self-signed
//! one kept in the data directory) and client configs that pin its SHA-256 fingerprint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

/// File names of the dev certificate and key, under `<data_dir>/relay/`.
pub const DEV_CERT: &str = "dev-cert.pem";
pub const DEV_KEY: &str = "dev-key.pem";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// SHA-256 of a certificate's DER, as lowercase hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(sha2::Sha256::digest(cert.as_ref()))
}

/// Where the dev certificate lives for a data directory.
pub fn dev_cert_path(data_dir: &Path) -> PathBuf {
    data_dir.join("relay").join(DEV_CERT)
}

/// The fingerprint of the dev certificate of a data directory, if it exists.
pub fn dev_fingerprint(data_dir: &Path) -> anyhow::Result<String> {
    let path = dev_cert_path(data_dir);
    let cert = CertificateDer::from_pem_file(&path)
        .with_context(|| format!("reading the relay's dev certificate {} (has `maxd` run here yet?)", path.display()))?;
    Ok(fingerprint(&cert))
}

/// Loads the configured certificate chain and key, or in dev mode makes (once) a
/// self-signed certificate for `localhost` and `127.0.0.1`.
pub fn load_or_make(cert: Option<&Path>, key: Option<&Path>, data_dir: &Path, dev: bool) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
        (None, None) if dev => {
            let dir = data_dir.join("relay");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (c, k) = (dir.join(DEV_CERT), dir.join(DEV_KEY));
            if !c.exists() || !k.exists() {
                let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])
                    .context("generating the dev certificate")?;
                std::fs::write(&k, ck.signing_key.serialize_pem()).with_context(|| format!("writing {}", k.display()))?;
                std::fs::write(&c, ck.cert.pem()).with_context(|| format!("writing {}", c.display()))?;
            }
            (c, k)
        }
        (None, None) => anyhow::bail!("relay.cert and relay.key are required when dev = false"),
        _ => anyhow::bail!("set both relay.cert and relay.key, or neither (dev mode only)"),
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("reading key {}", key_path.display()))?;
    Ok((certs, key))
}

/// The QUIC server config.
pub fn server_config(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>, transport: quinn::TransportConfig) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    tls.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// How the client checks the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The end-entity certificate's SHA-256 must be this (hex).
    Pin(String),
    /// Standard verification against these PEM root certificates.
    Roots(PathBuf),
}

/// The QUIC client config.
pub fn client_config(trust: &Trust, transport: quinn::TransportConfig) -> anyhow::Result<quinn::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = match trust {
        Trust::Pin(pin) => {
            let pin = pin.to_ascii_lowercase().replace(':', "");
            if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!("--pin must be a SHA-256 fingerprint: 64 hex digits (colons allowed)");
            }
            builder.dangerous().with_custom_certificate_verifier(Arc::new(PinVerifier { pin, provider: provider() })).with_no_client_auth()
        }
        Trust::Roots(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
                roots.add(c.with_context(|| format!("parsing {}", path.display()))?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Accepts exactly the certificate whose fingerprint is pinned; checks the handshake
/// signature with its key.
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(&self, end_entity: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("server certificate does not match the pinned fingerprint".into()))
        }
    }

    fn verify_tls12_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
