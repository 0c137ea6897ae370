"""`lmpipe COMMAND --help` explains every argument of every subcommand."""

from __future__ import annotations

import argparse
import re

import pytest

from lmpipe import cli


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The subparsers of the `lmpipe` parser, by name."""
    [sub] = [a for a in cli.build_parser()._actions
             if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


COMMANDS = subcommands()


def test_every_subcommand_is_walked():
    assert set(COMMANDS) == {"index", "report", "query", "export", "generate", "probe", "run",
                             "sweep"}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_argument_has_an_explaining_help(name):
    parser = COMMANDS[name]
    assert parser.description, f"lmpipe {name} --help has no description"
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert actions
    for action in actions:
        label = action.option_strings[-1] if action.option_strings else action.dest
        text = (action.help or "").strip()
        assert text and text != argparse.SUPPRESS, f"lmpipe {name} {label}: no help"
        # more than the argument's own name: words beyond those of its flag and dest
        names = _words(" ".join([*action.option_strings, action.dest]))
        assert len(_words(text) - names) >= 3, f"lmpipe {name} {label}: help {text!r}"
        # an option with a non-trivial default says what it is
        if action.option_strings and action.default not in (None, False):
            assert "%(default)s" in text or "default" in text, f"lmpipe {name} {label}"


def test_generate_help_explains_sampling(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "0 = greedy" in out and "(default: 0.8)" in out  # --temperature
    assert "(default: 200)" in out  # --max-new-tokens, the default filled in
    assert "saved model directory" in out  # the positional model
    assert "tool calls are answered from this database" in out  # --db
