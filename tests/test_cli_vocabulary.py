"""One vocabulary on the command line: README's flags exist, nnU-Net's dash convention holds, old spellings parse."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from nnunet_pdddpm.cli import convert_wmh2017, demo, evaluate, experiment, make_demo_dataset, predict
from nnunet_pdddpm.cli.spellings import DEPRECATED_SPELLINGS, parse_args

README = Path(__file__).resolve().parents[1] / "README.md"
# command -> (parser, the required arguments a parse needs)
COMMANDS = {
    "predict": (predict.build_parser, ["-i", "I", "-o", "O", "-d", "1", "-c", "2d"]),
    "experiment": (experiment.build_parser, ["-d", "1", "-c", "2d", "-i", "I", "-ref", "R", "-o", "O"]),
    "demo": (demo.build_parser, []),
    "make_demo_dataset": (make_demo_dataset.build_parser, []),
    "evaluate": (evaluate.build_parser, ["-ref", "R", "-pred", "P", "-o", "O"]),
    "convert_wmh2017": (convert_wmh2017.build_parser, ["-i", "I", "-d", "12"]),
}
FLAG = re.compile(r"(?<![\w\-/.])(--?[a-z][a-z_0-9]*)")


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(subcommand path, parser) for a parser and every subparser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, path + (name,))


def option_strings(command: str) -> set[str]:
    return {s for _, p in parsers(COMMANDS[command][0]()) for s in p._option_string_actions}


def readme_flags() -> list[tuple[str, str]]:
    """(command, flag) for every flag README shows after one of our commands (code blocks line by line, inline
    code span by span), and in the flag table of predict."""
    text = README.read_text()
    snippets = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        snippets += block.replace("\\\n", " ").splitlines()
    snippets += re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    found = []
    for snippet in snippets:
        for match in re.finditer(r"nnunet_pdddpm_(\w+)((?:(?!nnunet_pdddpm_).)*)", snippet, re.S):
            if match.group(1) in COMMANDS:
                found += [(match.group(1), f) for f in FLAG.findall(match.group(2))]
    table = text[text.index("| flag | meaning |"):]
    table = table[:table.index("\n\n")]
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        found += [("predict", f) for code in re.findall(r"`([^`]*)`", first_cell) for f in FLAG.findall(code)]
    return found


def test_readme_shows_flags_of_every_command():
    commands = {c for c, _ in readme_flags()}
    assert {"predict", "experiment", "demo", "evaluate", "convert_wmh2017"} <= commands


@pytest.mark.parametrize("command, flag", sorted(set(readme_flags())))
def test_every_flag_in_readme_exists(command, flag):
    assert flag in option_strings(command), f"README shows nnunet_pdddpm_{command} {flag}, which the parser lacks"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_one_dash_for_values_two_for_switches(command):
    for path, parser in parsers(COMMANDS[command][0]()):
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            names = action.option_strings
            if action.nargs == 0:
                assert all(n.startswith("--") for n in names), (command, path, names)
            else:
                assert any(not n.startswith("--") for n in names), (command, path, names)


def _where(new: str):
    """(command, argv prefix, action) of a parser that defines ``new``."""
    for command, (build, required) in COMMANDS.items():
        for path, parser in parsers(build()):
            if new in parser._option_string_actions:
                return command, [*path, *required], parser._option_string_actions[new]
    raise AssertionError(f"no parser defines {new}")


@pytest.mark.parametrize("old, new", sorted(DEPRECATED_SPELLINGS.items()))
def test_old_spellings_still_parse_with_a_warning(old, new, capsys):
    command, prefix, action = _where(new)
    if action.nargs == 0:
        value = []
    else:  # a value other than the default, so that parsing it shows
        value = [next(str(c) for c in action.choices if c != action.default) if action.choices else "7"]
    expected = parse_args(COMMANDS[command][0](), [*prefix, new, *value])
    assert capsys.readouterr().err == ""
    parsed = parse_args(COMMANDS[command][0](), [*prefix, old, *value])
    assert getattr(parsed, action.dest) == getattr(expected, action.dest) != action.default
    err = capsys.readouterr().err
    assert f"warning: {old} is deprecated" in err and f"use {new}." in err


def test_help_lists_the_old_spellings(capsys):
    with pytest.raises(SystemExit):
        parse_args(predict.build_parser(), ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--ensemble (now -ensemble_size)" in out and "--soft_preseg (now --soft_pre_segmentation)" in out


def test_one_default_pre_segmenter():
    from nnunet_pdddpm.discovery import DEFAULT_PRE_SEGMENTER_TRAINER
    from nnunet_pdddpm.trainers import PDDDPMTrainer

    for command in ("predict", "experiment"):
        build, required = COMMANDS[command]
        prefix = ["table1", *required] if command == "experiment" else required
        assert parse_args(build(), prefix).preseg_tr == DEFAULT_PRE_SEGMENTER_TRAINER
    assert PDDDPMTrainer.pre_segmenter_trainers[0] == DEFAULT_PRE_SEGMENTER_TRAINER
