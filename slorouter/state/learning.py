"""One latency model for several router processes: each publishes what its model learns from.

Every process of a logical router learns its latency model online. Alone, each would
learn from only its own share of the outcomes — with 8 replicas, an eighth — and route by
a noisier model than one router's (docs/scale-out.md, *Δ = 0 is not the ceiling*). So each
process publishes, with its load row, the :class:`~slorouter.models.latency.share.Observation`
of every outcome its model learned from (per outcome, never per token: the fit points and
windows its samples were reduced to, the first token and the lengths), and every process
feeds the others' into its own model, as if it had seen them: the model each process routes
by is learned from all the outcomes, as one router's is.

The row is the latest state of a holder, and a reader may skip rows (it reads less often
than the holder publishes, or a store round trip fails), so a row carries a **window** of
its holder's recent observations, each numbered: the observations recorded in the last
``keep_s`` (at most ``max_per_row``), as a run of consecutive sequence numbers from
``seq``. A reader remembers, per holder, the last number it ingested and takes only newer
ones — none twice, none lost while it reads at least every ``keep_s`` (what it missed is
counted: ``missed``). ``epoch`` (when the holder's log started) tells a holder that restarted
under the same name (a worker's slot) from one that went back in time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slorouter.models.latency import OnlineLatency
from slorouter.models.latency.share import Observation

if TYPE_CHECKING:
    from slorouter.state.rows import Row

MAX_PER_ROW = 128  # observations in one row (the newest): a row's size stays bounded ...
MAX_POINTS = 1024  # ... and their fit points and windows
NAME_BYTES = 256  # room for a backend's id in the row's header


def max_row_bytes() -> int:
    """The most the observations add to a row on the wire (see slorouter.state.rows)."""
    return MAX_PER_ROW * (80 + NAME_BYTES) + MAX_POINTS * 32 + 256


FORGET_S = 600.0  # a holder not seen this long is forgotten


@dataclass(frozen=True, slots=True, eq=False)
class Learned:
    """A holder's recent observations in its row: numbers ``seq``, ``seq + 1``, …
    (``count`` of them). Read from the wire, they are decoded only from where a reader
    needs them (``since``; ValueError when they do not match their arrays): a reader takes
    each observation from one of the several rows that carry it."""

    epoch: float
    seq: int
    count: int
    decoded: tuple[Observation, ...] | None = None
    decode: Callable[[int], tuple[Observation, ...]] | None = None  # the observations from index i

    @classmethod
    def of(cls, epoch: float, seq: int, observations: tuple[Observation, ...]) -> Learned:
        return cls(epoch, seq, len(observations), observations)

    @property
    def last(self) -> int:
        return self.seq + self.count - 1

    def since(self, i: int) -> tuple[Observation, ...]:
        """The observations from index ``i`` (number ``seq + i``) on."""
        if self.decoded is not None:
            return self.decoded[i:]
        assert self.decode is not None
        return self.decode(i)

    @property
    def observations(self) -> tuple[Observation, ...]:
        return self.since(0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Learned) and (self.epoch, self.seq, self.observations) == (
            other.epoch,
            other.seq,
            other.observations,
        )

    __hash__ = None  # type: ignore[assignment]


class LearningShare:
    """One process's side: its own observations out, the others' into its model."""

    def __init__(
        self,
        model: OnlineLatency,
        wall: Callable[[], float],
        *,
        keep_s: float,
        max_per_row: int = MAX_PER_ROW,
    ) -> None:
        if keep_s <= 0 or max_per_row < 1:
            raise ValueError("keep_s must be > 0 and max_per_row >= 1")
        self.model = model
        self.wall = wall
        self.keep_s = keep_s
        self.max_per_row = max_per_row
        self.epoch = wall()
        self._log: deque[tuple[float, Observation]] = deque(maxlen=max_per_row)
        self._next = 0  # the number of the next own observation
        # holder -> (epoch, last number ingested, when last seen on the wall clock)
        self._seen: dict[str, tuple[float, int, float]] = {}
        self._pruned_at = self.epoch
        self._cached: Learned | None = None
        self._cached_key = (-1, -1)
        self.sent = 0  # own observations recorded for publishing
        self.received = 0  # the others' observations ingested
        self.missed = 0  # the others' observations that left their rows before this process read them
        self.bad = 0  # rows whose observations did not decode (skipped)
        model.on_observation = self.record

    def record(self, obs: Observation) -> None:
        """The model learned from one of this process's own outcomes."""
        self._log.append((self.wall(), obs))
        self._next += 1
        self.sent += 1

    def outgoing(self) -> Learned | None:
        """The observations this process's row carries now (None: none recent)."""
        log = self._log
        old = self.wall() - self.keep_s
        while log and log[0][0] < old:
            log.popleft()
        if not log:
            return None
        seq = self._next - len(log)
        key = (seq, self._next)
        got = self._cached
        if key != self._cached_key:
            self._cached_key = key
            obs = [o for _, o in log]
            points = 0
            for i in range(len(obs) - 1, -1, -1):  # the newest within the points' bound
                points += len(obs[i].fit) + len(obs[i].windows)
                if points > MAX_POINTS:
                    obs = obs[i + 1 :]
                    break
            got = self._cached = Learned.of(self.epoch, self._next - len(obs), tuple(obs)) if obs else None
        return got

    def incoming(self, rows: Iterable[Row], known: Callable[[str], bool]) -> int:
        """Ingest the observations of the others' rows not ingested yet; ``known``: whether
        a backend is in this process's set (others are skipped). Returns how many."""
        model = self.model
        now = self.wall()
        n = 0
        for r in rows:
            got = r.learned
            if got is None:
                continue
            seen = self._seen.get(r.holder)
            if seen is not None and seen[0] == got.epoch:
                last = seen[1]
                if got.last <= last:
                    continue
                if got.seq > last + 1:
                    self.missed += got.seq - last - 1
            else:  # a holder not seen before (or restarted): what it still shows
                last = got.seq - 1
            try:
                new = got.since(last + 1 - got.seq)
            except ValueError:  # a malformed row: skip its observations (counted)
                self.bad += 1
                continue
            for obs in new:
                if known(obs.backend):
                    model.learn_observation(obs)
                    n += 1
            self._seen[r.holder] = (got.epoch, got.last, now)
        self.received += n
        if now - self._pruned_at > FORGET_S:  # holders gone for good (a row away for a
            self._pruned_at = now  # while, e.g. a store outage, is still remembered)
            for h in [h for h, v in self._seen.items() if now - v[2] > FORGET_S]:
                del self._seen[h]
        return n
