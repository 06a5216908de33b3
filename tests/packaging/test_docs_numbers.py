"""Hand-written pages quote no benchmark number of their own: every signed difference or interval in
them (``+0.015``, ``[-0.010, +0.013]``) must be on the generated page, docs/BENCHMARK.md, so the two
cannot drift apart. Results belong to the page the command writes; other pages link to it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "docs" / "BENCHMARK.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("bundles/*/docs/*.md"))]
HAND_WRITTEN = [p for p in PAGES if p.name not in ("BENCHMARK.md", "PERFORMANCE.md")]  # the measurement pages
#: what the benchmark page writes: a signed difference, or a bracketed interval of two of them
BENCHMARK_NUMBER = re.compile(r"\[[+-]?\d+\.\d{3}, [+-]?\d+\.\d{3}\]|(?<![\w.])[+-]\d+\.\d{3}(?!\d)")


def benchmark_numbers(text: str) -> set[str]:
    return set(BENCHMARK_NUMBER.findall(text))


def test_the_pattern_finds_what_the_page_writes():
    assert benchmark_numbers("both +0.015 [+0.006, +0.031], brats -0.450; 0.878; 1e-3; v0.5.0") == {
        "+0.015",
        "[+0.006, +0.031]",
        "-0.450",
    }


@pytest.mark.parametrize("page", HAND_WRITTEN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_hand_written_page_quotes_only_the_generated_numbers(page: Path):
    stray = sorted(benchmark_numbers(page.read_text()) - benchmark_numbers(GENERATED.read_text()))
    assert not stray, f"{page.relative_to(ROOT)} quotes {stray}, which {GENERATED.name} does not say"
