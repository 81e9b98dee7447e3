"""The report's dated built-in catalogue of accelerator instance types."""

from __future__ import annotations

from exporter.report.instance_types import CATALOGUE, CATALOGUE_DATE, cheaper_fits, lookup


def test_the_families_the_issue_names_are_listed() -> None:
    families = {t.family for t in CATALOGUE}
    for family in ("p4d", "p4de", "p5", "p5e", "p5en", "g5", "g6", "g6e", "g4dn", "inf2", "trn1", "trn2"):
        assert family in families, family
    assert CATALOGUE_DATE
    for entry in CATALOGUE:
        assert entry.devices > 0 and entry.memory_gib_per_device > 0 and entry.model
        assert entry.dollars_per_hour is None or entry.dollars_per_hour > 0


def test_the_cheapest_fitting_type_of_the_same_vendor_and_size() -> None:
    p4d = lookup("p4d.24xlarge")
    assert p4d is not None
    proposed = cheaper_fits(p4d, 8, 13.2)
    assert proposed is not None and proposed.name == "g4dn.metal"
    proposed = cheaper_fits(p4d, 8, 20.0)
    assert proposed is not None and proposed.name == "g6.48xlarge"
    # 38.5 GiB per device: only A100/H100/H200/L40S types fit, none cheaper than a p4d.
    assert cheaper_fits(p4d, 8, 38.5) is None
    inf2 = lookup("inf2.48xlarge")
    assert inf2 is not None and cheaper_fits(inf2, 24, 1.0) is None  # never a move to NVIDIA
    p5e = lookup("p5e.48xlarge")
    assert p5e is not None and cheaper_fits(p5e, 8, 1.0) is None  # no list price: no proposal
