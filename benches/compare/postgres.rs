//! The PostgreSQL rows, against a throwaway cluster that the bench starts
//! (tests/it/harness): acquire + release against the raw advisory-lock
//! calls, in plain text and over TLS, failover after SIGKILL, failover through a frozen network,
//! supervisor memory, and many names held by one process.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use onlyone::{Attempt, Lock, LockName, PostgresBackend, PostgresConfig};
use rustix::process::Signal;
use rustls::pki_types::pem::PemObject;

use crate::procs::{Proc, kill, memory_kb, monotonic_ns, wait_until};
use crate::report::{Detail, Report, Row, Verdict};
use crate::stats::{Samples, fmt_kb, fmt_ns, fmt_ratio};
use crate::{Config, Env};

#[allow(dead_code)]
#[path = "../../tests/it/harness/pg_cluster.rs"]
pub(crate) mod pg_cluster;
#[allow(dead_code)]
#[path = "../../tests/it/harness/proxy.rs"]
pub(crate) mod proxy;
#[allow(dead_code)]
#[path = "../../tests/it/harness/tls_certs.rs"]
mod tls_certs;

pub use pg_cluster::PgCluster;

/// Starts the cluster every PostgreSQL row uses, with room for the
/// many-names row's sessions; why not, when it cannot.
pub fn start_cluster(config: &Config) -> Result<PgCluster, String> {
    let connections = (config.pg_names + 50).max(100).to_string();
    // The harness panics when it cannot start a server; here that only
    // means the PostgreSQL rows are not measured.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::panic::catch_unwind(|| {
        PgCluster::start_with(&[("max_connections", connections.as_str())])
    });
    std::panic::set_hook(previous);
    started.map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown".into());
        format!("no PostgreSQL server could be started ({why})")
    })
}

fn connect(url: &str) -> Result<postgres::Client> {
    postgres::Client::connect(url, postgres::NoTls).with_context(|| format!("connect to {url}"))
}

/// The server's view of one advisory key: who holds it, how many wait.
fn lock_state(client: &mut postgres::Client, key: i64) -> Result<(Option<i32>, usize)> {
    let key = key as u64;
    let (classid, objid) = ((key >> 32) as i64, (key & 0xffff_ffff) as i64);
    let rows = client.query(
        "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' \
         AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1",
        &[&classid, &objid],
    )?;
    let holder = rows
        .iter()
        .find(|row| row.get::<_, bool>(1))
        .map(|row| row.get(0));
    let waiting = rows.iter().filter(|row| !row.get::<_, bool>(1)).count();
    Ok((holder, waiting))
}

fn key_of(name: &str) -> Result<i64> {
    Ok(PostgresBackend::key_for(&LockName::new(name)?))
}

/// Acquire + release through the library, against the raw calls on the
/// same driver (tokio-postgres, through its blocking `postgres` wrapper).
pub fn acquire(
    config: &Config,
    _env: &Env,
    cluster: &PgCluster,
    report: &mut Report,
) -> Result<()> {
    let url = cluster.url();
    measure_acquire(
        config,
        report,
        &AcquireRow {
            what: "PostgreSQL acquire + release",
            how: "Loopback TCP to a throwaway cluster (fsync off)",
            onlyone_url: &url,
            raw: "raw",
        },
        || connect(&url),
    )
}

/// The same over TLS: a throwaway cluster with `ssl = on` and a
/// certificate for `localhost` made for the run; onlyone with
/// `sslmode=verify-full`, the raw rows with tokio-postgres-rustls checking
/// the same chain and name.
pub fn acquire_tls(
    config: &Config,
    _env: &Env,
    _cluster: &PgCluster,
    report: &mut Report,
) -> Result<()> {
    let certs = tls_certs::TestCerts::generate();
    let cluster = PgCluster::start_tls(
        &certs.server_tls(),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    );
    let ca = certs.path("ca.crt");
    let onlyone_url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port(),
        ca.display()
    );
    // The driver itself knows no verify-full: its Require with a verifying
    // rustls configuration is the same check.
    let raw_url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=require",
        cluster.port()
    );
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca)? {
        roots.add(cert?)?;
    }
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    measure_acquire(
        config,
        report,
        &AcquireRow {
            what: "PostgreSQL acquire + release over TLS",
            how: "Loopback TCP with TLS (rustls, ring; TLS 1.3; an ECDSA P-256 \
                  certificate for localhost, verified: sslmode=verify-full) to a throwaway \
                  cluster (fsync off)",
            onlyone_url: &onlyone_url,
            raw: "raw over TLS",
        },
        || {
            postgres::Client::connect(&raw_url, tls.clone())
                .with_context(|| format!("connect to {raw_url}"))
        },
    )
}

/// What one acquire + release comparison is called and where it connects.
struct AcquireRow<'a> {
    what: &'a str,
    how: &'a str,
    onlyone_url: &'a str,
    /// How the raw contenders are named.
    raw: &'a str,
}

/// Issue 15's goal: an acquire + release at most this many times a raw
/// connect + lock + unlock + close, in the same run.
const GOAL_VS_CONNECT: f64 = 1.3;

fn measure_acquire(
    config: &Config,
    report: &mut Report,
    row: &AcquireRow<'_>,
    connect: impl Fn() -> Result<postgres::Client>,
) -> Result<()> {
    let lock = Lock::new(
        "pg-acquire",
        PostgresBackend::new(PostgresConfig::new(row.onlyone_url))?,
    )?;
    let key = key_of("pg-raw")?;
    let mut open = connect()?;
    // The first acquisition creates the state table: not what is timed.
    drop(lock.try_acquire()?);

    type Step<'a> = Box<dyn FnMut() -> Result<()> + 'a>;
    let raw_open_name = format!(
        "{} `pg_try_advisory_lock` + `pg_advisory_unlock` on an open connection",
        row.raw
    );
    let raw_connect_name = format!("{} connect + lock + unlock + close", row.raw);
    let mut steps: Vec<(&str, Step<'_>)> = vec![
        (
            "onlyone `try_acquire` + drop (its own session)",
            Box::new(|| match lock.try_acquire()? {
                Attempt::Acquired(guard) => {
                    drop(guard);
                    Ok(())
                }
                Attempt::Held(holder) => bail!("uncontended lock held by {holder}"),
            }),
        ),
        (
            &raw_open_name,
            Box::new(|| {
                let locked: bool = open
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
                    .get(0);
                ensure!(locked, "raw lock held");
                open.query_one("SELECT pg_advisory_unlock($1)", &[&key])?;
                Ok(())
            }),
        ),
        (
            &raw_connect_name,
            Box::new(|| {
                let mut client = connect()?;
                let locked: bool = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
                    .get(0);
                ensure!(locked, "raw lock held");
                client.query_one("SELECT pg_advisory_unlock($1)", &[&key])?;
                client.close()?;
                Ok(())
            }),
        ),
    ];
    let mut samples = vec![Samples::default(); steps.len()];
    for round in 0..config.pg_rounds {
        for i in 0..steps.len() {
            let which = (round + i) % steps.len();
            for _ in 0..config.pg_batch {
                let start = Instant::now();
                (steps[which].1)()?;
                samples[which].push(start.elapsed());
            }
        }
    }
    let mut detail = Detail::new(
        row.what,
        &format!(
            "{}; {} rounds of {} per \
             contender, interleaved. onlyone holds each lock on a session of its own \
             (by design: a held lock must not share its session), so its acquire \
             includes connecting, the session settings, the standby check, the \
             state table's catalog check, the advisory lock, the look for other \
             state tables, the state-table upsert in its fenced transaction, the \
             pool/plain check and the heartbeat's prepared statement, and its release the state-table update, the unlock, the close \
             and joining the heartbeat thread. The raw rows use the same driver \
             (tokio-postgres).",
            row.how, config.pg_rounds, config.pg_batch
        ),
        &[
            "contender",
            "n",
            "p10",
            "median",
            "p90",
            "p99",
            "median vs raw (open)",
        ],
    );
    let raw_open = samples[1].median();
    for ((name, _), samples) in steps.iter().zip(samples.iter_mut()) {
        let s = samples.summary();
        detail.row(vec![
            (*name).to_owned(),
            s.n.to_string(),
            fmt_ns(s.p10),
            fmt_ns(s.p50),
            fmt_ns(s.p90),
            fmt_ns(s.p99),
            fmt_ratio(s.p50 / raw_open),
        ]);
    }
    report.detail(detail);
    let ours = samples[0].median();
    let raw_connect = samples[2].median();
    report.row(Row {
        what: row.what.into(),
        onlyone: fmt_ns(ours),
        peers: format!(
            "{} on an open connection {}; {} with connect + close {}",
            row.raw,
            fmt_ns(raw_open),
            row.raw,
            fmt_ns(raw_connect)
        ),
        ratio: format!(
            "{} raw (open), {} raw (connect)",
            fmt_ratio(ours / raw_open),
            fmt_ratio(ours / raw_connect)
        ),
        goal: format!("≤ {GOAL_VS_CONNECT}× raw (connect)"),
        verdict: Verdict::goal(ours / raw_connect <= GOAL_VS_CONNECT),
    });
    Ok(())
}

/// How the holder is stopped in a PostgreSQL failover run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// SIGKILL to the supervisor: the kernel closes its connection, and
    /// the server ends the session at once.
    Kill,
    /// The network between the holder and the server goes silent.
    Partition,
}

/// What one failover run saw, in ns after the fault.
struct Failover {
    /// The server granted the lock to the waiter's session; `None` when it
    /// had not within [`GIVE_UP`].
    granted: Option<u64>,
    /// The waiter's command started (`None` as for `granted`).
    started: Option<u64>,
    /// The old holder's command ended (partitions only: after a kill the
    /// kernel ends it at once).
    old_ended: Option<u64>,
}

/// How long a failover run waits for the lock to pass: consul's ≈ 45 s,
/// the figure the issue compares with.
const GIVE_UP: Duration = Duration::from_secs(45);

fn failover_once(
    env: &Env,
    cluster: &PgCluster,
    name: &str,
    fault: Fault,
    flags: &[&str],
) -> Result<Failover> {
    let url = cluster.url();
    let key = key_of(name)?;
    let mut server = connect(&url)?;
    let mut proxy = (fault == Fault::Partition)
        .then(|| -> Result<proxy::Proxy> {
            let addr: SocketAddr = format!("127.0.0.1:{}", cluster.port()).parse()?;
            Ok(proxy::Proxy::start(addr))
        })
        .transpose()?;
    let holder_url = match &proxy {
        Some(proxy) => cluster.url_via(&proxy.addr().to_string()),
        None => url.clone(),
    };
    let mut holder_flags = vec!["--postgres", holder_url.as_str()];
    holder_flags.extend_from_slice(flags);
    let helper = if fault == Fault::Partition {
        env.helper("hold-term")
    } else {
        env.helper("sleep")
    };
    let mut holder = Proc::start(
        env.onlyone_run(name, &holder_flags, &helper),
        "PostgreSQL holder",
    )?;
    holder.ready()?;
    let (holder_pid, _) = lock_state(&mut server, key)?;
    let holder_pid = holder_pid.context("the holder's lock is not in pg_locks")?;

    let mut waiter_flags = vec!["--postgres", url.as_str(), "--wait"];
    waiter_flags.extend_from_slice(flags);
    let mut waiter = Proc::start(
        env.onlyone_run(name, &waiter_flags, &env.helper("stamp")),
        "PostgreSQL waiter",
    )?;
    wait_until("the waiter queues for the advisory lock", || {
        Ok(lock_state(&mut server, key)?.1 > 0)
    })?;

    let fault_at = monotonic_ns();
    match (&proxy, fault) {
        (Some(proxy), Fault::Partition) => proxy.freeze(),
        _ => kill(holder.pid(), Signal::KILL),
    }
    // The server's view, every millisecond, until the waiter holds it.
    let give_up = Instant::now() + GIVE_UP;
    let granted = loop {
        if let (Some(pid), _) = lock_state(&mut server, key)?
            && pid != holder_pid
        {
            break Some(monotonic_ns() - fault_at);
        }
        if Instant::now() > give_up {
            break None;
        }
        thread::sleep(Duration::from_millis(1));
    };
    let old_ended = match fault {
        Fault::Partition => {
            let ended = holder.stamp_within(GIVE_UP)?;
            Some(ended.saturating_sub(fault_at))
        }
        Fault::Kill => None,
    };
    // Closing the proxy ends the frozen session, so the waiter gets the
    // lock: the next run must start from a free lock.
    proxy.take();
    let started = waiter.stamp_within(Duration::from_secs(60))? - fault_at;
    waiter.wait_ok()?;
    drop(holder);
    Ok(Failover {
        granted,
        started: granted.map(|_| started),
        old_ended,
    })
}

/// SIGKILL of the holder's supervisor → the waiter's command starts.
pub fn failover(
    config: &Config,
    env: &Env,
    cluster: &PgCluster,
    report: &mut Report,
) -> Result<()> {
    const GOAL_P99: f64 = 50e6;
    // The shortest the backend allows: heartbeat deadline 2 × 100 ms + 1 s,
    // plus 100 ms of kill grace, plus its fixed 2 s margin.
    let short = ["--heartbeat", "100ms", "--kill-grace", "100ms"];
    let variants: [(&str, &[&str], usize); 2] = [
        ("defaults (lock-delay 10 s)", &[], config.pg_failover_runs),
        (
            "`--heartbeat 100ms --kill-grace 100ms` (lock-delay 3.3 s)",
            &short,
            config.pg_failover_short_runs,
        ),
    ];
    let mut detail = Detail::new(
        "Failover after SIGKILL of the holder, PostgreSQL",
        "A holder `onlyone run --postgres URL --name f -- HELPER` runs; a waiter \
         `onlyone run --postgres URL --wait --name f -- HELPER` queues for the advisory \
         lock (seen in pg_locks). The bench sends SIGKILL to the holder's supervisor; \
         the kernel closes its connection and the server ends its session. Lock \
         granted: when pg_locks first shows the waiter holding it (polled every \
         millisecond). Command started: the waiter's command's CLOCK_MONOTONIC stamp. \
         Between the two, the waiter waits the lock-delay, by design: the previous \
         holder did not release cleanly, so its command may still run until its \
         heartbeat deadline and kill grace have passed.",
        &[
            "settings",
            "n",
            "lock granted p50",
            "p99",
            "command started p50",
            "p99",
        ],
    );
    let mut cells = Vec::new();
    let mut default_started = None;
    for (label, flags, runs) in variants {
        let mut granted = Samples::default();
        let mut started = Samples::default();
        for _ in 0..runs {
            let run = failover_once(env, cluster, "pg-failover", Fault::Kill, flags)?;
            let (Some(at), Some(start)) = (run.granted, run.started) else {
                bail!("the lock did not pass within {GIVE_UP:?} of the SIGKILL");
            };
            granted.push_ns(at);
            started.push_ns(start);
        }
        if runs == 0 {
            continue;
        }
        detail.row(vec![
            label.to_owned(),
            runs.to_string(),
            fmt_ns(granted.median()),
            fmt_ns(granted.quantile(0.99)),
            fmt_ns(started.median()),
            fmt_ns(started.quantile(0.99)),
        ]);
        cells.push(format!(
            "{label}: lock granted p50 {} / p99 {}, command started p50 {} / p99 {}",
            fmt_ns(granted.median()),
            fmt_ns(granted.quantile(0.99)),
            fmt_ns(started.median()),
            fmt_ns(started.quantile(0.99))
        ));
        if flags.is_empty() {
            default_started = Some(started.quantile(0.99));
        }
    }
    report.detail(detail);
    report.row(Row {
        what: "failover after SIGKILL of the holder, PostgreSQL".into(),
        onlyone: cells.join("; "),
        peers: "—".into(),
        ratio: "—".into(),
        goal: "p99 ≤ 50 ms on loopback".into(),
        verdict: match default_started {
            Some(p99) => Verdict::goal(p99 <= GOAL_P99),
            None => Verdict::NotMeasured("skipped in the smoke run (10 s each)".into()),
        },
    });
    Ok(())
}

/// The network to the holder freezes → the waiter's command starts; and
/// the old command must have stopped first.
pub fn partition(
    config: &Config,
    env: &Env,
    cluster: &PgCluster,
    report: &mut Report,
) -> Result<()> {
    const GOAL: f64 = 20e9;
    if config.pg_partition_runs == 0 {
        report.row(Row::not_measured(
            "partition failover, PostgreSQL (frozen proxy)",
            "≤ 20 s with 0 overlap (consul lock ≈ 45 s)",
            "skipped in the smoke run (over 20 s each)",
        ));
        return Ok(());
    }
    let mut granted = Samples::default();
    let mut started = Samples::default();
    let mut detail = Detail::new(
        "Partition failover, PostgreSQL (frozen proxy)",
        "The holder reaches the server through a TCP proxy (tests/it/harness/proxy.rs); \
         the waiter connects directly. At the fault the proxy freezes: nothing is \
         closed, no byte passes. The holder's heartbeat misses its deadline (3 s), \
         its supervisor stops the command (SIGTERM; the helper prints its stamp as it \
         exits). The lock passes only when the server ends the frozen session; the \
         session's TCP keepalives and user timeout (about 11 s) would, on a network \
         that drops packets, but the frozen proxy's kernel still acknowledges them, as \
         a live middlebox would. Once granted, the waiter waits the lock-delay (10 s) \
         and starts its command. Overlap is how long both commands \
         ran at once (negative: a gap). Default settings. A run gives up after 45 s \
         (consul's figure) and then closes the proxy.",
        &[
            "run",
            "old command ended",
            "lock granted",
            "new command started",
            "overlap",
        ],
    );
    let mut worst_overlap = i128::MIN;
    let mut ended_all = Samples::default();
    let mut never = 0;
    for run in 0..config.pg_partition_runs {
        let result = failover_once(env, cluster, "pg-partition", Fault::Partition, &[])?;
        let ended = result.old_ended.context("no end stamp")?;
        ended_all.push_ns(ended);
        let (granted_cell, started_cell, overlap_cell) = match (result.granted, result.started) {
            (Some(at), Some(start)) => {
                let overlap = i128::from(ended) - i128::from(start);
                worst_overlap = worst_overlap.max(overlap);
                granted.push_ns(at);
                started.push_ns(start);
                (
                    fmt_ns(at as f64),
                    fmt_ns(start as f64),
                    if overlap > 0 {
                        fmt_ns(overlap as f64)
                    } else {
                        format!("none (gap {})", fmt_ns(-overlap as f64))
                    },
                )
            }
            _ => {
                never += 1;
                let never = format!("not within {}", fmt_ns(GIVE_UP.as_nanos() as f64));
                (never.clone(), never, "none".to_owned())
            }
        };
        detail.row(vec![
            (run + 1).to_string(),
            fmt_ns(ended as f64),
            granted_cell,
            started_cell,
            overlap_cell,
        ]);
    }
    report.detail(detail);
    let onlyone = if never > 0 {
        format!(
            "no failover in {never} of {} runs: the lock stayed with the frozen session \
             for {} (then the run closed the proxy); old command stopped after {}",
            config.pg_partition_runs,
            fmt_ns(GIVE_UP.as_nanos() as f64),
            fmt_ns(ended_all.median())
        )
    } else {
        format!(
            "command started after {} (worst {}), lock granted after {}; old command \
             stopped after {}; overlap: {}",
            fmt_ns(started.median()),
            fmt_ns(started.quantile(1.0)),
            fmt_ns(granted.median()),
            fmt_ns(ended_all.median()),
            if worst_overlap > 0 {
                fmt_ns(worst_overlap as f64)
            } else {
                "none".into()
            }
        )
    };
    let met = never == 0 && started.quantile(1.0) <= GOAL && worst_overlap <= 0;
    report.row(Row {
        what: "partition failover, PostgreSQL (frozen proxy)".into(),
        onlyone,
        peers: "consul lock ≈ 45 s (from the issue)".into(),
        ratio: if never > 0 {
            "—".into()
        } else {
            format!("{} consul", fmt_ratio(started.median() / 45e9))
        },
        goal: "≤ 20 s with 0 overlap".into(),
        verdict: Verdict::goal(met),
    });
    Ok(())
}

/// RSS of `onlyone run --postgres` while its command runs.
pub fn memory(config: &Config, env: &Env, cluster: &PgCluster, report: &mut Report) -> Result<()> {
    const GOAL_KB: u64 = 8 * 1024;
    let url = cluster.url();
    let mut samples = Vec::new();
    for _ in 0..config.memory_runs {
        let mut holder = Proc::start(
            env.onlyone_run("pg-memory", &["--postgres", &url], &env.helper("sleep")),
            "onlyone --postgres",
        )?;
        holder.ready()?;
        // A few heartbeats in: the steady state.
        thread::sleep(Duration::from_millis(1500));
        samples.push(memory_kb(holder.pid())?);
    }
    samples.sort_unstable();
    let (rss, hwm) = samples[samples.len() / 2];
    report.row(Row {
        what: "supervisor memory while the command runs, PostgreSQL".into(),
        onlyone: format!("RSS {} (peak {})", fmt_kb(rss), fmt_kb(hwm)),
        peers: "—".into(),
        ratio: "—".into(),
        goal: "RSS ≤ 8 MB".into(),
        verdict: Verdict::goal(rss <= GOAL_KB),
    });
    Ok(())
}

/// What one many-names run found.
struct ManyNames {
    acquired: Duration,
    each: Samples,
    released: Duration,
    rss_kb: u64,
    threads: u64,
    sessions: usize,
}

/// One process holds many names at once through the library, first with
/// a session and a thread per name (the default), then on at most 4
/// shared sessions (`PostgresBackend::share_sessions(4)`), in the same
/// run.
pub fn many_names(
    config: &Config,
    _env: &Env,
    cluster: &PgCluster,
    report: &mut Report,
) -> Result<()> {
    let n = config.pg_names;
    let mut dedicated = many_names_once(cluster, n, None, 1, "pg-many")?;
    let mut shared = many_names_once(cluster, n, Some(4), 1, "pg-many-shared")?;
    // The same, the names taken from 4 threads at once (a quarter each):
    // the 4 sessions work in parallel.
    let mut parallel = many_names_once(cluster, n, Some(4), 4, "pg-many-parallel")?;
    let mut detail = Detail::new(
        &format!("{n} names held by one process, PostgreSQL (library)"),
        &format!(
            "One process takes {n} different names with `try_acquire` through one \
             `PostgresBackend`, keeping every guard, then drops them all: first with \
             the default (a session and a heartbeat thread per lock; the cluster runs \
             with max_connections = {}), then with `share_sessions(4)` (at most 4 \
             sessions, a thread each, one heartbeat per session for all its names), \
             in the same run; last, `share_sessions(4)` again with the names taken \
             from 4 threads at once (a quarter each). Memory is this process's VmRSS \
             (threads: the library's, counted once the callers' have ended); sessions are the \
             process's `onlyone:` sessions in pg_stat_activity while it holds them all. \
             The ratio is shared (one thread) against a session per name.",
            n + 50
        ),
        &[
            "measure",
            "a session per name",
            "shared sessions (4)",
            "ratio",
            "shared (4), from 4 threads",
        ],
    );
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}×", a / b)
        } else {
            "—".into()
        }
    };
    let rows = [
        (
            "all acquired after",
            fmt_ns(dedicated.acquired.as_nanos() as f64),
            fmt_ns(shared.acquired.as_nanos() as f64),
            ratio(
                shared.acquired.as_nanos() as f64,
                dedicated.acquired.as_nanos() as f64,
            ),
        ),
        (
            "one acquire, median",
            fmt_ns(dedicated.each.median()),
            fmt_ns(shared.each.median()),
            ratio(shared.each.median(), dedicated.each.median()),
        ),
        (
            "one acquire, p99",
            fmt_ns(dedicated.each.quantile(0.99)),
            fmt_ns(shared.each.quantile(0.99)),
            ratio(shared.each.quantile(0.99), dedicated.each.quantile(0.99)),
        ),
        (
            "all released after",
            fmt_ns(dedicated.released.as_nanos() as f64),
            fmt_ns(shared.released.as_nanos() as f64),
            ratio(
                shared.released.as_nanos() as f64,
                dedicated.released.as_nanos() as f64,
            ),
        ),
        (
            "RSS added while holding",
            fmt_kb(dedicated.rss_kb),
            fmt_kb(shared.rss_kb),
            ratio(shared.rss_kb as f64, dedicated.rss_kb as f64),
        ),
        (
            "threads added while holding",
            dedicated.threads.to_string(),
            shared.threads.to_string(),
            "—".into(),
        ),
        (
            "server sessions while holding",
            dedicated.sessions.to_string(),
            shared.sessions.to_string(),
            "—".into(),
        ),
    ];
    let from_threads = [
        fmt_ns(parallel.acquired.as_nanos() as f64),
        fmt_ns(parallel.each.median()),
        fmt_ns(parallel.each.quantile(0.99)),
        fmt_ns(parallel.released.as_nanos() as f64),
        fmt_kb(parallel.rss_kb),
        parallel.threads.to_string(),
        parallel.sessions.to_string(),
    ];
    for ((measure, a, b, r), p) in rows.into_iter().zip(from_threads) {
        detail.row(vec![measure.to_owned(), a, b, r, p]);
    }
    report.detail(detail);
    let met = shared.sessions <= 8
        && shared.threads <= 4
        && shared.rss_kb <= 10 * 1024
        && shared.acquired <= Duration::from_secs(2);
    report.row(Row {
        what: format!("scale: {n} names held by one process, PostgreSQL (library)"),
        onlyone: format!(
            "shared (4): all acquired in {} (median {} each), RSS +{}, {} sessions, {} threads; from 4 threads at once: {}; a session per name: {}, RSS +{}, {} sessions, {} threads",
            fmt_ns(shared.acquired.as_nanos() as f64),
            fmt_ns(shared.each.median()),
            fmt_kb(shared.rss_kb),
            shared.sessions,
            shared.threads,
            fmt_ns(parallel.acquired.as_nanos() as f64),
            fmt_ns(dedicated.acquired.as_nanos() as f64),
            fmt_kb(dedicated.rss_kb),
            dedicated.sessions,
            dedicated.threads
        ),
        peers: "—".into(),
        ratio: format!(
            "{} of the time, {} of the memory",
            ratio(
                shared.acquired.as_nanos() as f64,
                dedicated.acquired.as_nanos() as f64
            ),
            ratio(shared.rss_kb as f64, dedicated.rss_kb as f64)
        ),
        goal: "≤ 8 sessions, ≤ 4 threads, ≤ +10 MB, all acquired ≤ 2 s".into(),
        verdict: if met { Verdict::Met } else { Verdict::Missed },
    });
    Ok(())
}

/// One many-names run: `shared` sessions at most, or a session per name.
fn many_names_once(
    cluster: &PgCluster,
    n: usize,
    shared: Option<usize>,
    callers: usize,
    prefix: &str,
) -> Result<ManyNames> {
    let mut backend = PostgresBackend::new(PostgresConfig::new(cluster.url()))?;
    if let Some(max) = shared {
        backend = backend.share_sessions(max)?;
    }
    let backend = std::sync::Arc::new(backend);
    let threads = || -> Result<u64> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow!("no Threads in /proc/self/status"))
    };
    let mut admin = connect(&cluster.url())?;
    let sessions = |admin: &mut postgres::Client| -> Result<usize> {
        let pattern = format!("onlyone:%:{}", std::process::id());
        let row = admin.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&pattern],
        )?;
        Ok(usize::try_from(row.get::<_, i64>(0))?)
    };
    let threads_before = threads()?;
    let sessions_before = sessions(&mut admin)?;
    // Warm up: the state table, the driver (and, shared, the first
    // session, which is counted: it holds names too).
    drop(
        Lock::with_backend(LockName::new(&format!("{prefix}-warm"))?, backend.clone())
            .try_acquire()?,
    );
    let (rss_before, _) = memory_kb(std::process::id())?;
    let mut each = Samples::default();
    let mut guards = Vec::with_capacity(n);
    let take = |i: usize| -> Result<(onlyone::Guard, Duration)> {
        let lock = Lock::with_backend(LockName::new(&format!("{prefix}-{i}"))?, backend.clone());
        let one = Instant::now();
        match lock.try_acquire()? {
            Attempt::Acquired(guard) => Ok((guard, one.elapsed())),
            Attempt::Held(holder) => bail!("{prefix}-{i} held by {holder}"),
        }
    };
    // The callers' threads are started (and counted) before the clock.
    let start_line = std::sync::Barrier::new(callers + 1);
    let start = thread::scope(|scope| -> Result<Instant> {
        let takers: Vec<_> = (0..callers)
            .map(|caller| {
                let (take, start_line) = (&take, &start_line);
                scope.spawn(move || {
                    start_line.wait();
                    (caller..n)
                        .step_by(callers)
                        .map(take)
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        for taker in takers {
            let taken = taker.join().map_err(|_| anyhow!("a caller panicked"))??;
            for (guard, took) in taken {
                guards.push(guard);
                each.push(took);
            }
        }
        Ok(start)
    })?;
    let acquired = start.elapsed();
    let (rss_after, _) = memory_kb(std::process::id())?;
    let threads_after = threads()?;
    let sessions_held = sessions(&mut admin)?.saturating_sub(sessions_before);
    let start = Instant::now();
    drop(guards);
    let released = start.elapsed();
    Ok(ManyNames {
        acquired,
        each,
        released,
        rss_kb: rss_after.saturating_sub(rss_before),
        threads: threads_after.saturating_sub(threads_before),
        sessions: sessions_held,
    })
}

/// One handoff, in ns: from the moment the new start (`--replace`) or the
/// `stop` is launched to the new command's first instruction. `flags`
/// name the backend (`--postgres URL`, or nothing for files).
fn handoff_once(env: &Env, name: &str, flags: &[&str], replace: bool) -> Result<u64> {
    let mut holder = Proc::start(
        env.onlyone_run(name, flags, &env.helper("sleep")),
        "holder to hand off",
    )?;
    holder.ready()?;
    let began = monotonic_ns();
    let mut new = if replace {
        let mut new_flags = flags.to_vec();
        new_flags.push("--replace");
        Proc::start(
            env.onlyone_run(name, &new_flags, &env.helper("stamp")),
            "replacing start",
        )?
    } else {
        let mut stop = std::process::Command::new(&env.onlyone_bin);
        stop.args(["stop", name])
            .args(flags)
            .env("ONLYONE_DIR", &env.onlyone_dir);
        let status = crate::procs::run_quiet(&mut stop)?;
        ensure!(status.success(), "onlyone stop failed: {status}");
        Proc::start(
            env.onlyone_run(name, flags, &env.helper("stamp")),
            "start after stop",
        )?
    };
    let took = new.stamp()?.saturating_sub(began);
    new.wait_ok()?;
    // Stopped by SIGTERM (or asked, then SIGTERM): not a success.
    holder.wait()?;
    Ok(took)
}

/// `--replace`, and `stop` then `run`, on PostgreSQL beside the file
/// backend in the same run: the holder's command honours SIGTERM.
pub fn handoff(config: &Config, env: &Env, cluster: &PgCluster, report: &mut Report) -> Result<()> {
    const GOAL: f64 = 1e9;
    let url = cluster.url();
    let postgres = ["--postgres", url.as_str()];
    let mut detail = Detail::new(
        "Handoff: `--replace` and `stop` then `run`, PostgreSQL beside files",
        "A holder `onlyone run [--postgres URL] --name h -- HELPER sleep` runs (its command \
         honours SIGTERM). `--replace`: the bench starts `onlyone run ... --replace --name h \
         -- HELPER stamp` and measures from its launch to the new command's CLOCK_MONOTONIC \
         stamp. `stop then run`: `onlyone stop h` (which returns once the lock is free), then \
         `onlyone run ... --name h -- HELPER stamp`, from the launch of `stop` to the stamp. \
         On PostgreSQL both ask the holder through the database (a request in the state row, \
         NOTIFY); it stops its command and releases cleanly, so no lock-delay.",
        &["operation", "backend", "n", "p50", "p99"],
    );
    for (what, replace) in [("--replace", true), ("stop then run", false)] {
        let mut cells = Vec::new();
        let mut pg_p99 = None;
        for (backend, flags) in [("files", &[][..]), ("PostgreSQL", &postgres[..])] {
            let mut samples = Samples::default();
            for _ in 0..config.pg_handoff_runs {
                samples.push_ns(handoff_once(env, "pg-handoff", flags, replace)?);
            }
            detail.row(vec![
                what.to_owned(),
                backend.to_owned(),
                config.pg_handoff_runs.to_string(),
                fmt_ns(samples.median()),
                fmt_ns(samples.quantile(0.99)),
            ]);
            cells.push(format!(
                "{backend}: p50 {} / p99 {}",
                fmt_ns(samples.median()),
                fmt_ns(samples.quantile(0.99))
            ));
            if backend == "PostgreSQL" {
                pg_p99 = Some(samples.quantile(0.99));
            }
        }
        report.row(Row {
            what: format!("{what} on PostgreSQL"),
            onlyone: cells.join("; "),
            peers: "—".into(),
            ratio: "—".into(),
            goal: "≤ 1 s on loopback".into(),
            verdict: Verdict::goal(pg_p99.is_some_and(|p99| p99 <= GOAL)),
        });
    }
    report.detail(detail);
    Ok(())
}
