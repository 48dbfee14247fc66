"""Several training runs -> ``ExportSources`` for one ensemble bundle.

Every run must have used the same encoder (name, weights, input size), the same vocabulary and
the same maximum length, and all must be merge decoders or all attention decoders (LSTM and GRU
cells may mix). The decoders are combined by ``training.ensemble`` into one step model whose
states are the members' states concatenated; for attention members the encoder graph emits the
members' memories concatenated. The manifest's ``training`` block lists each member's config and
history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.ensemble import (
    build_attention_ensemble_step_model,
    build_ensemble_step_model,
    build_memory_ensemble_head,
)
from training.model import load_run

from .bundle import ExportSources
from .run import attach_memory_head, run_encoder, sources_from_run

ARCHITECTURE = "merge_lstm_ensemble"
ATTENTION_ARCHITECTURE = "attention_ensemble"


def _attention_members(run_dirs: Sequence[Path]) -> tuple[Any, Any, int]:
    """(encoder emitting the concatenated memories, ensemble step model, memory width)."""
    from training.attention import AttentionConfig, memory_dim, memory_models

    heads, steps, configs, width = [], [], [], 0
    for run_dir in run_dirs:
        run = load_run(Path(run_dir))
        cfg = run.model_config
        if not isinstance(cfg, AttentionConfig):
            raise ValueError(f"{run_dir}: not an attention run")
        head, step = memory_models(run.step_model, cfg)
        heads.append(head)
        steps.append(step)
        configs.append(run.config)
        width += memory_dim(cfg)
    encoder = attach_memory_head(
        run_encoder(configs[0], attention=True), build_memory_ensemble_head(heads)
    )
    return encoder, build_attention_ensemble_step_model(steps), width


def sources_from_runs(run_dirs: Sequence[Path]) -> ExportSources:
    """One run: its own sources. Several: the probability-averaging ensemble of their decoders."""
    if not run_dirs:
        raise ValueError("no training run given")
    members = [sources_from_run(Path(d)) for d in run_dirs]
    if len(members) == 1:
        return members[0]
    first = members[0]
    attention = first.attention
    for run_dir, other in zip(run_dirs[1:], members[1:], strict=True):
        if other.attention != attention or not (attention or other.architecture == "merge_lstm"):
            raise ValueError(
                f"{run_dir}: only merge decoders, or only attention decoders, can be ensembled"
            )
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
    if not attention and first.architecture != "merge_lstm":
        raise ValueError(
            f"{run_dirs[0]}: only merge decoders, or only attention decoders, can be ensembled"
        )
    hidden_sizes = [m.hidden_size for m in members]
    layout = "h and c are the members' states concatenated in member order"
    if attention:
        encoder, step, image_dim = _attention_members(run_dirs)
        layout += "; a GRU member's c slice is passed through unchanged"
        changes: dict[str, Any] = {
            "encoder": encoder,
            "image_dim": image_dim,
            "state_names": ("h", "c"),
            "architecture": ATTENTION_ARCHITECTURE,
        }
    else:
        step = build_ensemble_step_model([m.step_model for m in members])
        changes = {"architecture": ARCHITECTURE}
    return replace(
        first,
        step_model=step,
        hidden_size=sum(hidden_sizes),
        keras_weights=None,
        training={
            "ensemble": {
                "combine": "mean of member probabilities (log of the mean of exp(logprobs))",
                "state_layout": layout,
                "member_hidden_sizes": hidden_sizes,
                **({"attention": "mean of the members' weights"} if attention else {}),
            },
            "members": [
                {"run_dir": str(d), **m.training} for d, m in zip(run_dirs, members, strict=True)
            ],
        },
        **changes,
    )
