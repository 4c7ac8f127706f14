//! Certificates: loading PEM, and the two facts pgdyno reads from one
//! (RFC 5929's tls-server-end-point hash for SCRAM channel binding, and the
//! subject's CN for `client_tls_sslmode = verify-full`).
//!
//! A dozen lines of DER walking instead of an X.509 crate: only the outer
//! structure is read, and a certificate rustls has already parsed (ours at
//! startup, a peer's after its handshake) is all it ever sees.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::config::tls::Pem;
use crate::config::ConfigError;

pub fn certs(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = pem.read()?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError(format!("{}: not PEM certificates: {e}", pem.origin())))?;
    if certs.is_empty() {
        return Err(ConfigError(format!(
            "{}: no certificate found",
            pem.origin()
        )));
    }
    Ok(certs)
}

pub fn key(pem: &Pem) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(&pem.read()?)
        .map_err(|e| ConfigError(format!("{}: no PEM private key found: {e}", pem.origin())))
}

pub fn roots(pem: &Pem) -> Result<Arc<RootCertStore>, ConfigError> {
    let mut store = RootCertStore::empty();
    for cert in certs(pem)? {
        store
            .add(cert)
            .map_err(|e| ConfigError(format!("{}: unusable CA certificate: {e}", pem.origin())))?;
    }
    Ok(Arc::new(store))
}

/// The operating system's trusted roots (for verify-ca/full without a CA file).
pub fn system_roots() -> Result<Arc<RootCertStore>, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(ConfigError(format!(
            "no system root certificates found ({} errors); set server_tls_ca_file",
            found.errors.len()
        )));
    }
    Ok(Arc::new(store))
}

/// Splits one DER element: (tag, contents, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| a << 8 | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The contents of a SEQUENCE at the start of `input`.
fn sequence(input: &[u8]) -> Option<&[u8]> {
    match tlv(input)? {
        (SEQUENCE, body, _) => Some(body),
        _ => None,
    }
}

/// tls-server-end-point channel binding data (RFC 5929 section 4.1): the
/// certificate hashed with its signature's hash, SHA-256 for MD5 and SHA-1.
/// `None` for algorithms without one hash (Ed25519, RSA-PSS), where
/// PostgreSQL cannot bind either.
pub fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    let body = sequence(cert)?;
    let (_, _tbs, rest) = tlv(body)?;
    let (_, oid, _) = tlv(sequence(rest)?).filter(|(tag, _, _)| *tag == OID)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    enum Hash {
        S256,
        S384,
        S512,
    }
    let hash = if let Some(last) = oid.strip_prefix(RSA) {
        match last {
            [0x04] | [0x05] | [0x0b] => Hash::S256, // md5, sha1, sha256WithRSAEncryption
            [0x0c] => Hash::S384,
            [0x0d] => Hash::S512,
            _ => return None,
        }
    } else if let Some(last) = oid.strip_prefix(ECDSA) {
        match last {
            [0x01] | [0x03, 0x02] => Hash::S256, // ecdsa-with-SHA1, -SHA256
            [0x03, 0x03] => Hash::S384,
            [0x03, 0x04] => Hash::S512,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(match hash {
        Hash::S256 => Sha256::digest(cert).to_vec(),
        Hash::S384 => Sha384::digest(cert).to_vec(),
        Hash::S512 => Sha512::digest(cert).to_vec(),
    })
}

/// The first CN of the certificate's subject.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let tbs = sequence(sequence(cert)?)?;
    let mut rest = tbs;
    // [0] version (optional), serialNumber, signature, issuer, validity, subject.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let mut names = sequence(rest)?;
    while !names.is_empty() {
        let (tag, set, next) = tlv(names)?;
        names = next;
        if tag != SET {
            return None;
        }
        let attribute = sequence(set)?;
        let (tag, oid, value) = tlv(attribute)?;
        if tag == OID && oid == [0x55, 0x04, 0x03] {
            let (_, text, _) = tlv(value)?;
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> rcgen::Certificate {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "pgdyno tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap()
    }

    #[test]
    fn reads_the_common_name() {
        let c = cert("app");
        assert_eq!(common_name(c.der()).as_deref(), Some("app"));
        assert_eq!(common_name(b"\x30\x03\x02\x01"), None);
        assert_eq!(common_name(b""), None);
    }

    #[test]
    fn hashes_an_ecdsa_p256_certificate_with_sha256() {
        let c = cert("x");
        let der = c.der();
        assert_eq!(
            end_point_hash(der),
            Some(Sha256::digest(der.as_ref()).to_vec())
        );
        assert_eq!(end_point_hash(&der[..der.len() / 2]), None);
    }

    #[test]
    fn never_panics_on_garbage() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 0x30) as u8).collect();
            let _ = end_point_hash(&junk);
            let _ = common_name(&junk);
        }
        // A length field claiming more than there is.
        assert_eq!(tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
