//! The data plane end to end on loopback:
//! client → outbound sidecar → mTLS → inbound sidecar → echo app.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::connect::spiffe::SpiffeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::pipe::{pipe, PipeEnd};
use super::*;
use crate::clock;
use crate::tls::test_ca::TestCa;

const WITHIN: Duration = Duration::from_secs(10);

fn material(ca: &TestCa, service: &str) -> Option<Arc<TlsMaterial>> {
    Some(Arc::new(TlsMaterial {
        identity: ca.leaf(service),
        bundle: ca.bundle(),
    }))
}

const HANDSHAKES_PER_PEER: usize = 8;

fn test_limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(5),
        dial_timeout: Duration::from_secs(1),
        max_handshakes_per_peer: HANDSHAKES_PER_PEER,
        ..Limits::default()
    }
}

/// An echo server that counts the connections it accepted.
struct EchoApp {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl EchoApp {
    async fn start() -> EchoApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tcp.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                                let _ = tcp.flush().await;
                            }
                        }
                    }
                    let _ = tcp.shutdown().await;
                });
            }
        });
        EchoApp {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// fcs's inbound sidecar in front of an echo app, fcc's outbound sidecar
/// in front of that, and the knobs to change what each side is fed.
struct Mesh {
    app: EchoApp,
    inbound_addr: SocketAddr,
    inbound_tls: watch::Sender<Option<Arc<TlsMaterial>>>,
    inbound_metrics: Arc<Metrics>,
    /// Every source the authorizer was asked about, in order.
    asked: Arc<Mutex<Vec<SpiffeId>>>,
    upstream_addr: SocketAddr,
    outbound_tls: watch::Sender<Option<Arc<TlsMaterial>>>,
    instances: watch::Sender<Vec<SocketAddr>>,
    outbound_metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.app.task.abort();
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Mesh {
    /// Both sidecars on leaves of `ca`; the inbound allows only sources
    /// `allow` says yes to.
    async fn start(
        ca: &TestCa,
        allow: impl Fn(&SpiffeId) -> Result<(), String> + Send + Sync + 'static,
    ) -> Mesh {
        let app = EchoApp::start().await;
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let authorize: Authorizer = Arc::new(move |source: &SpiffeId| {
            log.lock().unwrap().push(source.clone());
            allow(source)
        });

        let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbound_addr = inbound.local_addr().unwrap();
        let (inbound_tls, inbound_rx) = watch::channel(material(ca, "fcs"));
        let inbound_metrics = Arc::new(Metrics::default());
        let inbound_task = tokio::spawn(inbound::serve(
            inbound,
            inbound_rx,
            authorize,
            app.addr,
            test_limits(),
            inbound_metrics.clone(),
        ));

        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        let (outbound_tls, outbound_rx) = watch::channel(material(ca, "fcc"));
        let (instances, instances_rx) = watch::channel(vec![inbound_addr]);
        let outbound_metrics = Arc::new(Metrics::default());
        let outbound_task = tokio::spawn(outbound::serve_upstream(
            upstream,
            outbound_rx,
            "fcs".to_owned(),
            instances_rx,
            test_limits(),
            outbound_metrics.clone(),
        ));
        Mesh {
            app,
            inbound_addr,
            inbound_tls,
            inbound_metrics,
            asked,
            upstream_addr,
            outbound_tls,
            instances,
            outbound_metrics,
            tasks: vec![inbound_task, outbound_task],
        }
    }

    /// What fcc does: a plain connection to its local upstream port.
    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.upstream_addr).await.unwrap()
    }
}

/// Sends `msg` and reads the echo; `Err` if the connection ends first.
async fn echo(tcp: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    tcp.write_all(msg).await.map_err(|e| e.to_string())?;
    tcp.flush().await.map_err(|e| e.to_string())?;
    let mut back = vec![0u8; msg.len()];
    clock::timeout(WITHIN, tcp.read_exact(&mut back))
        .await
        .expect("an echo or an end within 10 s")
        .map_err(|e| e.to_string())?;
    assert_eq!(back, msg);
    Ok(())
}

/// Whether the connection is closed (EOF or reset) without a byte.
async fn closed_without_data(tcp: &mut TcpStream) -> bool {
    let _ = tcp.write_all(b"hello?").await;
    let _ = tcp.flush().await;
    let mut buf = [0u8; 16];
    match clock::timeout(WITHIN, tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("connection neither answered nor closed within 10 s"),
    }
}

#[tokio::test]
async fn bytes_round_trip_intact_and_half_close_still_gets_the_whole_echo() {
    let ca = TestCa::new("dc1");
    let mesh = Mesh::start(&ca, |_| Ok(())).await;

    tracing::info!("phase: 1 MiB through both sidecars, then half-close");
    let sent: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let tcp = mesh.connect().await;
    let (mut rd, mut wr) = tokio::io::split(tcp);
    let writer = async {
        wr.write_all(&sent).await.unwrap();
        wr.flush().await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = clock::timeout(WITHIN, futures::future::join(writer, reader))
        .await
        .expect("echo within 10 s");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "bytes changed on the way");

    let inbound = mesh.inbound_metrics.snapshot();
    let outbound = mesh.outbound_metrics.snapshot();
    assert_eq!(inbound.inbound_accepted, 1);
    assert_eq!(inbound.inbound_refused(), 0);
    assert_eq!(outbound.outbound_opened, 1);
    assert_eq!(outbound.bytes_in, sent.len() as u64);
    assert_eq!(outbound.bytes_out, sent.len() as u64);
    assert_eq!(
        mesh.asked.lock().unwrap().as_slice(),
        &[SpiffeId::service(&ca.trust_domain, "dc1", "fcc")]
    );
    assert_eq!(mesh.app.connections(), 1);
}

#[tokio::test]
async fn an_intention_denial_closes_the_connection_before_the_app_sees_it() {
    let ca = TestCa::new("dc1");
    let mesh = Mesh::start(&ca, |source| {
        Err(format!("intention {} => fcs is deny", source.service))
    })
    .await;
    let mut tcp = mesh.connect().await;
    assert!(closed_without_data(&mut tcp).await);
    assert_eq!(mesh.app.connections(), 0);
    let m = mesh.inbound_metrics.snapshot();
    assert_eq!((m.inbound_refused_intention, m.inbound_accepted), (1, 0));
    assert_eq!(m.bytes_in, 0);
}

#[tokio::test]
async fn a_client_with_a_leaf_from_another_ca_is_refused() {
    let (ca, rogue) = (TestCa::new("dc1"), TestCa::new("rogue"));
    let mesh = Mesh::start(&ca, |_| Ok(())).await;
    // The rogue trusts our roots, so only the inbound side can say no.
    mesh.outbound_tls.send_replace(Some(Arc::new(TlsMaterial {
        identity: rogue.leaf("fcc"),
        bundle: ca.bundle(),
    })));
    let mut tcp = mesh.connect().await;
    assert!(closed_without_data(&mut tcp).await);
    assert_eq!(mesh.app.connections(), 0);
    assert_eq!(mesh.inbound_metrics.snapshot().inbound_refused_handshake, 1);
    assert!(
        mesh.asked.lock().unwrap().is_empty(),
        "refused before the intentions"
    );
}

#[tokio::test]
async fn no_tls_material_yet_and_plaintext_clients_are_refused() {
    let ca = TestCa::new("dc1");
    let mesh = Mesh::start(&ca, |_| Ok(())).await;

    tracing::info!("phase: a plaintext client straight at the inbound port");
    let mut plain = TcpStream::connect(mesh.inbound_addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    plain.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = clock::timeout(WITHIN, plain.read_to_end(&mut answer))
        .await
        .expect("closed within 10 s");
    // At most rustls' alert record (content type 21) comes back.
    assert!(answer.is_empty() || answer[0] == 21, "{answer:?}");
    assert_eq!(mesh.inbound_metrics.snapshot().inbound_refused_handshake, 1);

    tracing::info!("phase: the inbound side has no leaf yet");
    mesh.inbound_tls.send_replace(None);
    let mut tcp = mesh.connect().await;
    assert!(closed_without_data(&mut tcp).await);
    assert_eq!(mesh.inbound_metrics.snapshot().inbound_refused_handshake, 2);
    // The outbound side saw its handshake cut off: no instance worked.
    assert_eq!(mesh.outbound_metrics.snapshot().outbound_failed, 1);

    tracing::info!("phase: the outbound side has no leaf yet");
    mesh.outbound_tls.send_replace(None);
    let mut tcp = mesh.connect().await;
    assert!(closed_without_data(&mut tcp).await);
    assert_eq!(mesh.outbound_metrics.snapshot().outbound_failed, 2);
    assert_eq!(mesh.inbound_metrics.snapshot().inbound_refused_handshake, 2);
    assert_eq!(mesh.app.connections(), 0);
}

/// Log lines written while the guard lives, on this thread (the tests'
/// runtime runs every task on it).
struct CapturedLog {
    text: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl CapturedLog {
    fn start() -> CapturedLog {
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = text.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || CaptureWriter(sink.clone()))
            .finish();
        CapturedLog {
            text,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.text.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_flood_of_refused_connections_logs_a_burst_and_counts_every_one() {
    let log = CapturedLog::start();
    let ca = TestCa::new("dc1");
    let mesh = Mesh::start(&ca, |_| Ok(())).await;
    const FLOOD: u64 = 4 * crate::log_limit::BURST as u64;
    let started = std::time::Instant::now();
    for _ in 0..FLOOD {
        let mut plain = TcpStream::connect(mesh.inbound_addr).await.unwrap();
        plain.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        // The sidecar logs (or not) before it closes the connection.
        let _ = clock::timeout(WITHIN, plain.read_to_end(&mut answer))
            .await
            .expect("closed within 10 s");
    }
    assert_eq!(
        mesh.inbound_metrics.snapshot().inbound_refused_handshake,
        FLOOD,
        "every refusal is counted"
    );
    let lines = log.lines_with("sidecar inbound connection refused");
    // One window's burst; two if a very slow machine took longer than a
    // window over the flood. Never one line per connection.
    let windows = if started.elapsed() < crate::log_limit::WINDOW {
        1
    } else {
        2
    };
    assert!(
        !lines.is_empty() && lines.len() <= windows * crate::log_limit::BURST as usize,
        "at most {windows} window(s) of lines, not one per connection: {lines:#?}"
    );
    if windows == 1 {
        assert_eq!(lines.len(), crate::log_limit::BURST as usize, "{lines:#?}");
    }
    assert!(
        lines.iter().all(|l| l.contains("held_back=0")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_dead_first_instance_is_skipped_for_the_next() {
    let ca = TestCa::new("dc1");
    let mesh = Mesh::start(&ca, |_| Ok(())).await;
    let dead = {
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        gone.local_addr().unwrap()
    };
    mesh.instances.send_replace(vec![dead, mesh.inbound_addr]);
    // The first connection starts at the dead one, the second at the live
    // one: both get through.
    for _ in 0..2 {
        let mut tcp = mesh.connect().await;
        echo(&mut tcp, b"ping").await.unwrap();
    }
    let m = mesh.outbound_metrics.snapshot();
    assert_eq!((m.outbound_opened, m.outbound_failed), (2, 0));

    tracing::info!("phase: only dead instances");
    mesh.instances.send_replace(vec![dead]);
    let mut tcp = mesh.connect().await;
    assert!(closed_without_data(&mut tcp).await);
    assert_eq!(mesh.outbound_metrics.snapshot().outbound_failed, 1);
}

#[tokio::test]
async fn a_new_leaf_serves_new_connections_and_spares_open_ones() {
    let (old_ca, new_ca) = (TestCa::new("old"), TestCa::new("new"));
    let mesh = Mesh::start(&old_ca, |_| Ok(())).await;

    tracing::info!("phase: a connection opened on the old material");
    let mut open = mesh.connect().await;
    echo(&mut open, b"one").await.unwrap();

    tracing::info!("phase: the inbound side moves to a new CA alone");
    mesh.inbound_tls.send_replace(material(&new_ca, "fcs"));
    echo(&mut open, b"still here").await.unwrap();
    let mut stale = mesh.connect().await;
    assert!(
        closed_without_data(&mut stale).await,
        "a client on the old roots must not reach the new leaf"
    );

    tracing::info!("phase: the outbound side follows");
    let renewed = new_ca.leaf_with(
        &[format!(
            "spiffe://{}/ns/default/dc/dc2/svc/fcc",
            new_ca.trust_domain
        )],
        (2000, 4000),
    );
    mesh.outbound_tls.send_replace(Some(Arc::new(TlsMaterial {
        identity: renewed,
        bundle: new_ca.bundle(),
    })));
    let mut fresh = mesh.connect().await;
    echo(&mut fresh, b"two").await.unwrap();
    echo(&mut open, b"and still").await.unwrap();

    let asked = mesh.asked.lock().unwrap().clone();
    assert_eq!(
        asked
            .iter()
            .map(|id| id.datacenter.as_str())
            .collect::<Vec<_>>(),
        ["dc1", "dc2"],
        "the new connection presented the renewed leaf"
    );
    assert_eq!(mesh.inbound_metrics.snapshot().inbound_accepted, 2);
}

#[tokio::test]
async fn pipe_closes_both_sides_after_the_idle_timeout() {
    let (down, _down_peer) = tokio::io::duplex(64);
    let (up, _up_peer) = tokio::io::duplex(64);
    let metrics = Metrics::default();
    let started = clock::Instant::now();
    let stats = clock::timeout(
        WITHIN,
        pipe(down, up, 16, Duration::from_millis(200), &metrics),
    )
    .await
    .expect("the pipe gives up by itself");
    assert!(matches!(stats.end, PipeEnd::Idle), "{:?}", stats.end);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn pipe_with_a_small_buffer_carries_everything_both_ways() {
    let (down, mut client) = tokio::io::duplex(64);
    let (up, mut server) = tokio::io::duplex(64);
    let metrics = Metrics::default();
    let run = pipe(down, up, 7, Duration::from_secs(5), &metrics);
    let client_side = async {
        client.write_all(&[1u8; 1000]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, [2u8; 500]);
    };
    let server_side = async {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [1u8; 1000]);
        server.write_all(&[2u8; 500]).await.unwrap();
        server.shutdown().await.unwrap();
    };
    let peers = futures::future::join(client_side, server_side);
    let (stats, ((), ())) = clock::timeout(WITHIN, futures::future::join(run, peers))
        .await
        .unwrap();
    assert!(matches!(stats.end, PipeEnd::Closed), "{:?}", stats.end);
    assert_eq!((stats.bytes_in, stats.bytes_out), (1000, 500));
    let m = metrics.snapshot();
    assert_eq!((m.bytes_in, m.bytes_out), (1000, 500));
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn idle_connections_from_one_address_cannot_hold_every_handshake_slot() {
    let ca = TestCa::new("dc1");
    let mesh = Mesh::start(&ca, |_| Ok(())).await;

    tracing::info!("phase: an attacker opens connections and never says a word");
    let mut idle = Vec::new();
    for _ in 0..HANDSHAKES_PER_PEER {
        idle.push(connect_from("127.0.0.77", mesh.inbound_addr).await);
    }
    // Accepted and waiting in their handshakes (the accept loop is async).
    let t = std::time::Instant::now();
    while mesh.inbound_metrics.snapshot().inbound_refused_handshake == 0 {
        let mut extra = connect_from("127.0.0.77", mesh.inbound_addr).await;
        let mut buf = [0u8; 1];
        // One over the limit is closed at once, long before the handshake timeout.
        match clock::timeout(Duration::from_secs(2), extra.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            _ => idle.push(extra),
        }
        assert!(
            t.elapsed() < WITHIN,
            "no connection over the limit was refused"
        );
    }
    assert_eq!(idle.len(), HANDSHAKES_PER_PEER, "exactly the limit is held");
    assert_eq!(mesh.inbound_metrics.snapshot().inbound_refused_handshake, 1);

    tracing::info!("phase: everyone else still gets through");
    let mut tcp = mesh.connect().await;
    echo(&mut tcp, b"still served").await.unwrap();

    tracing::info!("phase: the attacker's slots come back when its connections go");
    drop(idle);
    let t = std::time::Instant::now();
    loop {
        let mut again = connect_from("127.0.0.77", mesh.inbound_addr).await;
        let mut buf = [0u8; 1];
        if clock::timeout(Duration::from_millis(300), again.read(&mut buf))
            .await
            .is_err()
        {
            break; // Held open in its handshake again: not refused.
        }
        assert!(t.elapsed() < WITHIN, "the slots never came back");
    }
}
