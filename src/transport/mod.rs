//! Listeners: TCP (plain or TLS) and unix sockets, merged into one stream of
//! connections for the gRPC server. Each connection carries a [`PeerInfo`]
//! (transport, remote address, client-certificate subject) that tonic puts
//! into every request's extensions.

mod limits;
mod tls;
mod unix;

use std::{
    fmt, io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::mpsc,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::Connected;

pub use limits::{
    Activity, ConnectionLimits, LogLimiter, RequestGuard, DEFAULT_FIRST_REQUEST_TIMEOUT,
    DEFAULT_IDLE_CONNECTION_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
};
use limits::{IdleTimer, Slot, Slots, Source};
pub use tls::{Tls, TlsFiles};
pub use unix::SocketFile;

/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("unix socket {path}: {message}")]
    Socket { path: String, message: String },
    #[error("TLS: {0}")]
    Tls(String),
}

/// Where to listen: `host:port` or `unix:/path/to.sock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "unix: needs a socket path, e.g. unix:/run/consentd/consentd.sock".into(),
                );
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        parse_tcp_addr(s)
            .map(ListenAddr::Tcp)
            .map_err(|e| format!("{e}, nor unix:/path"))
    }
}

/// A TCP address to listen on: `IP:PORT`, or `localhost:PORT` (the IPv4
/// loopback, 127.0.0.1). Other host names are refused rather than resolved:
/// a name can stand for several addresses, a listener is one. The error
/// says what was expected, with an example built from the input.
pub fn parse_tcp_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    let example = match s.parse::<u16>() {
        Ok(port) => {
            format!("127.0.0.1:{port} to listen on loopback, 0.0.0.0:{port} on every interface")
        }
        Err(_) => "127.0.0.1:50051, [::1]:50051, localhost:50051".to_owned(),
    };
    Err(format!(
        "{s:?} is not an IP address with a port (e.g. {example})"
    ))
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Unix,
}

/// What the server knows about the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub transport: Transport,
    pub remote: Option<SocketAddr>,
    /// The identities of the verified client certificate (mTLS).
    pub cert: Option<Arc<crate::auth::CertIdentity>>,
    /// The connection's open requests, for its idle timer.
    pub activity: Arc<Activity>,
}

impl PeerInfo {
    /// What log lines show of the peer, formatted only when one is written.
    pub fn label(&self) -> PeerLabel {
        PeerLabel(Some((self.transport, self.remote)))
    }
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.label().fmt(f)
    }
}

/// A peer as log lines name it (`127.0.0.1:5000 (tcp)`, `unix socket`); the
/// default is an unknown peer. Copying it costs nothing, so a call keeps one
/// for the log lines it may write instead of formatting its peer up front.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerLabel(Option<(Transport, Option<SocketAddr>)>);

impl fmt::Display for PeerLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((transport, remote)) = self.0 else {
            return f.write_str("unknown peer");
        };
        match (transport, remote) {
            (Transport::Unix, _) => f.write_str("unix socket"),
            (t, Some(a)) => write!(
                f,
                "{a} ({})",
                if t == Transport::Tls { "tls" } else { "tcp" }
            ),
            (_, None) => f.write_str("unknown peer"),
        }
    }
}

enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// One accepted connection: its place among the connection slots and its
/// idle timer go with it.
pub struct Connection {
    io: Io,
    peer: PeerInfo,
    timer: IdleTimer,
    log: Arc<LogLimiter>,
    _slot: Slot,
}

/// What every accept loop of one daemon shares.
#[derive(Clone)]
struct Admission {
    slots: Arc<Slots>,
    limits: ConnectionLimits,
    /// Rate limit of the log lines about refused and closed connections.
    log: Arc<LogLimiter>,
}

impl Admission {
    /// A slot for a connection from `source`, or `None` (logged, rate
    /// limited): the caller drops the connection at once.
    fn admit(&self, source: Source) -> Option<Slot> {
        match self.slots.try_acquire(source) {
            Ok(slot) => Some(slot),
            Err(refused) => {
                if let Some(suppressed) = self.log.admit() {
                    tracing::warn!(%source, reason = %refused, suppressed, "connection refused");
                }
                None
            }
        }
    }

    fn connection(&self, io: Io, peer: PeerInfo, slot: Slot) -> Connection {
        Connection {
            timer: IdleTimer::new(peer.activity.clone(), &self.limits),
            log: self.log.clone(),
            io,
            peer,
            _slot: slot,
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            Io::Tcp($io) => {
                let $io = Pin::new($io);
                $e
            }
            Io::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
            Io::Unix($io) => {
                let $io = Pin::new($io);
                $e
            }
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Reads are always pending on an idle connection: the timer that
        // closes it is polled with them.
        if let Some(reason) = self.timer.poll_expired(cx) {
            let peer = self.peer.to_string();
            if let Some(suppressed) = self.log.admit() {
                tracing::info!(%peer, reason, suppressed, "connection closed");
            }
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, reason)));
        }
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
            Io::Unix(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// A bound listener, before it accepts.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

impl Listener {
    /// Binds `addr`; a unix socket gets `mode` and replaces a stale file.
    pub async fn bind(addr: &ListenAddr, unix_mode: u32) -> Result<Listener, TransportError> {
        match addr {
            ListenAddr::Tcp(a) => TcpListener::bind(a)
                .await
                .map(Listener::Tcp)
                .map_err(|source| TransportError::Bind {
                    addr: addr.to_string(),
                    source,
                }),
            ListenAddr::Unix(path) => {
                let (listener, file) = unix::bind(path, unix_mode)?;
                Ok(Listener::Unix(listener, file))
            }
        }
    }

    /// The address actually bound (the real port for port 0).
    pub fn local_addr(&self) -> Result<ListenAddr, TransportError> {
        match self {
            Listener::Tcp(l) => {
                l.local_addr()
                    .map(ListenAddr::Tcp)
                    .map_err(|source| TransportError::Bind {
                        addr: "tcp".into(),
                        source,
                    })
            }
            Listener::Unix(_, file) => Ok(ListenAddr::Unix(file.path().to_owned())),
        }
    }
}

/// Accepts on every listener until `stop`, handing connections to the
/// returned stream. Each connection first takes a slot (global and per
/// source caps; refused ones are closed at once); TLS handshakes run in
/// their own tasks (bounded by a timeout) so a slow client cannot hold up
/// others; all tasks belong to `tasks`.
pub fn accept_all(
    listeners: Vec<Listener>,
    tls: Option<Arc<Tls>>,
    limits: &ConnectionLimits,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> ReceiverStream<io::Result<Connection>> {
    let (max, per_source) = limits.effective();
    if max < limits.max_connections || per_source < limits.max_per_source {
        tracing::info!(
            max_connections = max,
            max_connections_per_source = per_source,
            "connection caps lowered to fit the open-file limit (less {} reserved) and to half the total per source",
            limits::RESERVED_FDS
        );
    }
    let admission = Admission {
        slots: Slots::new(max, per_source),
        limits: limits.clone(),
        log: Arc::new(LogLimiter::default()),
    };
    let (tx, rx) = mpsc::channel(64);
    for listener in listeners {
        let tx = tx.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        let handshakes = tasks.clone();
        let admission = admission.clone();
        tasks.spawn(async move {
            match listener {
                Listener::Tcp(l) => accept_tcp(l, tls, admission, tx, stop, handshakes).await,
                Listener::Unix(l, _file) => accept_unix(l, admission, tx, stop).await,
            }
        });
    }
    ReceiverStream::new(rx)
}

/// Accept errors (e.g. out of file descriptors) are logged (rate limited)
/// and retried after a pause instead of ending the listener.
async fn pause_after(error: &io::Error, log: &LogLimiter, stop: &CancellationToken) {
    if let Some(suppressed) = log.admit() {
        tracing::warn!(%error, suppressed, "accept failed; retrying in 100 ms");
    }
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
}

async fn accept_tcp(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    admission: Admission,
    tx: mpsc::Sender<io::Result<Connection>>,
    stop: CancellationToken,
    handshakes: TaskTracker,
) {
    loop {
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { pause_after(&e, &admission.log, &stop).await; continue; }
            },
        };
        let Some(slot) = admission.admit(Source::Ip(remote.ip())) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                let peer = PeerInfo {
                    transport: Transport::Tcp,
                    remote: Some(remote),
                    cert: None,
                    activity: Activity::new(),
                };
                let conn = admission.connection(Io::Tcp(stream), peer, slot);
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let tx = tx.clone();
                let stop = stop.clone();
                let admission = admission.clone();
                handshakes.spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let stream = tokio::select! {
                        () = stop.cancelled() => return,
                        done = handshake => match done {
                            Ok(Ok(s)) => s,
                            Ok(Err(error)) => {
                                if let Some(suppressed) = admission.log.admit() {
                                    tracing::info!(%remote, %error, suppressed, "TLS handshake failed");
                                }
                                return;
                            }
                            Err(_) => {
                                if let Some(suppressed) = admission.log.admit() {
                                    tracing::info!(%remote, suppressed, "TLS handshake timed out");
                                }
                                return;
                            }
                        },
                    };
                    let peer = PeerInfo {
                        transport: Transport::Tls,
                        remote: Some(remote),
                        cert: tls::peer_identity(&stream),
                        activity: Activity::new(),
                    };
                    let conn = admission.connection(Io::Tls(Box::new(stream)), peer, slot);
                    let _ = tx.send(Ok(conn)).await;
                });
            }
        }
    }
}

async fn accept_unix(
    listener: UnixListener,
    admission: Admission,
    tx: mpsc::Sender<io::Result<Connection>>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => { pause_after(&e, &admission.log, &stop).await; continue; }
            },
        };
        let source = stream
            .peer_cred()
            .map_or(Source::Unknown, |c| Source::Uid(c.uid()));
        let Some(slot) = admission.admit(source) else {
            drop(stream);
            continue;
        };
        let peer = PeerInfo {
            transport: Transport::Unix,
            remote: None,
            cert: None,
            activity: Activity::new(),
        };
        let conn = admission.connection(Io::Unix(stream), peer, slot);
        if tx.send(Ok(conn)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "127.0.0.1:1".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:1".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/c.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/run/c.sock".into()))
        );
        assert!("unix:"
            .parse::<ListenAddr>()
            .unwrap_err()
            .contains("socket path"));
        assert_eq!(
            "localhost:50055".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:50055".parse().unwrap()))
        );
        assert!("example.com:1"
            .parse::<ListenAddr>()
            .unwrap_err()
            .contains("not an IP address with a port"));
        assert!(parse_tcp_addr("9464")
            .unwrap_err()
            .contains("127.0.0.1:9464"));
        assert_eq!(ListenAddr::Unix("/x".into()).to_string(), "unix:/x");
    }
}
