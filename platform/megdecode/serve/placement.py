"""What each deployment asks Ray for, derived from the cluster the app starts on.

Why derive it: fixed requests (decoder 1 CPU, generator 1 CPU, ingress 0.5 CPU) add up
to 2.5 CPUs, and on a 2-CPU laptop Serve then waits forever for the last replica. A
``num_cpus`` left unset (None) in the config is a share of the CPUs the explicit requests
leave free, in the proportions of `WANT_CPUS`; a number in the config is used as given
(and reported when it cannot fit). The generator takes its GPU share when the cluster has
a GPU, else runs on CPU (``cpu_fallback``). Ray's CPU numbers are scheduling labels, not
cores: a 0.4-CPU replica may use a whole core while the others idle.

`plan_resources` is a pure function of (config, cluster): unit-tested on tables of
cluster sizes, logged at start, and the same for a given cluster, so a redeploy from the
same YAML leaves the replicas' options (and thus the replicas) untouched.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from megdecode.config import ConfigError
from megdecode.serve.config import ServeConfig

logger = logging.getLogger(__name__)

INGRESS, DECODER, GENERATOR = "Ingress", "BrainDecoder", "Generator"
KEYS = {INGRESS: "http.num_cpus", DECODER: "decoder.num_cpus", GENERATOR: "generator.num_cpus"}

# CPUs per replica a deployment would like when its num_cpus is unset, before scaling to
# the cluster: the decoder's forward and the generator's sampling each keep a core busy;
# the ingress parses bodies and runs the stream's preprocessing; on a GPU the generator's
# CPU work is launching kernels and encoding PNGs.
WANT_CPUS = {INGRESS: 0.5, DECODER: 1.0, GENERATOR: 1.0}
WANT_CPUS_GENERATOR_ON_GPU = 0.5
STEP = 0.01  # derived shares are rounded down to this, so they never add up past the cluster


@dataclass(frozen=True)
class Cluster:
    """The resources the app is planned against; `fixed` when no autoscaler can add nodes."""

    cpus: float
    gpus: float = 0.0
    fixed: bool = True  # a private local cluster; an attached one may grow (autoscaler)

    @classmethod
    def now(cls, fixed: bool = False) -> Cluster:
        """The connected Ray cluster's total resources (this machine's CPUs if Ray is not up)."""
        import ray

        if not ray.is_initialized():
            return cls(float(os.cpu_count() or 1), 0.0, fixed)
        total = ray.cluster_resources()
        return cls(float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0)), fixed)

    def describe(self) -> str:
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU"


@dataclass(frozen=True)
class Share:
    """One deployment's request per replica and its replica counts."""

    deployment: str
    num_cpus: float
    num_gpus: float = 0.0
    replicas: int = 1  # what the app starts with
    max_replicas: int = 1  # autoscaling ceiling (= replicas for a fixed pool)
    derived: bool = True  # num_cpus derived from the cluster (False: the config's value)

    def actor_options(self) -> dict[str, float]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    def describe(self) -> str:
        count = (
            f"{self.replicas}"
            if self.replicas == self.max_replicas
            else f"{self.replicas}..{self.max_replicas}"
        )
        gpu = f" + {self.num_gpus:g} GPU" if self.num_gpus else ""
        how = "derived" if self.derived else "config"
        return f"{self.deployment} {count} x {self.num_cpus:g} CPU{gpu} ({how})"


@dataclass(frozen=True)
class Plan:
    """Per-deployment requests for one cluster; `problems` name what cannot fit."""

    cluster: Cluster
    shares: tuple[Share, ...]
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return not self.problems

    def share(self, deployment: str) -> Share:
        for s in self.shares:
            if s.deployment == deployment:
                return s
        raise KeyError(deployment)

    def has(self, deployment: str) -> bool:
        return any(s.deployment == deployment for s in self.shares)

    def cpus(self) -> float:
        """CPUs the app holds once its initial replicas run."""
        return sum(s.num_cpus * s.replicas for s in self.shares)

    def gpus(self) -> float:
        return sum(s.num_gpus * s.replicas for s in self.shares)

    def describe(self) -> str:
        return (
            f"{'; '.join(s.describe() for s in self.shares)}: {self.cpus():g} of {self.cluster.cpus:g} CPU"
            + (
                f", {self.gpus():g} of {self.cluster.gpus:g} GPU"
                if self.cluster.gpus or self.gpus()
                else ""
            )
        )


def _floor(value: float) -> float:
    return math.floor(value / STEP + 1e-9) * STEP if value > 0 else 0.0


def plan_resources(cfg: ServeConfig, cluster: Cluster) -> Plan:
    """Requests of the Ingress, the BrainDecoder pool and (with weights) the Generator pool.

    Raises `ConfigError` only when the generator needs a GPU that the cluster lacks and
    ``cpu_fallback`` is off; every other misfit is returned in `Plan.problems`, for the
    caller to refuse at once (a fixed cluster) or to wait on (an autoscaler may add nodes).
    """
    g, notes, problems = cfg.generator, [], []
    rows: list[
        tuple[str, float | None, float, int, int]
    ] = [  # (name, explicit cpus, gpus, replicas, max)
        (INGRESS, cfg.http.num_cpus, 0.0, 1, 1),
        (DECODER, cfg.decoder.num_cpus, 0.0, cfg.decoder.num_replicas, cfg.decoder.num_replicas),
    ]
    want = dict(WANT_CPUS)
    if g.weights:
        gpus = g.num_gpus
        if gpus > 0 and cluster.gpus < gpus:
            if not g.cpu_fallback:
                raise ConfigError(
                    f"generator.num_gpus={gpus:g} but the cluster has {cluster.gpus:g} GPU "
                    "and generator.cpu_fallback is off"
                )
            notes.append(f"no GPU in the cluster: the generator runs on CPU (asked {gpus:g} GPU)")
            gpus = 0.0
        elif gpus > 0:
            want[GENERATOR] = WANT_CPUS_GENERATOR_ON_GPU
        rows.append((GENERATOR, g.num_cpus, gpus, max(1, g.min_replicas), g.max_replicas))

    explicit = sum(cpus * n for _, cpus, _, n, _ in rows if cpus is not None)
    wanted = sum(want[name] * n for name, cpus, _, n, _ in rows if cpus is None)
    free = cluster.cpus - explicit
    scale = 1.0 if wanted <= 0 or free >= wanted else max(0.0, free) / wanted
    if wanted > 0 and scale < 1.0:
        notes.append(
            f"{wanted:g} CPU wanted by the unset num_cpus, {max(0.0, free):g} left by the "
            f"explicit ones: scaled by {scale:.2f}"
        )
    shares = []
    for name, cpus, gpus, n, top in rows:
        share = Share(
            name,
            float(cpus) if cpus is not None else _floor(want[name] * scale),
            gpus,
            n,
            top,
            derived=cpus is None,
        )
        if share.derived and share.num_cpus == 0:
            notes.append(f"no CPU left for {name}: it runs without a reservation")
        if cpus is not None and cpus > cluster.cpus:
            problems.append(
                f"{name} asks {cpus:g} CPU per replica ({KEYS[name]}); the cluster has {cluster.cpus:g}"
            )
        shares.append(share)
    if explicit > cluster.cpus and not problems:
        problems.append(
            "the configured num_cpus add up to "
            + " + ".join(
                f"{s.replicas} x {s.num_cpus:g} ({s.deployment})" for s in shares if not s.derived
            )
            + f" = {explicit:g} CPU; the cluster has {cluster.cpus:g}"
        )
    plan = Plan(cluster, tuple(shares))
    if g.weights:
        shares[-1] = _cap_generator(plan, shares[-1], notes, problems)
    return Plan(cluster, tuple(shares), tuple(notes), tuple(problems))


def _cap_generator(plan: Plan, share: Share, notes: list[str], problems: list[str]) -> Share:
    """Autoscaling ceiling of the generator: on a fixed cluster, the replicas that fit."""
    if share.num_gpus * share.replicas > plan.cluster.gpus:
        problems.append(
            f"{GENERATOR} asks {share.replicas} x {share.num_gpus:g} GPU (generator.min_replicas x "
            f"generator.num_gpus); the cluster has {plan.cluster.gpus:g}"
        )
    if not plan.cluster.fixed:
        return share
    room = share.max_replicas
    if share.num_cpus > 0:
        room = min(
            room, share.replicas + int((plan.cluster.cpus - plan.cpus()) / share.num_cpus + 1e-9)
        )
    if share.num_gpus > 0:
        room = min(room, int(plan.cluster.gpus / share.num_gpus + 1e-9))
    room = max(room, share.replicas)
    if room < share.max_replicas:
        notes.append(
            f"generator.max_replicas {share.max_replicas} -> {room}: no room for more on this cluster"
        )
        return Share(
            share.deployment, share.num_cpus, share.num_gpus, share.replicas, room, share.derived
        )
    return share


def log_plan(plan: Plan) -> None:
    """One INFO line with the chosen requests, one per note; problems as warnings."""
    logger.info("serve resources on %s: %s", plan.cluster.describe(), plan.describe())
    for note in plan.notes:
        logger.info("serve resources: %s", note)
    for problem in plan.problems:
        logger.warning("serve resources: %s", problem)
