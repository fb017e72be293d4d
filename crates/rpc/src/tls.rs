//! Optional mutual TLS (TLS 1.3, rustls with the ring provider) for peer and client
//! traffic.
//!
//! One [`TlsConfig`] per process, loaded from three PEM files: this process's
//! certificate chain, its private key, and the cluster CA. As a server it requires
//! every connection to present a certificate signed by the CA; as a client it
//! presents its own certificate and verifies the server's against the CA, with the
//! host part of the address it dials as the name (node certificates carry their
//! hosts, plus `localhost` and `127.0.0.1`, as subject alternative names).
//!
//! Roles come from the common name of the peer's certificate: `raftkv-node-...` is a
//! node (may send Raft messages); anything else the CA signed (`raftkv-client-...`) is
//! a client (may read, write and ask for membership changes, but not send Raft
//! messages).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The common-name prefix of node certificates.
pub const NODE_CN_PREFIX: &str = "raftkv-node-";
/// The common-name prefix of client certificates.
pub const CLIENT_CN_PREFIX: &str = "raftkv-client-";

/// Why TLS material could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} holds no usable PEM {kind}: {detail}")]
    Pem { what: &'static str, path: PathBuf, kind: &'static str, detail: String },
    #[error("{0}")]
    Config(String),
}

/// The three PEM files of a TLS identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate (chain), PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster CA certificate(s), PEM.
    pub ca: PathBuf,
}

/// TLS settings of one process, as a server and as a client. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
}

struct Inner {
    files: Option<TlsFiles>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.files {
            Some(files) => f.debug_struct("TlsConfig").field("files", files).finish(),
            None => f.debug_struct("TlsConfig").finish_non_exhaustive(),
        }
    }
}

/// Two configs are equal when they were loaded from the same files (or are the same).
impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || (self.inner.files.is_some() && self.inner.files == other.inner.files)
    }
}

impl Eq for TlsConfig {}

impl TlsConfig {
    /// Loads the three files; errors name the file and what is wrong with it.
    pub fn load(files: &TlsFiles) -> Result<TlsConfig, TlsError> {
        let cert = read(&files.cert, "certificate file")?;
        let key = read(&files.key, "private key file")?;
        let ca = read(&files.ca, "CA file")?;
        let certs = parse_certs(&cert, "certificate file", &files.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::Pem {
            what: "private key file",
            path: files.key.clone(),
            kind: "private key",
            detail: e.to_string(),
        })?;
        let ca = parse_certs(&ca, "CA file", &files.ca)?;
        let mut config = TlsConfig::build(certs, key, ca, &files.ca)?;
        Arc::get_mut(&mut config.inner).expect("not shared yet").files = Some(files.clone());
        Ok(config)
    }

    /// Builds from PEM text held in memory (`cert`, `key`, `ca`).
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<TlsConfig, TlsError> {
        let mem = Path::new("(in memory)");
        let certs = parse_certs(cert, "certificate", mem)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
            what: "private key",
            path: mem.into(),
            kind: "private key",
            detail: e.to_string(),
        })?;
        let ca = parse_certs(ca, "CA", mem)?;
        TlsConfig::build(certs, key, ca, mem)
    }

    fn build(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca: Vec<CertificateDer<'static>>,
        ca_path: &Path,
    ) -> Result<TlsConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| TlsError::Config(format!("CA file {}: {e}", ca_path.display())))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(format!("CA file {}: {e}", ca_path.display())))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| TlsError::Config(format!("the certificate and private key do not fit together: {e}")))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Config(format!("the certificate and private key do not fit together: {e}")))?;
        Ok(TlsConfig { inner: Arc::new(Inner { files: None, server: Arc::new(server), client: Arc::new(client) }) })
    }

    /// The files it was loaded from (`None` if built from memory).
    pub fn files(&self) -> Option<&TlsFiles> {
        self.inner.files.as_ref()
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.inner.server.clone())
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.inner.client.clone())
    }
}

/// Who is on the other end of an accepted connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// TLS is off: anyone may do anything (the behaviour without TLS).
    Plaintext,
    /// A certificate from the cluster CA; `common_name` is its subject CN (empty if none).
    Certificate { common_name: String },
}

impl PeerIdentity {
    /// Whether the peer may send Raft messages: always without TLS; with TLS only
    /// for node certificates (CN `raftkv-node-...`).
    pub fn is_node(&self) -> bool {
        match self {
            PeerIdentity::Plaintext => true,
            PeerIdentity::Certificate { common_name } => common_name.starts_with(NODE_CN_PREFIX),
        }
    }

    /// Reads the identity from the peer's end-entity certificate.
    pub(crate) fn from_certificate(cert: Option<&CertificateDer<'_>>) -> PeerIdentity {
        let common_name = cert
            .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
            .and_then(|(_, c)| {
                c.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string)
            })
            .unwrap_or_default();
        PeerIdentity::Certificate { common_name }
    }
}

/// The name a server's certificate must carry: the host part of `addr`
/// (`host:port`, `[v6]:port`), an IP address or a DNS name.
pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| format!("'{host}' is not a valid TLS server name: {e}"))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

fn parse_certs(pem: &[u8], what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |detail: String| TlsError::Pem { what, path: path.to_path_buf(), kind: "certificate", detail };
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE section found".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_addresses() {
        assert!(matches!(server_name("127.0.0.1:7001"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]:7001"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("raftkv-0.raftkv.default.svc:6000"), Ok(ServerName::DnsName(_))));
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn roles_from_identity() {
        assert!(PeerIdentity::Plaintext.is_node());
        assert!(PeerIdentity::Certificate { common_name: "raftkv-node-3".into() }.is_node());
        assert!(!PeerIdentity::Certificate { common_name: "raftkv-client-admin".into() }.is_node());
        assert!(!PeerIdentity::Certificate { common_name: String::new() }.is_node());
        assert_eq!(PeerIdentity::from_certificate(None), PeerIdentity::Certificate { common_name: String::new() });
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("raftkv-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let files = TlsFiles { cert: dir.join("missing.pem"), key: junk.clone(), ca: junk.clone() };
        let e = TlsConfig::load(&files).unwrap_err().to_string();
        assert!(e.contains("certificate file") && e.contains("missing.pem"), "{e}");
        let files = TlsFiles { cert: junk.clone(), key: junk.clone(), ca: junk.clone() };
        let e = TlsConfig::load(&files).unwrap_err().to_string();
        assert!(e.contains("certificate file") && e.contains("junk.pem") && e.contains("no CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
