"""Tests of ``scripts/run_experiments.py``'s argument parsing (``experiments.cli``)."""

from __future__ import annotations

import argparse

import pytest

from experiments.cli import _override


@pytest.mark.parametrize(
    "text, expected",
    [
        ("amp=false", ("amp", False)),
        ("amp=False", ("amp", False)),
        ("amp=TRUE", ("amp", True)),
        ("mae_checkpoint=null", ("mae_checkpoint", None)),
        ("train#batch_size=8", ("train#batch_size", 8)),
        ("class_names=['a', 'b']", ("class_names", ["a", "b"])),
        ("sam_checkpoint=bundle/models/sam.pth", ("sam_checkpoint", "bundle/models/sam.pth")),
        ("note=a=b", ("note", "a=b")),
    ],
)
def test_override_values_are_typed_as_the_configs_spell_them(text, expected):
    """``--override amp=false`` once reached the trainer as the (true) string "false" and trained in bf16."""
    assert _override(text) == expected


def test_override_without_a_value_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        _override("amp")
