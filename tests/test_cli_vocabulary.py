"""One vocabulary on the command line: the documented flags exist, nnU-Net's dash convention holds, old spellings
parse; every documentation page is linked from README and every relative link resolves."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from nnunet_pdddpm.cli import convert_wmh2017, demo, evaluate, experiment, make_demo_dataset, predict
from nnunet_pdddpm.cli.spellings import DEPRECATED_SPELLINGS, parse_args

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTATION = sorted((ROOT / "documentation").glob("*.md"))
PAGES = [README, *DOCUMENTATION]
# command -> (parser, the required arguments a parse needs)
COMMANDS = {
    "predict": (predict.build_parser, ["-i", "I", "-o", "O", "-d", "1", "-c", "2d"]),
    "experiment": (experiment.build_parser, ["-d", "1", "-c", "2d", "-i", "I", "-ref", "R", "-o", "O"]),
    "demo": (demo.build_parser, []),
    "make_demo_dataset": (make_demo_dataset.build_parser, []),
    "evaluate": (evaluate.build_parser, ["-ref", "R", "-pred", "P", "-o", "O"]),
    "convert_wmh2017": (convert_wmh2017.build_parser, ["-i", "I", "-d", "12"]),
}
# page -> the command whose options its "| flag | meaning |" table lists
FLAG_TABLE_COMMANDS = {"prediction.md": "predict", "wmh2017.md": "convert_wmh2017"}
FLAG = re.compile(r"(?<![\w\-/.])(--?[a-z][a-z_0-9]*)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"```.*?```", re.S)


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(subcommand path, parser) for a parser and every subparser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, path + (name,))


def option_strings(command: str) -> set[str]:
    return {s for _, p in parsers(COMMANDS[command][0]()) for s in p._option_string_actions}


def flag_tables() -> list[tuple[Path, str | None, str]]:
    """(page, command or None, table) for every "| flag | meaning |" table of the documentation."""
    tables = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"^\| flag \| meaning \|$", text, re.M):
            table = text[match.start():].split("\n\n", 1)[0]
            tables.append((page, FLAG_TABLE_COMMANDS.get(page.name), table))
    return tables


def documented_flags() -> list[tuple[str, str]]:
    """(command, flag) for every flag README or a documentation page shows after one of our commands (code blocks
    line by line, inline code span by span), and in the first cell of the flag tables."""
    found = []
    for page in PAGES:
        text = page.read_text()
        snippets = []
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            snippets += block.replace("\\\n", " ").splitlines()
        snippets += re.findall(r"`([^`]+)`", FENCED.sub("", text))
        for snippet in snippets:
            for match in re.finditer(r"nnunet_pdddpm_(\w+)((?:(?!nnunet_pdddpm_).)*)", snippet, re.S):
                if match.group(1) in COMMANDS:
                    found += [(match.group(1), f) for f in FLAG.findall(match.group(2))]
    for _, command, table in flag_tables():
        for row in table.splitlines()[2:]:
            first_cell = row.split("|")[1]
            found += [(command, f) for code in re.findall(r"`([^`]*)`", first_cell) for f in FLAG.findall(code)]
    return found


def test_documentation_shows_flags_of_every_command():
    commands = {c for c, _ in documented_flags()}
    assert {"predict", "experiment", "demo", "evaluate", "convert_wmh2017"} <= commands


def test_every_flag_table_names_its_command():
    tables = flag_tables()
    assert all(command for _, command, _ in tables), [str(p) for p, c, _ in tables if not c]
    assert {command for _, command, _ in tables} == set(FLAG_TABLE_COMMANDS.values())


@pytest.mark.parametrize("command, flag", sorted(set(documented_flags())))
def test_every_documented_flag_exists(command, flag):
    assert flag in option_strings(command), f"documented: nnunet_pdddpm_{command} {flag}, which the parser lacks"


def _links(page: Path) -> list[str]:
    return LINK.findall(FENCED.sub("", page.read_text()))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes, repeats numbered."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#+ (.+)$", FENCED.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_documentation_page_is_linked_from_readme():
    assert DOCUMENTATION, "no documentation/*.md found"
    linked = {(README.parent / link.split("#")[0]).resolve() for link in _links(README)}
    missing = [page.name for page in DOCUMENTATION if page.resolve() not in linked]
    assert not missing, f"README links no page {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target)):
            broken.append(link)
    assert not broken, f"{page.name}: broken links {broken}"


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
