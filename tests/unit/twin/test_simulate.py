"""The MEG twin on disk: BIDS that mne-bids reads, THINGS tables, design, truth, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import mne
import mne_bids
import numpy as np
import pandas as pd
import pytest

from megdecode.config import ConfigError
from megdecode.data.distractors import DISTRACTOR_TABLE, is_distractor
from megdecode.twin.config import TwinConfig
from megdecode.twin.simulate import TwinSummary, read_ground_truth, simulate

EVENT_COLUMNS = ["onset", "duration", "trial_type", "things_category_nr", "value", "sample"]
ATTRIBUTE_COLUMNS = [
    "trial_type",
    "image_on",
    "image_off",
    "image_path",
    "image_nr",
    "things_image_nr",
    "things_category_nr",
    "session_nr",
    "run_nr",
    "trial_nr",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[TwinConfig, TwinSummary, Path]:
    cfg = TwinConfig.preset("tiny", seed=0)
    root = tmp_path_factory.mktemp("twin") / "bids"
    return cfg, simulate(cfg, root), root


def _events(root: Path) -> dict[tuple[str, str, str], pd.DataFrame]:
    out = {}
    for path in sorted(root.glob("sub-*/ses-*/meg/*_events.tsv")):
        ents = mne_bids.get_entities_from_fname(path.name)
        out[(ents["subject"], ents["session"], ents["run"])] = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False
        )
    return out


def _mini(seed: int) -> TwinConfig:
    return TwinConfig.preset("tiny", seed=seed).replace(
        n_subjects=1,
        n_sessions=1,
        n_runs=1,
        n_categories=4,
        n_exp_per_category=3,
        n_test_categories=1,
        n_catch_images=1,
        image_size=16,
        sfreq=200.0,
    )


def test_presets_scale_up_and_round_trip() -> None:
    tiny, demo, full = (TwinConfig.preset(s) for s in ("tiny", "demo", "full"))
    assert tiny.n_categories < demo.n_categories < full.n_categories
    assert full.n_sessions == 12 and full.n_runs == 10 and full.n_subjects == 1
    assert TwinConfig.preset("demo", seed=5).seed == 5
    assert TwinConfig.from_flat_dict(demo.to_flat_dict()) == demo
    with pytest.raises(ValueError, match="preset"):
        TwinConfig.preset("huge")
    with pytest.raises(ConfigError):
        tiny.replace(not_a_field=1)


def test_summary_matches_the_tree(tiny) -> None:
    cfg, summary, root = tiny
    fifs = sorted(root.glob("sub-BIGMEG*/ses-*/meg/*_task-main_run-*_meg.fif"))
    assert len(fifs) == cfg.n_subjects * cfg.n_sessions * cfg.n_runs
    assert summary.n_trials == sum(len(e) for e in _events(root).values())
    assert summary.n_channels == 272 and summary.n_categories == cfg.n_categories
    n_png = len(list((root / "stimuli").rglob("*.png")))
    assert summary.n_images + summary.n_distractors == n_png
    assert summary.n_distractors == cfg.n_distractors > 0
    assert 1e6 < summary.bytes_on_disk < 100e6 and summary.seconds > 0
    assert (root / "dataset_description.json").exists() and (root / "participants.tsv").exists()


def test_runs_read_back_with_mne_bids(tiny) -> None:
    cfg, _, root = tiny
    path = mne_bids.BIDSPath(
        subject="BIGMEG2", session="02", task="main", run="02", datatype="meg", root=root
    )
    raw = mne_bids.read_raw_bids(path, verbose="error")
    assert raw.first_samp == 0 and raw.info["sfreq"] == cfg.sfreq
    assert len(mne.pick_types(raw.info, meg=True)) == 272 and "UPPT001" in raw.ch_names
    events = pd.read_csv(path.copy().update(suffix="events", extension=".tsv").fpath, sep="\t")
    triggers = mne.find_events(raw, stim_channel="UPPT001", verbose=False)
    np.testing.assert_array_equal(triggers[:, 0], events["sample"])
    assert set(triggers[:, 2]) == {64}
    data = raw.get_data(picks="mag")
    assert 1e-14 < np.median(data.std(axis=1)) < 1e-11  # tesla, fT..pT range
    std = data.std(axis=1)
    bad = raw.ch_names.index(cfg.bad_channel)
    assert std[bad] > 3 * np.median(std)  # the noisy MRO11-1609


def test_events_tsv_has_exactly_the_things_columns(tiny) -> None:
    cfg, _, root = tiny
    for table in _events(root).values():
        assert list(table.columns) == EVENT_COLUMNS
        catch = table["trial_type"] == "catch"
        assert (table.loc[catch, "value"] == "n/a").all()
        assert table.loc[~catch, "value"].str.fullmatch(r"\d+").all()
        onset, sample = table["onset"].astype(float), table["sample"].astype(int)
        np.testing.assert_allclose(onset * cfg.sfreq, sample, atol=1e-3)
        soa = np.diff(onset)
        lo = cfg.image_duration_s + cfg.isi_mean_s - cfg.isi_jitter_s
        assert soa.min() >= lo - 0.01 and soa.max() <= lo + 2 * cfg.isi_jitter_s + 0.01


def test_sample_attributes_follow_events_order_and_point_at_images(tiny) -> None:
    cfg, _, root = tiny
    events = _events(root)
    for n in range(1, cfg.n_subjects + 1):
        attrs = pd.read_csv(
            root / "sourcedata" / f"sample_attributes_P{n}.csv", dtype=str, keep_default_na=False
        )
        assert list(attrs.columns) == ATTRIBUTE_COLUMNS
        subject = pd.concat(
            [e for k, e in events.items() if k[0] == f"BIGMEG{n}"], ignore_index=True
        )
        assert attrs["things_image_nr"].tolist() == subject["value"].tolist()
        assert attrs["trial_type"].tolist() == subject["trial_type"].tolist()
        for path, cat_nr in zip(attrs["image_path"], attrs["things_category_nr"], strict=True):
            assert (root / "stimuli" / path).is_file()
            category = "_".join(Path(path).stem.split("_")[:-1])
            assert "_" not in category and Path(path).parent.name == category
            assert (cat_nr == "n/a") == (category == "catch")


def test_design_is_things_like_with_zero_shot_structure(tiny) -> None:
    cfg, _, root = tiny
    for n in range(1, cfg.n_subjects + 1):
        attrs = pd.read_csv(root / "sourcedata" / f"sample_attributes_P{n}.csv")
        exp, test = attrs[attrs.trial_type == "exp"], attrs[attrs.trial_type == "test"]
        assert exp["image_path"].is_unique  # exp images: seen once
        assert len(exp) == cfg.n_categories * cfg.n_exp_per_category
        per_session = test.groupby("image_path")["session_nr"].apply(sorted)
        assert len(per_session) == cfg.n_test_categories
        assert all(s == list(range(1, cfg.n_sessions + 1)) for s in per_session)
        test_cats = set(test["things_category_nr"])
        assert test_cats <= set(exp["things_category_nr"])  # exp images of test categories exist
        assert test["image_path"].str.startswith("images_test_meg/").all()
        catch_share = (attrs.trial_type == "catch").mean()
        assert 0.03 < catch_share < 0.2


def test_ground_truth_round_trips(tiny) -> None:
    cfg, _, root = tiny
    truth = read_ground_truth(root)
    assert TwinConfig.from_flat_dict(truth["config"]) == cfg
    assert truth["latencies_s"]["late"] == cfg.late_latency_s
    assert truth["latencies_s"]["offset"] == pytest.approx(
        cfg.image_duration_s + cfg.offset_latency_s
    )
    assert (
        truth["snr"]["target"] == cfg.snr
        and truth["feature_mixing"]["late"]["sem"] == cfg.late_mix_sem
    )
    assert set(truth["subjects"]) == {"BIGMEG1", "BIGMEG2"}
    src = truth["subjects"]["BIGMEG1"]["sources"]["early"]
    assert np.array(src["rr"]).shape == (cfg.n_sources_per_group, 3)
    assert len(truth["subjects"]["BIGMEG1"]["sessions"]) == cfg.n_sessions
    factors = pd.read_parquet(root / "sourcedata" / "twin" / truth["tables"]["images"])
    assert {"hue", "size", "pos_x", "group", "image_path"} <= set(factors.columns)
    shown = set(pd.read_csv(root / "sourcedata" / "sample_attributes_P1.csv")["image_path"])
    assert shown <= set(factors["image_path"])
    json.dumps(truth)  # plain JSON all the way down


def test_distractors_are_listed_on_disk_and_never_shown(tiny) -> None:
    """Never-shown images for the large set's candidates: drawn, rendered, listed, flagged,
    with ids no shown image has, and absent from every trial of every subject."""
    cfg, _, root = tiny
    listed = pd.read_csv(root / "stimuli" / DISTRACTOR_TABLE, sep="\t")
    assert len(listed) == cfg.n_distractors and not listed["shown"].any()
    assert is_distractor(listed["image_id"]).all() and listed["image_id"].is_unique
    assert all((root / "stimuli" / p).is_file() for p in listed["image_path"])
    shown_ids, shown_paths = set(), set()
    for table in _events(root).values():
        shown_ids |= {int(v) for v in table["value"] if v != "n/a"}
    for n in range(1, cfg.n_subjects + 1):
        attrs = pd.read_csv(root / "sourcedata" / f"sample_attributes_P{n}.csv")
        shown_paths |= set(attrs["image_path"])
    assert shown_ids and not shown_ids & set(listed["image_id"])
    assert not shown_paths & set(listed["image_path"])
    assert not is_distractor(np.array(sorted(shown_ids))).any()
    truth = read_ground_truth(root)
    factors = pd.read_parquet(root / "sourcedata" / "twin" / truth["tables"]["images"])
    flagged = factors[~factors["shown"]]
    assert set(flagged["image_id"]) == set(listed["image_id"])
    assert (flagged["trial_type"] == "distractor").all()
    cats = set(pd.read_parquet(root / "sourcedata" / "twin" / "categories.parquet")["category"])
    assert set(listed["category"]) <= cats


def test_missing_ground_truth_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ground_truth.json"):
        read_ground_truth(tmp_path)


def _arrays(root: Path) -> tuple[np.ndarray, dict[str, str]]:
    fifs = sorted(root.glob("sub-*/ses-*/meg/*_meg.fif"))
    data = np.concatenate(
        [mne.io.read_raw_fif(f, verbose="error").get_data() for f in fifs], axis=1
    )
    tables = {
        str(p.relative_to(root)): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.suffix in {".tsv", ".csv"} and "scans" not in p.name
    }
    tables["images"] = str(sorted(p.read_bytes() for p in (root / "stimuli").rglob("*.png")))
    return data, tables


def test_builds_are_deterministic_given_the_seed(tmp_path: Path) -> None:
    simulate(_mini(7).replace(n_subjects=2), tmp_path / "a")
    simulate(_mini(7).replace(n_subjects=2), tmp_path / "b", n_jobs=2)  # worker processes
    simulate(_mini(8).replace(n_subjects=2), tmp_path / "c")
    (data_a, tables_a), (data_b, tables_b), (data_c, tables_c) = (
        _arrays(tmp_path / k) for k in "abc"
    )
    np.testing.assert_array_equal(data_a, data_b)
    assert tables_a == tables_b
    assert data_a.shape != data_c.shape or not np.array_equal(data_a, data_c)
    assert tables_a != tables_c


def test_flat_bad_channel_and_marking(tmp_path: Path) -> None:
    cfg = _mini(0).replace(bad_channel_mode="flat", mark_bad=True)
    simulate(cfg, tmp_path)
    path = mne_bids.BIDSPath(
        subject="BIGMEG1", session="01", task="main", run="01", datatype="meg", root=tmp_path
    )
    raw = mne_bids.read_raw_bids(path, verbose="error")
    assert raw.info["bads"] == [cfg.bad_channel]
    assert np.all(raw.get_data(picks=[cfg.bad_channel]) == 0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("bad_channel_mode", "sparkly"),
        ("tuning", "cubic"),
        ("n_groups", 9),
        ("catch_fraction", 0.6),
    ],
)
def test_invalid_configs_fail_before_writing(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        TwinConfig.preset("tiny").replace(**{field: value})
