"""The launch options are defined once (``wire.options``): everything else agrees with that list."""

from __future__ import annotations

import dataclasses
import inspect

import elastic_nb as enb
from elastic_nb.__main__ import main as cli_main
from elastic_nb.ui import magics
from elastic_nb.wire.options import BACKENDS, OPTIONS, JobOptions


def test_launch_takes_exactly_the_options_with_their_defaults():
    parameters = inspect.signature(enb.launch).parameters
    keyword = {name: p.default for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert keyword == {o.name: o.default for o in OPTIONS}


def test_job_options_are_the_shared_options():
    assert [f.name for f in dataclasses.fields(JobOptions)] == [o.name for o in OPTIONS if o.shared]


def test_the_magic_offers_a_flag_for_every_option_with_one():
    parser = magics.ElasticMagics.elastic_run.parser
    flags = {flag for action in parser._actions for flag in action.option_strings}
    for option in OPTIONS:
        if option.flag is not None:
            assert set(option.flags) <= flags, option.name
    assert magics.TAKES_VALUE == {f for a in parser._actions if a.nargs != 0 for f in a.option_strings}


def test_the_cli_offers_the_same_backends(capsys):
    try:
        cli_main(["join", "--help"])
    except SystemExit:
        pass
    assert "{" + ",".join(BACKENDS) + "}" in capsys.readouterr().out
