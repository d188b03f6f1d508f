"""How many deliberate bugs in the code a user depends on does the test suite catch?

A hand-made list of mutants (one small, plausible bug each: a wrong offset, a flipped
comparison, a skipped check) is applied to the working tree one at a time by exact string
replacement; the tests named for that mutant run in a subprocess (`pytest -q -x`, same
interpreter, HF_HUB_OFFLINE=1, this checkout's `platform/` first on PYTHONPATH); the file is
then restored byte for byte, with its original mtime so that cached bytecode of the clean
file stays valid.

Outcome per mutant: "killed" (the tests failed: pytest exit 1), "survived" (they passed),
"error" (timeout, collection error, no test collected, crash) or "not applicable" (the old
snippet is not found exactly once, e.g. the code moved on; the reason is printed). The
score is killed / applicable, applicable = every mutant that was applied.

Each mutant names the most relevant tests: fast unit files where the behaviour is tested
there, the integration test nodes where it only lives there (Tune, Serve: minutes each).
`--tests-all-unit` runs all of tests/unit for every mutant instead.

Safety: refuses to start when `git status --porcelain` shows a target file modified;
restores in try/finally (and on SIGTERM); mutant runs write no bytecode.

Usage:
    python benchmarks/mutation_check.py [--only ID ...] [--list] [--json OUT]
                                        [--tests-all-unit] [--timeout S]
    python benchmarks/mutation_check.py --compare BEFORE.json AFTER.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
PKG = "platform/megdecode"
KILLED, SURVIVED, ERROR, NOT_APPLICABLE = "killed", "survived", "error", "not applicable"

# Test targets reused by several mutants.
RETRIEVAL = ("tests/unit/evaluation/test_retrieval.py",)
TRAIN = ("tests/unit/test_train.py",)
EARLY_STOP = TRAIN + ("tests/unit/test_train_early_stopping.py",)
BUNDLE = ("tests/unit/test_bundle.py",)
BUNDLE_INTEGRITY = ("tests/unit/test_bundle_integrity.py",) + BUNDLE
SPLITS = ("tests/unit/data/test_splits.py",)
# The fast champion tests (hand-written trial tables, a real trial's seeds); the end-to-end
# Tune run is tests/integration/test_search_champion.py (slow, minutes).
CHAMPION = ("tests/unit/search/test_champion.py",)
SERVE_APP = "tests/integration/serve/test_serve_app.py::"
SERVE_DECODE = (
    SERVE_APP + "test_decode_json_and_bytes_agree",
    SERVE_APP + "test_decode_equals_the_offline_model_for_every_subject",
    SERVE_APP
    + "test_concurrent_decodes_of_distinct_windows_and_subjects_each_get_their_own_answer",
    SERVE_APP + "test_stream_decodes_every_stride_as_the_offline_model_for_every_subject",
    SERVE_APP + "test_overload_gives_503_with_retry_after_not_a_hang",
)


@dataclass(frozen=True)
class Mutant:
    """One deliberate bug: replace `old` (found exactly once in `file`) with `new`."""

    id: str
    file: str  # relative to the repository root
    old: str
    new: str
    description: str
    tests: tuple[str, ...]  # pytest targets: files or node ids
    timeout_s: int = 300  # Tune / Serve mutants get more


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "retrieval-chunk-offset",
        f"{PKG}/evaluation/retrieval.py",
        # re-expressed for the chunk loop indexing true_sim in one line (chunk_size argument)
        "true_sim = sim[np.arange(stop - start), true_index[start:stop]][:, None]",
        "true_sim = sim[np.arange(stop - start), true_index[: stop - start]][:, None]",
        "retrieval_ranks: rows past the first 2048-row chunk are ranked against the first "
        "chunk's true images",
        RETRIEVAL,
    ),
    Mutant(
        "median-rank-denominator",
        f"{PKG}/evaluation/retrieval.py",
        "np.median(_scored(ranks) / (n_candidates - 1))",
        "np.median(_scored(ranks) / n_candidates)",
        "relative median rank divides by n_candidates instead of n_candidates - 1",
        RETRIEVAL,
    ),
    Mutant(
        "rank-ties-optimistic",
        f"{PKG}/evaluation/retrieval.py",
        # re-expressed for random tie-breaking: the tied candidates are dropped from the rank
        "ranks[start:stop] = better + np.floor(u[start:stop] * (tied + 1)).astype(np.int64)",
        "ranks[start:stop] = better",
        "ties count FOR the prediction: an all-zero prediction gets rank 0 (perfect)",
        RETRIEVAL,
    ),
    Mutant(
        "averaged-mixes-subjects",
        f"{PKG}/evaluation/retrieval.py",
        'average_by_image(scored, ids, meta["subject"].to_numpy()[keep])',
        "average_by_image(scored, ids)",
        "averaged mode pools the repetitions of an image across subjects",
        RETRIEVAL,
    ),
    Mutant(
        "postprocess-train-stats-swapped",
        f"{PKG}/evaluation/retrieval.py",
        "return z * np.asarray(train_std) + np.asarray(train_mean)",
        "return z * np.asarray(train_mean) + np.asarray(train_std)",
        "postprocess_mse maps onto (mean, std) swapped",
        RETRIEVAL + ("tests/unit/generate/test_generate_pipeline.py",),
    ),
    Mutant(
        "postprocess-pred-stats-swapped",
        f"{PKG}/generate/postprocess.py",
        "postprocess_mse(pred, latent_mean, latent_std, stats.mean, stats.std)",
        "postprocess_mse(pred, latent_mean, latent_std, stats.std, stats.mean)",
        "a served window is z-scored with the stored prediction std and mean swapped",
        (
            "tests/unit/generate/test_generate_pipeline.py",
            "tests/unit/serve/test_serve_reconstruct.py",
        ),
    ),
    Mutant(
        "clip-one-direction",
        f"{PKG}/losses.py",
        "return (F.cross_entropy(per_brain, labels) + F.cross_entropy(per_image, labels)) / 2",
        "return F.cross_entropy(per_brain, labels)",
        "CLIP loss keeps only the brain->image InfoNCE direction",
        ("tests/unit/test_losses.py",),
    ),
    Mutant(
        "clip-wrong-labels",
        f"{PKG}/losses.py",
        "labels = torch.arange(brain.shape[0], device=brain.device)",
        "labels = torch.arange(brain.shape[0], device=brain.device).roll(1)",
        "CLIP loss pairs each brain sample with the next sample's image",
        ("tests/unit/test_losses.py",),
    ),
    Mutant(
        "splits-val-per-trial",
        f"{PKG}/data/splits.py",
        "    held_out = val_images(image_id[is_train], cfg.val_fraction, cfg.seed)\n"
        '    split[is_train & np.isin(image_id, held_out)] = "val"',
        "    held_out = val_images(np.flatnonzero(is_train), cfg.val_fraction, cfg.seed)\n"
        '    split[held_out] = "val"',
        "validation trials drawn per trial, not per image: an image's other trials train",
        SPLITS,
    ),
    Mutant(
        "splits-zero-shot-off",
        f"{PKG}/data/splits.py",
        "    if cfg.zero_shot:\n        test_categories",
        "    if cfg.zero_shot and False:\n        test_categories",
        "zero-shot removal disabled: exp images of test categories stay in training",
        SPLITS,
    ),
    Mutant(
        "champion-flipped",
        f"{PKG}/search/report.py",
        # re-expressed for champion_row (idxmin/idxmax of the mean metric)
        'return finished.loc[values.idxmin() if mode == "min" else values.idxmax()]',
        'return finished.loc[values.idxmin() if mode != "min" else values.idxmax()]',
        "the registered champion is the worst finished trial",
        CHAMPION,
    ),
    Mutant(
        "best-seed-worst",
        f"{PKG}/search/trial.py",
        # re-expressed for best_seed (the search metric in the space's direction)
        'pick = min if mode == "min" else max',
        'pick = max if mode == "min" else min',
        "a trial's bundle is its worst seed's",
        CHAMPION,
    ),
    Mutant(
        "early-stop-no-restore",
        f"{PKG}/train.py",
        "        self.model.load_state_dict(self.best_state[0])\n",
        "",
        "the last epoch's weights are kept instead of the best epoch's",
        EARLY_STOP,
    ),
    Mutant(
        "early-stop-no-restore-temperature",
        f"{PKG}/train.py",
        "        self.loss_fn.load_state_dict(self.best_state[1])\n",
        "",
        "the last epoch's temperature is kept (and bundled) with the best epoch's weights",
        EARLY_STOP,
    ),
    Mutant(
        "early-stop-max-flipped",
        f"{PKG}/train.py",
        'self.sign = 1.0 if MONITORS[t.monitor] == "min" else -1.0',
        "self.sign = 1.0",
        "a maximised monitor (val/top5) is minimised: the worst epoch is kept",
        EARLY_STOP,
    ),
    Mutant(
        "bundle-missing-file-skipped",
        # re-expressed for the file checks moving to bundle_integrity.py
        f"{PKG}/bundle_integrity.py",
        'raise BundleError(f"bundle file {file} is missing")',
        "continue",
        "a bundle file listed in the hash map but absent is skipped, not refused",
        BUNDLE_INTEGRITY,
    ),
    Mutant(
        "bundle-weights-unhashed",
        # re-expressed for the file checks moving to bundle_integrity.py (a loop over FILES)
        f"{PKG}/bundle_integrity.py",
        "    for name in FILES:\n",
        "    for name in FILES[1:]:\n",
        "model.safetensors is never checked against its sha256 (only the arrays file)",
        BUNDLE_INTEGRITY,
    ),
    Mutant(
        "bundle-channels-sorted",
        f"{PKG}/bundle_io.py",
        'ch_names=read("ch_names", lambda v: [str(c) for c in v]),',
        'ch_names=read("ch_names", lambda v: sorted(str(c) for c in v)),',
        "a loaded bundle's channel names lose their stored order",
        BUNDLE + ("tests/unit/serve/test_serve_livepage.py",),
    ),
    Mutant(
        "evaluate-channel-order-unchecked",
        f"{PKG}/cli/evaluation.py",
        "if run_data.ch_names != meta.ch_names:",
        "if sorted(run_data.ch_names) != sorted(meta.ch_names):",
        "`megdecode evaluate` accepts a store whose channels are the bundle's in another order",
        TRAIN + ("tests/unit/cli/test_cli_app.py",),
    ),
    Mutant(
        "replay-channel-order",
        f"{PKG}/serve/replay.py",
        "picks = [index[c] for c in bundle.ch_names]",
        "picks = sorted(index[c] for c in bundle.ch_names)",
        "the live page replays a recording in its file's channel order, not the model's",
        ("tests/unit/serve/test_serve_livepage.py",),
    ),
    Mutant(
        "decoder-batch-reversed",
        f"{PKG}/serve/decoder.py",
        "out[i] = (clip[row], ms, len(idx))",
        "out[i] = (clip[len(idx) - 1 - row], ms, len(idx))",
        "a batch of queued /v1/decode requests gets its outputs in reversed order",
        SERVE_DECODE,
        timeout_s=600,
    ),
    Mutant(
        "decoder-batch-first-subject",
        f"{PKG}/serve/decoder.py",
        "subjects = np.array([items[i][2] for i in idx], np.int64)",
        "subjects = np.full(len(idx), items[idx[0]][2], np.int64)",
        "a batch of queued /v1/decode requests is decoded with the first request's subject",
        SERVE_DECODE,
        timeout_s=600,
    ),
    Mutant(
        "serve-window-length-unchecked",
        f"{PKG}/serve/validate.py",
        "if arr.shape != (n_channels, n_times):",
        "if arr.shape[0] != n_channels:",
        "a window with the wrong number of samples is accepted",
        ("tests/unit/serve/test_serve_validate.py",),
    ),
    Mutant(
        "ridge-alpha-argmax",
        f"{PKG}/models/ridge.py",
        "best = int(np.argmin(errors))",
        "best = int(np.argmax(errors))",
        "ridge picks the alpha with the LARGEST cross-validated error",
        ("tests/unit/models/test_ridge.py",),
    ),
    Mutant(
        "scaler-fit-all-rows",
        f"{PKG}/data/subject_pass.py",
        "scaler = fit_scaler(block.data[train], cfg.scaler, cfg.quantile_range)",
        "scaler = fit_scaler(block.data, cfg.scaler, cfg.quantile_range)",
        "the robust scaler is fitted on all epochs (val/test leak), not the training ones",
        ("tests/unit/data/test_subject_pass.py", "tests/unit/data/test_preprocess.py"),
    ),
    Mutant(
        "scaler-wrong-quantiles",
        f"{PKG}/data/scaling.py",
        "np.percentile(values, [q0, 50.0, q1], overwrite_input=True)",
        "np.percentile(values, [10.0, 50.0, 90.0], overwrite_input=True)",
        "the robust scale is the 10-90 range whatever quantile_range says",
        ("tests/unit/data/test_preprocess.py",),
    ),
    Mutant(
        "baseline-whole-epoch",
        f"{PKG}/data/preprocess.py",
        "epochs = baseline_correct(epochs, times, cfg.baseline)",
        "epochs = baseline_correct(epochs, times, (times[0], times[-1]))",
        "baseline correction subtracts the whole epoch's mean, not the pre-onset window's",
        ("tests/unit/data/test_preprocess.py",),
    ),
    Mutant(
        "store-seals-unchecked",
        f"{PKG}/data/store/read.py",
        "        elif checks.seals:\n            seal.check(store / f.path)",
        "        elif checks.seals:\n            pass",
        "the epoch store reader skips every file's seal (size, magic, footer sha256)",
        ("tests/unit/data/store/test_store_verify.py",),
    ),
    # --- behaviour added with the paper's protocol (not in the "before" list) ---
    Mutant(
        "clip-mask-off",
        f"{PKG}/losses.py",
        "    return same & ~torch.eye(len(image_ids), dtype=torch.bool, device=image_ids.device)",
        "    return same & False",
        "InfoNCE keeps other subjects' views of the same image as negatives (no mask)",
        ("tests/unit/test_losses.py",) + TRAIN,
    ),
    Mutant(
        "ridge-folds-whole-sessions",
        f"{PKG}/models/subject_ridge.py",
        "        rank * n_folds // size, index=pd.MultiIndex.from_frame",
        "        np.zeros_like(rank) + by_session.ngroup().to_numpy() % n_folds,"
        " index=pd.MultiIndex.from_frame",
        "ridge CV folds hold out whole sessions instead of a slice of every session",
        ("tests/unit/models/test_subject_ridge.py", "tests/unit/models/test_ridge.py"),
    ),
    Mutant(
        "ridge-one-subject-model",
        f"{PKG}/models/subject_ridge.py",
        "                out[rows] = model.predict(X[rows])",
        "                out[rows] = first.predict(X[rows])",
        "every subject's rows are predicted by the first subject's ridge",
        ("tests/unit/models/test_subject_ridge.py", "tests/unit/evaluation/test_baseline.py"),
    ),
    Mutant(
        "distractors-not-ranked",
        f"{PKG}/evaluation/retrieval.py",
        "        candidate_ids = np.union1d(candidate_ids, extra)",
        "        candidate_ids = np.union1d(candidate_ids, extra[:0])",
        "the large_distractors set ranks without its distractors (chance and scores wrong)",
        RETRIEVAL + ("tests/unit/evaluation/test_baseline.py",),
    ),
    Mutant(
        "growing-stops-short",
        f"{PKG}/evaluation/windows.py",
        "        if not ends or ends[-1] < _r(epoch_tmax):\n            ends.append(_r(epoch_tmax))",
        "        if not ends:\n            ends.append(_r(epoch_tmax))",
        "growing windows end on the step grid, not on the full epoch",
        ("tests/unit/evaluation/test_windows.py",),
    ),
    Mutant(
        "bandpass-by-default",
        f"{PKG}/data/preprocess.py",
        "    l_freq: float | None = None  # high-pass edge (Hz); None = none (the paper's pipeline)",
        "    l_freq: float | None = 0.1  # high-pass edge (Hz); None = none (the paper's pipeline)",
        "the default preprocessing high-passes at 0.1 Hz (the paper's pipeline has no band-pass)",
        ("tests/unit/data/test_preprocess.py",),
    ),
)


@dataclass
class Outcome:
    """What one mutant run gave; `detail` is pytest's summary line or why it did not run."""

    id: str
    status: str
    seconds: float
    detail: str
    tests: list[str]


class NotApplicable(Exception):
    """The mutant's old snippet is not in its file exactly once."""


def dirty_targets(mutants: Sequence[Mutant], repo: Path) -> list[str]:
    """Target files that git reports as modified/untracked: mutating them would lose work."""
    files = sorted({m.file for m in mutants})
    out = subprocess.run(
        ["git", "status", "--porcelain", "--", *files],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def mutated_text(mutant: Mutant, repo: Path) -> str:
    """The file's text with the mutant in; NotApplicable saying why when it cannot be."""
    path = repo / mutant.file
    if not path.is_file():
        raise NotApplicable(f"{mutant.file} does not exist")
    text = path.read_text(encoding="utf-8")
    count = text.count(mutant.old)
    if count != 1:
        raise NotApplicable(f"old snippet found {count} times in {mutant.file} (need exactly 1)")
    if mutant.old == mutant.new:
        raise NotApplicable("old and new snippets are equal")
    return text.replace(mutant.old, mutant.new)


@contextmanager
def applied(mutant: Mutant, repo: Path) -> Iterator[None]:
    """The mutant written into its file for the duration; the original bytes and mtime after."""
    path = repo / mutant.file
    original = path.read_bytes() if path.is_file() else b""
    mutated = mutated_text(mutant, repo)
    stat = path.stat()
    try:
        path.write_text(mutated, encoding="utf-8")
        yield
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _summary_line(output: str) -> str:
    """pytest's last non-empty line ("1 failed, 3 passed in 9.1s"), for the table."""
    lines = [line.strip("= ").strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def run_tests(targets: Sequence[str], timeout_s: int, repo: Path) -> tuple[int | None, str]:
    """(pytest exit code, or None on timeout; its output). The whole process group is killed
    on timeout, so Ray or Serve processes the tests started do not outlive the run."""
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # a mutant's bytecode must never be cached
        "PYTHONPATH": os.pathsep.join(
            [str(repo / "platform"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *targets]
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C, SIGTERM): take the tests down with us
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def classify(returncode: int | None) -> str:
    """pytest exit 1 = a test failed (killed); 0 = all passed (survived); anything else, or a
    timeout, says nothing about the mutant (error: collection error, no tests, crash)."""
    if returncode == 1:
        return KILLED
    if returncode == 0:
        return SURVIVED
    return ERROR


def check_mutant(mutant: Mutant, tests: Sequence[str], timeout_s: int, repo: Path) -> Outcome:
    start = time.perf_counter()
    try:
        with applied(mutant, repo):
            code, output = run_tests(tests, timeout_s, repo)
    except NotApplicable as exc:
        return Outcome(mutant.id, NOT_APPLICABLE, 0.0, str(exc), list(tests))
    seconds = time.perf_counter() - start
    detail = f"timeout after {timeout_s} s" if code is None else _summary_line(output)
    return Outcome(mutant.id, classify(code), round(seconds, 1), detail, list(tests))


def score(outcomes: Sequence[Outcome]) -> tuple[int, int]:
    """(killed, applicable): applicable = every mutant that was applied (errors included)."""
    applicable = [o for o in outcomes if o.status != NOT_APPLICABLE]
    return sum(o.status == KILLED for o in applicable), len(applicable)


def table(outcomes: Sequence[Outcome]) -> str:
    width = max(len(o.id) for o in outcomes)
    lines = [f"{'mutant':<{width}}  {'status':<14} {'seconds':>8}  detail"]
    lines += [f"{o.id:<{width}}  {o.status:<14} {o.seconds:>8.1f}  {o.detail}" for o in outcomes]
    killed, applicable = score(outcomes)
    pct = f" ({100 * killed / applicable:.0f}%)" if applicable else ""
    lines.append(f"score: {killed}/{applicable} killed{pct}")
    return "\n".join(lines)


def compare(files: Sequence[Path]) -> str:
    """One row per mutant, one status column per outcomes file (`--json` output), each
    column's score last: how a list's outcome moved between runs. "-" = not in that file."""
    names = [f.stem for f in files]
    columns: list[dict[str, str]] = []
    scores: list[str] = []
    for f in files:
        doc = json.loads(f.read_text())
        columns.append({o["id"]: o["status"] for o in doc["outcomes"]})
        scores.append(f"{doc['killed']}/{doc['applicable']}")
    ids = [m.id for m in MUTANTS] + sorted(
        {i for c in columns for i in c} - {m.id for m in MUTANTS}
    )
    width = max(len(i) for i in [*ids, "mutant"])
    cols = [max(14, len(n)) for n in names]

    def row(first: str, cells: Sequence[str]) -> str:
        padded = (f"{c:<{w}}" for c, w in zip(cells, cols, strict=True))
        return "  ".join([f"{first:<{width}}", *padded]).rstrip()

    lines = [row("mutant", names)]
    lines += [row(i, [c.get(i, "-") for c in columns]) for i in ids]
    lines.append(row("score (killed/applicable)", scores))
    return "\n".join(lines)


def baseline(mutants: Sequence[Mutant], all_unit: bool, timeout_s: int | None) -> int:
    """Each distinct test selection once on the clean tree; 1 when any does not pass."""
    selections = dict.fromkeys((("tests/unit",) if all_unit else m.tests) for m in mutants)
    worst = 0
    for tests in selections:
        limit = timeout_s or max(m.timeout_s for m in mutants if m.tests == tests or all_unit)
        start = time.perf_counter()
        code, output = run_tests(tests, limit, REPO)
        state = "pass" if code == 0 else f"FAIL (exit {code})"
        worst = max(worst, 0 if code == 0 else 1)
        seconds = time.perf_counter() - start
        print(f"{state:<14} {seconds:>6.1f} s  {' '.join(tests)}  [{_summary_line(output)}]")
    return worst


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through `applied`'s finally


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the outcomes here")
    parser.add_argument(
        "--tests-all-unit", action="store_true", help="run all of tests/unit for every mutant"
    )
    parser.add_argument("--timeout", type=int, help="seconds per mutant (default: its own)")
    parser.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="print each mutant's status in these --json outputs side by side and exit",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="run each selected mutant's tests on the unmutated code instead (they must pass, "
        "or a 'killed' says nothing)",
    )
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(args.compare))
        return 0

    mutants = list(MUTANTS)
    if args.only:
        known = {m.id for m in MUTANTS}
        unknown = sorted(set(args.only) - known)
        if unknown:
            parser.error(f"unknown mutant id(s) {unknown}; known: {', '.join(sorted(known))}")
        mutants = [m for m in MUTANTS if m.id in args.only]
    if args.list:
        for m in mutants:
            try:
                mutated_text(m, REPO)
                state = "applies"
            except NotApplicable as exc:
                state = f"{NOT_APPLICABLE}: {exc}"
            print(f"{m.id} [{state}]: {m.file}\n    {m.description}")
            print(f"    tests: {' '.join(m.tests)}")
        return 0
    if args.baseline:
        return baseline(mutants, args.tests_all_unit, args.timeout)
    dirty = dirty_targets(mutants, REPO)
    if dirty:
        print("refusing to mutate files with uncommitted changes:\n  " + "\n  ".join(dirty))
        return 2

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    outcomes = []
    for m in mutants:
        tests = ("tests/unit",) if args.tests_all_unit else m.tests
        timeout_s = args.timeout or m.timeout_s
        outcome = check_mutant(m, tests, timeout_s, REPO)
        print(f"{outcome.id}: {outcome.status} ({outcome.seconds:.1f} s) {outcome.detail}")
        outcomes.append(outcome)
        if args.json:  # after every mutant: a stopped run keeps what it measured
            killed, applicable = score(outcomes)
            doc = {
                "killed": killed,
                "applicable": applicable,
                "tests_all_unit": args.tests_all_unit,
                "python": sys.executable,
                "outcomes": [asdict(o) for o in outcomes],
            }
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(table(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
