//! The TLS client port of a real `durakv` process, with certificates made for the test (rcgen) and a
//! rustls client.
//!
//! Failures injected: a plain-text client on the TLS port; a client that trusts another CA; with
//! client certificates required, a client without one and a client whose certificate another CA
//! signed; a start with a missing key file and with a key that does not fit the certificate.
//! Invariants: a client that trusts the node's CA talks RESP inside TLS (AUTH included) and sees the
//! writes made on the plain port; every refused client gets no reply and the node keeps serving
//! both ports; a bad TLS file stops the start with the file named.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().expect("local addr").port()
}

/// A certificate authority for the test.
struct Ca {
    der: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { der: cert.der().clone(), pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf certificate for `names`: (certificate DER, its PEM, the key's PKCS#8 DER, its PEM).
    fn leaf(&self, names: &[&str]) -> (CertificateDer<'static>, String, Vec<u8>, String) {
        let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("valid names");
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.der().clone(), cert.pem(), key.serialize_der(), key.serialize_pem())
    }
}

struct Node {
    resp: u16,
    tls: u16,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_args(dir: &Path, resp: u16, tls: u16, extra: &[String]) -> Vec<String> {
    let peer = free_port();
    let mut v: Vec<String> = [
        "--id",
        "1",
        "--peers",
        &format!("1=127.0.0.1:{peer},127.0.0.1:{resp}"),
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--tls-resp-addr",
        &format!("127.0.0.1:{tls}"),
        "--requirepass",
        "pw",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().cloned());
    v
}

fn start(dir: &Path, extra: &[String]) -> Node {
    let (resp, tls) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_durakv"))
        .args(node_args(dir, resp, tls, extra))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start durakv");
    let node = Node { resp, tls, child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while plain(&node, b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*3\r\n$3\r\nSET\r\n$5\r\nready\r\n$1\r\n1\r\n")
        .is_none_or(|r| !r.ends_with("+OK\r\n"))
    {
        assert!(Instant::now() < deadline, "the node did not start serving");
        std::thread::sleep(Duration::from_millis(100));
    }
    node
}

/// Send `request` on the plain port; what came back before a pause.
fn plain(node: &Node, request: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", node.resp)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(request).ok()?;
    Some(read_some(&mut s))
}

/// Everything readable until the peer closes, errs or pauses for the read timeout.
fn read_some(r: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A TLS client trusting `ca`, with `identity` (certificate, PKCS#8 key) when given: what the node
/// answered to `request` (empty when the handshake or the connection failed).
fn over_tls(
    port: u16,
    ca: &Ca,
    identity: Option<(CertificateDer<'static>, Vec<u8>)>,
    request: &[u8],
) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("a CA certificate");
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![cert], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
            .expect("a client identity"),
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("localhost").expect("a name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect to the TLS port");
    sock.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    if tls.write_all(request).and_then(|()| tls.flush()).is_err() {
        return String::new();
    }
    read_some(&mut tls)
}

const SET_AND_GET: &[u8] =
    b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*3\r\n$3\r\nSET\r\n$3\r\ntls\r\n$3\r\nyes\r\n*2\r\n$3\r\nGET\r\n$5\r\nplain\r\n";
const SET_AND_GET_ANSWER: &str = "+OK\r\n+OK\r\n$2\r\nv1\r\n";

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a PEM file");
    path
}

#[test]
fn the_tls_port_serves_resp_to_clients_that_trust_its_certificate_and_refuses_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("durakv test CA");
    let (_, server_pem, _, server_key_pem) = ca.leaf(&["localhost", "127.0.0.1"]);
    let cert = write_file(dir.path(), "server.crt", &server_pem);
    let key = write_file(dir.path(), "server.key", &server_key_pem);
    let files = vec![
        "--tls-cert-file".to_string(),
        cert.display().to_string(),
        "--tls-key-file".to_string(),
        key.display().to_string(),
    ];
    let node = start(&dir.path().join("a"), &files);
    let written =
        plain(&node, b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*3\r\n$3\r\nSET\r\n$5\r\nplain\r\n$2\r\nv1\r\n");
    assert_eq!(written.as_deref(), Some("+OK\r\n+OK\r\n"));

    // Inside TLS: AUTH, a write, and a read of the write made on the plain port.
    assert_eq!(over_tls(node.tls, &ca, None, SET_AND_GET), SET_AND_GET_ANSWER);
    // Without AUTH, as on the plain port.
    assert!(over_tls(node.tls, &ca, None, b"*2\r\n$3\r\nGET\r\n$3\r\ntls\r\n").starts_with("-NOAUTH"));
    // The TLS write is seen on the plain port.
    let read = plain(&node, b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*2\r\n$3\r\nGET\r\n$3\r\ntls\r\n");
    assert_eq!(read.as_deref(), Some("+OK\r\n$3\r\nyes\r\n"));

    // Plain text on the TLS port: no reply, the connection closes.
    let mut s = TcpStream::connect(("127.0.0.1", node.tls)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"*1\r\n$4\r\nPING\r\n").expect("send");
    assert!(!read_some(&mut s).contains("PONG"), "the TLS port answered plain text");
    // A client that trusts another CA refuses the node's certificate.
    assert_eq!(over_tls(node.tls, &Ca::new("another CA"), None, SET_AND_GET), "");
    // Both ports still serve.
    assert_eq!(over_tls(node.tls, &ca, None, SET_AND_GET), SET_AND_GET_ANSWER);
    assert_eq!(
        plain(&node, b"*1\r\n$4\r\nPING\r\n").as_deref(),
        Some("-NOAUTH Authentication required.\r\n")
    );
}

#[test]
fn with_a_client_ca_only_clients_holding_a_certificate_it_signed_are_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("durakv test CA");
    let (_, server_pem, _, server_key_pem) = ca.leaf(&["localhost"]);
    let clients_ca = Ca::new("durakv clients CA");
    let (client_cert, _, client_key, _) = clients_ca.leaf(&["client-1"]);
    let rogue_ca = Ca::new("rogue CA");
    let (rogue_cert, _, rogue_key, _) = rogue_ca.leaf(&["client-1"]);
    let files = vec![
        "--tls-cert-file".to_string(),
        write_file(dir.path(), "server.crt", &server_pem).display().to_string(),
        "--tls-key-file".to_string(),
        write_file(dir.path(), "server.key", &server_key_pem).display().to_string(),
        "--tls-ca-cert-file".to_string(),
        write_file(dir.path(), "clients-ca.crt", &clients_ca.pem).display().to_string(),
    ];
    let node = start(&dir.path().join("b"), &files);
    let written =
        plain(&node, b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*3\r\n$3\r\nSET\r\n$5\r\nplain\r\n$2\r\nv1\r\n");
    assert_eq!(written.as_deref(), Some("+OK\r\n+OK\r\n"));
    assert_eq!(over_tls(node.tls, &ca, None, SET_AND_GET), "", "served a client without a certificate");
    assert_eq!(
        over_tls(node.tls, &ca, Some((rogue_cert, rogue_key)), SET_AND_GET),
        "",
        "served a client whose certificate another CA signed"
    );
    assert_eq!(over_tls(node.tls, &ca, Some((client_cert, client_key)), SET_AND_GET), SET_AND_GET_ANSWER);
}

#[test]
fn a_bad_tls_file_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("durakv test CA");
    let (_, server_pem, _, _) = ca.leaf(&["localhost"]);
    let (_, _, _, other_key_pem) = ca.leaf(&["localhost"]);
    let cert = write_file(dir.path(), "server.crt", &server_pem);
    let missing = dir.path().join("missing.key");
    let wrong = write_file(dir.path(), "wrong.key", &other_key_pem);
    for (key, expect) in [(&missing, "missing.key"), (&wrong, "does not fit the certificate")] {
        let args = [
            "--tls-cert-file".to_string(),
            cert.display().to_string(),
            "--tls-key-file".to_string(),
            key.display().to_string(),
        ];
        let out = Command::new(env!("CARGO_BIN_EXE_durakv"))
            .args(node_args(&dir.path().join("c"), free_port(), free_port(), &args))
            .output()
            .expect("run durakv");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(expect), "{err}");
    }
}

/// Replace `path` the way an operator rotates a file: write the new one beside it, rename over.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename it into place");
}

/// Failures injected: the server's certificate and key are replaced while the node runs (by one
/// from another CA), then replaced by a key that does not fit the certificate. Invariants: new
/// connections get the new certificate without a restart (clients trusting only the old CA are
/// refused, clients trusting the new one served); a replacement that does not load changes nothing
/// (the node goes on serving the last good certificate) and the next good one is taken.
#[test]
fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (old_ca, new_ca) = (Ca::new("durakv test CA 1"), Ca::new("durakv test CA 2"));
    let (_, old_pem, _, old_key_pem) = old_ca.leaf(&["localhost"]);
    let cert = write_file(dir.path(), "server.crt", &old_pem);
    let key = write_file(dir.path(), "server.key", &old_key_pem);
    let files = vec![
        "--tls-cert-file".to_string(),
        cert.display().to_string(),
        "--tls-key-file".to_string(),
        key.display().to_string(),
    ];
    let node = start(&dir.path().join("d"), &files);
    let written =
        plain(&node, b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*3\r\n$3\r\nSET\r\n$5\r\nplain\r\n$2\r\nv1\r\n");
    assert_eq!(written.as_deref(), Some("+OK\r\n+OK\r\n"));
    assert_eq!(over_tls(node.tls, &old_ca, None, SET_AND_GET), SET_AND_GET_ANSWER);

    // Rotate to a certificate the new CA signed: the key first, then the certificate (between the
    // two renames the pair does not fit, and the node keeps the old one).
    let (_, new_pem, _, new_key_pem) = new_ca.leaf(&["localhost"]);
    replace_file(&key, &new_key_pem);
    assert_eq!(
        over_tls(node.tls, &old_ca, None, SET_AND_GET),
        SET_AND_GET_ANSWER,
        "a half-rotated pair was taken"
    );
    replace_file(&cert, &new_pem);
    assert_eq!(
        over_tls(node.tls, &new_ca, None, SET_AND_GET),
        SET_AND_GET_ANSWER,
        "the new certificate is not served"
    );
    assert_eq!(over_tls(node.tls, &old_ca, None, SET_AND_GET), "", "the old certificate is still served");

    // A key that does not fit: logged, and the last good certificate stays.
    let (_, _, _, stray_key_pem) = new_ca.leaf(&["localhost"]);
    replace_file(&key, &stray_key_pem);
    assert_eq!(over_tls(node.tls, &new_ca, None, SET_AND_GET), SET_AND_GET_ANSWER);
    replace_file(&key, &new_key_pem);
    assert_eq!(over_tls(node.tls, &new_ca, None, SET_AND_GET), SET_AND_GET_ANSWER);
}
