//! A TCP proxy that injects network faults between a client and a server:
//! `freeze` makes the network silent without closing anything (a partition),
//! `thaw` lets the held bytes through in order, and `cut` closes every
//! connection.
//!
//! Each connection has two forwarding threads, one per direction. While the
//! proxy is frozen they block on a condition variable and stop reading, so
//! the kernel buffers fill up and the peers see no progress at all.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the proxy waits to reach the target for a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    /// Signalled whenever `frozen`, `generation`, `accepted` or
    /// `shutting_down` changes.
    changed: Condvar,
}

struct State {
    frozen: bool,
    /// Bumped by `cut`: connections of an older generation are dead.
    generation: u64,
    shutting_down: bool,
    /// Connections accepted (and connected to the target) so far.
    accepted: u64,
    /// Weak, so that a connection closes as soon as both its threads end.
    connections: Vec<Weak<Connection>>,
    forwarders: Vec<JoinHandle<()>>,
}

struct Connection {
    client: TcpStream,
    server: TcpStream,
    generation: u64,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 (any free port) that forwards to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State {
                frozen: false,
                generation: 0,
                shutting_down: false,
                accepted: 0,
                connections: Vec::new(),
                forwarders: Vec::new(),
            }),
            changed: Condvar::new(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("proxy-accept".into())
                .spawn(move || accept_connections(listener, shared))
                .expect("spawn the proxy's acceptor")
        };
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.lock().accepted
    }

    /// Waits until the proxy has accepted more than `count` connections
    /// (a client has reached it, even while frozen); false after `timeout`.
    pub fn wait_accepted_beyond(&self, count: u64, timeout: Duration) -> bool {
        let state = self.shared.lock();
        let (state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |state| state.accepted <= count)
            .unwrap_or_else(PoisonError::into_inner);
        state.accepted > count
    }

    /// Stops forwarding in both directions, on existing and new connections,
    /// without closing anything. Bytes already read are held until `thaw`.
    pub fn freeze(&self) {
        self.shared.lock().frozen = true;
    }

    /// Resumes forwarding, held bytes first.
    pub fn thaw(&self) {
        self.shared.lock().frozen = false;
        self.shared.changed.notify_all();
    }

    /// Closes every current connection, both ends; held bytes are dropped.
    /// New connections are accepted and forwarded as usual.
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        state.generation += 1;
        for connection in state.connections.drain(..) {
            if let Some(connection) = connection.upgrade() {
                connection.close();
            }
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.lock().shutting_down = true;
        // Wake the acceptor, blocked in accept(), so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // No connection can be added now; close them all and wait for their
        // threads, which the closed sockets and the notification unblock.
        self.cut();
        let forwarders = std::mem::take(&mut self.shared.lock().forwarders);
        for forwarder in forwarders {
            let _ = forwarder.join();
        }
    }
}

impl Shared {
    /// Never panics: a panicking test thread must not poison the proxy.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks while frozen. False once the connection is cut or the proxy
    /// shuts down.
    fn wait_until_thawed(&self, connection: &Connection) -> bool {
        let mut state = self.lock();
        loop {
            if state.shutting_down || state.generation != connection.generation {
                return false;
            }
            if !state.frozen {
                return true;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Connection {
    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

fn accept_connections(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.lock().shutting_down {
            return;
        }
        let Ok(client) = client else { continue };
        // If the target is down, dropping the client closes it: the proxy's
        // version of "connection refused".
        let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
            continue;
        };
        // Small messages (the PostgreSQL protocol) must not wait for Nagle.
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        add_connection(&shared, client, server);
    }
}

fn add_connection(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) {
    let mut state = shared.lock();
    let connection = Arc::new(Connection {
        client,
        server,
        generation: state.generation,
    });
    state
        .connections
        .retain(|connection| connection.strong_count() > 0);
    state.connections.push(Arc::downgrade(&connection));
    state.accepted += 1;
    shared.changed.notify_all();
    state
        .forwarders
        .retain(|forwarder| !forwarder.is_finished());
    for client_to_server in [true, false] {
        let shared = Arc::clone(shared);
        let connection = Arc::clone(&connection);
        let forwarder = thread::Builder::new()
            .name("proxy-forward".into())
            .spawn(move || {
                let (from, to) = if client_to_server {
                    (&connection.client, &connection.server)
                } else {
                    (&connection.server, &connection.client)
                };
                forward(&shared, &connection, from, to);
            })
            .expect("spawn a proxy forwarding thread");
        state.forwarders.push(forwarder);
    }
}

/// Copies `from` to `to` until EOF, an error, a cut or shutdown, waiting
/// while frozen both before reading and before writing what was read.
fn forward(shared: &Shared, connection: &Connection, mut from: &TcpStream, mut to: &TcpStream) {
    let mut buffer = [0; 16 * 1024];
    while shared.wait_until_thawed(connection) {
        let read = match from.read(&mut buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return connection.close(),
        };
        // A read that was already waiting when the freeze began is held
        // here; even an EOF must not get through a frozen network.
        if !shared.wait_until_thawed(connection) {
            return;
        }
        if read == 0 {
            // Pass the half-close on; the other direction may go on.
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        if to.write_all(&buffer[..read]).is_err() {
            return connection.close();
        }
    }
}

fn start_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
    let addr = listener.local_addr().expect("the echo server's address");
    // The threads end with the test binary: each test's server is tiny.
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || {
                let _ = std::io::copy(&mut &stream, &mut &stream);
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Long enough for any event that is supposed to happen.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long silence must last to count as silence.
const SILENCE: Duration = Duration::from_millis(300);

fn connect(proxy: &Proxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    stream
}

fn expect_echo(mut stream: &TcpStream, message: &[u8]) {
    stream.write_all(message).expect("write through the proxy");
    expect_bytes(stream, message);
}

fn expect_bytes(mut stream: &TcpStream, expected: &[u8]) {
    let mut received = vec![0; expected.len()];
    stream
        .read_exact(&mut received)
        .expect("read through the proxy");
    assert_eq!(received, expected);
}

fn expect_silence(mut stream: &TcpStream) {
    stream.set_read_timeout(Some(SILENCE)).unwrap();
    let mut buffer = [0; 64];
    match stream.read(&mut buffer) {
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
}

fn expect_closed(mut stream: &TcpStream) {
    let mut buffer = [0; 64];
    match stream.read(&mut buffer) {
        Ok(0) => {}
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected EOF or reset, got {other:?}"),
    }
}

/// Byte `i` of the test streams: a pattern that shows loss and reordering.
fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

fn assert_pattern(received: &[u8]) {
    let first_wrong = (0..received.len()).find(|&i| received[i] != pattern_byte(i));
    assert_eq!(first_wrong, None, "bytes lost or reordered");
}

#[test]
fn proxy_forwards_freezes_thaws_and_cuts() {
    let proxy = Proxy::start(start_echo_server());
    let client = connect(&proxy);
    expect_echo(&client, b"hello");

    proxy.freeze();
    (&client).write_all(b"held").unwrap();
    expect_silence(&client);

    proxy.thaw();
    expect_bytes(&client, b"held");
    expect_echo(&client, b"again");

    proxy.cut();
    expect_closed(&client);
    expect_echo(&connect(&proxy), b"after the cut");
}

#[test]
fn proxy_freeze_holds_new_connections_too() {
    let proxy = Proxy::start(start_echo_server());
    proxy.freeze();
    let client = connect(&proxy);
    (&client).write_all(b"knock").unwrap();
    expect_silence(&client);
    proxy.thaw();
    expect_bytes(&client, b"knock");
}

#[test]
fn proxy_cut_while_frozen_closes_connections() {
    let proxy = Proxy::start(start_echo_server());
    let client = connect(&proxy);
    expect_echo(&client, b"hello");
    proxy.freeze();
    proxy.cut();
    expect_closed(&client);
}

#[test]
fn proxy_frozen_stops_reading_until_the_writer_blocks() {
    let proxy = Proxy::start(start_echo_server());
    let mut client = connect(&proxy);
    expect_echo(&client, b"hello");
    proxy.freeze();

    // Write until the kernel buffers are full and a write stalls.
    const CHUNK: usize = 64 * 1024;
    let pattern: Vec<u8> = (0..CHUNK + 251).map(pattern_byte).collect();
    client.set_write_timeout(Some(SILENCE)).unwrap();
    let mut written = 0;
    loop {
        let offset = written % 251;
        match client.write(&pattern[offset..offset + CHUNK]) {
            Ok(count) => written += count,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break;
            }
            Err(error) => panic!("write while frozen: {error}"),
        }
        assert!(written < 256 * 1024 * 1024, "the frozen proxy kept reading");
    }
    expect_silence(&client);

    proxy.thaw();
    let mut echoed = vec![0; written];
    client.read_exact(&mut echoed).expect("read the held bytes");
    assert_pattern(&echoed);
}

#[test]
fn proxy_forwards_a_large_stream_intact_and_passes_eof_on() {
    let proxy = Proxy::start(start_echo_server());
    let client = connect(&proxy);
    const LENGTH: usize = 8 * 1024 * 1024;
    let writer = {
        let mut client = client.try_clone().unwrap();
        thread::spawn(move || {
            let data: Vec<u8> = (0..LENGTH).map(pattern_byte).collect();
            client.write_all(&data).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut echoed = Vec::new();
    (&client)
        .read_to_end(&mut echoed)
        .expect("read the echo to EOF");
    writer.join().unwrap();
    assert_eq!(echoed.len(), LENGTH);
    assert_pattern(&echoed);
}

#[test]
fn proxy_drop_closes_connections_even_when_frozen() {
    let proxy = Proxy::start(start_echo_server());
    let client = connect(&proxy);
    expect_echo(&client, b"hello");
    proxy.freeze();
    drop(proxy);
    expect_closed(&client);
}
