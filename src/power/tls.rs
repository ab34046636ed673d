//! TLS for Redfish BMCs (`address = "https://…"`). With `verify_tls = true`
//! (the default) the BMC's certificate must chain to a CA of this machine
//! (Debian's bundle, `/etc/ssl/certs/ca-certificates.crt`, which
//! `update-ca-certificates` maintains) or of `ca_file`, and name the address.
//! `verify_tls = false` accepts any certificate — most BMCs ship a self-signed
//! one — while still checking the handshake's signatures; the connection is
//! then encrypted but not authenticated, which the operator chose in the file.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// The system's CA bundle on Debian (package ca-certificates).
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client settings for one BMC: `verify` checks its certificate against
/// the system bundle (when present) and `ca_file`. `Err` says what is wrong
/// with `ca_file` (the caller adds the node).
pub fn client_config(verify: bool, ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let config = if verify {
        let mut roots = RootCertStore::empty();
        if let Ok(certs) = CertificateDer::pem_file_iter(SYSTEM_BUNDLE) {
            // A bad entry in the system bundle costs that entry only.
            roots.add_parsable_certificates(certs.flatten());
        }
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read bmc.ca_file {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bmc.ca_file {} is not PEM: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "bmc.ca_file {} holds no certificate; put the PEM certificate of the CA that signed the BMC's certificate there",
                    path.display()
                ));
            }
            let (_, bad) = roots.add_parsable_certificates(certs);
            if bad > 0 {
                return Err(format!(
                    "bmc.ca_file {}: {bad} certificate(s) could not be used as a CA",
                    path.display()
                ));
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
    };
    Ok(Arc::new(config.with_no_client_auth()))
}

/// Whether an error from the HTTP client is the BMC's certificate being
/// refused (rather than a BMC that does not answer).
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return matches!(
                r,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
            );
        }
        // An io::Error's `source` skips the error it wraps: look inside it.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// `verify_tls = false`: any certificate, its handshake signature still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(true, Some(&missing)).unwrap_err();
        assert!(
            e.contains("cannot read bmc.ca_file") && e.contains("nope.pem"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(true, Some(&empty)).unwrap_err();
        assert!(e.contains("holds no certificate"), "{e}");
        client_config(false, None).unwrap();
        client_config(true, None).unwrap();
    }

    #[test]
    fn certificate_errors_are_told_apart() {
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::other(cert);
        assert!(is_certificate_error(&wrapped));
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!is_certificate_error(&other));
    }
}
