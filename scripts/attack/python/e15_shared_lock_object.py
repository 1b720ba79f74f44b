# E15: one onlyone.Lock object shared by two threads with `with lock:`. A
# releases early inside its block (the critical part is done); B then
# enters; A's block ends -- and releases B's lock.
import threading, tempfile, onlyone
d = tempfile.mkdtemp()
lock = onlyone.Lock("e15", dir=d)
a_released, b_entered = threading.Event(), threading.Event()
def a():
    with lock as held:
        held.release()            # critical part done; tail work follows
        a_released.set()
        b_entered.wait()
    # A's `with` ends here
def b():
    a_released.wait()
    with lock as held:
        b_entered.set()
        ta.join()                 # A's block has ended
        print("B believes it holds: lost =", held.lost, repr(held))
        other = onlyone.Lock("e15", dir=d).try_acquire()
        print("a third holder gets the lock while B is inside its with:", other is not None)
ta = threading.Thread(target=a); tb = threading.Thread(target=b)
ta.start(); tb.start(); tb.join()
