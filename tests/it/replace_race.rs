//! Two `--replace` starters at once (issue 9, item 7): the loser's SIGKILL
//! escalation used to hit the winner, which never got a SIGTERM, and the
//! winner's onlyone died with 137. A replacer signals only the holder it
//! verified, right before each signal, and escalates only against the
//! holder it sent SIGTERM.

use crate::util::{Running, TestEnv, code, pid_alive};

/// Starts `onlyone run --name bot --replace --kill-grace GRACE` whose
/// command prints `ran` and sleeps.
fn replacer(env: &TestEnv, grace: &str) -> Running {
    env.start(&[
        "run",
        "--name",
        "bot",
        "--replace",
        "--kill-grace",
        grace,
        "--",
        "sh",
        "-c",
        "echo ran; exec sleep 1000",
    ])
}

/// One round: a holder that ignores SIGTERM (so both replacers see it and
/// both escalate), two replacers started together, with kill graces far
/// enough apart that the first has killed the holder and taken the lock
/// when the second escalates. Exactly one runs its command; the other exits
/// 75 saying the lock was taken meanwhile; the winner is never signalled.
fn one_round(env: &TestEnv) {
    let holder = env.hold(
        "bot",
        "trap '' TERM; echo ready; while :; do sleep 0.01; done",
    );
    let seen = format!("replacing the holder of lock 'bot': pid {} ", holder.pid());
    let mut first = replacer(env, "300ms");
    let mut second = replacer(env, "700ms");
    for replacer in [&mut first, &mut second] {
        let line = replacer.expect_stderr_containing("replacing the holder");
        assert!(
            line.contains(&seen),
            "both replacers must see the holder: {line}"
        );
    }
    let (mut winner, mut loser) = if first.try_expect_stdout_line("ran") {
        (first, second)
    } else {
        (second, first)
    };
    assert!(
        !loser.try_expect_stdout_line("ran"),
        "both replacers ran their command"
    );
    let (status, _, stderr) = loser.finish();
    assert_eq!(code(status), 75, "the loser: {stderr}");
    // The loser has exited: had it signalled the winner, the winner would
    // be gone by now (137 after SIGKILL, 143 after SIGTERM).
    assert!(
        matches!(winner.child.try_wait(), Ok(None)) && pid_alive(winner.pid()),
        "the winner was stopped: {:?}",
        winner.child.try_wait()
    );
    // The loser may look before the winner has written its record: then
    // it names an unknown holder, which is just as true.
    assert!(
        stderr.contains("onlyone: lock 'bot' was taken by another starter while replacing: pid")
            || stderr.contains(
                "onlyone: lock 'bot' was taken by another starter while replacing: an unknown holder"
            ),
        "{stderr}"
    );
    let (status, _, _) = holder.finish();
    assert_eq!(code(status), 137, "the old holder is killed");
    winner.signal(libc::SIGTERM);
    let (status, _, _) = winner.finish();
    assert_eq!(code(status), 143, "the winner ends by our SIGTERM only");
}

#[test]
fn concurrent_replacers_never_signal_the_winner() {
    let env = TestEnv::new();
    for _ in 0..20 {
        one_round(&env);
    }
}
