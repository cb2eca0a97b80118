"""The one argument style of the commands other than train and pretrain: ``key=value``, checked against each
command's schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from broadclass.arguments import parse_arguments
from broadclass.check import CheckArguments
from broadclass.export import ExportArguments
from broadclass.prepare import PrepareArguments
from broadclass.report import ReportArguments


def parsed(schema, argv):
    return parse_arguments(schema, argv, "prog", "about")


def test_key_value_arguments_are_typed_by_the_schema():
    args = parsed(
        PrepareArguments,
        ["corpus.csv", "out=sets", "sets=2", "test_share=0.1", "keep_splits=true", "columns=audio=path,phones=text"],
    )
    assert (args.source, args.out, args.sets, args.test_share, args.keep_splits) == (
        "corpus.csv",
        Path("sets"),
        2,
        0.1,
        True,
    )
    assert args.columns == "audio=path,phones=text"  # a value may hold "=" itself


def test_positional_arguments_may_be_given_by_key():
    by_position = parsed(ExportArguments, ["run-1", "out", "tracking_uri=sqlite:///x.db", "overwrite=true"])
    assert by_position == parsed(
        ExportArguments, ["source=run-1", "out_dir=out", "tracking_uri=sqlite:///x.db", "overwrite=true"]
    )
    assert (by_position.source, by_position.out_dir, by_position.overwrite) == ("run-1", "out", True)


def test_repeated_keys_fill_a_list_and_null_clears_an_optional_value():
    args = parsed(ReportArguments, ["compare=outputs/sweep", "over=seed", "over=lr", "out=null"])
    assert (args.compare, args.run, args.over, args.out) == ("outputs/sweep", None, ["seed", "lr"], None)


def test_keys_that_are_no_field_go_to_the_hydra_overrides_where_the_schema_takes_them():
    args = parsed(
        CheckArguments,
        ["a/train.jsonl", "data.max_duration=null", "+experiment=demo", "b/validation.jsonl", "json=report.json"],
    )
    assert args.manifests == ["a/train.jsonl", "b/validation.jsonl"]
    assert args.overrides == ["data.max_duration=null", "+experiment=demo"]
    assert args.json == Path("report.json")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["corpus.csv", "bogus=1"], "unknown key 'bogus'"),
        (["corpus.csv", "--sets", "2"], "unknown option --sets (arguments are key=value; keys: source, out, sets"),
        (["--out=sets", "corpus.csv"], "unknown option --out=sets"),
        (["corpus.csv", "sets=two"], "bad value for sets"),
        (["out=sets"], "required: source=..."),
        (["corpus.csv", "other.csv"], "unexpected argument 'other.csv'"),
    ],
)
def test_a_mistake_is_one_line_and_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parsed(PrepareArguments, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_value_outside_the_choices_is_refused(capsys):
    from broadclass.demo_corpus import DemoArguments

    with pytest.raises(SystemExit):
        parsed(DemoArguments, ["categories=colour"])
    assert "categories=colour is not one of accent, voice" in capsys.readouterr().err


def test_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        parsed(ExportArguments, ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: prog SOURCE OUT_DIR [key=value ...]" in out
    assert "overwrite=false" in out and "source=... (required)" in out
