/*
 * onlyone's PostgreSQL backend: the lock-delay argument of docs/DESIGN.md,
 * for SPIN. A smaller, independent companion of tests/it/model.rs (which
 * is what the test suite runs): two contenders, one attempt each,
 * heartbeats with any latency, partitions with any keepalive timeout R,
 * server restart, pg_terminate_backend, heartbeat errors, supervisor
 * SIGKILL and host crash. No pause, fencing or failover variants.
 *
 * One tick is one second. The defaults hold:
 *   spin -a onlyone.pml && gcc -O2 -w -o pan pan.c && ./pan -m100000
 * D = T + G (or less) gives an overlap, printed as a trail (the -D
 * must be given again when replaying it):
 *   spin -DLOCK_DELAY=8 -a onlyone.pml && gcc -O2 -w -o pan pan.c \
 *     && ./pan -m100000 -i && spin -DLOCK_DELAY=8 -t -p -g onlyone.pml
 */

#ifndef HEARTBEAT
#define HEARTBEAT 1
#endif
#ifndef DEADLINE
#define DEADLINE 3     /* T */
#endif
#ifndef GRACE
#define GRACE 5        /* G */
#endif
#ifndef LOCK_DELAY
#define LOCK_DELAY 10  /* D */
#endif

#define N 2
#define AGE_CAP (DEADLINE > HEARTBEAT -> DEADLINE : HEARTBEAT)

mtype:phase = { WAITING, DELAYING, RUNNING, STOPPING, DONE };
mtype:beat = { IDLE, SENT, HOLDS, LOST };

mtype:phase phase[N];
byte left[N];       /* lock-delay still to wait */
byte grace[N];      /* kill grace still to wait */
bool session[N];    /* its lock session lives on the server: holds the lock */
bool link[N];       /* client and server can talk */
byte since_ok[N];   /* ticks since the send of the last successful heartbeat */
byte since_send[N]; /* ticks since the last heartbeat was sent */
mtype:beat beat[N]; /* the heartbeat in flight */
byte token[N];

bool row_held;      /* state row: the last holder ended uncleanly */
byte row_token;     /* state row: the last token handed out */
byte max_started;   /* ghost: the highest token of a started command */

#define lock_free (!session[0] && !session[1])
#define supervising(i) (phase[i] == DELAYING || phase[i] == RUNNING || phase[i] == STOPPING)
#define watching(i) (phase[i] == DELAYING || phase[i] == RUNNING)
#define running(i) (phase[i] == RUNNING || phase[i] == STOPPING)
/* Timers of a live supervisor that have fallen due: time waits for them. */
#define due(i) ((watching(i) && (since_ok[i] >= DEADLINE || \
                   (beat[i] == IDLE && since_send[i] >= HEARTBEAT))) || \
                (phase[i] == DELAYING && left[i] == 0 && since_ok[i] < DEADLINE) || \
                (phase[i] == STOPPING && grace[i] == 0))

/* The client closes the session; the server hears it only over a link. */
inline close_session(i) {
    if
    :: link[i] -> session[i] = false
    :: else -> skip
    fi
}

/* The holder may have lost the lock: do not start, or stop the command. */
inline lose(i) {
    if
    :: phase[i] == DELAYING -> close_session(i); phase[i] = DONE
    :: phase[i] == RUNNING -> phase[i] = STOPPING; grace[i] = GRACE; beat[i] = IDLE
    fi
}

active proctype world()
{
    byte i;
    for (i : 0 .. N - 1) {
        phase[i] = WAITING; link[i] = true; beat[i] = IDLE
    }
    do
    :: atomic {
        /* Time advances only when no timer is due. */
        !due(0) && !due(1) ->
        for (i : 0 .. N - 1) {
            if
            :: watching(i) ->
                since_ok[i] = (since_ok[i] < AGE_CAP -> since_ok[i] + 1 : AGE_CAP);
                since_send[i] = (since_send[i] < AGE_CAP -> since_send[i] + 1 : AGE_CAP)
            :: else -> skip
            fi;
            if
            :: phase[i] == DELAYING && left[i] > 0 -> left[i]--
            :: phase[i] == STOPPING && grace[i] > 0 -> grace[i]--
            :: else -> skip
            fi
        }
    }
    :: atomic {
        /* Server restart or failover: every session and lock at once. */
        !lock_free -> session[0] = false; session[1] = false
    }
    :: atomic {
        select (i : 0 .. N - 1);
        if
        /* The supervisor's timers. */
        :: watching(i) && since_ok[i] >= DEADLINE -> lose(i)
        :: watching(i) && beat[i] == IDLE && since_send[i] >= HEARTBEAT ->
            beat[i] = SENT; since_send[i] = 0
        :: phase[i] == DELAYING && left[i] == 0 && since_ok[i] < DEADLINE ->
            assert(token[i] > max_started);
            max_started = token[i];
            phase[i] = RUNNING
        :: phase[i] == STOPPING && grace[i] == 0 -> close_session(i); phase[i] = DONE
        /* Grant, token increment and state='held' in one transaction; its
           send time counts as the first successful heartbeat. */
        :: phase[i] == WAITING && link[i] && lock_free ->
            session[i] = true;
            row_token++;
            token[i] = row_token;
            left[i] = (row_held -> LOCK_DELAY : 0);
            row_held = true;
            since_ok[i] = 0; since_send[i] = 0; beat[i] = IDLE;
            phase[i] = DELAYING
        /* The command exits: a clean release on the lock session. */
        :: phase[i] == RUNNING ->
            if
            :: link[i] && session[i] -> row_held = false
            :: else -> skip
            fi;
            close_session(i); phase[i] = DONE
        :: phase[i] == STOPPING -> close_session(i); phase[i] = DONE
        /* The server runs the heartbeat; the answer comes back. */
        :: beat[i] == SENT && link[i] -> beat[i] = (session[i] -> HOLDS : LOST)
        :: watching(i) && link[i] && beat[i] == HOLDS ->
            since_ok[i] = since_send[i]; beat[i] = IDLE
        :: watching(i) && link[i] && beat[i] == LOST -> lose(i)
        :: watching(i) && beat[i] != IDLE -> lose(i) /* error, timeout, ambiguity */
        /* Partitions; the server drops an unreachable session after any R. */
        :: supervising(i) && link[i] && session[i] -> link[i] = false
        :: !link[i] -> link[i] = true
        :: session[i] && (!link[i] || !supervising(i)) -> session[i] = false
        :: session[i] -> session[i] = false /* pg_terminate_backend */
        /* Supervisor SIGKILL: socket closed, command killed by PDEATHSIG. */
        :: supervising(i) -> close_session(i); phase[i] = DONE
        /* Host crash: the command dies, the session lingers. */
        :: supervising(i) -> phase[i] = DONE
        :: else -> skip
        fi;
        assert(!(running(0) && running(1)))
    }
    od
}
