"""docs/deploy.md stays true to the files it describes."""

from __future__ import annotations

import re
from pathlib import Path

import bcrypt
import yaml
from conftest import ROOT

DOC = (ROOT / "docs" / "deploy.md").read_text()


def test_web_config_example_is_valid_apart_from_its_certificates(tmp_path: Path) -> None:
    from exporter.web.webconfig import load_web_config

    (block,) = re.findall(r"```yaml\n(# /etc/accel-cost-exporter/web-config.yml\n.*?)```", DOC, re.DOTALL)
    data = yaml.safe_load(block)
    hashed = data["basic_auth_users"]["prometheus"]
    assert bcrypt.checkpw(b"example", hashed.encode())  # the doc says which password it is
    del data["tls_server_config"]  # no certificates here
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(data))
    assert load_web_config(path).users == {"prometheus": hashed}


def test_paths_named_in_the_doc_exist() -> None:
    for path in (
        "systemd/accel-cost-exporter.service",
        "systemd/accel-cost-exporter.default",
        "deploy/kubernetes/kustomization.yaml",
        "deploy/kubernetes/generate.py",
        "deploy/kubernetes/components/runtimeclass-nvidia",
    ):
        assert path in DOC or path.rsplit("/", 1)[-1] in DOC, path
        assert (ROOT / path).exists(), path


def test_doc_and_unit_agree_on_the_install_path_and_base_image() -> None:
    unit = (ROOT / "systemd" / "accel-cost-exporter.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(\S+)", unit, re.MULTILINE)
    assert exec_start == "/opt/accel-cost-exporter/bin/accel-cost-exporter"
    assert "python3 -m venv /opt/accel-cost-exporter" in DOC
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=python:(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert f"python:{base}" in DOC
