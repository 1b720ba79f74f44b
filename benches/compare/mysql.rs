//! The MySQL/MariaDB rows, against a throwaway MariaDB server that the
//! bench starts (tests/it/harness/mariadb_server.rs, as scripts/with-mariadb
//! starts one): acquire + release against the raw `GET_LOCK` /
//! `RELEASE_LOCK` calls, failover after SIGKILL, and failover through a
//! frozen network (the test proxy), each as the PostgreSQL rows do it.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mysql_async::prelude::Queryable;
use onlyone::{Attempt, Lock, LockName, MysqlBackend, MysqlConfig};
use rustix::process::Signal;

use crate::postgres::proxy;
use crate::procs::{Proc, kill, monotonic_ns, wait_until};
use crate::report::{Detail, Report, Row, Verdict};
use crate::stats::{Samples, fmt_ns, fmt_ratio};
use crate::{Config, Env};

// The server harness finds its user-switching helper as `super::pg_cluster`.
#[allow(unused_imports)]
use crate::postgres::pg_cluster;

#[allow(dead_code)]
#[path = "../../tests/it/harness/mariadb_server.rs"]
mod mariadb_server;

pub use mariadb_server::MariaDbServer;

/// Starts the server every MySQL row uses (plain text, no TLS); why not,
/// when it cannot (no MariaDB installed).
pub fn start_server() -> Result<MariaDbServer, String> {
    // The harness panics when it cannot start a server; here that only
    // means the MySQL rows are not measured.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::panic::catch_unwind(|| MariaDbServer::start_plain("", &[]));
    std::panic::set_hook(previous);
    started.map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown".into());
        // One line for the summary table: the harness's message may carry
        // a server log.
        let mut why = why.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some((cut, _)) = why.char_indices().nth(200) {
            why.truncate(cut);
            why.push('…');
        }
        format!("no MariaDB server could be started ({why})")
    })
}

/// A raw client on the driver onlyone uses (mysql_async), on a runtime of
/// its own, as onlyone's sessions are.
struct Raw {
    runtime: tokio::runtime::Runtime,
}

impl Raw {
    fn new() -> Result<Raw> {
        Ok(Raw {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// A connection over TCP as onlyone makes one: no switch to the Unix
    /// socket (mysql_async's `prefer_socket`, which onlyone turns off).
    fn connect(&self, server: &MariaDbServer) -> Result<mysql_async::Conn> {
        self.connect_to(&server.url("root"))
    }

    fn connect_to(&self, url: &str) -> Result<mysql_async::Conn> {
        let url = format!("{url}?prefer_socket=false");
        self.runtime
            .block_on(mysql_async::Conn::from_url(url.as_str()))
            .with_context(|| format!("connect to {url}"))
    }

    /// The first column of the first row of `sql`.
    fn value<T: mysql_async::prelude::FromValue + Send + 'static>(
        &self,
        conn: &mut mysql_async::Conn,
        sql: &str,
    ) -> Result<Option<T>> {
        let row: Option<(Option<T>,)> = self
            .runtime
            .block_on(conn.query_first(sql))
            .with_context(|| format!("run {sql}"))?;
        Ok(row.and_then(|(value,)| value))
    }

    fn lock_unlock(&self, conn: &mut mysql_async::Conn) -> Result<()> {
        let got: Option<i64> = self.value(conn, "SELECT GET_LOCK('bench/raw', 0)")?;
        ensure!(got == Some(1), "raw lock held");
        let released: Option<i64> = self.value(conn, "SELECT RELEASE_LOCK('bench/raw')")?;
        ensure!(released == Some(1), "raw lock not released");
        Ok(())
    }

    fn close(&self, conn: mysql_async::Conn) -> Result<()> {
        self.runtime.block_on(conn.disconnect())?;
        Ok(())
    }

    /// `IS_USED_LOCK(lock)`: the holder's connection id.
    fn holder(&self, conn: &mut mysql_async::Conn, lock: &str) -> Result<Option<u64>> {
        self.value(conn, &format!("SELECT IS_USED_LOCK('{lock}')"))
    }

    /// How many other sessions wait in `GET_LOCK(lock, …)` (the process
    /// list shows the statement each runs).
    fn waiters(&self, conn: &mut mysql_async::Conn, lock: &str) -> Result<u64> {
        Ok(self
            .value(
                conn,
                &format!(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                     WHERE ID <> CONNECTION_ID() AND INFO LIKE '%GET_LOCK(''{lock}''%'"
                ),
            )?
            .unwrap_or(0))
    }
}

/// The named lock onlyone takes for `name` through `server`'s database.
fn lock_name(server: &MariaDbServer, name: &str) -> Result<String> {
    let backend = MysqlBackend::new(MysqlConfig::new(server.url("root")))?;
    Ok(backend.lock_name_for(&LockName::new(name)?))
}

/// Issue 15's goal for PostgreSQL, the same here: an acquire + release at
/// most this many times a raw connect + lock + unlock + close.
const GOAL_VS_CONNECT: f64 = 1.3;

/// Acquire + release through the library, against the raw calls on the
/// same driver (mysql_async).
pub fn acquire(
    config: &Config,
    _env: &Env,
    server: &MariaDbServer,
    report: &mut Report,
) -> Result<()> {
    const WHAT: &str = "MySQL acquire + release";
    let raw = Raw::new()?;
    let lock = Lock::new(
        "my-acquire",
        MysqlBackend::new(MysqlConfig::new(server.url("root")))?,
    )?;
    // The same without the PREFERRED attempt at TLS, which against this
    // server (no TLS) costs every session a second connect.
    let plain = Lock::new(
        "my-acquire-plain",
        MysqlBackend::new(MysqlConfig::new(format!(
            "{}?ssl-mode=DISABLED",
            server.url("root")
        )))?,
    )?;
    let mut open = raw.connect(server)?;
    // The first acquisition creates the state table: not what is timed.
    drop(lock.try_acquire()?);
    let once = |lock: &Lock| match lock.try_acquire()? {
        Attempt::Acquired(guard) => {
            drop(guard);
            Ok(())
        }
        Attempt::Held(holder) => bail!("uncontended lock held by {holder}"),
    };

    type Step<'a> = Box<dyn FnMut() -> Result<()> + 'a>;
    let mut steps: Vec<(&str, Step<'_>)> = vec![
        (
            "onlyone `try_acquire` + drop (its own session)",
            Box::new(|| once(&lock)),
        ),
        (
            "raw `GET_LOCK` + `RELEASE_LOCK` on an open connection",
            Box::new(|| raw.lock_unlock(&mut open)),
        ),
        (
            "raw connect + `GET_LOCK` + `RELEASE_LOCK` + close",
            Box::new(|| {
                let mut conn = raw.connect(server)?;
                raw.lock_unlock(&mut conn)?;
                raw.close(conn)
            }),
        ),
        (
            "onlyone `try_acquire` + drop, `?ssl-mode=DISABLED` (no TLS attempt)",
            Box::new(|| once(&plain)),
        ),
    ];
    let mut samples = vec![Samples::default(); steps.len()];
    for round in 0..config.my_rounds {
        for i in 0..steps.len() {
            let which = (round + i) % steps.len();
            for _ in 0..config.my_batch {
                let start = Instant::now();
                (steps[which].1)()?;
                samples[which].push(start.elapsed());
            }
        }
    }
    let mut detail = Detail::new(
        WHAT,
        &format!(
            "Loopback TCP to a throwaway MariaDB server without TLS (the URL's default \
             ssl-mode, PREFERRED, so plain text), InnoDB flushing relaxed as in the tests; \
             {} rounds of {} per contender, interleaved. onlyone holds each lock on a \
             session of its own (by design: a held lock must not share its session), so \
             its acquire includes connecting, the session's timeouts, the read-only, \
             Galera and Group Replication checks, the state table's `CREATE TABLE IF NOT \
             EXISTS`, `GET_LOCK`, the token's transaction and the heartbeat thread's \
             start, and its release the state row's update, `RELEASE_LOCK`, the close \
             and joining the heartbeat thread; after it, the pool/plain check opens a \
             second session (as `list`) to read the name's slot rows. The raw rows use \
             the same driver (mysql_async) over TCP. The last row is onlyone told not to \
             try TLS: under PREFERRED, a server without TLS costs each session a first \
             connection that is dropped after the server's greeting.",
            config.my_rounds, config.my_batch
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
    drop(steps);
    raw.close(open)?;
    let ours = samples[0].median();
    let raw_connect = samples[2].median();
    let disabled = samples[3].median();
    report.row(Row {
        what: WHAT.into(),
        onlyone: format!(
            "{} (`ssl-mode=DISABLED`: {})",
            fmt_ns(ours),
            fmt_ns(disabled)
        ),
        peers: format!(
            "raw on an open connection {}; raw with connect + close {}",
            fmt_ns(raw_open),
            fmt_ns(raw_connect)
        ),
        ratio: format!(
            "{} raw (open), {} raw (connect)",
            fmt_ratio(ours / raw_open),
            fmt_ratio(ours / raw_connect)
        ),
        goal: format!("≤ {GOAL_VS_CONNECT}× raw (connect), as for PostgreSQL"),
        verdict: Verdict::goal(ours / raw_connect <= GOAL_VS_CONNECT),
    });
    Ok(())
}

/// How the holder is stopped in a failover run.
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
    /// The server gave the lock to another session; `None` when it had
    /// not within [`GIVE_UP`].
    granted: Option<u64>,
    /// The waiter's command started (`None` as for `granted`).
    started: Option<u64>,
    /// The old holder's command ended (partitions only).
    old_ended: Option<u64>,
}

/// How long a failover run waits for the lock to pass: consul's ≈ 45 s,
/// the figure the issue compares with.
const GIVE_UP: Duration = Duration::from_secs(45);

fn failover_once(
    env: &Env,
    server: &MariaDbServer,
    name: &str,
    fault: Fault,
    flags: &[&str],
) -> Result<Failover> {
    let raw = Raw::new()?;
    let url = server.url("root");
    let lock = lock_name(server, name)?;
    let mut watch = raw.connect(server)?;
    let mut proxy = (fault == Fault::Partition)
        .then(|| -> Result<proxy::Proxy> {
            let addr: SocketAddr = format!("127.0.0.1:{}", server.port()).parse()?;
            Ok(proxy::Proxy::start(addr))
        })
        .transpose()?;
    let holder_url = match &proxy {
        Some(proxy) => format!(
            "mysql://root@127.0.0.1:{}/{}",
            proxy.addr().port(),
            mariadb_server::DB
        ),
        None => url.clone(),
    };
    let mut holder_flags = vec!["--mysql", holder_url.as_str()];
    holder_flags.extend_from_slice(flags);
    let helper = if fault == Fault::Partition {
        env.helper("hold-term")
    } else {
        env.helper("sleep")
    };
    let mut holder = Proc::start(
        env.onlyone_run(name, &holder_flags, &helper),
        "MySQL holder",
    )?;
    holder.ready()?;
    let holder_id = raw
        .holder(&mut watch, &lock)?
        .context("IS_USED_LOCK shows no holder")?;

    let mut waiter_flags = vec!["--mysql", url.as_str(), "--wait"];
    waiter_flags.extend_from_slice(flags);
    let mut waiter = Proc::start(
        env.onlyone_run(name, &waiter_flags, &env.helper("stamp")),
        "MySQL waiter",
    )?;
    wait_until("the waiter waits in GET_LOCK", || {
        Ok(raw.waiters(&mut watch, &lock)? > 0)
    })?;

    let fault_at = monotonic_ns();
    match (&proxy, fault) {
        (Some(proxy), Fault::Partition) => proxy.freeze(),
        _ => kill(holder.pid(), Signal::KILL),
    }
    // The server's view, every millisecond, until another session holds it.
    let give_up = Instant::now() + GIVE_UP;
    let granted = loop {
        if raw
            .holder(&mut watch, &lock)?
            .is_some_and(|id| id != holder_id)
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
    raw.close(watch)?;
    Ok(Failover {
        granted,
        started: granted.map(|_| started),
        old_ended,
    })
}

/// The shortest timing the backend allows: heartbeat deadline
/// 2 × 100 ms + 1 s, plus 100 ms of kill grace, plus its fixed 2 s margin.
const SHORT: [&str; 4] = ["--heartbeat", "100ms", "--kill-grace", "100ms"];

/// SIGKILL of the holder's supervisor → the waiter's command starts.
pub fn failover(
    config: &Config,
    env: &Env,
    server: &MariaDbServer,
    report: &mut Report,
) -> Result<()> {
    const GOAL_P99: f64 = 50e6;
    const WHAT: &str = "failover after SIGKILL of the holder, MySQL";
    let variants: [(&str, &[&str], usize); 2] = [
        ("defaults (lock-delay 10 s)", &[], config.my_failover_runs),
        (
            "`--heartbeat 100ms --kill-grace 100ms` (lock-delay 3.3 s)",
            &SHORT,
            config.my_failover_short_runs,
        ),
    ];
    let mut detail = Detail::new(
        "Failover after SIGKILL of the holder, MySQL",
        "A holder `onlyone run --mysql URL --name f -- HELPER` runs; a waiter \
         `onlyone run --mysql URL --wait --name f -- HELPER` waits in `GET_LOCK` (seen \
         in the process list). The bench sends SIGKILL to the holder's supervisor; the \
         kernel closes its connection and the server ends its session, which frees the \
         named lock. Lock granted: when `IS_USED_LOCK` first names another session \
         (polled every millisecond on a connection of the bench's). Command started: \
         the waiter's command's CLOCK_MONOTONIC stamp. Between the two, the waiter waits \
         the lock-delay, by design: the previous holder did not release cleanly, so \
         its command may still run until its heartbeat deadline and kill grace have \
         passed.",
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
            let run = failover_once(env, server, "my-failover", Fault::Kill, flags)?;
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
        what: WHAT.into(),
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
/// the old command must have stopped first. The smoke run does one run
/// with the shortest timing instead of the defaults.
pub fn partition(
    config: &Config,
    env: &Env,
    server: &MariaDbServer,
    report: &mut Report,
) -> Result<()> {
    const GOAL: f64 = 20e9;
    const WHAT: &str = "partition failover, MySQL (frozen proxy)";
    let (flags, settings): (&[&str], &str) = if config.smoke {
        (
            &SHORT,
            "`--heartbeat 100ms --kill-grace 100ms` (deadline 1.2 s, the server's idle \
             limit 4 s, lock-delay 3.3 s)",
        )
    } else {
        (
            &[],
            "Default settings (heartbeat deadline 3 s, the server's idle limit \
             `wait_timeout` 5 s, lock-delay 10 s)",
        )
    };
    let mut granted = Samples::default();
    let mut started = Samples::default();
    let mut detail = Detail::new(
        "Partition failover, MySQL (frozen proxy)",
        &format!(
            "The holder reaches the server through a TCP proxy \
             (tests/it/harness/proxy.rs); the waiter connects directly. At the fault the \
             proxy freezes: nothing is closed, no byte passes. The holder's heartbeat \
             misses its deadline, its supervisor stops the command (SIGTERM; the helper \
             prints its stamp as it exits). The lock passes when the server ends the \
             frozen session: the holder's session has `wait_timeout` set to the heartbeat \
             deadline + 2 s, so the server's own timer ends it, whatever the network in \
             between does (the frozen proxy's kernel still acknowledges TCP keepalives, as \
             a live middlebox would). Once granted, the waiter waits the lock-delay and \
             starts its command. Overlap is how long both commands ran at once (negative: \
             a gap). {settings}. A run gives up after 45 s (consul's figure) and then \
             closes the proxy."
        ),
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
    for run in 0..config.my_partition_runs {
        let result = failover_once(env, server, "my-partition", Fault::Partition, flags)?;
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
    if config.my_partition_runs == 0 {
        report.row(Row::not_measured(WHAT, "≤ 20 s with 0 overlap", "no runs"));
        return Ok(());
    }
    let onlyone = if never > 0 {
        format!(
            "no failover in {never} of {} runs: the lock stayed with the frozen session \
             for {} (then the run closed the proxy); old command stopped after {}",
            config.my_partition_runs,
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
        what: WHAT.into(),
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
