//! Certificates for TLS termination: PEM loading, the SNI resolver and the
//! rustls server config (ALPN h2 and http/1.1). A leaf: the snapshot loads
//! certificates with it, the listener ([`crate::proxy::tls`]) serves them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate and key pair cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The certificate file cannot be read.
    #[error("cannot read TLS certificate `{}`: {source}", path.display())]
    ReadCert {
        /// The file, resolved against the manifest's directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key file cannot be read.
    #[error("cannot read TLS key `{}`: {source}", path.display())]
    ReadKey {
        /// The file, resolved against the manifest's directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The certificate file holds no usable `CERTIFICATE` block.
    #[error("TLS certificate `{}` holds no PEM certificate{}", path.display(), detail(.reason))]
    NoCert {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said, if it failed rather than found nothing.
        reason: Option<String>,
    },
    /// The key file holds no usable private key block.
    #[error("TLS key `{}` holds no PEM private key{}", path.display(), detail(.reason))]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said, if it failed rather than found nothing.
        reason: Option<String>,
    },
    /// The key is of a kind rustls cannot sign with.
    #[error("TLS key `{}` cannot be used: {reason}", key.display())]
    BadKey {
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The key belongs to another certificate.
    #[error("TLS key `{}` does not match certificate `{}`", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

fn detail(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

impl CertError {
    /// Whether the fault is in the key file rather than the certificate file
    /// (so the message can point at the `key` entry).
    pub fn in_key(&self) -> bool {
        matches!(
            self,
            CertError::ReadKey { .. }
                | CertError::NoKey { .. }
                | CertError::BadKey { .. }
                | CertError::Mismatch { .. }
        )
    }

    /// How to fix it.
    pub fn help(&self) -> &'static str {
        match self {
            CertError::ReadCert { .. } | CertError::ReadKey { .. } => {
                "paths are relative to the manifest; check the file exists and is readable by the gateway"
            }
            CertError::NoCert { .. } => {
                "`cert` is the chain in PEM (`-----BEGIN CERTIFICATE-----`), leaf first"
            }
            CertError::NoKey { .. } => {
                "`key` is a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`)"
            }
            CertError::BadKey { .. } => {
                "use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key"
            }
            CertError::Mismatch { .. } => {
                "pair each certificate with its own key: `openssl x509 -noout -pubkey -in CERT` and `openssl pkey -pubout -in KEY` must print the same key"
            }
        }
    }
}

/// The one crypto provider (ring) every TLS config is built with; no
/// process-wide default is installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM chain and its private key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let cert_pem = std::fs::read(cert).map_err(|source| CertError::ReadCert {
        path: cert.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| CertError::ReadKey {
        path: key.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::NoCert {
            path: cert.to_path_buf(),
            reason: Some(e.to_string()),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCert {
            path: cert.to_path_buf(),
            reason: None,
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::NoKey {
        path: key.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => None,
            e => Some(e.to_string()),
        },
    })?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| CertError::BadKey {
            key: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // Compares the key's public half with the leaf's; ring always knows it.
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(_) => Err(CertError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
    }
}

/// Picks a certificate by SNI: an exact name, then a `*.suffix` wildcard
/// covering one label, then the default (first) certificate, which also
/// serves clients that send no SNI (IP literals, old clients, scanners).
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// A resolver answering `default` until names are added.
    pub fn new(default: Arc<CertifiedKey>) -> SniResolver {
        SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// Serves `key` for `name` (`a.example.com` or `*.example.com`); returns
    /// `false` if the name was already taken.
    pub fn add(&mut self, name: &str, key: Arc<CertifiedKey>) -> bool {
        let name = name.to_ascii_lowercase();
        let map = match name.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix.to_string()),
            None => (&mut self.exact, name),
        };
        match map.0.entry(map.1) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(key);
                true
            }
        }
    }

    /// The certificate for `sni` (lower-case, no trailing dot expected).
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// Whether `name` can be an SNI entry: a DNS name, or `*.` and a DNS name
/// with at least two labels (so `*.com` is refused).
pub fn valid_name(name: &str) -> bool {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    let dns_ok = rustls_pki_types::DnsName::try_from(bare).is_ok()
        && !bare.ends_with('.')
        && bare.parse::<std::net::IpAddr>().is_err();
    dns_ok && (bare.len() == name.len() || bare.contains('.'))
}

/// The acceptor config for `resolver`: TLS 1.3 and 1.2 (ring's safe
/// defaults), ALPN `h2` then `http/1.1`, no client certificates.
pub fn server_config(resolver: SniResolver) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
