//! `--fenced-writes`: every witness writes rows through the fence
//! (`ONLYONE_FENCE`) while it holds the lock, and the run checks afterwards,
//! from the database alone, that no row was committed under a token that
//! was stale at commit time.
//!
//! The check needs the commit order of the fenced writes and of the token
//! increments. Both go through one counter row (`<prefix>_counter`): each
//! fenced transaction takes the next number from it, and so does a trigger
//! on the run's own state table whenever the token changes. A row lock is
//! held until commit, so the numbers are in commit order. In that order,
//! every write must carry the latest token committed before it: a smaller
//! one is a stale write that committed; a larger one a write ahead of its
//! own token.
//!
//! Each witness also leaves a writer behind outside its process group (an
//! escapee) that writes for 4.5 s: its supervisor kills it when the
//! command ends, but a SIGKILLed supervisor cannot, so it goes on writing
//! after the next holder's token. The fence must refuse those writes; the
//! refusals are counted (`fence-refusals.log` in the work directory).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::procs;

use anyhow::{Context, bail};
use serde::Serialize;

/// The tables of one run: `<prefix>_state` (onlyone's state table, given
/// with `--table`), `<prefix>_counter` and `<prefix>_order`.
#[derive(Clone, Debug)]
pub struct Tables {
    pub url: String,
    pub prefix: String,
}

/// What the database shows after the run.
#[derive(Debug, Default, Serialize)]
pub struct FencedCounts {
    /// Rows committed through the fence.
    pub writes: u64,
    /// Holders (tokens) that committed at least one.
    pub writing_holders: u64,
    /// Rows committed under a token that a later token had replaced before
    /// the commit: must be 0.
    pub stale_commits: u64,
    /// Rows committed before their own token was: must be 0.
    pub early_commits: u64,
    /// Writes the fence refused (the witnesses' count): stale writers that
    /// the chaos made.
    pub refused: u64,
}

impl Tables {
    pub fn state(&self) -> String {
        format!("public.{}_state", self.prefix)
    }

    /// Creates the counter and the order tables and the trigger that
    /// records token changes. The state table must exist (onlyone made it).
    pub fn create(&self) -> anyhow::Result<()> {
        let p = &self.prefix;
        let state = self.state();
        psql(
            &self.url,
            &format!(
                "CREATE TABLE public.{p}_counter (n bigint NOT NULL); \
                 INSERT INTO public.{p}_counter VALUES (0); \
                 CREATE TABLE public.{p}_order (n bigint PRIMARY KEY, kind text NOT NULL, \
                   token bigint NOT NULL, pid integer); \
                 INSERT INTO public.{p}_order SELECT 0, 'token', max(token), NULL FROM {state}; \
                 CREATE FUNCTION public.{p}_note_token() RETURNS trigger LANGUAGE plpgsql AS $f$ \
                 DECLARE k bigint; BEGIN \
                   IF TG_OP = 'INSERT' OR NEW.token IS DISTINCT FROM OLD.token THEN \
                     UPDATE public.{p}_counter SET n = n + 1 RETURNING n INTO k; \
                     INSERT INTO public.{p}_order VALUES (k, 'token', NEW.token, NEW.pid); \
                   END IF; RETURN NEW; END $f$; \
                 CREATE TRIGGER {p}_note_token AFTER INSERT OR UPDATE ON {state} \
                   FOR EACH ROW EXECUTE PROCEDURE public.{p}_note_token()"
            ),
        )
        .map(drop)
    }

    /// Counts the fenced writes and checks their order against the tokens.
    pub fn check(&self) -> anyhow::Result<FencedCounts> {
        let p = &self.prefix;
        let out = psql(
            &self.url,
            &format!(
                "SELECT count(*) FILTER (WHERE kind = 'write'), \
                        count(DISTINCT token) FILTER (WHERE kind = 'write'), \
                        count(*) FILTER (WHERE kind = 'write' AND token < latest), \
                        count(*) FILTER (WHERE kind = 'write' AND token > latest) \
                 FROM (SELECT kind, token, \
                         max(token) FILTER (WHERE kind = 'token') OVER (ORDER BY n) AS latest \
                       FROM public.{p}_order) s"
            ),
        )?;
        let numbers: Vec<u64> = out
            .trim()
            .split('|')
            .map(|n| n.parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("unexpected answer {out:?}"))?;
        let [writes, writing_holders, stale_commits, early_commits] = numbers[..] else {
            bail!("unexpected answer {out:?}");
        };
        Ok(FencedCounts {
            writes,
            writing_holders,
            stale_commits,
            early_commits,
            refused: 0,
        })
    }

    /// Drops the run's tables and functions.
    pub fn drop_all(&self) -> anyhow::Result<()> {
        let p = &self.prefix;
        psql(
            &self.url,
            &format!(
                "DROP TABLE IF EXISTS public.{p}_state, public.{p}_counter, public.{p}_order; \
                 DROP FUNCTION IF EXISTS public.{p}_note_token(); \
                 DROP FUNCTION IF EXISTS public.{p}_state_fence(text, bigint)"
            ),
        )
        .map(drop)
    }
}

/// How long a writer that escaped its witness's group writes: past the
/// next holder's start when the supervisor was SIGKILLed (its lock-delay
/// is 3.5 to 4.2 s with the short timings), within the leftover check's
/// grace at the end of a run.
const ESCAPEE_WRITES_FOR: Duration = Duration::from_millis(4500);

/// The pause between two transactions of an escaped writer.
const ESCAPEE_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, Args)]
pub struct EscapeeArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    prefix: String,
    /// The witness log, beside which refusals are counted
    #[arg(long)]
    log: PathBuf,
    /// Only a mark on the command line, by which the final sweep finds
    /// this process (see [`escapee_mark`])
    #[arg(long)]
    mark: PathBuf,
}

/// The path that escapees of the run whose witness log is `log` carry on
/// their command line.
pub fn escapee_mark(log: &Path) -> PathBuf {
    log.with_file_name("escapees")
}

/// Kills the escapees still writing when the run ends: they are meant to
/// outlive their supervisors, so they are not leaks.
pub fn kill_escapees(log: &Path) {
    let mark = escapee_mark(log).display().to_string();
    for pid in procs::processes_marked(&mark) {
        if let Some(process) = procs::Pinned::ours(pid, "") {
            process.signal(rustix::process::Signal::KILL);
        }
    }
}

/// Starts a fenced writer in a process group of its own: what a command
/// leaves behind outside the group. Its supervisor kills it when the
/// command exits; a SIGKILLed supervisor cannot, and the fence must refuse
/// its writes once the next holder's token is committed.
pub fn escape(url: &str, prefix: &str, log: &Path) -> std::io::Result<()> {
    let me = std::env::current_exe()?;
    Command::new(me)
        .arg("escapee")
        .args(["--url", url, "--prefix", prefix])
        .arg("--log")
        .arg(log)
        .arg("--mark")
        .arg(escapee_mark(log))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
}

/// The escaped writer: writes through the fence for
/// [`ESCAPEE_WRITES_FOR`], counting refusals as a witness does.
pub fn run_escapee(args: &EscapeeArgs) -> ExitCode {
    let token = std::env::var("ONLYONE_TOKEN")
        .ok()
        .and_then(|t| t.parse().ok());
    let Ok(fence) = std::env::var("ONLYONE_FENCE") else {
        return ExitCode::from(2);
    };
    let until = Instant::now() + ESCAPEE_WRITES_FOR;
    let written =
        Writer::start(&args.url, &args.prefix, fence, token.unwrap_or(0)).and_then(|mut writer| {
            let mut refused = 0;
            while Instant::now() < until {
                refused += writer.write_until(Instant::now())?;
                // Refusals come back at once: without a pause, escapees
                // would take the machine's CPUs from the holders.
                std::thread::sleep(ESCAPEE_PAUSE);
            }
            writer.finish()?;
            Ok(refused)
        });
    match written {
        Ok(refused) if refused > 0 => {
            let _ = note_refused(&args.log, std::process::id(), token, refused);
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

/// Where witnesses count the writes the fence refused: beside the witness
/// log, one line each: `pid token refused`.
fn refusals_file(log: &Path) -> PathBuf {
    log.with_file_name("fence-refusals.log")
}

/// Records that the witness `pid` (token `token`) had `refused` writes
/// refused by the fence.
pub fn note_refused(log: &Path, pid: u32, token: Option<u64>, refused: u64) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(refusals_file(log))?;
    writeln!(file, "{pid} {} {refused}", token.unwrap_or(0))
}

/// The writes refused, as the witnesses beside `log` counted them.
pub fn refused(log: &Path) -> u64 {
    std::fs::read_to_string(refusals_file(log))
        .map(|text| {
            text.lines()
                .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs `sql` with psql and returns its unaligned output.
fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let output = Command::new("psql")
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("cannot run psql")?;
    if !output.status.success() {
        bail!(
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The witness's writer: one psql session, fed one transaction at a time.
pub struct Writer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    fence: String,
    token: u64,
    prefix: String,
}

impl Writer {
    /// Starts psql for the holder whose fence call is `fence` (its
    /// `ONLYONE_FENCE`) and token `token`.
    pub fn start(url: &str, prefix: &str, fence: String, token: u64) -> std::io::Result<Writer> {
        let mut child = Command::new("psql")
            .args(["-XAtq", "-d", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Stale tokens are expected: their errors say nothing new.
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut writer = Writer {
            child,
            stdin,
            stdout,
            fence,
            token,
            prefix: prefix.to_owned(),
        };
        // Query results go nowhere; only the \echo acknowledgements come
        // back.
        writer.send("\\o /dev/null")?;
        Ok(writer)
    }

    /// Writes fenced rows until `until` (at least one), and returns how
    /// many the fence refused. Each transaction is sent in two halves, so
    /// that a pause of this process (SIGSTOP) can leave it open after the
    /// fence, holding the next holder off.
    pub fn write_until(&mut self, until: Instant) -> std::io::Result<u64> {
        let mut refused = 0;
        loop {
            let p = &self.prefix;
            let pid = std::process::id();
            // psql's ERROR: whether the last statement failed (the
            // fence's refusal aborts the transaction).
            let failed = self.send(&format!(
                "BEGIN;\n{};\nWITH c AS (UPDATE public.{p}_counter SET n = n + 1 RETURNING n) \
                 INSERT INTO public.{p}_order SELECT n, 'write', {}, {pid} FROM c;",
                self.fence, self.token
            ))?;
            if failed == "true" {
                refused += 1;
            }
            self.send("COMMIT;")?;
            if Instant::now() >= until {
                return Ok(refused);
            }
        }
    }

    /// Sends `text`, waits until psql has run it, and returns its `ERROR`
    /// variable.
    fn send(&mut self, text: &str) -> std::io::Result<String> {
        writeln!(self.stdin, "{text}\n\\echo :ERROR")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("psql ended"));
        }
        Ok(line.trim().to_owned())
    }

    /// Ends the session and waits for psql.
    pub fn finish(self) -> std::io::Result<()> {
        let Writer {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        child.wait().map(drop)
    }
}
