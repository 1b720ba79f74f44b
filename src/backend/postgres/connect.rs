//! Connecting a session as libpq connects: each server in turn until one
//! takes us, each with the attempts its sslmode allows (`allow`: plain,
//! then TLS if the server refused; `prefer`: TLS if the server offers it,
//! then plain if TLS failed), each attempt within `connect_timeout`.
//!
//! The socket options that bound how long a dead peer keeps the session
//! (TCP keepalives, TCP user timeout) are set on the TCP socket before any
//! TLS handshake, so they hold for an encrypted session too.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::runtime::Runtime;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};

use super::conninfo::{Server, Target};
use super::failure::{Failure, describe};
use super::tls::{self, Connector, Handshake, SslMode, TlsSettings};
use crate::error::{Error, Result};

/// The stream of a connection, encrypted or not.
type Stream = <Connector as MakeTlsConnect<Socket>>::Stream;

/// How long connecting to one server (TCP, TLS, startup and
/// authentication) may take, unless `connect_timeout` says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive, on both ends: the first probe after this much silence…
pub(super) const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// …then one probe every this often…
pub(super) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// …and the peer is dead after this many unanswered probes.
pub(super) const KEEPALIVE_COUNT: u32 = 3;
/// Data left unacknowledged this long also means the peer is dead.
pub(super) const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected session, before its first statement.
pub(super) struct Connected {
    pub client: Client,
    pub connection: Connection<Socket, Stream>,
    /// `postgres://host:port/db` of the server that took us.
    pub location: String,
    /// The TLS settings the connection was made with (`None` when TLS
    /// could not be used: a Unix socket, `sslmode=disable`), for the
    /// session's cancel requests, which must be made the same way.
    pub tls_config: Option<Arc<ClientConfig>>,
}

/// How one attempt uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    Plain,
    /// TLS if the server offers it, else plain.
    TlsIfOffered,
    Tls,
}

/// Why one attempt failed.
struct AttemptFailure {
    failure: Failure,
    handshake: Handshake,
}

/// Connects to the first of `target`'s servers that takes a session named
/// `application_name`.
///
/// # Errors
///
/// Unavailable: a TLS file that cannot be used, or no server took us (the
/// message says why for each).
pub(super) fn connect(
    runtime: &Runtime,
    target: &Target,
    application_name: &str,
) -> Result<Connected> {
    // Read only when a server is reached over TCP: libpq never uses TLS
    // on a Unix socket, whatever the sslmode.
    let mut tls_config = None;
    let timeout = target.connect_timeout(CONNECT_TIMEOUT);
    let mut failures = Vec::new();
    for server in order(target) {
        let mut config = server.config(&target.base);
        config
            .application_name(application_name)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_COUNT)
            .tcp_user_timeout(TCP_USER_TIMEOUT)
            .connect_timeout(timeout);
        if tls_config.is_none() && !server.is_unix() {
            tls_config = Some(target.tls.client_config()?);
        }
        let server_connection = ServerConnection {
            runtime,
            config: &config,
            tls: &target.tls,
            tls_config: tls_config.as_ref().and_then(Option::as_ref),
            timeout,
        };
        match server_connection.connect(server) {
            Ok((client, connection)) => {
                return Ok(Connected {
                    client,
                    connection,
                    location: target.location_of(server),
                    tls_config: server_connection.tls_config.cloned(),
                });
            }
            Err(attempts) => failures.push((server, attempts)),
        }
    }
    Err(connect_error(target, failures))
}

/// The servers in the order to try them.
fn order(target: &Target) -> Vec<&Server> {
    let mut servers: Vec<&Server> = target.servers.iter().collect();
    if target.random_order {
        let random = RandomState::new();
        for i in (1..servers.len()).rev() {
            let j = (random.hash_one(i) % (i as u64 + 1)) as usize;
            servers.swap(i, j);
        }
    }
    servers
}

/// Connecting to one server.
struct ServerConnection<'a> {
    runtime: &'a Runtime,
    config: &'a tokio_postgres::Config,
    tls: &'a TlsSettings,
    tls_config: Option<&'a Arc<ClientConfig>>,
    timeout: Duration,
}

impl ServerConnection<'_> {
    /// libpq's attempts for the sslmode: `Err` holds each failed one.
    fn connect(
        &self,
        server: &Server,
    ) -> std::result::Result<(Client, Connection<Socket, Stream>), Vec<AttemptFailure>> {
        let (first, fallback) = match (server.is_unix(), self.tls.mode) {
            (true, _) | (_, SslMode::Disable) => (Attempt::Plain, None),
            (_, SslMode::Allow) => (Attempt::Plain, Some(Attempt::Tls)),
            (_, SslMode::Prefer) => (Attempt::TlsIfOffered, Some(Attempt::Plain)),
            _ => (Attempt::Tls, None),
        };
        let failed = match self.attempt(first) {
            Ok(connected) => return Ok(connected),
            Err(failed) => failed,
        };
        let retry = match fallback {
            // allow: the server refused the plain connection.
            Some(Attempt::Tls) => failed.failure.code().is_some(),
            // prefer: the handshake failed, or the server refused us over
            // TLS.
            Some(_) => match failed.handshake {
                Handshake::Failed => true,
                Handshake::Done => failed.failure.code().is_some(),
                Handshake::NotTried => false,
            },
            None => false,
        };
        let Some(second) = fallback.filter(|_| retry) else {
            return Err(vec![failed]);
        };
        self.attempt(second).map_err(|again| vec![failed, again])
    }

    fn attempt(
        &self,
        attempt: Attempt,
    ) -> std::result::Result<(Client, Connection<Socket, Stream>), AttemptFailure> {
        let mut config = self.config.clone();
        config.ssl_mode(match attempt {
            Attempt::Plain => tokio_postgres::config::SslMode::Disable,
            Attempt::TlsIfOffered => tokio_postgres::config::SslMode::Prefer,
            Attempt::Tls => tokio_postgres::config::SslMode::Require,
        });
        let connector = Connector::new(self.tls_config);
        let handshake = connector.handshake_watch();
        // The timer must be made inside the runtime.
        let connected = self.runtime.block_on(async {
            tokio::time::timeout(self.timeout, config.connect(connector)).await
        });
        let failure = match connected {
            Ok(Ok(connected)) => return Ok(connected),
            Ok(Err(err)) => Failure::Server(err),
            Err(_) => Failure::Silent(self.timeout),
        };
        Err(AttemptFailure {
            failure,
            handshake: handshake.get(),
        })
    }
}

/// One line for a failed connection, naming each server's reason when
/// there are several.
fn connect_error(target: &Target, failures: Vec<(&Server, Vec<AttemptFailure>)>) -> Error {
    let several = failures.len() > 1;
    let mut source = None;
    let reasons: Vec<String> = failures
        .into_iter()
        .map(|(server, attempts)| {
            let (why, plain_error) = explain_attempts(&target.tls, attempts);
            source = plain_error;
            if several {
                format!("{}: {why}", server.host_port())
            } else {
                why
            }
        })
        .collect();
    let error = Error::unavailable(format!(
        "cannot connect to PostgreSQL at {}: {}",
        target.location,
        reasons.join("; ")
    ));
    match source.filter(|_| !several) {
        Some(err) => error.with_source(err),
        None => error,
    }
}

/// Why a server's attempts failed; and the driver's error when the one
/// attempt failed on the client side (as the error's source).
fn explain_attempts(
    tls: &TlsSettings,
    attempts: Vec<AttemptFailure>,
) -> (String, Option<tokio_postgres::Error>) {
    let count = attempts.len();
    let mut reasons = Vec::new();
    let mut source = None;
    for (i, attempt) in attempts.into_iter().enumerate() {
        let reason = match attempt.failure {
            Failure::Server(err) => match tls::explain(&err, tls) {
                Some(why) => why,
                None => {
                    let why = format!("{}{}", describe(&err), hint(&err));
                    // The server's words are the whole story; a client-side
                    // error is kept as the source, whose text `why` holds.
                    if count == 1 && err.as_db_error().is_none() {
                        source = Some(err);
                    }
                    why
                }
            },
            silent => silent.describe(),
        };
        reasons.push(match (i, tls.mode) {
            (0, _) => reason,
            (_, SslMode::Allow) => format!("then over TLS: {reason}"),
            _ => format!("then without TLS: {reason}"),
        });
    }
    (reasons.join("; "), source)
}

/// What to do about a refused connection, where there is advice.
fn hint(err: &tokio_postgres::Error) -> &'static str {
    match err.code() {
        Some(&SqlState::TOO_MANY_CONNECTIONS) => {
            " (max_connections is exhausted; every holder needs a connection of its own)"
        }
        Some(&SqlState::INVALID_PASSWORD) => " (wrong password?)",
        _ => "",
    }
}
