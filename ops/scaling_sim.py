"""Replays KEDA's scaling rule for the classify and explain pools against a burst of images.

    python -m ops.scaling_sim                               # the shipped targets and two others
    python -m ops.scaling_sim --classify-rate 900 --explain-rate 4 --startup-s 240

A burst arrives (``--images`` over ``--burst-s``, then nothing); classify drains it and, for the share of
images whose jobs ask for explanations, hands chunks to explain as it finishes them (what
``fakescope.service.processing`` does). Each pool's Redis list holds chunks (``FAKESCOPE_CHUNK_SIZE`` and
``FAKESCOPE_EXPLAIN_CHUNK_SIZE`` images), and the rule replayed is the one the ScaledObjects in
``deploy/k8s/base/scaledobjects.yaml`` ask for:

- the KEDA operator polls the list every ``pollingInterval``; a pool at zero replicas is woken to one
  when the list is non-empty, and a pool whose list stayed empty ``cooldownPeriod`` after it was last
  non-empty goes back to zero (``minReplicaCount: 0``);
- between one replica and ``maxReplicaCount`` the HPA acts every 15 s (its sync period) on the list
  length: desired = ceil(length / target), 10% tolerance, scale-up at most max(+4 pods, +100%) a step,
  scale-down at the highest recommendation of the last ``stabilizationWindowSeconds``;
- a new replica serves after ``--startup-s`` (node, image, model load) and holds its accelerator from the
  moment it is created, so GPU-minutes count every replica that exists, serving or not.

The per-replica rates default to the figures this project measured (cited in ``--help``); none was
measured on a GPU yet, so pass your own: ``fakescope_images_per_second{pool}`` on a worker's metrics
port is the figure to read. Pure Python; nothing is imported from the service.
"""

from __future__ import annotations

import argparse
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

HPA_SYNC_S = 15
HPA_TOLERANCE = 0.1
UPLOAD_WINDOW = 256

# ops/bench/README.md, "Job service vs model-only, 2026-12-02": the median of three runs was 337 images/s
# end to end with two single-thread classify workers on two cores, so 168 an image-serving process.
CLASSIFY_RATE = 168.0
# docs/explanations.md, "Explanation benchmarks": the evidence backend, 29.9 images per CPU-second on
# 256x256 fakes (one single-thread process). No VLM figure has been measured.
EXPLAIN_RATE = 29.9
# deploy/k8s/base/scaledobjects.yaml's listLength targets, classify and explain (a test holds them equal).
SHIPPED = (64, 16)


@dataclass(frozen=True)
class Rule:
    """One pool's ScaledObject: what KEDA and the HPA are told."""

    target: int  # list length (chunks) per replica
    min_replicas: int = 0
    max_replicas: int = 8
    polling_s: int = 15
    cooldown_s: int = 300
    stabilization_s: int = 120


@dataclass
class Replica:
    serves_from: float  # created, then starting (node, image, model) until this time
    busy_until: float = -math.inf
    holding: int = 0  # images of the chunk in hand


@dataclass
class Pool:
    name: str
    rule: Rule
    rate: float  # images/s one serving replica processes
    chunk: int  # images per message
    startup_s: float
    messages: deque[int] = field(default_factory=deque)  # the Redis list: images per waiting chunk
    replicas: list[Replica] = field(default_factory=list)
    last_active: float = -math.inf
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    done: int = 0
    drained_at: float | None = None
    zero_at: float | None = None
    peak_waiting: int = 0
    peak_replicas: int = 0
    replica_s: float = 0.0

    @property
    def waiting(self) -> int:
        """Images not done: in the list or in a replica's hands."""
        return sum(self.messages) + sum(r.holding for r in self.replicas)

    def list_length(self) -> int:
        return len(self.messages)

    def enqueue(self, images: int) -> None:
        while images > 0:
            self.messages.append(min(images, self.chunk))
            images -= self.chunk

    def scale_to(self, n: int, now: float) -> None:
        if n > len(self.replicas):
            self.replicas += [Replica(now + self.startup_s) for _ in range(n - len(self.replicas))]
            return
        # The HPA removes pods; a removed worker finishes the chunk in hand first (SIGTERM is a warm
        # shutdown, terminationGracePeriodSeconds covers it), so its images still count as done.
        for r in self.replicas[n:]:
            self.done += r.holding
        del self.replicas[n:]

    def keda_poll(self, now: float) -> None:
        if self.list_length() > 0:
            self.last_active = now
            if not self.replicas:
                self.scale_to(max(self.rule.min_replicas, 1), now)
        elif self.replicas and now - self.last_active >= self.rule.cooldown_s and self.rule.min_replicas == 0:
            self.scale_to(0, now)
            self.recommendations.clear()

    def hpa_sync(self, now: float) -> None:
        if not self.replicas:
            return  # at zero the HPA is idle and KEDA alone wakes the pool
        current = len(self.replicas)
        length = self.list_length()
        ratio = length / (self.rule.target * current)
        desired = current if abs(ratio - 1) <= HPA_TOLERANCE else math.ceil(length / self.rule.target)
        desired = min(max(desired, self.rule.min_replicas, 1), self.rule.max_replicas)
        self.recommendations.append((now, desired))
        while self.recommendations and self.recommendations[0][0] < now - self.rule.stabilization_s:
            self.recommendations.popleft()
        if desired > current:
            desired = min(desired, max(current + 4, 2 * current))
        else:
            desired = max(r for _, r in self.recommendations)  # down only as far as the whole window agrees
        self.scale_to(desired, now)

    def step(self, now: float, dt: float) -> int:
        """Works until ``now + dt``: each serving replica finishes its chunk and takes the next (prefetch 1);
        returns the images finished."""
        finished = 0
        end = now + dt
        for r in self.replicas:
            if r.serves_from > end:
                continue
            r.busy_until = max(r.busy_until, r.serves_from)
            while r.busy_until <= end:
                finished += r.holding
                r.holding = 0
                if not self.messages:
                    break
                r.holding = self.messages.popleft()
                r.busy_until += r.holding / self.rate
            r.busy_until = max(r.busy_until, end) if r.holding == 0 else r.busy_until
        self.done += finished
        self.replica_s += len(self.replicas) * dt
        self.peak_waiting = max(self.peak_waiting, self.waiting)
        self.peak_replicas = max(self.peak_replicas, len(self.replicas))
        return finished


@dataclass(frozen=True)
class Scenario:
    images: int
    burst_s: float
    explain_share: float
    horizon_s: float
    startup_s: float


def simulate(
    scenario: Scenario,
    classify: tuple[Rule, float, int],
    explain: tuple[Rule, float, int],
    timeline_every_s: float | None = None,
) -> tuple[Pool, Pool, list[str]]:
    """Runs the burst through both pools in 0.1 s steps; returns them and, if asked, a timeline."""
    cls = Pool("classify", classify[0], classify[1], classify[2], scenario.startup_s)
    exp = Pool("explain", explain[0], explain[1], explain[2], scenario.startup_s)
    # The API stores and enqueues an upload window at a time (256 images, two classify chunks).
    windows = math.ceil(scenario.images / UPLOAD_WINDOW)
    window_every = scenario.burst_s / windows
    explain_total = round(scenario.images * scenario.explain_share)
    lines: list[str] = []
    sent = 0
    owed_explain = 0.0
    handed_total = 0
    tick = 0
    dt = 0.1
    while tick * dt < scenario.horizon_s:
        now = tick * dt
        whole = tick % round(1 / dt) == 0
        while sent < windows and sent * window_every <= now:
            cls.enqueue(min(UPLOAD_WINDOW, scenario.images - sent * UPLOAD_WINDOW))
            sent += 1
        for pool in (cls, exp):
            if whole and round(now) % pool.rule.polling_s == 0:
                pool.keda_poll(now)
            if whole and round(now) % HPA_SYNC_S == 0:
                pool.hpa_sync(now)
        # A classified chunk of a job that asked for explanations hands its images to explain.
        owed_explain += cls.step(now, dt) * scenario.explain_share
        handed = explain_total - handed_total if cls.done >= scenario.images else int(owed_explain)
        if handed > 0:
            exp.enqueue(handed)
            owed_explain -= handed
            handed_total += handed
        exp.step(now, dt)
        for pool, total in ((cls, scenario.images), (exp, explain_total)):
            if pool.drained_at is None and pool.done >= total:
                pool.drained_at = now + dt
            if pool.drained_at is not None and pool.zero_at is None and not pool.replicas:
                pool.zero_at = now + dt
        if timeline_every_s and whole and round(now) % timeline_every_s == 0:
            lines.append(
                f"{now / 60:6.0f}  {cls.waiting:>9,} {cls.list_length():>6} {len(cls.replicas):>4}"
                f"   {exp.waiting:>8,} {exp.list_length():>6} {len(exp.replicas):>4}"
            )
        tick += 1
    return cls, exp, lines


def _minutes(s: float | None) -> str:
    return "never" if s is None else f"{s / 60:.1f}"


def _row(label: str, pool: Pool) -> str:
    return (
        f"{label:<22} {pool.name:<8} {_minutes(pool.drained_at):>8} {pool.peak_waiting:>12,}"
        f" {pool.peak_replicas:>5} {pool.replica_s / 60:>9.1f} {_minutes(pool.zero_at):>8}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100_000, help="images in the burst")
    p.add_argument("--burst-s", type=float, default=600, help="seconds the burst arrives over, evenly")
    p.add_argument("--horizon-s", type=float, default=1200, help="seconds simulated")
    p.add_argument(
        "--explain-share", type=float, default=0.2, help="share of the images whose jobs ask for explanations"
    )
    p.add_argument(
        "--classify-rate",
        type=float,
        default=CLASSIFY_RATE,
        help="images/s of one classify replica (default: ops/bench/README.md, 2026-12-02, 337 images/s with two"
        " single-thread workers, halved)",
    )
    p.add_argument(
        "--explain-rate",
        type=float,
        default=EXPLAIN_RATE,
        help="images/s of one explain replica (default: docs/explanations.md, the evidence backend, 29.9 images"
        " per CPU-second at 256x256)",
    )
    p.add_argument("--classify-chunk", type=int, default=128, help="FAKESCOPE_CHUNK_SIZE")
    p.add_argument("--explain-chunk", type=int, default=8, help="FAKESCOPE_EXPLAIN_CHUNK_SIZE")
    p.add_argument("--classify-max", type=int, default=8, help="classify maxReplicaCount")
    p.add_argument("--explain-max", type=int, default=4, help="explain maxReplicaCount")
    p.add_argument(
        "--startup-s",
        type=float,
        default=120,
        help="seconds from a replica's creation to its first chunk (an assumption: node, image pull, model load)",
    )
    p.add_argument(
        "--targets",
        default="16:4,64:16,160:40",
        help="classify:explain list-length targets to compare (chunks per replica); the shipped pair is 64:16",
    )
    p.add_argument("--timeline-every-s", type=float, default=120, help="timeline step for the shipped targets")
    args = p.parse_args(argv)

    scenario = Scenario(args.images, args.burst_s, args.explain_share, args.horizon_s, args.startup_s)
    rule = Rule(target=0)  # the shipped timings, which every pair below shares
    pairs = [tuple(int(x) for x in pair.split(":")) for pair in args.targets.split(",")]
    print(
        f"burst: {args.images:,} images over {args.burst_s / 60:.0f} min, then idle; {args.explain_share:.0%} of"
        f" them explained; replicas serve {args.startup_s:.0f} s after they are created"
    )
    print(
        f"classify: {args.classify_rate:g} images/s a replica, {args.classify_chunk} images a chunk, max"
        f" {args.classify_max}; explain: {args.explain_rate:g} images/s a replica, {args.explain_chunk} a chunk,"
        f" max {args.explain_max}; KEDA polls every {rule.polling_s} s, cooldown {rule.cooldown_s} s; HPA scale-down"
        f" window {rule.stabilization_s} s"
    )
    print()
    header = f"{'targets (chunks/replica)':<22} {'pool':<8} {'drained':>8} {'peak backlog':>12} {'peak':>5}"
    print(header + f" {'replica-':>9} {'at zero':>8}")
    print(f"{'classify:explain':<22} {'':<8} {'min':>8} {'images':>12} {'reps':>5} {'minutes':>9} {'min':>8}")
    shipped_lines: list[str] = []
    for c_target, e_target in pairs:
        cls, exp, lines = simulate(
            scenario,
            (Rule(c_target, max_replicas=args.classify_max), args.classify_rate, args.classify_chunk),
            (Rule(e_target, max_replicas=args.explain_max), args.explain_rate, args.explain_chunk),
            timeline_every_s=args.timeline_every_s,
        )
        label = f"{c_target}:{e_target}" + (" (shipped)" if (c_target, e_target) == SHIPPED else "")
        print(_row(label, cls))
        print(_row("", exp))
        if (c_target, e_target) == SHIPPED or not shipped_lines:
            shipped_lines = [f"timeline, targets {c_target}:{e_target}", *lines]
    print()
    print(shipped_lines[0])
    print("   min  classify: images  list reps    explain: images  list reps")
    print("\n".join(shipped_lines[1:]))
    print()
    print("drained: minutes from the burst's start to the pool's last image; replica-minutes: every replica that")
    print("existed, serving or starting (GPU-minutes on the gpu overlay); at zero: minutes until the pool had none.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
