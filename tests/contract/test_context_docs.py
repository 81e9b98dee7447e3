"""docs/pricing.md stays true: its YAML examples are valid configs, its table matches the shipped one."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT

from exporter.config import parse_config
from exporter.context.price.builtin_prices import builtin_table
from exporter.context.price.price_bounds import BOUNDS_TEXT

DOC = ROOT / "docs" / "pricing.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS)
def test_yaml_examples_are_valid_configs(block: str) -> None:
    parse_config(yaml.safe_load(block), source="docs/pricing.md")


def test_doc_names_the_table_date_and_prices() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = builtin_table()
    assert f"as of {table.as_of}" in text
    for instance_type in ("p4d.24xlarge", "p5.48xlarge", "g6.24xlarge"):
        assert f"{table.prices[instance_type]:g}" in text


def test_doc_states_the_accepted_price_range() -> None:
    assert f"**{BOUNDS_TEXT}**" in DOC.read_text(encoding="utf-8")
