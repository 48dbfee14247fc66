"""``python -m training {train,evaluate} ...``: the offline pipeline's command line.

``train`` exposes every ``TrainConfig`` field as a flag whose help text is the field's comment;
``evaluate`` hands its arguments to ``training.evaluate.main``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

from training.train import TrainConfig, train

_FIELD_LINE = re.compile(r"^\s+(\w+): [^=]+= .+?  # (.+)$")


def field_help() -> dict[str, str]:
    """Each TrainConfig field's trailing comment, read from the source (one source of truth)."""
    source = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2) for m in map(_FIELD_LINE.match, source.splitlines()) if m}


def _optional(kind: type[Any]) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "") else kind(text)

    return parse


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    helps = field_help()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        text = f"{helps[field.name]} (default: {default})"
        kind = str(field.type)
        if kind == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=text
            )
            continue
        base = {"int": int, "float": float, "str": str}[kind.split(" | ")[0]]
        convert = _optional(base) if "None" in kind else base
        metavar = field.name.upper() + (" | none" if "None" in kind else "")
        parser.add_argument(flag, type=convert, default=default, metavar=metavar, help=text)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue RUN_DIR from its last complete checkpoint, with its saved config",
    )
    parser.add_argument(
        "--force", action="store_true", help="start over in a RUN_DIR that already holds a run"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train and evaluate the caption decoder on Flickr8k (offline pipeline).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser(
        "train",
        help="train a caption decoder (merge or attention) into RUN_DIR",
        description=inspect.getdoc(sys.modules["training.train"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_flags(train_parser)
    commands.add_parser(
        "scst",
        add_help=False,
        help="fine-tune an attention run for CIDEr-D (see python -m training scst --help)",
    )
    commands.add_parser(
        "evaluate",
        add_help=False,
        help="score a run or bundle (see python -m training evaluate --help)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args_list[:1] in (["evaluate"], ["scst"]):
        import importlib

        # helper modules, loaded lazily
        command = importlib.import_module(f"training.{args_list[0]}")
        result: int = command.main(args_list[1:])
        return result
    args = build_parser().parse_args(args_list)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig(**values)
    except ValueError as exc:
        build_parser().error(str(exc))
    run_dir = train(cfg, resume=args.resume, force=args.force)
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
