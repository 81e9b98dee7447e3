"""A FIFO or device as config, web config or certificate is refused, never read (issue 13, item 8)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trustme
from conftest import http_get, run_cli, start_exporter, wait_until

from exporter.config import ConfigInvalid, load_config
from exporter.web.webconfig import WebConfigInvalid, WebConfigWatcher, load_web_config

TIMEOUT = 20.0  # a generous bound: before the fix these hung until killed


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_check_config_refuses_a_fifo_as_config_or_web_config(tmp_path: Path) -> None:
    pipe = fifo(tmp_path / "config.yml")
    for flag in ("--config.file", "--web.config.file"):
        result = run_cli("--check-config", flag, str(pipe), timeout=TIMEOUT)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert f"a FIFO (named pipe), not a regular file; point {flag} at a regular file" in result.stderr


def test_loaders_refuse_devices_and_directories(tmp_path: Path) -> None:
    for path, kind in (("/dev/null", "a character device"), (str(tmp_path), "a directory")):
        with pytest.raises(ConfigInvalid, match=f"{kind}, not a regular file"):
            load_config(path)
        with pytest.raises(WebConfigInvalid, match=f"{kind}, not a regular file"):
            load_web_config(path)


def test_a_fifo_as_certificate_or_key_is_refused(tmp_path: Path) -> None:
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    fifo(tmp_path / "tls.crt")
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config: {cert_file: tls.crt, key_file: tls.key}\n")
    with pytest.raises(WebConfigInvalid, match=r"tls_server_config.cert_file: .*tls.crt is a FIFO \(named pipe\)"):
        load_web_config(path)


def test_a_web_config_replaced_by_a_fifo_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("")
    watcher = WebConfigWatcher(path, check_interval=0.0)
    path.unlink()
    fifo(path)
    assert watcher.reload_if_changed() is False  # returns: nothing waits for a writer
    assert "FIFO" in watcher.last_error


def test_sighup_with_the_config_replaced_by_a_fifo_is_refused_and_scrapes_go_on(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("pricing:\n  instance_types: {p4d.24xlarge: 30.0}\n")
    web = tmp_path / "web.yml"
    web.write_text("")
    args = ["--demo", "p4d-idle-fleet", "--collector.interval", "1s", "--config.file", str(config)]
    exporter = start_exporter([*args, "--web.config.file", str(web)], tmp_path / "exporter.log")
    try:
        config.unlink()
        fifo(config)
        web.unlink()
        fifo(web)
        exporter.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reload refused" in exporter.log(), "no refusal logged", TIMEOUT, exporter.log)
        assert "FIFO (named pipe)" in exporter.log()
        result = http_get(exporter.url + "/metrics", timeout=TIMEOUT)
        assert result.status == 200 and 'p4d.24xlarge"' in result.text
        # The web config is looked at (at most once a second) when a request comes.
        wait_until(
            lambda: exporter.get("/-/healthy").status == 200 and "keeping the previous web config" in exporter.log(),
            "web config not refused",
            TIMEOUT,
            exporter.log,
        )
        assert exporter.proc.poll() is None
    finally:
        assert exporter.stop(timeout=10) == 0
