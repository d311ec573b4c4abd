//! Handshakes on loopback between real sockets: who gets in, who does not.

use super::*;
use crate::rpc::{read_message, write_message, RpcResponse};
use mesh_core::agent_tls::{create_ca, create_cert, CaRequest, CertAndKey, CertKind, CertRequest};
use mesh_core::wire::{Response, RpcError};
use std::time::SystemTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

fn ca() -> CertAndKey {
    create_ca(
        &CaRequest {
            domain: "consul".into(),
            days: 30,
            common_name: None,
            name_constraint: false,
            additional_constraints: Vec::new(),
        },
        SystemTime::now(),
    )
    .unwrap()
}

fn cert(ca: &CertAndKey, kind: CertKind) -> CertAndKey {
    let req = CertRequest {
        kind,
        datacenter: "dc1".into(),
        domain: "consul".into(),
        node: None,
        additional_dns: Vec::new(),
        additional_ips: Vec::new(),
        days: 30,
    };
    create_cert(&ca.cert_pem, ca.key_pem.expose(), &req, SystemTime::now()).unwrap()
}

fn config(ca: &CertAndKey, own: Option<&CertAndKey>) -> RpcTlsConfig {
    RpcTlsConfig {
        ca_pem: Some(ca.cert_pem.clone()),
        cert_pem: own.map(|c| c.cert_pem.clone()),
        key_pem: own.map(|c| c.key_pem.clone()),
        verify_incoming: true,
        verify_outgoing: true,
        verify_server_hostname: true,
        server_name: "server.dc1.consul".into(),
        auto_encrypt: AutoEncrypt::Off,
    }
}

/// An agent without a certificate that dials over TLS.
fn client_only(ca: &CertAndKey) -> RpcTlsConfig {
    RpcTlsConfig {
        verify_incoming: false,
        ..config(ca, None)
    }
}

/// A server that answers every request `Done` unless its TLS refuses it,
/// and reports each connection's role.
async fn server(
    tls: impl Into<Arc<RpcTls>>,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<Result<PeerRole, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let tls = tls.into();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tls.accept(tcp).await {
                    Ok(Some((mut stream, role))) => {
                        let _ = tx.send(Ok(role));
                        while let Ok(Some(req)) = read_message::<_, RpcRequest>(&mut stream).await {
                            let resp: RpcResponse = match tls.refusal(&req, role) {
                                Some(why) => Response::Error(RpcError::Rejected(why)),
                                None => Response::Done,
                            };
                            write_message(&mut stream, &resp).await.unwrap();
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn call(tls: &RpcTls, addr: &str, req: &RpcRequest) -> io::Result<RpcResponse> {
    let tcp = TcpStream::connect(addr).await?;
    let mut stream = tls.connect(tcp).await?;
    write_message(&mut stream, req).await?;
    read_message(&mut stream)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed"))
}

/// A plaintext connection to `addr` that has sent a status request.
async fn plaintext_status(addr: &str) -> TcpStream {
    let mut plain = TcpStream::connect(addr).await.unwrap();
    write_message(&mut plain, &RpcRequest::Status)
        .await
        .unwrap();
    plain
}

fn join_request() -> RpcRequest {
    Request::PreVote {
        to: 1,
        last_log: None,
    }
}

#[tokio::test]
async fn servers_talk_and_client_certs_cannot_speak_for_servers() {
    let ca = ca();
    let server_cert = cert(&ca, CertKind::Server);
    let client_cert = cert(&ca, CertKind::Client);
    let (addr, mut roles) = server(RpcTls::new(&config(&ca, Some(&server_cert))).unwrap()).await;

    let peer = RpcTls::new(&config(&ca, Some(&server_cert))).unwrap();
    assert!(matches!(
        call(&peer, &addr, &join_request()).await.unwrap(),
        Response::Done
    ));
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Server));

    let agent = RpcTls::new(&config(&ca, Some(&client_cert))).unwrap();
    assert!(matches!(
        call(&agent, &addr, &Request::Status).await.unwrap(),
        Response::Done
    ));
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Agent));
    match call(&agent, &addr, &join_request()).await.unwrap() {
        Response::Error(RpcError::Rejected(why)) => {
            assert!(why.contains("server.dc1.consul"), "{why}")
        }
        other => panic!("a client certificate sent a server-only request: {other:?}"),
    }
}

/// A status request over an open connection.
async fn status(s: &mut RpcStream) -> io::Result<Option<RpcResponse>> {
    write_message(s, &RpcRequest::Status).await?;
    read_message(s).await
}

#[tokio::test]
async fn a_reload_moves_new_connections_to_the_new_settings_and_keeps_established_ones() {
    let (old_ca, new_ca) = (ca(), ca());
    let tls =
        Arc::new(RpcTls::new(&config(&old_ca, Some(&cert(&old_ca, CertKind::Server)))).unwrap());
    let (addr, mut roles) = server(tls.clone()).await;
    let old_peer = RpcTls::new(&config(&old_ca, Some(&cert(&old_ca, CertKind::Server)))).unwrap();
    let new_peer = RpcTls::new(&config(&new_ca, Some(&cert(&new_ca, CertKind::Server)))).unwrap();

    let mut established = old_peer
        .connect(TcpStream::connect(&addr).await.unwrap())
        .await
        .unwrap();
    assert!(matches!(
        status(&mut established).await,
        Ok(Some(Response::Done))
    ));
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Server));
    assert!(call(&new_peer, &addr, &Request::Status).await.is_err());
    assert!(roles.recv().await.unwrap().is_err());

    // The operator replaced the CA and the certificate, then reloaded.
    tls.adopt(&RpcTls::new(&config(&new_ca, Some(&cert(&new_ca, CertKind::Server)))).unwrap());

    assert!(matches!(
        call(&new_peer, &addr, &Request::Status).await.unwrap(),
        Response::Done
    ));
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Server));
    assert!(call(&old_peer, &addr, &Request::Status).await.is_err());
    assert!(roles.recv().await.unwrap().is_err());
    // Opened before the reload: it keeps going.
    assert!(matches!(
        status(&mut established).await,
        Ok(Some(Response::Done))
    ));
    // And the dialing side changed too: the server dials with its new
    // certificate, which a peer on the new CA accepts.
    let (new_addr, mut new_roles) =
        server(RpcTls::new(&config(&new_ca, Some(&cert(&new_ca, CertKind::Server)))).unwrap())
            .await;
    assert!(matches!(
        call(&tls, &new_addr, &Request::Status).await.unwrap(),
        Response::Done
    ));
    assert_eq!(new_roles.recv().await.unwrap(), Ok(PeerRole::Server));
}

#[tokio::test]
async fn peers_without_a_valid_certificate_are_refused() {
    let ca = ca();
    let server_cert = cert(&ca, CertKind::Server);
    let (addr, mut roles) = server(RpcTls::new(&config(&ca, Some(&server_cert))).unwrap()).await;

    // Plaintext, where verify_incoming requires TLS.
    let mut plain = plaintext_status(&addr).await;
    let refusal = roles.recv().await.unwrap().unwrap_err();
    assert!(refusal.contains("plaintext RPC refused"), "{refusal}");
    assert!(read_message::<_, RpcResponse>(&mut plain)
        .await
        .unwrap_or(None)
        .is_none());

    // TLS without a client certificate.
    let anonymous = RpcTls::new(&client_only(&ca)).unwrap();
    let result = call(&anonymous, &addr, &Request::Status).await;
    assert!(result.is_err(), "{result:?}");
    assert!(roles.recv().await.unwrap().is_err());

    // A certificate from another CA: both sides refuse.
    let other_ca = self::ca();
    let stranger = cert(&other_ca, CertKind::Server);
    let rogue = RpcTls::new(&config(&other_ca, Some(&stranger))).unwrap();
    assert!(call(&rogue, &addr, &Request::Status).await.is_err());
    assert!(roles.recv().await.unwrap().is_err());

    // A server whose certificate does not name a server, for a client that
    // verifies server hostnames.
    let client_cert = cert(&ca, CertKind::Client);
    let (fake_addr, _fake_roles) =
        server(RpcTls::new(&config(&ca, Some(&client_cert))).unwrap()).await;
    let agent = RpcTls::new(&config(&ca, Some(&client_cert))).unwrap();
    let err = call(&agent, &fake_addr, &Request::Status)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn without_verify_incoming_plaintext_and_tls_share_the_port() {
    let ca = ca();
    let server_cert = cert(&ca, CertKind::Server);
    let mut relaxed = config(&ca, Some(&server_cert));
    relaxed.verify_incoming = false;
    let (addr, mut roles) = server(RpcTls::new(&relaxed).unwrap()).await;

    let mut plain = plaintext_status(&addr).await;
    let resp: RpcResponse = read_message(&mut plain).await.unwrap().unwrap();
    assert!(matches!(resp, Response::Done), "{resp:?}");
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Anonymous));

    let anonymous = RpcTls::new(&client_only(&ca)).unwrap();
    assert!(matches!(
        call(&anonymous, &addr, &Request::Status).await.unwrap(),
        Response::Done
    ));
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Anonymous));

    // A connection that closes at once costs nothing and reports nothing.
    let mut quiet = TcpStream::connect(&addr).await.unwrap();
    quiet.shutdown().await.unwrap();
    drop(quiet);
    let tls_peer = RpcTls::new(&config(&ca, Some(&server_cert))).unwrap();
    assert!(matches!(
        call(&tls_peer, &addr, &join_request()).await.unwrap(),
        Response::Done
    ));
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Server));
}

#[test]
fn inconsistent_settings_are_refused_with_the_reason() {
    let ca = ca();
    let server_cert = cert(&ca, CertKind::Server);
    let mut no_ca = config(&ca, Some(&server_cert));
    no_ca.ca_pem = None;
    assert!(RpcTls::new(&no_ca).unwrap_err().contains("no ca_file"));

    let mut half = config(&ca, Some(&server_cert));
    half.key_pem = None;
    assert!(RpcTls::new(&half).unwrap_err().contains("key_file is not"));

    let mut garbage = config(&ca, Some(&server_cert));
    garbage.ca_pem = Some("not a pem".into());
    assert!(RpcTls::new(&garbage).unwrap_err().contains("ca_file"));

    let other = cert(&ca, CertKind::Client);
    let mut mismatched = config(&ca, Some(&server_cert));
    mismatched.key_pem = Some(other.key_pem.clone());
    let err = RpcTls::new(&mismatched).unwrap_err();
    assert!(err.contains("cert_file and key_file"), "{err}");

    // An agent without its own certificate cannot require them of others.
    let no_cert = config(&ca, None);
    assert!(RpcTls::new(&no_cert)
        .unwrap_err()
        .contains("verify_incoming"));
    let key_text = format!("{:?}", config(&ca, Some(&server_cert)));
    assert!(!key_text.contains("PRIVATE KEY"), "{key_text}");
}

#[tokio::test]
async fn a_connection_that_says_nothing_is_dropped_after_the_handshake_timeout() {
    let ca = ca();
    let server_cert = cert(&ca, CertKind::Server);
    let (addr, mut roles) = server(RpcTls::new(&config(&ca, Some(&server_cert))).unwrap()).await;
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // The server's first-byte read gives up after HANDSHAKE_TIMEOUT (5 s,
    // real time) and closes the connection.
    let refusal = roles.recv().await.unwrap().unwrap_err();
    assert!(
        refusal.contains("no request and no TLS handshake"),
        "{refusal}"
    );
    assert!(started.elapsed() >= HANDSHAKE_TIMEOUT, "dropped too early");
    let mut byte = [0u8; 1];
    let closed = tokio::io::AsyncReadExt::read(&mut silent, &mut byte).await;
    assert!(matches!(closed, Ok(0)) || closed.is_err(), "{closed:?}");
}

/// auto_encrypt on the RPC port. A server with `allow_tls` lets a TLS peer
/// without a certificate through the handshake for `SignAgentCert` and
/// nothing else. A certificate the Connect CA signed (trusted once the
/// server has the roots) makes an agent, never a server, even one that
/// names the server. A client presents the certificate it was given from
/// its next connection on. A server without `allow_tls` refuses a peer
/// without a certificate at the handshake.
#[tokio::test]
async fn auto_encrypt_lets_agents_ask_for_a_certificate_and_nothing_more() {
    use mesh_core::connect::ca::{generate_leaf_key, generate_root, sign_agent_leaf};
    let day = std::time::Duration::from_secs(86_400);
    let ca = ca();
    let server_cert = cert(&ca, CertKind::Server);
    let signing = RpcTlsConfig {
        auto_encrypt: AutoEncrypt::SignsCertificates,
        ..config(&ca, Some(&server_cert))
    };
    let server_tls = Arc::new(RpcTls::new(&signing).unwrap());
    assert!(server_tls.signs_agent_certificates());
    assert_eq!(server_tls.server_name(), "server.dc1.consul");
    let root = generate_root("td.consul", 1, SystemTime::now(), 10 * day).unwrap();
    server_tls
        .trust_connect_roots(vec![root.root_cert_pem.clone()])
        .unwrap();
    let (addr, mut roles) = server(server_tls.clone()).await;
    let asking = RpcTlsConfig {
        auto_encrypt: AutoEncrypt::GetsCertificate,
        ..config(&ca, None)
    };
    let client = RpcTls::new(&asking).unwrap();
    let sign = Request::SignAgentCert {
        node: "fcs00".into(),
        datacenter: "dc1".into(),
        dns_san: Vec::new(),
        ip_san: Vec::new(),
        public_key_der: Vec::new(),
    };
    match call(&client, &addr, &Request::Status).await.unwrap() {
        Response::Error(RpcError::Rejected(why)) => {
            assert!(why.contains("may only ask for one"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Anonymous));
    assert!(matches!(
        call(&client, &addr, &sign).await.unwrap(),
        Response::Done
    ));
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Anonymous));

    let agent_cert = |node: &str, dns: &[String]| {
        let key = generate_leaf_key().unwrap();
        let leaf = sign_agent_leaf(
            &root,
            "dc1",
            node,
            dns,
            &[],
            &key.public_key_der,
            5,
            SystemTime::now(),
            day,
        )
        .unwrap();
        (leaf.cert_pem, key.key)
    };
    let (pem, key) = agent_cert("fcs00", &[]);
    client.use_identity(pem, key).unwrap();
    assert!(matches!(
        call(&client, &addr, &Request::Status).await.unwrap(),
        Response::Done
    ));
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Agent));

    let impostor = RpcTls::new(&asking).unwrap();
    let (pem, key) = agent_cert("evil", &["server.dc1.consul".to_string()]);
    impostor.use_identity(pem, key).unwrap();
    match call(&impostor, &addr, &join_request()).await.unwrap() {
        Response::Error(RpcError::Rejected(why)) => {
            assert!(why.contains("for servers only"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(roles.recv().await.unwrap(), Ok(PeerRole::Agent));

    // Without verify_server_hostname, a server that signs agent
    // certificates still keeps server-only requests to certificates from
    // the operator CA: anyone can get an agent certificate.
    let unnamed = Arc::new(
        RpcTls::new(&RpcTlsConfig {
            verify_server_hostname: false,
            ..signing.clone()
        })
        .unwrap(),
    );
    unnamed
        .trust_connect_roots(vec![root.root_cert_pem.clone()])
        .unwrap();
    let (loose, mut loose_roles) = server(unnamed).await;
    match call(&client, &loose, &join_request()).await.unwrap() {
        Response::Error(RpcError::Rejected(why)) => {
            assert!(why.contains("for servers only"), "{why}")
        }
        other => panic!("an agent certificate sent a join: {other:?}"),
    }
    assert_eq!(loose_roles.recv().await.unwrap(), Ok(PeerRole::Agent));
    let peer = RpcTls::new(&config(&ca, Some(&server_cert))).unwrap();
    assert!(matches!(
        call(&peer, &loose, &join_request()).await.unwrap(),
        Response::Done
    ));
    assert_eq!(loose_roles.recv().await.unwrap(), Ok(PeerRole::Server));

    let (strict, mut strict_roles) =
        server(RpcTls::new(&config(&ca, Some(&server_cert))).unwrap()).await;
    let fresh = RpcTls::new(&asking).unwrap();
    assert!(call(&fresh, &strict, &sign).await.is_err());
    assert!(strict_roles.recv().await.unwrap().is_err());
}

/// `auto_encrypt.tls` needs `ca_file` (the servers it asks must be
/// verified), and `allow_tls` the server's own certificate.
#[test]
fn auto_encrypt_settings_that_cannot_work_are_refused() {
    let ca = ca();
    let no_ca = RpcTlsConfig {
        ca_pem: None,
        auto_encrypt: AutoEncrypt::GetsCertificate,
        ..config(&ca, None)
    };
    let e = RpcTls::new(&no_ca).unwrap_err();
    assert!(e.contains("auto_encrypt.tls is set but no ca_file"), "{e}");
    let no_cert = RpcTlsConfig {
        verify_incoming: false,
        auto_encrypt: AutoEncrypt::SignsCertificates,
        ..config(&ca, None)
    };
    let e = RpcTls::new(&no_cert).unwrap_err();
    assert!(
        e.contains("auto_encrypt.allow_tls is set but no cert_file"),
        "{e}"
    );
}
