//! The client side of the wire: where the daemon is ([`Target`]), how to
//! reach it ([`ConnectOptions`]: TLS, mutual TLS, a bearer token, unix
//! sockets) and a channel that authenticates every call ([`ClientChannel`]).
//!
//! [`ClientChannel`] is the transport of the generated clients:
//!
//! ```ignore
//! let channel = consentd::client::connect(&ConnectOptions::new("unix:/run/consentd.sock")).await?;
//! let mut auth = consentd::pb::authorization_client::AuthorizationClient::new(channel);
//! ```
//!
//! Addresses: `unix:/path/to/sock` (or `unix:///abs/path`, or a relative
//! `unix:path`), `http://host:port`, `https://host:port`, and a bare
//! `host:port`, which means `http://` unless TLS options are given, then
//! `https://`. There are no built-in trust roots: TLS needs a CA certificate.

use std::{
    fmt,
    path::{Path, PathBuf},
    task::{Context, Poll},
    time::Duration,
};

use http::{header::AUTHORIZATION, HeaderValue, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use tonic::{
    body::Body,
    transport::{
        channel::ResponseFuture, Certificate, Channel, ClientTlsConfig, Endpoint, Identity,
    },
};
use tower::Service;

/// Where the daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// TCP; the scheme is `http` or `https` (TLS).
    Tcp { uri: Uri },
    /// A unix domain socket (plaintext only).
    Unix(PathBuf),
}

impl Target {
    /// Parses an address. `tls` says whether TLS options were given: a bare
    /// `host:port` then means `https://`, and plaintext-only addresses
    /// (`unix:`, `http://`) are refused.
    pub fn parse(addr: &str, tls: bool) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidAddress {
            addr: addr.to_owned(),
            reason,
        };
        if addr.trim().is_empty() {
            return Err(invalid("the address is empty".into()));
        }
        if let Some(rest) = strip_prefix_ignore_case(addr, "unix:") {
            let path = match rest.strip_prefix("//") {
                // unix:///abs/path; unix://host/... names no host we could reach.
                Some(abs) if abs.starts_with('/') => abs,
                Some("") => rest,
                Some(_) => {
                    return Err(invalid(
                        "unix:// must be followed by an absolute path (unix:///path/to/sock)"
                            .into(),
                    ))
                }
                None => rest,
            };
            if path.is_empty() || path == "//" {
                return Err(invalid(
                    "unix: needs a socket path (unix:/path/to/sock)".into(),
                ));
            }
            if tls {
                return Err(ClientError::TlsOverUnix {
                    addr: addr.to_owned(),
                });
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        let full = match addr.split_once("://") {
            Some((scheme, _)) => {
                if scheme.eq_ignore_ascii_case("http") {
                    if tls {
                        return Err(ClientError::TlsOverPlainHttp {
                            addr: addr.to_owned(),
                        });
                    }
                } else if !scheme.eq_ignore_ascii_case("https") {
                    return Err(ClientError::UnknownScheme {
                        addr: addr.to_owned(),
                        scheme: scheme.to_owned(),
                    });
                }
                addr.to_owned()
            }
            None => {
                // `name:rest` where rest is no port: a scheme we do not speak
                // (`dns:host`, `vsock:3:50051`, ...), not a host.
                if let Some((scheme, rest)) = addr.split_once(':') {
                    let is_port = rest.starts_with(|c: char| c.is_ascii_digit());
                    if !addr.starts_with('[') && !is_port && !scheme.is_empty() && !rest.is_empty()
                    {
                        return Err(ClientError::UnknownScheme {
                            addr: addr.to_owned(),
                            scheme: scheme.to_owned(),
                        });
                    }
                }
                let scheme = if tls { "https" } else { "http" };
                format!("{scheme}://{addr}")
            }
        };
        let uri: Uri = full.parse().map_err(|e| invalid(format!("{e}")))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("no host".into()));
        }
        // `Uri` accepts any digits as a port (and `port()` then says none).
        let authority = uri.authority().map_or("", |a| a.as_str());
        if let Some((_, port)) = authority.rsplit_once(':').filter(|(_, p)| !p.contains(']')) {
            if port.parse::<u16>().is_err() {
                return Err(invalid(format!("invalid port {port:?}")));
            }
        }
        Ok(Target::Tcp { uri })
    }

    /// Whether connecting uses TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Target::Tcp { uri } if uri.scheme_str() == Some("https"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { uri } => write!(f, "{uri}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// How to reach the daemon. `Debug` never prints the token.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// See [`Target::parse`].
    pub addr: String,
    /// Sent as `authorization: Bearer <token>` with every call.
    pub token: Option<String>,
    /// PEM file with the CA certificate(s) that verify the server.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The name to verify the server certificate against (and send as
    /// SNI) instead of the address's host.
    pub tls_domain: Option<String>,
    /// Limit on establishing the connection (and the TLS handshake).
    pub connect_timeout: Option<Duration>,
    /// Deadline of every call (leave unset for long-lived streams).
    pub timeout: Option<Duration>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_domain", &self.tls_domain)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ConnectOptions {
    /// Plaintext, no token, no timeouts.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            ..Self::default()
        }
    }

    /// Whether any TLS option is set.
    pub fn wants_tls(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_domain.is_some()
    }

    /// Checks the options against each other (no I/O) and parses the address.
    pub fn target(&self) -> Result<Target, ClientError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), None) => return Err(ClientError::CertWithoutKey { cert: cert.clone() }),
            (None, Some(key)) => return Err(ClientError::KeyWithoutCert { key: key.clone() }),
            _ => {}
        }
        let target = Target::parse(&self.addr, self.wants_tls())?;
        if target.is_tls() && self.tls_ca.is_none() {
            return Err(ClientError::MissingCa {
                addr: self.addr.clone(),
            });
        }
        Ok(target)
    }

    /// Reads and checks the PEM files.
    fn tls_config(&self) -> Result<ClientTlsConfig, ClientError> {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.tls_ca {
            let pem = read_pem(ca, "CA certificate")?;
            check_certificates(ca, "CA certificate", &pem)?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let cert_pem = read_pem(cert, "client certificate")?;
            check_certificates(cert, "client certificate", &cert_pem)?;
            let key_pem = read_pem(key, "client key")?;
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| ClientError::BadPem {
                what: "client key",
                path: key.clone(),
                reason: match e {
                    rustls_pki_types::pem::Error::NoItemsFound => {
                        "no PRIVATE KEY block found".into()
                    }
                    e => e.to_string(),
                },
            })?;
            config = config.identity(Identity::from_pem(cert_pem, key_pem));
        }
        if let Some(domain) = &self.tls_domain {
            config = config.domain_name(domain.clone());
        }
        if let Some(timeout) = self.connect_timeout {
            config = config.timeout(timeout);
        }
        Ok(config)
    }
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// At least one certificate, and every CERTIFICATE block decodes.
fn check_certificates(path: &Path, what: &'static str, pem: &[u8]) -> Result<(), ClientError> {
    let bad = |reason: String| ClientError::BadPem {
        what,
        path: path.to_owned(),
        reason,
    };
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| bad(e.to_string()))?;
        found += 1;
    }
    if found == 0 {
        return Err(bad("no CERTIFICATE block found".into()));
    }
    Ok(())
}

/// Connects (eagerly: an unreachable daemon is an error here, not at the
/// first call).
pub async fn connect(opts: &ConnectOptions) -> Result<ClientChannel, ClientError> {
    let target = opts.target()?;
    let authorization = opts.token.as_deref().map(authorization).transpose()?;
    let connect_failed = |source| ClientError::Connect {
        addr: opts.addr.clone(),
        source,
    };
    let channel = match target {
        Target::Tcp { uri } => {
            let https = uri.scheme_str() == Some("https");
            let mut endpoint = timeouts(Endpoint::from(uri), opts);
            if https {
                let tls = opts.tls_config()?;
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|source| ClientError::Tls {
                        addr: opts.addr.clone(),
                        client_cert: opts.tls_cert.clone(),
                        source,
                    })?;
            }
            endpoint.connect().await.map_err(connect_failed)?
        }
        Target::Unix(path) => {
            // The URI only fills in :authority; the connector ignores it.
            let endpoint = timeouts(Endpoint::from_static("http://localhost"), opts);
            endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(connect_failed)?
        }
    };
    Ok(ClientChannel {
        inner: channel,
        authorization,
    })
}

fn timeouts(mut endpoint: Endpoint, opts: &ConnectOptions) -> Endpoint {
    if let Some(t) = opts.connect_timeout {
        endpoint = endpoint.connect_timeout(t);
    }
    if let Some(t) = opts.timeout {
        endpoint = endpoint.timeout(t);
    }
    endpoint
}

/// `Bearer <token>`, marked sensitive (kept out of logs and HPACK tables).
fn authorization(token: &str) -> Result<HeaderValue, ClientError> {
    if token.is_empty() {
        return Err(ClientError::InvalidToken {
            reason: "it is empty",
        });
    }
    let invalid = ClientError::InvalidToken {
        reason: "it may only contain visible ASCII characters (no spaces or control characters)",
    };
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid);
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| invalid)?;
    value.set_sensitive(true);
    Ok(value)
}

/// A [`Channel`] that adds `authorization: Bearer <token>` to every request
/// (unless the request already carries an `authorization` header). Cheap to
/// clone; use it wherever the generated clients take a transport.
#[derive(Clone)]
pub struct ClientChannel {
    inner: Channel,
    authorization: Option<HeaderValue>,
}

impl ClientChannel {
    /// Wraps a channel built elsewhere. Fails only for a token that cannot
    /// be a header value (empty, or not visible ASCII).
    pub fn from_channel(channel: Channel, token: Option<String>) -> Result<Self, ClientError> {
        Ok(Self {
            inner: channel,
            authorization: token.as_deref().map(authorization).transpose()?,
        })
    }

    /// Whether calls carry a bearer token.
    pub fn has_token(&self) -> bool {
        self.authorization.is_some()
    }

    /// The underlying channel (no token added).
    pub fn channel(&self) -> &Channel {
        &self.inner
    }
}

impl fmt::Debug for ClientChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientChannel")
            .field("inner", &self.inner)
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Service<http::Request<Body>> for ClientChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .entry(AUTHORIZATION)
                .or_insert_with(|| value.clone());
        }
        Service::call(&mut self.inner, request)
    }
}

/// Why a client could not be set up. Every message names the address or
/// file at fault; none contains the token.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("bad address {addr:?}: unknown scheme {scheme:?} (expected unix:/path, http://host:port, https://host:port or host:port)")]
    UnknownScheme { addr: String, scheme: String },
    #[error("TLS options cannot be used with the unix socket address {addr:?} (TLS over unix sockets is not supported)")]
    TlsOverUnix { addr: String },
    #[error(
        "TLS options were given but {addr:?} is plain http://; use https://host:port or host:port"
    )]
    TlsOverPlainHttp { addr: String },
    #[error("{addr:?} uses TLS but no CA certificate was given to verify the server (--tls-ca); there are no built-in trust roots")]
    MissingCa { addr: String },
    #[error("the client certificate {} needs its private key (--tls-key)", .cert.display())]
    CertWithoutKey { cert: PathBuf },
    #[error("the client key {} needs its certificate (--tls-cert)", .key.display())]
    KeyWithoutCert { key: PathBuf },
    #[error("cannot read the {what} {}", .path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a usable PEM {what}: {reason}", .path.display())]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("invalid bearer token: {reason}")]
    InvalidToken { reason: &'static str },
    #[error("cannot set up TLS for {addr:?}{}", with_cert(.client_cert.as_deref()))]
    Tls {
        addr: String,
        /// Set when a client identity was configured (the usual culprit:
        /// a key that does not match the certificate).
        client_cert: Option<PathBuf>,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {addr:?}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

fn with_cert(cert: Option<&Path>) -> String {
    cert.map_or(String::new(), |c| {
        format!(" with the client certificate {}", c.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str, tls: bool) -> String {
        match Target::parse(addr, tls) {
            Ok(Target::Tcp { uri }) => uri.to_string(),
            other => panic!("{addr}: {other:?}"),
        }
    }

    fn unix(addr: &str) -> PathBuf {
        match Target::parse(addr, false) {
            Ok(Target::Unix(path)) => path,
            other => panic!("{addr}: {other:?}"),
        }
    }

    fn err(addr: &str, tls: bool) -> String {
        match Target::parse(addr, tls) {
            Err(e) => e.to_string(),
            Ok(t) => panic!("{addr} parsed as {t:?}"),
        }
    }

    #[test]
    fn tcp_addresses() {
        assert_eq!(tcp("127.0.0.1:50051", false), "http://127.0.0.1:50051/");
        assert_eq!(tcp("127.0.0.1:50051", true), "https://127.0.0.1:50051/");
        assert_eq!(tcp("[::1]:50051", false), "http://[::1]:50051/");
        assert_eq!(tcp("localhost:1", false), "http://localhost:1/");
        assert_eq!(tcp("localhost", false), "http://localhost/");
        assert_eq!(tcp("https://[::1]", false), "https://[::1]/");
        assert_eq!(tcp("http://h:1", false), "http://h:1/");
        assert_eq!(tcp("HTTP://h:1", false), "http://h:1/");
        assert_eq!(tcp("https://h:1", false), "https://h:1/");
        assert_eq!(tcp("https://h:1", true), "https://h:1/");
        assert!(Target::parse("https://h:1", false).unwrap().is_tls());
        assert!(!Target::parse("h:1", false).unwrap().is_tls());
    }

    #[test]
    fn unix_addresses() {
        assert_eq!(unix("unix:/run/c.sock"), Path::new("/run/c.sock"));
        assert_eq!(unix("unix:///run/c.sock"), Path::new("/run/c.sock"));
        assert_eq!(unix("unix:rel/c.sock"), Path::new("rel/c.sock"));
        assert_eq!(unix("UNIX:/x"), Path::new("/x"));
        assert_eq!(
            Target::Unix("/run/c.sock".into()).to_string(),
            "unix:/run/c.sock"
        );
        assert!(!Target::parse("unix:/x", false).unwrap().is_tls());
    }

    #[test]
    fn bad_addresses() {
        assert_eq!(
            err("unix:", false),
            r#"bad address "unix:": unix: needs a socket path (unix:/path/to/sock)"#
        );
        assert_eq!(
            err("unix://", false),
            r#"bad address "unix://": unix: needs a socket path (unix:/path/to/sock)"#
        );
        assert_eq!(
            err("unix://host/x", false),
            r#"bad address "unix://host/x": unix:// must be followed by an absolute path (unix:///path/to/sock)"#
        );
        assert_eq!(err("", false), r#"bad address "": the address is empty"#);
        assert!(matches!(
            Target::parse("grpc://h:1", false),
            Err(ClientError::UnknownScheme { scheme, .. }) if scheme == "grpc"
        ));
        assert_eq!(
            err("dns:h", false),
            r#"bad address "dns:h": unknown scheme "dns" (expected unix:/path, http://host:port, https://host:port or host:port)"#
        );
        assert_eq!(
            err("h:99999", false),
            r#"bad address "h:99999": invalid port "99999""#
        );
        assert_eq!(err("h:", false), r#"bad address "h:": invalid port """#);
        assert!(matches!(
            Target::parse("http://:1", false),
            Err(ClientError::InvalidAddress { .. })
        ));
    }

    #[test]
    fn tls_is_refused_where_it_cannot_work() {
        assert!(matches!(
            Target::parse("unix:/x", true),
            Err(ClientError::TlsOverUnix { addr }) if addr == "unix:/x"
        ));
        assert!(matches!(
            Target::parse("http://h:1", true),
            Err(ClientError::TlsOverPlainHttp { addr }) if addr == "http://h:1"
        ));
    }

    fn opts(addr: &str) -> ConnectOptions {
        ConnectOptions::new(addr)
    }

    #[test]
    fn option_validation() {
        let mut o = opts("h:1");
        o.tls_cert = Some("c.pem".into());
        assert_eq!(
            o.target().unwrap_err().to_string(),
            "the client certificate c.pem needs its private key (--tls-key)"
        );
        let mut o = opts("h:1");
        o.tls_key = Some("k.pem".into());
        assert!(matches!(
            o.target(),
            Err(ClientError::KeyWithoutCert { key }) if key == Path::new("k.pem")
        ));
        // https with nothing to verify the server against.
        assert!(matches!(
            opts("https://h:1").target(),
            Err(ClientError::MissingCa { addr }) if addr == "https://h:1"
        ));
        let mut o = opts("h:1");
        o.tls_domain = Some("consentd".into());
        assert!(matches!(o.target(), Err(ClientError::MissingCa { .. })));
        // Any TLS option turns a bare host:port into https.
        let mut o = opts("h:1");
        o.tls_ca = Some("ca.pem".into());
        assert!(o.target().unwrap().is_tls());
        o.addr = "unix:/x".into();
        assert!(matches!(o.target(), Err(ClientError::TlsOverUnix { .. })));
        assert_eq!(opts("h:1").target().unwrap().to_string(), "http://h:1/");
    }

    #[test]
    fn token_header() {
        let v = authorization("s3cret").unwrap();
        assert_eq!(v, "Bearer s3cret");
        assert!(v.is_sensitive());
        assert!(matches!(
            authorization(""),
            Err(ClientError::InvalidToken {
                reason: "it is empty"
            })
        ));
        for bad in ["a\nb", "a\tb", "a b", " ab", "ab\r", "tök"] {
            assert_eq!(
                authorization(bad).unwrap_err().to_string(),
                "invalid bearer token: it may only contain visible ASCII characters (no spaces or control characters)",
                "{bad:?}"
            );
        }
        let mut o = opts("h:1");
        o.token = Some("s3cret".into());
        assert!(!format!("{o:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn pem_files_are_checked_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let mut o = opts("h:1");
        o.tls_ca = Some(missing.clone());
        let e = connect(&o).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::ReadFile { what: "CA certificate", path, .. } if *path == missing),
            "{e:?}"
        );
        assert!(e.to_string().starts_with(&format!(
            "cannot read the CA certificate {}",
            missing.display()
        )));

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        o.tls_ca = Some(junk.clone());
        assert_eq!(
            connect(&o).await.unwrap_err().to_string(),
            format!(
                "{} is not a usable PEM CA certificate: no CERTIFICATE block found",
                junk.display()
            )
        );

        let pki = Pki::new();
        let ca = pki.write(dir.path(), "ca.pem", &pki.ca_pem);
        o.tls_ca = Some(ca);
        o.tls_cert = Some(pki.write(dir.path(), "client.pem", &pki.client_pem));
        o.tls_key = Some(junk.clone());
        assert!(matches!(
            connect(&o).await,
            Err(ClientError::BadPem { what: "client key", path, .. }) if path == junk
        ));
        // A key that is not the certificate's.
        o.tls_key = Some(pki.write(dir.path(), "server.key", &pki.server_key));
        let e = connect(&o).await.unwrap_err();
        assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                r#"cannot set up TLS for "h:1" with the client certificate {}"#,
                dir.path().join("client.pem").display()
            )
        );
    }

    #[tokio::test]
    async fn connection_failures_name_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix:{}", dir.path().join("nobody.sock").display());
        let e = connect(&ConnectOptions::new(addr.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Connect { addr: a, .. } if *a == addr),
            "{e:?}"
        );
        assert_eq!(e.to_string(), format!("cannot connect to {addr:?}"));
    }

    /// A CA, a server certificate for "consentd.test" and a client
    /// certificate, all signed by the CA.
    struct Pki {
        ca_pem: String,
        server_pem: String,
        server_key: String,
        client_pem: String,
        client_key: String,
    }

    impl Pki {
        fn new() -> Self {
            use rcgen::{
                BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
            };
            let ca_key = KeyPair::generate().unwrap();
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(DnType::CommonName, "consentd test CA");
            ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca_cert = ca_params.self_signed(&ca_key).unwrap();
            let issuer = Issuer::new(ca_params, ca_key);
            let leaf = |name: &str| {
                let key = KeyPair::generate().unwrap();
                let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
                params.distinguished_name.push(DnType::CommonName, name);
                let cert = params.signed_by(&key, &issuer).unwrap();
                (cert.pem(), key.serialize_pem())
            };
            let (server_pem, server_key) = leaf("consentd.test");
            let (client_pem, client_key) = leaf("ops");
            Self {
                ca_pem: ca_cert.pem(),
                server_pem,
                server_key,
                client_pem,
                client_key,
            }
        }

        fn write(&self, dir: &Path, name: &str, pem: &str) -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        }
    }

    /// Serves the health service on `incoming`; each request's
    /// `authorization` header (or "-") goes to the returned receiver.
    fn serve<I, IO, IE>(
        tls: Option<tonic::transport::ServerTlsConfig>,
        incoming: I,
    ) -> tokio::sync::mpsc::UnboundedReceiver<String>
    where
        I: tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let record = move |request: tonic::Request<()>| {
            let header = request
                .metadata()
                .get("authorization")
                .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
            seen_tx.send(header).unwrap();
            Ok(request)
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let router = builder.add_service(tonic::service::interceptor::InterceptedService::new(
            health, record,
        ));
        tokio::spawn(router.serve_with_incoming(incoming));
        seen
    }

    async fn check(channel: ClientChannel) {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let mut client = HealthClient::new(channel);
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        // A server stream through the same transport.
        let mut stream = client
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(stream.message().await.unwrap().is_some());
    }

    #[tokio::test]
    async fn unix_socket_with_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("consentd.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let mut seen = serve(
            None,
            tokio_stream::wrappers::UnixListenerStream::new(listener),
        );
        let mut o = ConnectOptions::new(format!("unix:{}", sock.display()));
        o.token = Some("s3cret".into());
        o.connect_timeout = Some(Duration::from_secs(5));
        let channel = connect(&o).await.unwrap();
        assert!(channel.has_token());
        check(channel).await;
        assert_eq!(seen.recv().await.unwrap(), "Bearer s3cret");
        assert_eq!(seen.recv().await.unwrap(), "Bearer s3cret");

        // An explicit per-request header wins over the channel's token.
        let plain = connect(&ConnectOptions::new(format!("unix://{}", sock.display())))
            .await
            .unwrap();
        let channel =
            ClientChannel::from_channel(plain.channel().clone(), Some("s3cret".into())).unwrap();
        let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        request
            .metadata_mut()
            .insert("authorization", "Bearer other".parse().unwrap());
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(request)
            .await
            .unwrap();
        assert_eq!(seen.recv().await.unwrap(), "Bearer other");
        // No token, no header.
        check(plain).await;
        assert_eq!(seen.recv().await.unwrap(), "-");
    }

    #[tokio::test]
    async fn mutual_tls_with_a_domain_override() {
        use tonic::transport::ServerTlsConfig;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&pki.server_pem, &pki.server_key))
            .client_ca_root(Certificate::from_pem(&pki.ca_pem));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut seen = serve(
            Some(tls),
            tokio_stream::wrappers::TcpListenerStream::new(listener),
        );

        let mut o = ConnectOptions::new(format!("127.0.0.1:{port}"));
        o.tls_ca = Some(pki.write(dir.path(), "ca.pem", &pki.ca_pem));
        o.tls_cert = Some(pki.write(dir.path(), "client.pem", &pki.client_pem));
        o.tls_key = Some(pki.write(dir.path(), "client.key", &pki.client_key));
        o.tls_domain = Some("consentd.test".into());
        o.token = Some("t0ken".into());
        o.connect_timeout = Some(Duration::from_secs(5));
        check(connect(&o).await.unwrap()).await;
        assert_eq!(seen.recv().await.unwrap(), "Bearer t0ken");

        // Without the override the certificate does not match 127.0.0.1.
        let mut wrong_name = o.clone();
        wrong_name.tls_domain = None;
        assert!(matches!(
            connect(&wrong_name).await,
            Err(ClientError::Connect { .. })
        ));
    }
}
