"""`python -m trainers <algorithm> --help`: every subcommand's help prints, each field's description as declared."""

import pytest

from trainers.__main__ import ALGORITHMS, build_parser


def help_of(algorithm: str, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "100000")  # argparse wraps at the terminal's width: one line per flag
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([algorithm, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithms_help_prints_each_fields_description_as_written(algorithm, capsys, monkeypatch):
    out = help_of(algorithm, capsys, monkeypatch)
    _, hyper, _ = ALGORITHMS[algorithm]
    for name, field in hyper.model_fields.items():
        assert f"--{name.replace('_', '-')}" in out
        assert f"{field.description} (default {field.default})" in out, name


def test_some_description_holds_a_bare_percent_sign():
    # argparse reads `%` in help as a format; the test above covers it only while some description has one.
    descriptions = [f.description or "" for _, hyper, _ in ALGORITHMS.values() for f in hyper.model_fields.values()]
    assert any("%" in d and "%%" not in d for d in descriptions)
