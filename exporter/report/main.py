"""`accel-cost-exporter report`: parse, query, analyse, render; exit 2 for bad flags, 1 for a failed run."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from exporter.report.analysis import analyse
from exporter.report.args import ReportOptions, parse_options
from exporter.report.collect import collect
from exporter.report.errors import ReportFailed, ReportUsageError
from exporter.report.format_csv import render_csv
from exporter.report.format_html import render_html
from exporter.report.format_json import render_json
from exporter.report.format_markdown import render_markdown
from exporter.report.model import Finding, Report

PROG = "accel-cost-exporter report"
RENDERERS: dict[str, Callable[[Report], str]] = {
    "markdown": render_markdown,
    "json": render_json,
    "csv": render_csv,
    "html": render_html,
}


def _progress(quiet: bool) -> Callable[[int, int], None] | None:
    if quiet:
        return None

    def show(done: int, total: int) -> None:
        print(f"{PROG}: queries {done}/{total}", file=sys.stderr, flush=True)

    return show


async def build_report(options: ReportOptions) -> Report:
    """Query the server (and the cloud, with --aws.regions) and analyse the answers."""
    data = await collect(options, _progress(options.quiet))
    findings: list[Finding] = []
    problems: list[str] = []
    if options.aws_regions:
        from exporter.report.aws import unmonitored_findings

        findings, problems = await unmonitored_findings(options, data)
    return analyse(data, options.client.url, options.selector, findings, problems)


def run(argv: Sequence[str]) -> int:
    """Entry point of the subcommand; never raises for bad input."""
    try:
        options = parse_options(argv)
    except ReportUsageError as exc:
        print(f"{PROG}: error: {exc} (see --help)", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(build_report(options))
        text = RENDERERS[options.output_format](report)
        if options.output:
            try:
                Path(options.output).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise ReportFailed(f"cannot write --output {options.output}: {exc}") from None
        else:
            sys.stdout.write(text)
    except ReportFailed as exc:
        print(f"{PROG}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: one line, never a traceback
        print(f"{PROG}: failed: unexpected {type(exc).__name__}: {exc} (please report it)", file=sys.stderr)
        return 1
    if report.partial:
        print(f"{PROG}: the report is PARTIAL: {'; '.join(report.problems)}", file=sys.stderr)
    return 0
