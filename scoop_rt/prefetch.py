"""How many tasks a worker asks for ahead of the one it runs: a pure rule.

While tasks are short, a worker asks for enough of them ahead to cover
``tuning.PREFETCH_COVER`` seconds of work (at most ``Config.prefetch``), so
it never idles waiting for the broker's round trip; once a task runs longer
than ``tuning.PREFETCH_STOP_ABOVE`` it asks for none, so no queued task
waits behind a long one while another worker is free.

``Prefetch`` sees durations and answers the credit worth telling the
broker (CREDIT), or None when the broker's is close enough; ``tell``
records what was told. It sends nothing and keeps no time of its own: the
worker times its tasks and sends the answer.
"""

from __future__ import annotations

from . import tuning


class Prefetch:
    def __init__(self, most: int):
        self.most = most  # Config.prefetch: 0 turns prefetch off
        self.told = 0     # the credit the broker was last told
        self._took = 0.0  # recent task durations, smoothed

    def observe(self, took: float) -> int | None:
        """A task took ``took`` seconds: the credit worth telling now, or
        None. Only the thread that runs tasks calls it."""
        long = tuning.PREFETCH_STOP_ABOVE
        weight = tuning.PREFETCH_SMOOTHING
        self._took = took if took > long else (1 - weight) * self._took + weight * took
        if self._took > long:
            wanted = 0
        else:
            wanted = min(self.most, _power_of_two(tuning.PREFETCH_COVER / max(self._took, 1e-6)))
        told = self.told
        if wanted == told:
            return None
        if wanted and told and max(wanted, told) < tuning.PREFETCH_HYSTERESIS * min(wanted, told):
            return None  # twice or half as many ahead is not worth a message
        return wanted

    def tell(self, credit: int) -> bool:
        """Record ``credit`` as told; False if it was the one told already
        (then there is nothing to send). A running task that turns long
        tells 0 (from another thread: the caller holds a lock)."""
        if credit == self.told:
            return False
        self.told = credit
        return True


def _power_of_two(x: float) -> int:
    """The largest power of two at most ``x`` (0 below 1): few distinct
    values, so a worker seldom needs to tell the broker a new one."""
    return 0 if x < 1 else 1 << (int(x).bit_length() - 1)
