//! HTTPS to an LXD server as the `lxc` client makes it: with lxc's client certificate, and the
//! server's certificate pinned as `lxc remote add` stored it for the remote. LXD servers
//! present self-signed certificates whose names rarely match the address used, so the pin,
//! not a CA and a name, is what proves the server (as in lxc).

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use super::Error;

/// A TLS stream to `authority` (`host:port`), authenticated with lxc's files for `remote`.
pub fn connect(
    authority: &str,
    remote: &str,
    timeout: Duration,
) -> Result<StreamOwned<ClientConnection, TcpStream>, Error> {
    let dir = lxc_config_dir();
    let pinned = CertificateDer::from_pem_file(dir.join("servercerts").join(format!("{remote}.crt")))
        .map_err(|e| pem_error(&dir.join("servercerts").join(format!("{remote}.crt")), e))?;
    let client = dir.join("client.crt");
    let certs = CertificateDer::pem_file_iter(&client)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(&client, e))?;
    let key_file = dir.join("client.key");
    let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|e| pem_error(&key_file, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .and_then(|c| {
            c.dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { cert: pinned, provider }))
                .with_client_auth_cert(certs, key)
        })
        .map_err(|e| Error::Tls(e.to_string()))?;
    let tcp = tcp_connect(authority, timeout)?;
    let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host).trim_matches(['[', ']']);
    // The pin decides; the name only goes into the handshake (SNI).
    let name = ServerName::try_from(host.to_string()).map_err(|e| Error::Tls(e.to_string()))?;
    let connection = ClientConnection::new(Arc::new(config), name).map_err(|e| Error::Tls(e.to_string()))?;
    Ok(StreamOwned::new(connection, tcp))
}

/// lxc's configuration directory: `LXD_CONF`, else `~/.config/lxc`.
fn lxc_config_dir() -> PathBuf {
    match std::env::var_os("LXD_CONF") {
        Some(dir) => dir.into(),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".config/lxc"),
    }
}

fn pem_error(path: &Path, error: rustls::pki_types::pem::Error) -> Error {
    Error::Tls(format!("{}: {error}", path.display()))
}

fn tcp_connect(authority: &str, timeout: Duration) -> Result<TcpStream, Error> {
    let io_error = super::io_error(authority.to_string(), timeout);
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for address in authority.to_socket_addrs().map_err(&io_error)? {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(io_error(last))
}

/// Accepts exactly the pinned certificate, and checks the handshake's signatures with it.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the certificate lxc stored for this remote".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, signature, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, signature, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
