"""Pure scheduling: the fair order of the queue, which jobs a poll asks about, how long the loop sleeps, and the
pause after the provider refused the account. No I/O; the job service feeds them rows and the clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bot.core.model import InFlight, Job

# Adaptive polling: a job is not asked about before EARLY_FRACTION of the median render time of its shape (but for a
# safety check every SAFETY_POLL_SECONDS), and the loop ticks faster until LATE_FRACTION of it has passed.
EARLY_FRACTION = 0.9
LATE_FRACTION = 1.25
SAFETY_POLL_SECONDS = 60.0
MIN_FAST_DELAY = 1.0
# A late job (past JOB_TIMEOUT_MINUTES) is asked about once a minute at first, then less often, at most this far apart.
LATE_POLL_MAX_SECONDS = 300.0
# A job any process of the fleet asked about within this part of its poll interval is not asked again: the fleet asks
# about it about once per interval, however many processes tick. Less than 1, as one process's ticks are an interval
# apart from read to read, and the time a tick stamps (its claim) comes a little after its read.
ASKED_RECENTLY = 0.75

Shape = tuple[int, str]  # (duration, resolution): jobs of one shape take about as long to render


def shape_of(job: Job | InFlight) -> Shape:
    """The key render-time estimates are kept under."""
    return (job.duration, job.resolution)


def fair_order(queued: Sequence[Job]) -> list[Job]:
    """Queued jobs (oldest first) in the order they will be sent: round-robin across members, oldest first within
    each, so one member's ten jobs do not starve another's one."""
    seen: dict[tuple[int | None, int | None], int] = {}
    ranked = []
    for index, job in enumerate(queued):
        member = (job.guild_id, job.user_id)
        turn = seen.get(member, 0)
        seen[member] = turn + 1
        ranked.append((turn, index, job))
    return [job for _, _, job in sorted(ranked, key=lambda item: (item[0], item[1]))]


def due_for_poll(
    jobs: Sequence[InFlight],
    *,
    now: float,
    typical: Mapping[Shape, float | None],
    job_timeout: float,
    interval: float,
) -> list[InFlight]:
    """The jobs at the provider worth asking about now: none before it can be ready (but for a rare safety check),
    late ones less and less often, and the others once per poll `interval` (a quarter of it around the expected
    finish, as the loop's own sleep) counted from the fleet's last question (`asked_ago`), not this process's."""
    due = []
    for job in jobs:
        started = job.submitted_at or job.created_at
        elapsed = now - started
        asked = elapsed if job.asked_ago is None else job.asked_ago
        overdue = elapsed - job_timeout
        if overdue > 0:
            if asked >= min(LATE_POLL_MAX_SECONDS, max(SAFETY_POLL_SECONDS, overdue / 10)):
                due.append(job)
            continue
        expected = typical.get(shape_of(job))
        if expected is not None and elapsed < EARLY_FRACTION * expected:
            if asked >= SAFETY_POLL_SECONDS:
                due.append(job)
            continue
        near_finish = expected is not None and elapsed <= LATE_FRACTION * expected
        every = min(interval, max(interval / 4, MIN_FAST_DELAY)) if near_finish else interval
        if job.asked_ago is None or asked >= ASKED_RECENTLY * every:
            due.append(job)
    return due


def poll_delay(
    jobs: Sequence[Job | InFlight], *, now: float, typical: Mapping[Shape, float | None], base: float
) -> float:
    """How long the poll loop sleeps: `base`, shorter while a job is around its expected finish."""
    delay = base
    for job in jobs:
        expected = typical.get(shape_of(job))
        if expected is None:
            continue
        elapsed = now - (job.submitted_at or job.created_at)
        if EARLY_FRACTION * expected <= elapsed <= LATE_FRACTION * expected:
            delay = min(delay, max(base / 4, MIN_FAST_DELAY))
        elif elapsed < EARLY_FRACTION * expected:
            delay = min(delay, max(EARLY_FRACTION * expected - elapsed, MIN_FAST_DELAY))
    return min(delay, base)


@dataclass
class AccountPause:
    """Submissions wait after the provider refused the key or the account; the operator is told once per trouble
    (not once per job), and told again only after a submit has worked in between."""

    seconds: float
    clock: Callable[[], float]
    until: float | None = None
    alerted: bool = False
    alerts: list[str] = field(default_factory=list)

    def pause(self, alert: str) -> bool:
        """Pause from now; returns True when this is a new trouble (its alert is queued)."""
        self.until = self.clock() + self.seconds
        if self.alerted:
            return False
        self.alerted = True
        self.alerts.append(alert)
        return True

    @property
    def active(self) -> bool:
        """Set since the last refusal, whether or not its time is over (the next submit is the probe)."""
        return self.until is not None

    def holding(self) -> bool:
        """True while submissions must wait; once the time is over, the next submit goes out as the probe."""
        if self.until is None:
            return False
        if self.clock() < self.until:
            return True
        self.until = None
        return False

    def worked(self) -> None:
        """A submit went through: a later trouble deserves a new alert."""
        self.alerted = False

    def take_alerts(self) -> list[str]:
        """Alerts raised since the last call."""
        alerts, self.alerts = self.alerts, []
        return alerts
