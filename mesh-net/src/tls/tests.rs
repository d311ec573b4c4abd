//! Handshakes over real loopback TCP between configs built by this module.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::test_ca::TestCa;
use super::*;

/// What each side of one handshake concluded: the peer's identity, or why
/// it gave up.
struct Outcome {
    server: Result<SpiffeId, String>,
    client: Result<SpiffeId, String>,
    client_resumed: bool,
}

/// One connection on loopback. The server answers "ok" after its
/// handshake, so the client knows it was accepted: in TLS 1.3 the client
/// finishes before the server has judged its certificate.
async fn connect(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
        let id = peer_spiffe(certs).map_err(|e| e.to_string())?;
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let _ = tls.shutdown().await;
        Ok::<_, String>(id)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(client)
            .connect(server_name("fcs"), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
        let id = peer_spiffe(certs).map_err(|e| e.to_string())?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let mut ok = [0u8; 2];
        tls.read_exact(&mut ok)
            .await
            .map_err(|e| format!("accepted by the server? {e}"))?;
        assert_eq!(&ok, b"ok");
        Ok::<_, String>((id, resumed))
    };
    let (client, server) = clock::timeout(Duration::from_secs(10), async {
        let client = client_side.await;
        (client, server_side.await.unwrap())
    })
    .await
    .expect("handshake within 10 s");
    Outcome {
        server,
        client_resumed: client.as_ref().is_ok_and(|(_, r)| *r),
        client: client.map(|(id, _)| id),
    }
}

#[tokio::test]
async fn leaves_of_one_ca_handshake_and_each_side_learns_the_others_spiffe_id() {
    let ca = TestCa::new("dc1");
    let (fcs, fcc) = (ca.leaf("fcs"), ca.leaf("fcc"));
    let server = server_config(&fcs, &ca.bundle()).unwrap();
    let client = client_config(&fcc, &ca.bundle(), "fcs").unwrap();

    let out = connect(server.clone(), client.clone()).await;
    assert_eq!(out.server.unwrap(), fcc.spiffe);
    assert_eq!(out.client.unwrap(), fcs.spiffe);
    assert_eq!(fcc.spiffe.to_string(), ca.uri("fcc"));

    // The second connection resumes the session, and the server still
    // knows who the client is (the inbound sidecar authorizes on it).
    let again = connect(server, client).await;
    assert!(again.client_resumed, "session resumption is on");
    assert_eq!(again.server.unwrap(), fcc.spiffe);
}

#[tokio::test]
async fn server_refuses_a_client_from_another_ca() {
    let (ca, rogue) = (TestCa::new("dc1"), TestCa::new("rogue"));
    let server = server_config(&ca.leaf("fcs"), &ca.bundle()).unwrap();
    // The rogue client trusts our CA, so only the server can refuse.
    let client = client_config(&rogue.leaf("fcc"), &ca.bundle(), "fcs").unwrap();
    let out = connect(server, client).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn server_refuses_a_client_of_another_trust_domain_even_from_its_ca() {
    let ca = TestCa::new("dc1");
    let stranger = ca.leaf_with(
        &["spiffe://other.consul/ns/default/dc/dc1/svc/fcc".to_owned()],
        (2000, 4000),
    );
    let server = server_config(&ca.leaf("fcs"), &ca.bundle()).unwrap();
    let client = client_config(&stranger, &ca.bundle(), "fcs").unwrap();
    let err = connect(server, client).await.server.unwrap_err();
    assert!(err.contains("outside trust domain"), "{err}");
}

#[tokio::test]
async fn client_refuses_a_server_that_is_not_the_service_it_dialled() {
    let ca = TestCa::new("dc1");
    let server = server_config(&ca.leaf("fcc"), &ca.bundle()).unwrap();
    let client = client_config(&ca.leaf("fcc"), &ca.bundle(), "fcs").unwrap();
    let out = connect(server, client).await;
    let err = out.client.unwrap_err();
    assert!(
        err.contains(&format!(
            "server is {}, expected service fcs",
            ca.uri("fcc")
        )),
        "{err}"
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn expired_leaves_are_refused_on_both_sides() {
    let ca = TestCa::new("dc1");
    let server = server_config(&ca.leaf("fcs"), &ca.bundle()).unwrap();
    let client = client_config(&ca.expired_leaf("fcc"), &ca.bundle(), "fcs").unwrap();
    let err = connect(server, client).await.server.unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");

    let server = server_config(&ca.expired_leaf("fcs"), &ca.bundle()).unwrap();
    let client = client_config(&ca.leaf("fcc"), &ca.bundle(), "fcs").unwrap();
    let err = connect(server, client).await.client.unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");
}

#[tokio::test]
async fn server_refuses_a_client_without_a_certificate() {
    let ca = TestCa::new("dc1");
    let server = server_config(&ca.leaf("fcs"), &ca.bundle()).unwrap();
    let verifier = Arc::new(ServerChainVerifier {
        roots: ca.bundle().root_store().unwrap(),
        provider: provider(),
        check: spiffe_check(ca.trust_domain.clone(), "fcs".to_owned()),
    });
    let anonymous = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let out = connect(server, Arc::new(anonymous)).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("peer sent no certificates"), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn server_answers_a_tls12_only_hello_with_a_fatal_alert() {
    let ca = TestCa::new("dc1");
    let acceptor = TlsAcceptor::from(server_config(&ca.leaf("fcs"), &ca.bundle()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.map(|_| ())
    });
    // This build of rustls has no TLS 1.2 client, so the hello is written
    // by hand: TLS 1.2, one ECDHE-ECDSA AES-128-GCM suite, no
    // supported_versions extension.
    let mut hello_body = vec![0x03, 0x03];
    hello_body.extend([7u8; 32]); // random
    hello_body.push(0); // no session id
    hello_body.extend([0x00, 0x02, 0xc0, 0x2b]); // cipher suites
    hello_body.extend([0x01, 0x00]); // null compression
    hello_body.extend([0x00, 0x00]); // no extensions
    let mut handshake = vec![0x01, 0x00];
    handshake.extend(u16::try_from(hello_body.len()).unwrap().to_be_bytes());
    handshake.extend(hello_body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    tcp.flush().await.unwrap();
    let mut alert = [0u8; 7];
    clock::timeout(Duration::from_secs(10), tcp.read_exact(&mut alert))
        .await
        .unwrap()
        .unwrap();
    // A fatal (2) alert record (21): handshake_failure (40), since no
    // TLS 1.3 parameters are offered, or protocol_version (70).
    assert_eq!((alert[0], alert[5]), (21, 2), "{alert:?}");
    assert!([40, 70].contains(&alert[6]), "{alert:?}");
    assert!(server.await.unwrap().is_err());
}

#[test]
fn peer_spiffe_wants_exactly_one_service_spiffe_uri() {
    let ca = TestCa::new("dc1");
    let read = |uris: &[String]| {
        let (cert, key) = ca.leaf_pems(uris, (2000, 4000));
        Identity::from_pem(&cert, &key).map(|id| id.spiffe)
    };
    assert_eq!(read(&[ca.uri("fcs")]).unwrap().service, "fcs");
    let no_san = read(&[]).unwrap_err();
    assert_eq!(no_san.to_string(), "peer certificate has no SPIFFE URI SAN");
    let web_only = read(&["https://fcs.example/".to_owned()]).unwrap_err();
    assert!(matches!(web_only, TlsError::NoSpiffe), "{web_only}");
    let two = read(&[ca.uri("fcs"), ca.uri("fcc")]).unwrap_err();
    assert!(matches!(two, TlsError::ManySpiffe(2)), "{two}");
    let agent = read(&[format!(
        "spiffe://{}/agent/client/dc/dc1/id/x",
        ca.trust_domain
    )])
    .unwrap_err();
    assert!(matches!(agent, TlsError::BadSpiffe(_)), "{agent}");
}

#[test]
fn pem_input_errors_say_what_is_missing() {
    let ca = TestCa::new("dc1");
    let (cert, key) = ca.leaf_pems(&[ca.uri("fcs")], (2000, 4000));
    assert!(matches!(
        Identity::from_pem("", &key),
        Err(TlsError::NoCertificate)
    ));
    let no_key = Identity::from_pem(&cert, "").unwrap_err();
    assert!(no_key.to_string().contains("private key"), "{no_key}");
    assert!(matches!(
        TrustBundle::from_pems(&[], "td.consul"),
        Err(TlsError::NoRoots)
    ));
}

#[test]
fn identity_debug_never_shows_the_key() {
    let ca = TestCa::new("dc1");
    let (cert, key) = ca.leaf_pems(&[ca.uri("fcs")], (2000, 4000));
    let id = Identity::from_pem(&cert, &key).unwrap();
    let shown = format!("{id:?}");
    assert!(
        shown.contains("<redacted>") && shown.contains("fcs"),
        "{shown}"
    );
    let key_body: String = key.lines().nth(1).unwrap().chars().take(20).collect();
    assert!(!shown.contains(&key_body));
}
