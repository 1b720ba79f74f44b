//! The attack on `run`'s one-thread supervisor and the waiter's changes
//! (branch adv-run): docs/RELIABILITY.md, "The one-thread supervisor and
//! the early waiter, attacked".

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres_lib::url;
use crate::postgres_run::unique;
use crate::util::{EVENT_TIMEOUT, TestEnv, pid_alive, signal_pid};

/// Finding 2: a PostgreSQL holder whose stderr takes no more (a stalled
/// logger's pipe) and whose heartbeat thread has something to say blocks
/// that thread in the write. Here what it has to say is provoked by
/// anyone who may connect: a stop announced on the key's channel that the
/// row does not back ("ignored a stop request ..."). No heartbeat is sent
/// any more and none fails: the server ends the silent session, the next
/// starter takes the lock and, after the lock-delay, runs its command
/// while the first one still runs (its supervisor was never told).
#[test]
fn a_heartbeat_blocked_on_stderr_does_not_let_the_command_run_past_the_loss() {
    let env = TestEnv::new();
    let url = url();
    let name = unique("blocked-stderr");
    let pid_file = env.path("pid");
    let common = [
        "--postgres",
        &url,
        "--heartbeat",
        "200ms",
        "--kill-grace",
        "200ms",
        "--lock-delay",
        "1s",
    ];
    let (read, write) = std::io::pipe().unwrap();
    let mut holder = env
        .onlyone(&["run"])
        .args(common)
        .args([
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "echo $$ > \"$0\"; exec sleep 1000",
        ])
        .arg(&pid_file)
        .stdout(Stdio::null())
        .stderr(write.try_clone().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let command = loop {
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(start.elapsed() < EVENT_TIMEOUT, "never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    let status = env
        .onlyone(&["status", "--postgres", &url, &name, "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let location = status["location"].as_str().unwrap();
    let key = location
        .split(" key ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .to_owned();
    let token = status["holder"]["record"]["token"].as_u64().unwrap();
    // Fill the pipe through a file description of our own.
    let mut filler = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", write.as_raw_fd()))
        .unwrap();
    while filler.write(&[b'x'; 4096]).is_ok() {}
    let notify = Command::new("psql")
        .args([url.as_str(), "-Atc"])
        .arg(format!(
            "select pg_notify('onlyone_stop_{key}', '{token} someone:1')"
        ))
        .output()
        .unwrap();
    assert!(notify.status.success(), "{notify:?}");
    let second = env
        .onlyone(&["run"])
        .args(common)
        .args(["--name", &name, "--timeout", "30s", "--", "sh", "-c"])
        .arg(format!(
            "s=$(cut -d' ' -f3 /proc/{command}/stat 2>/dev/null); [ -n \"$s\" ] && [ \"$s\" != Z ] && echo OVERLAP || echo ALONE"
        ))
        .output()
        .unwrap();
    let overlap = String::from_utf8_lossy(&second.stdout).contains("OVERLAP");
    // Let the holder write again, and end what is left.
    drop(filler);
    std::thread::spawn(move || std::io::copy(&mut { read }, &mut std::io::sink()));
    drop(write);
    if pid_alive(command) {
        signal_pid(command, libc::SIGKILL);
    }
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        !overlap,
        "the second holder ran while the first command still ran: {}",
        String::from_utf8_lossy(&second.stderr)
    );
}
