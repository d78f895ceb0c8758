//! TLS on the client port, the way Redis 6 offers it: a second listener (`tls_resp_addr`, Redis's
//! `tls-port`) that speaks the same protocol inside TLS, with the server's certificate and key
//! (`tls_cert_file`, `tls_key_file`) and, when a CA is given (`tls_ca_cert_file`), client
//! certificates required and checked against it (Redis's `tls-auth-clients yes`). `AUTH` works inside
//! TLS as on the plain port. rustls with the `ring` provider; TLS 1.2 and 1.3.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Why the TLS listener could not be set up. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |message: String| TlsError::File { path: path.to_path_buf(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no certificate (PEM \"BEGIN CERTIFICATE\")".into()));
    }
    Ok(certs)
}

/// The acceptor for the TLS client port. Every file is read and checked here, at start: a missing
/// file, a key that does not match the certificate or a CA file without certificates stops the
/// node with the file named.
pub fn acceptor(cfg: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&cfg.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| TlsError::File {
        path: cfg.key_file.clone(),
        message: format!("not a PEM private key: {e}"),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &cfg.ca_cert_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| TlsError::File {
                    path: ca.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| TlsError::File {
        path: cfg.key_file.clone(),
        message: format!("the key does not fit the certificate in {}: {e}", cfg.cert_file.display()),
    })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What identifies the contents of the TLS files now: each file's inode, length and modification
/// time (a file renamed into place is a new inode; a file that cannot be read counts as changed, and
/// fails the reload that follows).
type Stamp = Vec<Option<(u64, u64, std::time::SystemTime)>>;

fn stamp(cfg: &TlsConfig) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    [Some(&cfg.cert_file), Some(&cfg.key_file), cfg.ca_cert_file.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.ino(), m.len(), m.modified().ok()?))))
        .collect()
}

/// The TLS acceptor, reloaded when its files change: certificates are rotated by replacing the files
/// (write the new ones beside them, then rename over), without a restart. Each new connection looks
/// at the files' length and modification time; once they changed, the whole configuration is built
/// again from them. A replacement that does not load (a missing file, a key that does not fit) is
/// logged and the connections go on with the previous certificate until the files change again.
pub struct ReloadingAcceptor {
    cfg: TlsConfig,
    node: u64,
    current: std::sync::Mutex<(Stamp, tokio_rustls::TlsAcceptor)>,
}

impl ReloadingAcceptor {
    /// Load the files now; an error stops the node's start (the file named).
    pub fn new(cfg: &TlsConfig, node: u64) -> Result<ReloadingAcceptor, TlsError> {
        let before = stamp(cfg);
        let acceptor = acceptor(cfg)?;
        Ok(ReloadingAcceptor { cfg: cfg.clone(), node, current: std::sync::Mutex::new((before, acceptor)) })
    }

    /// The acceptor for a new connection: the current one, reloaded first if the files changed.
    pub fn get(&self) -> tokio_rustls::TlsAcceptor {
        let now = stamp(&self.cfg);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != now {
            // Recorded either way: a bad replacement is reported once, not at every connection.
            current.0 = now;
            match acceptor(&self.cfg) {
                Ok(fresh) => {
                    current.1 = fresh;
                    tracing::info!(node = self.node, path = %self.cfg.cert_file.display(), "TLS files changed: certificate reloaded");
                }
                Err(e) => tracing::error!(
                    node = self.node,
                    error = %e,
                    "TLS files changed but do not load; still serving the previous certificate"
                ),
            }
        }
        current.1.clone()
    }
}
