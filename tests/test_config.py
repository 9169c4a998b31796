"""Options: parsing, validation with clear messages, TOML + flag precedence."""

from __future__ import annotations

import os

import pytest

from spark_cleora.cli import build_parser, embed_config_from_args
from spark_cleora.config import Column, EmbedConfig, load_toml, parse_columns
from spark_cleora.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(__file__))


@pytest.mark.parametrize("spec,cols", [
    ("complex::reflexive::product", (Column("product", complex=True, reflexive=True),)),
    ("user complex::product", (Column("user"), Column("product", complex=True))),
    ("complex::a complex::b", (Column("a", complex=True), Column("b", complex=True))),
    ("transient::hub node", (Column("hub", transient=True), Column("node"))),
    ("COMPLEX::Reflexive::x", (Column("x", complex=True, reflexive=True),)),
])
def test_valid_column_specs(spec, cols):
    assert parse_columns(spec) == cols


@pytest.mark.parametrize("spec,msg", [
    ("product", "one relation"),
    ("a b c", "one relation"),
    ("reflexive::x", "needs 'complex'"),
    ("complex::reflexive::transient::x", "cannot be combined"),
    ("complex::reflexive::a b", "one relation"),
    ("weird::x y", "unknown modifier"),
    ("transient::a transient::b", "must not be transient"),
    ("x x", "repeats"),
])
def test_invalid_column_specs(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_columns(spec)


@pytest.mark.parametrize("kwargs,msg", [
    ({"input_format": "parquet"}, "--hyperedge"),
    ({"hyperedge": "u", "entity": "u"}, "different"),
    ({"hyperedge": "u", "entity": "i", "session_gap": 10}, "needs --timestamp"),
    ({"hyperedge": "u", "entity": "i", "timestamp": "t", "session_gap": 0}, "> 0"),
    ({"hyperedge": "u", "entity": "i", "dim": 0}, "dim"),
    ({"hyperedge": "u", "entity": "i", "markov": "right"}, "markov"),
    ({"hyperedge": "u", "entity": "i", "init": "fnv"}, "init"),
    ({"input_format": "cleora-tsv"}, "--columns"),
    ({"input_format": "cleora-tsv", "columns": "complex::reflexive::x", "hyperedge": "u"}, "event tables"),
])
def test_config_validation(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        EmbedConfig(**kwargs)


def test_example_toml_has_every_option_and_loads():
    path = os.path.join(ROOT, "conf", "embed.example.toml")
    values = load_toml(path)
    text = open(path, encoding="utf-8").read()
    from spark_cleora.config import field_names

    for name in field_names():
        assert name.replace("_", "-") in text, f"{name} is not documented in {path}"
    cfg = EmbedConfig(**values)
    assert cfg.hyperedge == "user_id" and cfg.session_gap == 1800


def test_flags_override_toml(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[embed]\ninputs = ["a.parquet"]\nhyperedge = "u"\nentity = "i"\ndim = 64\noutput = "o"\n')
    ns = build_parser().parse_args(["embed", "--config", str(conf), "--dim", "8", "--markov", "symmetric"])
    cfg = embed_config_from_args(ns)
    assert (cfg.dim, cfg.markov, cfg.inputs, cfg.output) == (8, "symmetric", ("a.parquet",), "o")


def test_unknown_toml_key_is_rejected(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[embed]\ndimension = 3\n")
    with pytest.raises(ConfigError, match="unknown option 'dimension'"):
        load_toml(conf)


def test_every_cli_flag_maps_to_a_config_field():
    from spark_cleora.config import field_names

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["embed"]
    dests = {a.dest for a in sub._actions} - {"help", "config", "master", "remote", "conf", "log_level",
                                                "input_table", "checkpoint_dir"}
    assert dests <= field_names()


def test_checkpoint_dir_keeps_the_work_dir():
    ns = build_parser().parse_args(["embed", "e.parquet", "--hyperedge", "u", "--entity", "i", "--output", "o",
                                    "--checkpoint-dir", "ck"])
    cfg = embed_config_from_args(ns)
    assert (cfg.work_dir, cfg.keep_work) == ("ck", True)
