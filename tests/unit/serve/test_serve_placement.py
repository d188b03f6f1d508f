"""The serving resource plan on tables of cluster sizes: the app fits where it can, explicit
requests stand, misfits are named."""

from __future__ import annotations

import pytest

from megdecode.config import ConfigError
from megdecode.serve.config import ServeConfig
from megdecode.serve.placement import DECODER, GENERATOR, INGRESS, Cluster, plan_resources


def config(**sections: dict) -> ServeConfig:
    return ServeConfig.from_mapping({"decoder": {"model": "b"}, **sections})


WITH_GENERATOR = {"generator": {"weights": "g"}}


@pytest.mark.parametrize(
    ("cpus", "gpus", "generator", "expected"),
    [
        # cluster,  generator?, (ingress, decoder, generator) CPUs per replica
        (1, 0, False, (0.33, 0.66, None)),
        (2, 0, False, (0.5, 1.0, None)),
        (2, 0, True, (0.4, 0.8, 0.8)),  # the laptop case: 2.5 CPUs wanted, scaled to fit 2
        (4, 0, True, (0.5, 1.0, 1.0)),
        (16, 1, True, (0.5, 1.0, 0.5)),  # on a GPU the generator needs less CPU
        (0.5, 0, True, (0.1, 0.2, 0.2)),
    ],
)
def test_derived_requests_fit_the_cluster(
    cpus: float, gpus: float, generator: bool, expected: tuple[float, float, float | None]
) -> None:
    cfg = config(**(WITH_GENERATOR if generator else {}))
    plan = plan_resources(cfg, Cluster(cpus, gpus))
    assert plan.fits, plan.problems
    assert plan.share(INGRESS).num_cpus == pytest.approx(expected[0])
    assert plan.share(DECODER).num_cpus == pytest.approx(expected[1])
    assert plan.has(GENERATOR) == generator
    if generator:
        assert plan.share(GENERATOR).num_cpus == pytest.approx(expected[2])
    assert plan.cpus() <= cpus + 1e-9
    assert all(s.derived for s in plan.shares)


@pytest.mark.parametrize(
    ("cpus", "gpus", "num_gpus", "expected_gpus", "max_replicas"),
    [
        (
            2,
            0,
            0.25,
            0.0,
            1,
        ),  # no GPU: CPU fallback, and no room for a second CPU replica on 2 CPUs
        (4, 0, 0.25, 0.0, 2),
        (4, 1, 0.25, 0.25, 3),  # the GPU share, up to max_replicas
        (4, 1, 0.5, 0.5, 2),  # two halves of the GPU
        (4, 0.5, 0.25, 0.25, 2),
        (
            2,
            1,
            0.25,
            0.25,
            1,
        ),  # the GPU has room, the 2 CPUs do not (0.5 CPU per generator replica)
        (4, 1, 0.0, 0.0, 2),  # asked for no GPU: CPU replicas
    ],
)
def test_the_generator_takes_its_gpu_share_when_there_is_one(
    cpus: float, gpus: float, num_gpus: float, expected_gpus: float, max_replicas: int
) -> None:
    cfg = config(generator={"weights": "g", "num_gpus": num_gpus, "max_replicas": 3})
    plan = plan_resources(cfg, Cluster(cpus, gpus))
    gen = plan.share(GENERATOR)
    assert plan.fits
    assert gen.num_gpus == expected_gpus and gen.actor_options()["num_gpus"] == expected_gpus
    assert gen.max_replicas == max_replicas
    assert (expected_gpus == 0 and num_gpus > 0) == any("no GPU" in n for n in plan.notes)


def test_no_gpu_and_no_fallback_is_a_config_error() -> None:
    cfg = config(generator={"weights": "g", "cpu_fallback": False})
    with pytest.raises(ConfigError, match="cpu_fallback"):
        plan_resources(cfg, Cluster(8, 0))


def test_explicit_requests_are_kept_and_the_rest_shares_what_is_left() -> None:
    cfg = config(decoder={"model": "b", "num_cpus": 1.5}, **WITH_GENERATOR)
    plan = plan_resources(cfg, Cluster(2, 0))
    assert plan.fits
    dec = plan.share(DECODER)
    assert dec.num_cpus == 1.5 and not dec.derived
    # 0.5 CPU left for ingress (wants 0.5) and generator (wants 1): a third and two thirds
    assert plan.share(INGRESS).num_cpus == pytest.approx(0.16)
    assert plan.share(GENERATOR).num_cpus == pytest.approx(0.33)
    assert any("scaled" in n for n in plan.notes)


def test_explicit_requests_that_take_everything_leave_the_others_unreserved() -> None:
    plan = plan_resources(config(decoder={"model": "b", "num_cpus": 2}), Cluster(2, 0))
    assert plan.fits and plan.share(INGRESS).num_cpus == 0
    assert any("without a reservation" in n for n in plan.notes)


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        (
            {"decoder": {"model": "b", "num_cpus": 3}},
            "BrainDecoder asks 3 CPU per replica (decoder.num_cpus); the cluster has 2",
        ),
        (
            {
                "decoder": {"model": "b", "num_cpus": 1, "num_replicas": 2},
                "http": {"num_cpus": 0.5},
            },
            "= 2.5 CPU; the cluster has 2",
        ),
        (
            {"generator": {"weights": "g", "num_gpus": 1, "min_replicas": 2, "max_replicas": 2}},
            "Generator asks 2 x 1 GPU (generator.min_replicas x generator.num_gpus); the cluster has 1",
        ),
    ],
)
def test_what_cannot_fit_is_named(sections: dict, needle: str) -> None:
    plan = plan_resources(config(**sections), Cluster(2, 1 if "generator" in sections else 0))
    assert not plan.fits
    assert any(needle in p for p in plan.problems), plan.problems


def test_an_autoscaling_cluster_keeps_the_replica_ceiling() -> None:
    cfg = config(generator={"weights": "g", "max_replicas": 3})
    assert plan_resources(cfg, Cluster(2, 0, fixed=True)).share(GENERATOR).max_replicas == 1
    assert plan_resources(cfg, Cluster(2, 0, fixed=False)).share(GENERATOR).max_replicas == 3
    assert plan_resources(cfg, Cluster(8, 0, fixed=True)).share(GENERATOR).max_replicas == 3


def test_the_plan_is_the_same_for_the_same_cluster_and_says_what_it_chose() -> None:
    cfg = config(**WITH_GENERATOR)
    a, b = plan_resources(cfg, Cluster(2, 0)), plan_resources(cfg, Cluster(2, 0))
    assert a == b
    text = a.describe()
    assert "Ingress 1 x 0.4 CPU (derived)" in text and "Generator 1 x 0.8 CPU (derived)" in text
    assert "2 of 2 CPU" in text


def test_unset_cpus_round_trip_through_the_flat_dict() -> None:
    cfg = config(**WITH_GENERATOR)
    assert cfg.decoder.num_cpus is None and ServeConfig.from_flat_dict(cfg.to_flat_dict()) == cfg
    with pytest.raises(ConfigError, match="num_cpus"):
        config(decoder={"model": "b", "num_cpus": -1})
