"""Turn a training run folder into ``ExportSources``.

Run folder (written by ``python -m training train``): ``config.json``, ``vocab.json``,
``best.weights.h5``, ``history.json``. The decoder comes from ``training.model.load_run`` (best
weights, step model); the encoder is rebuilt by ``training.encoders.build_encoder`` from the
encoder name, weights and input size recorded in the config, exactly as the features were made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.manifest import FeatureRole
from training.encoders import build_encoder, encoder_info
from training.model import BEST_WEIGHTS_FILE, LoadedRun, load_run

from .bundle import ExportSources

HISTORY_FILE = "history.json"
KERAS_MODEL_RECIPE = (
    "training.model.build_training_model(ModelConfig.from_dict(config['model'])) "
    "then load_weights(keras_weights_file)"
)


def encoder_settings(config: dict[str, Any]) -> tuple[str, str | None, int | None]:
    """(name, weights, input_size) of the encoder the run's features came from."""
    encoder = config.get("encoder", "efficientnet_lite0")
    if isinstance(encoder, dict):
        name = str(encoder.get("name", "efficientnet_lite0"))
        weights = encoder.get("weights", config.get("weights", "imagenet"))
        size = encoder.get("input_size", config.get("input_size"))
    else:
        name = str(encoder)
        weights = config.get("weights", "imagenet")
        size = config.get("input_size")
    return name, (None if weights in (None, "none", "random") else str(weights)), size


def _per_epoch(history: Any) -> list[dict[str, Any]]:
    """History as a list of per-epoch dicts, whether stored by epoch or by metric."""
    if isinstance(history, dict) and "epochs" in history and isinstance(history["epochs"], list):
        history = history["epochs"]
    if isinstance(history, list):
        return [dict(row) for row in history if isinstance(row, dict)]
    if isinstance(history, dict):
        columns = {k: v for k, v in history.items() if isinstance(v, list)}
        length = max((len(v) for v in columns.values()), default=0)
        return [{k: v[i] for k, v in columns.items() if i < len(v)} for i in range(length)]
    return []


def history_summary(run_dir: Path) -> dict[str, Any]:
    """Final and best figures of ``history.json`` (empty when the file is absent)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return {}
    history = json.loads(path.read_text())
    epochs = _per_epoch(history)
    if not epochs:
        return {}
    final = {k: v for k, v in epochs[-1].items() if isinstance(v, int | float)}
    summary: dict[str, Any] = {"epochs": len(epochs), "final": final}
    for key in ("val_ce", "val_loss"):
        scored = [(row[key], i) for i, row in enumerate(epochs) if key in row]
        if scored:
            best, index = min(scored)
            summary[f"best_{key}"] = best
            summary["best_epoch"] = int(epochs[index].get("epoch", index + 1))
            break
    if isinstance(history, dict):  # the run's own verdict wins over the recomputed one
        for key in ("best_epoch", "best_val_ce", "stopped_early"):
            if key in history:
                summary[key] = history[key]
    seconds = [row["seconds"] for row in epochs if isinstance(row.get("seconds"), int | float)]
    if seconds:
        summary["train_seconds"] = round(float(sum(seconds)), 1)
    return summary


def attach_memory_head(encoder: Any, head: Any) -> Any:
    """The encoder (``pooled`` + ``grid``) extended to emit ``pooled`` + ``memory`` = head(grid)."""
    import keras

    image = encoder.inputs[0]
    features = encoder(image)
    return keras.Model(
        image,
        {"pooled": features["pooled"], "memory": head(features["grid"])},
        name=f"{encoder.name}_memory",
    )


def _with_memory(encoder: Any, run: LoadedRun) -> tuple[Any, Any, int]:
    """(encoder emitting ``pooled`` + ``memory``, step model reading memory, memory width).

    The attention decoder's per-image projections move into the encoder graph, so serving
    computes them once per image rather than at every step of every beam.
    """
    from training.attention import AttentionConfig, memory_dim, memory_models

    cfg = run.model_config
    if not isinstance(cfg, AttentionConfig):
        raise TypeError(f"an attention run has an AttentionConfig, got {type(cfg).__name__}")
    head, step_model = memory_models(run.step_model, cfg)
    return attach_memory_head(encoder, head), step_model, memory_dim(cfg)


def run_encoder(config: dict[str, Any], *, attention: bool) -> Any:
    """The Keras encoder the run's features came from: ``pooled`` (+ ``grid`` for attention)."""
    name, weights, input_size = encoder_settings(config)
    return build_encoder(
        name,
        weights=weights,
        input_size=input_size,
        outputs=("pooled", "grid") if attention else ("pooled",),
    )


def sources_from_run(run_dir: Path) -> ExportSources:
    """Load the run's best decoder and rebuild its encoder."""
    run = load_run(run_dir)
    name, weights, input_size = encoder_settings(run.config)
    info = encoder_info(name, weights=weights, input_size=input_size)
    if info.feature_dim != run.model_config.feature_dim:
        raise ValueError(
            f"encoder {name} gives {info.feature_dim}-d features, "
            f"the decoder expects {run.model_config.feature_dim}"
        )
    attention = run.config.get("decoder", "merge") == "attention"
    encoder = run_encoder(run.config, attention=attention)
    roles: tuple[FeatureRole, ...] = ("pooled",)
    step_model, image_dim = run.step_model, None
    if attention:
        encoder, step_model, image_dim = _with_memory(encoder, run)
        roles = ("pooled", "memory")
    max_length = int(run.config.get("max_length", 20))
    cell = str(run.config.get("cell", "lstm"))
    return ExportSources(
        encoder=encoder,
        encoder_name=name,
        encoder_weights=info.weights_desc,
        preprocessing=info.preprocessing,
        feature_dim=info.feature_dim,
        grid_size=info.grid_size,
        step_model=step_model,
        vocab=run.vocab,
        hidden_size=run.model_config.units,
        max_length=max_length,
        training={
            "config": run.config,
            "history": history_summary(run_dir),
            "keras_model": KERAS_MODEL_RECIPE.replace("training.model", "training.attention")
            if attention
            else KERAS_MODEL_RECIPE,
        },
        keras_weights=Path(run_dir) / BEST_WEIGHTS_FILE,
        roles=roles,
        architecture=f"attention_{cell}" if attention else "merge_lstm",
        image_role="memory" if attention else "pooled",
        image_dim=image_dim,
        state_names=("h",) if attention and cell == "gru" else ("h", "c"),
        attention=attention,
    )
