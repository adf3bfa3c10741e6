"""The runtime's timing and size constants that trade one behaviour for
another, each with a line on what it trades.

These are fixed by design, not settings a user changes (those are in
``config.Config``, which travels to every process of a run). Sizes that
belong to a data format stay with it (``serialization.OUT_OF_BAND_MIN``,
``shm.SHM_MIN`` and ``shm.REFERENCE_MAX``), and so do the short waits of
shutting down (joins, lingers), next to the step they bound. They live in
one module so that a change is made, reviewed and measured in one place, and
so that docs name a constant instead of repeating its value. Code reads
them as ``tuning.NAME`` at the moment it uses them.
"""

from __future__ import annotations

# -- a client's connection (connection.py, client.py) --------------------------

# Longest single wait on the broker's socket: a waiting thread looks at its
# condition at least this often. Longer saves wake-ups of an idle process;
# shorter sees a flag set by another thread sooner.
POLL_SLICE = 0.5

# -- batching (outbox.py) -------------------------------------------------------

# Tasks and outcomes travel in batches: up to BATCH_MAX entries or
# BATCH_BYTES of payload in one message. Larger batches cost the broker fewer
# messages; smaller ones start work sooner and hold less memory in flight.
BATCH_MAX = 64
BATCH_BYTES = 1 << 20
# A batch leaves this long after its first entry at the latest (sent by the
# heartbeat thread). Longer gathers more company; shorter delays less.
BATCH_DELAY = 0.002
# A submit that comes this long after the previous one goes at once, alone:
# a lone task never waits for company that is not coming.
SUBMIT_GAP = 0.001
# The origin tells the broker which DIRECT outcomes it has (RECEIVED) along
# with the next message, or this long after the first at the latest. The
# broker needs it only to forget those tasks: waking for it would cost what
# skipping the broker saved.
RECEIVED_WAIT = 0.05
# A map's chunks leave together, unless pickling them has taken this long
# (large arrays): then those pickled so far leave, so workers start on them.
PICKLING_WAIT = 0.001

# -- held tasks (holding.py) ----------------------------------------------------

# Longest a process keeps the newest task it submitted to itself, in case it
# waits on it at once (then it runs it in place: no round trip). Longer finds
# more such waits; shorter lets siblings start elsewhere sooner.
HOLD_LIMIT = 0.005
# Tasks the origin runs in place, one inside another, at most: each takes
# stack frames of the script's main thread.
INLINE_DEPTH = 32

# -- the heartbeat thread's timed jobs (ticker.py) ------------------------------

# While a process holds or batches tasks, its heartbeat thread looks every
# TICK seconds, until it has done neither for ACTIVE_SPAN: holding and
# batching then need not wake it each time. Shorter ticks cost wake-ups;
# longer ones delay batches.
TICK = 0.002
ACTIVE_SPAN = 0.1

# -- a worker (worker.py, prefetch.py) ------------------------------------------

# Nested tasks run on the stack of the tasks that wait under them: the
# serving thread's stack size and Python's recursion limit to match.
STACK_BYTES = 512 * 1024 * 1024
RECURSION_LIMIT = 100_000
# A worker whose tasks are short asks for enough tasks ahead to cover
# PREFETCH_COVER seconds of work (at most Config.prefetch), so it never
# idles waiting for the broker; it asks for none once a task runs longer than
# PREFETCH_STOP_ABOVE, and gives back what it holds, so nothing waits behind
# a long task. A larger cover saves round trips; a lower bound frees queued
# tasks sooner.
PREFETCH_COVER = 0.002
PREFETCH_STOP_ABOVE = 0.01
# How durations are smoothed: the weight of the newest one.
PREFETCH_SMOOTHING = 0.2
# A new prefetch is told only when it differs from the one told by this
# factor or more: fewer CREDIT messages against a closer fit.
PREFETCH_HYSTERESIS = 4
# Longest an outcome waits for the next ones of its batch before it goes.
RESULT_WAIT = 0.0005

# -- maps (futures.py) ----------------------------------------------------------

# A map over an input of known length is cut into this many chunks per
# worker: more chunks even out uneven tasks; fewer cost fewer messages.
MAP_CHUNKS_PER_WORKER = 4
# A map over a generator sizes its chunks as it goes: starting at one call,
# doubling while chunks come back within MAP_CHUNK_FAST seconds, halving
# when they take over MAP_CHUNK_SLOW, never over MAP_CHUNK_LARGEST calls.
MAP_CHUNK_FAST = 0.05
MAP_CHUNK_SLOW = 0.5
MAP_CHUNK_LARGEST = 4096

# -- the launcher (launcher/) ---------------------------------------------------

# How long the broker may take to say where it listens before the run fails.
BROKER_START_TIMEOUT = 30.0
# Seconds the script gets to stop after Ctrl-C or SIGTERM before it is
# killed: time for its own cleanup against a prompt stop.
STOP_TIMEOUT = 4.0
# Seconds a process gets to leave once the broker is gone, before the
# launcher terminates it: a joined worker leaves within this on its own.
LEAVE_TIME = 0.05
# How often the launcher (WATCH_POLL) and a host agent (AGENT_POLL) look at
# their worker processes: sooner reports against wake-ups of an idle launcher.
WATCH_POLL = 0.1
AGENT_POLL = 0.2
# A host agent's exit is reported this late: its own reports on its workers
# say more, and come first.
AGENT_DELAY = 1.0

# -- the broker (broker/) -------------------------------------------------------

# Messages the broker reads in one go before it dispatches: more is fewer
# dispatch passes under load; fewer hands queued tasks out sooner.
BROKER_READS = 2000
# Most tasks a worker may ask to hold ahead of the one it runs, whatever it
# asks (its CREDIT): a bound on what a lost worker takes down with it.
MAX_PREFETCH = 64
# Outcomes for one submitter leave the broker at once when this many have
# gathered, or this many bytes of them, as a client's batches do.
OUTCOMES_MAX = 64
OUTCOMES_BYTES = 1 << 20
# The broker's queue is deep from DEEP_PER_WORKER queued tasks per worker,
# and at least DEEP_MIN: then every prefetch slot counts. A deeper threshold
# keeps more tasks cancellable at the broker; a shallower one lets more go
# ahead to workers.
DEEP_PER_WORKER = 2
DEEP_MIN = 8
