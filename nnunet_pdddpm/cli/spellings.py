"""Old option spellings: still parsed, with a warning, until :data:`REMOVED_IN`.

Release 0.1.0 spelled options with values with two dashes (``--t_prime 300``); nnU-Net's convention,
followed since 0.2.0, is one dash for options with values and two for switches. Light on purpose: the
scripts' ``--help`` loads no torch.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

REMOVED_IN = "0.3"
DEPRECATED_SPELLINGS: dict[str, str] = {
    "--t_prime": "-t_prime", "--ensemble": "-ensemble_size", "--sampler": "-sampler", "--steps": "-steps",
    "--seed": "-seed", "--uncertainty": "-uncertainty", "--soft_preseg": "--soft_pre_segmentation",
    "--max_batch_size": "-max_batch_size", "--memory_budget_gb": "-memory_budget_gb",
    "--vanilla_sampler": "-vanilla_sampler", "--vanilla_steps": "-vanilla_steps", "--values": "-values",
    "--repeats": "-repeats", "--degradations": "-degradations", "--preseg_checkpoints": "-preseg_checkpoints",
    "--profile": "-profile", "--figures": "-figures", "--num_train": "-num_train", "--num_test": "-num_test",
    "--exclude_label": "-exclude_label", "--ignore_label": "-ignore_label", "--file_ending": "-file_ending",
    "--paper_split": "-paper_split",
}



def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args`` after renaming deprecated spellings (each named once on stderr); ``--help`` lists
    the old spellings of the options the parser has."""
    _add_epilogs(parser)
    renamed = []
    for token in sys.argv[1:] if argv is None else argv:
        name, equals, value = token.partition("=")
        if name in DEPRECATED_SPELLINGS:
            new = DEPRECATED_SPELLINGS[name]
            print(f"warning: {name} is deprecated and will be removed in {REMOVED_IN}; use {new}.", file=sys.stderr)
            token = new + equals + value
        renamed.append(token)
    return parser.parse_args(renamed)


def _add_epilogs(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_epilogs(sub)
    old = [f"{o} (now {n})" for o, n in DEPRECATED_SPELLINGS.items() if n in parser._option_string_actions]
    if old and not parser.epilog:
        parser.epilog = f"Old spellings, accepted with a warning until {REMOVED_IN}: {', '.join(old)}."
