"""Several merge training runs -> ``ExportSources`` for one ensemble bundle.

Every run must have used the same encoder (name, weights, input size), the same vocabulary and
the same maximum length; the decoders are combined by ``training.ensemble`` into one step model
whose states are the members' states concatenated. The manifest's ``training`` block lists each
member's config and history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from training.ensemble import build_ensemble_step_model

from .bundle import ExportSources
from .run import sources_from_run

ARCHITECTURE = "merge_lstm_ensemble"


def sources_from_runs(run_dirs: Sequence[Path]) -> ExportSources:
    """One run: its own sources. Several: the probability-averaging ensemble of their decoders."""
    if not run_dirs:
        raise ValueError("no training run given")
    members = [sources_from_run(Path(d)) for d in run_dirs]
    if len(members) == 1:
        return members[0]
    first = members[0]
    for run_dir, other in zip(run_dirs[1:], members[1:], strict=True):
        if other.architecture != "merge_lstm":
            raise ValueError(f"{run_dir}: only merge decoders can be ensembled")
        if other.vocab.tokens != first.vocab.tokens:
            raise ValueError(f"{run_dir}: vocabulary differs from {run_dirs[0]}'s")
        same = (other.encoder_name, other.encoder_weights, other.preprocessing, other.max_length)
        if same != (
            first.encoder_name,
            first.encoder_weights,
            first.preprocessing,
            first.max_length,
        ):
            raise ValueError(f"{run_dir}: encoder or max_length differs from {run_dirs[0]}'s")
    if first.architecture != "merge_lstm":
        raise ValueError(f"{run_dirs[0]}: only merge decoders can be ensembled")
    step = build_ensemble_step_model([m.step_model for m in members])
    return replace(
        first,
        step_model=step,
        hidden_size=sum(m.hidden_size for m in members),
        architecture=ARCHITECTURE,
        keras_weights=None,
        training={
            "ensemble": {
                "combine": "mean of member probabilities (log of the mean of exp(logprobs))",
                "state_layout": "h and c are the members' states concatenated in member order",
                "member_hidden_sizes": [m.hidden_size for m in members],
            },
            "members": [
                {"run_dir": str(d), **m.training} for d, m in zip(run_dirs, members, strict=True)
            ],
        },
    )
