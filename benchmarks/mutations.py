"""Does the suite catch the bugs it guards against? Apply one-line mutations, one at a time, to a
scratch copy of the package and run the tests meant to catch each; report caught / not caught.

    python benchmarks/mutations.py            # every mutation (a few minutes on 2 cores)
    python benchmarks/mutations.py gpf rank   # only those whose name contains a given word

A mutation whose text is no longer found in its file is reported as "stale" (the code moved on:
update the mutation). Exit status 1 when any mutation survives or is stale.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "P3 trains like P2 (backbone unfrozen)", "mexit/train.py",
        "    handle = apply_phase(model, phase)\n", '    handle = apply_phase(model, PHASE_SPECS["P2"] if phase.name == "P3" else phase)\n',
        ("tests/test_store.py::test_p3_of_a_disjoint_run_leaves_the_p1_backbone_untouched",),
    ),
    Mutation(
        "GPF past and future swapped", "mexit/models/methods.py",
        "        logits = beta * past + (1 - beta) * future", "        logits = beta * future + (1 - beta) * past",
        ("tests/test_models.py::test_gpf_logits_and_imitation_loss_follow_the_documented_formulas",),
    ),
    Mutation(
        "GPF imitation loss cos instead of 1 - cos", "mexit/models/methods.py",
        "losses.append((1 - F.cosine_similarity(", "losses.append((0 + F.cosine_similarity(",
        ("tests/test_models.py::test_gpf_logits_and_imitation_loss_follow_the_documented_formulas",),
    ),
    Mutation(
        "ZTW ensemble weights allowed negative", "mexit/evaluate/ztw.py",
        "bounds = [(0.0, None)] * n_members", "bounds = [(None, None)] * n_members",
        ("tests/test_evaluate.py::test_ztw_weights_stay_non_negative_where_a_negative_one_would_fit_better",),
    ),
    Mutation(
        "effective rank from squared singular values", "mexit/analysis/rank.py",
        "p = singular_values.double() / total", "p = singular_values.double() ** 2 / (singular_values.double() ** 2).sum()",
        ("tests/test_analysis.py::test_effective_rank_is_pinned_on_singular_values_3_and_1",),
    ),
    Mutation(
        "input_information with a doubled kernel width", "mexit/analysis/mutual_info.py",
        "log_kernel = -distances / (2 * noise_ratio * total_variance)", "log_kernel = -distances / (4 * noise_ratio * total_variance)",
        ("tests/test_analysis.py::test_input_information_of_clusters_points_and_constants",),
    ),
    Mutation(
        "mixup / cutmix silently off", "mexit/train.py",
        "        if self.mixup is not None:\n", "        if False:\n",
        ("tests/test_train.py::test_mixup_cutmix_and_gradient_clipping_act_on_every_step",),
    ),
    Mutation(
        "clip_grad ignored", "mexit/train.py",
        "        if self.setup.optim.clip_grad is not None:\n", "        if False:\n",
        ("tests/test_train.py::test_mixup_cutmix_and_gradient_clipping_act_on_every_step",),
    ),
    Mutation(
        "conv heads keep their channels", "mexit/models/heads.py",
        "out = max(1, channels // divisor)", "out = channels",
        ("tests/test_models.py::test_conv_heads_halve_channels_and_stride_as_the_authors_layouts",),
    ),
    Mutation(
        "conv heads lose their strides", "mexit/models/heads.py",
        "kernel_size=3, stride=stride, padding=1", "kernel_size=3, stride=1, padding=1",
        ("tests/test_models.py::test_conv_heads_halve_channels_and_stride_as_the_authors_layouts",),
    ),
    Mutation(
        "models.validate a no-op", "mexit/models/__init__.py",
        "    features = backbone_features(backbone, backbone_kwargs)\n    if pretrained:\n",
        "    return\n    features = backbone_features(backbone, backbone_kwargs)\n    if pretrained:\n",
        ("tests/test_models.py",),
    ),
    Mutation(
        "resume without the optimiser's state", "mexit/train.py",
        'self.optimizer.load_state_dict(saved["optimizer"])', "pass",
        ("tests/test_store.py::test_interrupted_run_resumes_to_the_same_weights",),
    ),
    Mutation(
        "PhaseHandle.remove leaves the eval-mode hooks", "mexit/regimes.py",
        "        for hook in self._hooks:\n            hook.remove()\n", "",
        ("tests/test_regimes.py::test_removing_a_phase_handle_unfreezes_and_lets_batchnorm_train_again",),
    ),
    Mutation(
        "an atomic write leaves its temporary file on failure", "mexit/checkpoint.py",
        "        Path(tmp).unlink(missing_ok=True)\n", "",
        ("tests/test_store.py::test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary",),
    ),
    Mutation(
        "probe time counted as training time", "mexit/train.py",
        "    return time.perf_counter() - started\n\n\ndef _evaluate(", "    return 0.0\n\n\ndef _evaluate(",
        ("tests/test_store.py::test_gradient_dominance_is_traced_during_training",),
    ),
    Mutation(
        "a non-finite loss trains on", "mexit/train.py",
        "if not torch.isfinite(loss):", "if False:",
        ("tests/test_train.py::test_diverged_training_stops_with_its_phase_epoch_and_step_and_stores_nothing_finished",),
    ),
    Mutation(
        "non-finite config numbers accepted", "mexit/config.py",
        "        if not _finite(value):\n", "        if False:\n",
        ("tests/test_config.py::test_bad_parameters_name_themselves",),
    ),
    Mutation(
        "analysis cache ignores its parameters", "mexit/store.py",
        '**inputs})\n', '})\n',
        ("tests/test_analysis_runs.py::test_cached_table_computes_once_per_inputs_and_keeps_the_file",),
    ),
    Mutation(
        "plane's second axis not orthogonalised", "mexit/analysis/connectivity.py",
        "rest = d2 - u2 * e1", "rest = d2 + 0 * u2 * e1",
        ("tests/test_analysis_runs.py::test_plane_corners_are_the_three_models_when_they_span_a_right_angle",),
    ),
    Mutation(
        "dominance claim reads the final head as an IC", "mexit/claims.py",
        "ic_top = middle[~final]", "ic_top = middle",
        ("tests/test_claims.py::test_dominance_claims_measure_the_ics_lead_and_the_depth_shift",),
    ),
    Mutation(
        "a split checked with its zero-initialised terms at zero", "mexit/models/generic.py",
        "p.copy_(ZERO_FILL * torch.randn(", "p.copy_(0 * torch.randn(",
        ("tests/test_generic.py::test_a_term_whose_weights_start_at_zero_cannot_hide_from_the_check",),
    ),
    Mutation(
        "an untested claim printed with its interval", "mexit/claims.py",
        '    if row["verdict"] in NOT_EVIDENCE:\n        return "–"', '    if False:\n        return "–"',
        ("tests/test_verdicts.py::test_a_record_holds_what_the_pages_claims_table_shows",
         "tests/test_claims.py::test_the_headline_names_both_readings_per_row"),
    ),
)


def run(mutation: Mutation, scratch: Path) -> str:
    source = ROOT / mutation.path
    text = source.read_text()
    if text.count(mutation.old) != 1:
        return "stale"
    target = scratch / mutation.path
    target.write_text(text.replace(mutation.old, mutation.new))
    try:
        env = {**os.environ, "PYTHONPATH": str(scratch), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutation.tests],
            cwd=scratch, env=env, capture_output=True, text=True,
        )
    finally:
        target.write_text(text)
    return "caught" if result.returncode == 1 else ("not caught" if result.returncode == 0 else f"error {result.returncode}")


def main(words: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not words or any(w.lower() in m.name.lower() for w in words)]
    failures = 0
    with tempfile.TemporaryDirectory(prefix="mexit-mutations-") as folder:
        scratch = Path(folder)
        for part in ("mexit", "tests", "pyproject.toml", "notebooks", "book", "_config.yml", "_toc.yml"):
            source = ROOT / part
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, scratch / part)
        for mutation in chosen:
            started = time.perf_counter()
            verdict = run(mutation, scratch)
            failures += verdict != "caught"
            print(f"{verdict:>11}  {mutation.name}  ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"{len(chosen) - failures} of {len(chosen)} mutations caught")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
