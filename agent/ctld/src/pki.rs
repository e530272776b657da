//! The controller's certificates: a CA per controller (rcgen), node certificates it signs (used
//! as server certificates and, for the Raft service, as client certificates), and the TLS
//! configurations built from them.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct CertKeyPem {
    /// The certificate.
    pub cert: String,
    /// The private key.
    pub key: String,
}

/// Creates a controller CA named after the controller.
pub fn new_ca(controller_name: &str, controller_uuid: &str) -> Result<CertKeyPem> {
    let key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("starling controller {controller_name} CA"),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, controller_uuid.to_string());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(&key).context("cannot sign the CA")?;
    Ok(CertKeyPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Signs a node certificate valid for `host` (the host part of its addresses) and localhost,
/// usable for both server and client authentication.
pub fn new_node_cert(ca: &CertKeyPem, node_id: u64, hosts: &[&str]) -> Result<CertKeyPem> {
    let ca_key = KeyPair::from_pem(&ca.key).context("malformed CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).context("malformed CA certificate")?;
    let key = KeyPair::generate().context("cannot generate a node key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("starling node {node_id}"));
    let mut names = vec![SanType::DnsName("localhost".try_into()?)];
    for host in hosts {
        match host.parse::<IpAddr>() {
            Ok(ip) => names.push(SanType::IpAddress(ip)),
            Err(_) => names.push(SanType::DnsName((*host).try_into()?)),
        }
    }
    names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip literal")));
    names.dedup();
    params.subject_alt_names = names;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the node certificate")?;
    Ok(CertKeyPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The host part of a `host:port` address.
pub fn host_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(address)
}

/// The gRPC server TLS: the node certificate, and client certificates verified against the CA
/// when presented (required by the Raft service, absent for token-authenticated clients).
pub fn server_tls(ca_pem: &str, node: &CertKeyPem) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&node.cert, &node.key))
        .client_ca_root(Certificate::from_pem(ca_pem))
        .client_auth_optional(true)
}

/// The TLS a node presents when it dials a peer.
pub fn peer_client_tls(ca_pem: &str, node: &CertKeyPem) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(&node.cert, &node.key))
}

/// The rustls configuration of the HTTPS side port.
pub fn http_server_tls(node: &CertKeyPem) -> Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(node.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("malformed node certificate")?;
    let key = PrivateKeyDer::from_pem_slice(node.key.as_bytes()).context("malformed node key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("node certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_chain_to_their_ca() {
        let ca = new_ca("alpha", "uuid-1").unwrap();
        let node = new_node_cert(&ca, 1, &["127.0.0.1", "localhost"]).unwrap();
        assert!(node.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(http_server_tls(&node).is_ok());
        // A certificate from another CA must not verify against this one.
        let other_ca = new_ca("beta", "uuid-2").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.cert.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let ours = CertificateDer::from_pem_slice(node.cert.as_bytes()).unwrap();
        assert!(verifier.verify_client_cert(&ours, &[], now).is_ok());
        let foreign_node = new_node_cert(&other_ca, 1, &["127.0.0.1"]).unwrap();
        let theirs = CertificateDer::from_pem_slice(foreign_node.cert.as_bytes()).unwrap();
        assert!(verifier.verify_client_cert(&theirs, &[], now).is_err());
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
