"""The docs stay true to the repository: the benchmark tables are exactly what
bench/tables.py renders from bench/results/*.json, every relative link (and anchor)
resolves, every page under docs/ is linked from README.md, the README stays a short front
door, and the configuration reference names every key of the config schema."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from framesift.config.loading import BOOK_KEYS
from framesift.config.schema import DriftConfig, DriftSignalConfig, PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, ROOT / "BENCHMARKS.md", *sorted(DOCS.glob("*.md"))]
README_MAX_BYTES = 12 * 1024


def _load_tables():
    spec = importlib.util.spec_from_file_location("framesift_bench_tables", ROOT / "bench" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _load_tables()


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------ generated tables


@pytest.fixture(scope="module")
def results():
    return tables.load_results()


@pytest.mark.parametrize("page", tables.pages(), ids=_rel)
def test_every_bench_table_is_what_the_json_gives(page, results):
    text = page.read_text()
    for m in tables.MARKER.finditer(text):
        expected = tables.render(m["name"], results)
        assert m["body"] == expected, (
            f"{_rel(page)}: the '{m['name']}' table differs from bench/results/*.json; "
            f"run `python bench/tables.py` (never edit it by hand)\n--- page\n{m['body']}--- JSON\n{expected}"
        )
    assert tables.fill(text, results, _rel(page)) == text


@pytest.mark.parametrize(
    ("page", "names"),
    [
        ("README.md", ["summary"]),
        ("docs/benchmarks.md", ["full", "machines", "details", "loop"]),
        ("docs/limitations.md", ["misses"]),
    ],
)
def test_the_pages_hold_their_tables(page, names):
    assert tables.table_names((ROOT / page).read_text()) == names


def test_each_ratio_in_the_readme_is_the_json_number(results):
    """The README once said 1.41x where the JSON said 1.40: the row shows the JSON's value."""
    rows = {
        line.split("|")[1].strip(): line
        for line in README.read_text().splitlines()
        if line.startswith("| `bench_")
    }
    assert set(rows) == {f"`bench_{name}.py`" for name in results}
    for name, result in results.items():
        if result is not None and isinstance(result.get("ratio"), int | float):
            cells = [c.strip() for c in rows[f"`bench_{name}.py`"].split("|")]
            assert cells[2] == repr(result["ratio"]), (name, cells[2], result["ratio"])


def test_numbers_are_rendered_exactly_and_stale_tables_are_rewritten():
    fake = {
        "extract": {"ratio": 1.4, "met": True, "target": ">= 1", "ratio_means": "ffmpeg / ours"},
        "loop": {"ratio": 1.404, "met": False, "target": "<= 0.5", "finished_at": "2026-01-02T03:04:05"},
        "e2e": None,
    }
    table = tables.render("summary", fake)
    assert "| `bench_extract.py` | 1.4 | ffmpeg / ours | >= 1 | yes | — |" in table
    assert "| `bench_loop.py` | 1.404 | — | <= 0.5 | **no** | 2026-01-02 |" in table
    assert "| `bench_e2e.py` | not run yet |" in table
    stale = "intro\n<!-- bench-table:start summary -->\n| `bench_extract.py` | 1.41 |\n<!-- bench-table:end -->\nend\n"
    filled = tables.fill(stale, fake)
    assert "1.41" not in filled and "| 1.4 |" in filled
    assert filled.startswith("intro\n<!-- bench-table:start summary -->\n") and filled.endswith(
        "<!-- bench-table:end -->\nend\n"
    )
    assert tables.fill(filled, fake) == filled
    assert "`bench_loop.py`" in tables.render("misses", fake)
    assert "`bench_extract.py`" not in tables.render("misses", fake)


def test_bad_markers_fail_clearly():
    with pytest.raises(tables.TableError, match="unknown bench table 'nope'"):
        tables.fill("<!-- bench-table:start nope -->\n<!-- bench-table:end -->\n", {})
    with pytest.raises(tables.TableError, match="unbalanced"):
        tables.fill("<!-- bench-table:start summary -->\nno end\n", {})
    # a marker mentioned inside a sentence is not a marker
    prose = "tables sit between `<!-- bench-table:start NAME -->` lines\n"
    assert tables.fill(prose, {}) == prose


# ------------------------------------------------------------------ links


FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", path.read_text())):
        base = _slug(m[2])
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {_rel(dest)}")
    assert not broken, f"{_rel(page)}: broken links:\n  " + "\n  ".join(broken)


def test_the_link_checker_sees_links_and_anchors():
    assert _slug("The `framesift` command") == "the-framesift-command"
    assert _slug("### Valid input/strategy pairs".lstrip("# ")) == "valid-inputstrategy-pairs"
    assert _slug("`max_map_length` and batching") == "max_map_length-and-batching"
    assert "on-call-drift-alerts" in anchors(DOCS / "operations.md")
    assert "docs/concepts.md" in links(README)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README) if not t.startswith("#")}
    missing = [_rel(p) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_the_readme_is_a_short_front_door():
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, (
        f"README.md is {size} bytes; keep it under {README_MAX_BYTES} (move detail to docs/)"
    )


# ------------------------------------------------------------------ configuration reference


def schema_keys(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= schema_keys(ann, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


SIGNALS = [
    name
    for name, f in DriftConfig.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, DriftSignalConfig)
]


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of every markdown table whose first header cell is ``first_header``."""
    rows, inside = [], False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            inside = False
        elif cells[0] == first_header:
            inside = True
        elif inside and not set(cells[0]) <= {"-", " "}:
            rows.append(cells)
    return rows


def documented_keys(text: str) -> list[str]:
    keys = []
    for cells in table_rows(text, "key"):
        names = re.findall(r"`([^`]+)`", cells[0])
        parent = names[0].rsplit(".", 1)[0]
        for name in [names[0], *(parent + n for n in names[1:] if n.startswith("."))]:
            keys += [name.replace("<signal>", s) for s in SIGNALS] if "<signal>" in name else [name]
    return keys


def test_the_configuration_reference_names_every_key_of_the_schema():
    documented = documented_keys((DOCS / "configuration.md").read_text())
    schema = schema_keys()
    assert len(SIGNALS) == 5
    assert not schema - set(documented), (
        f"keys missing from docs/configuration.md: {sorted(schema - set(documented))}"
    )
    assert not set(documented) - schema, (
        f"docs/configuration.md names unknown keys: {sorted(set(documented) - schema)}"
    )


def test_the_configuration_reference_lists_the_book_keys():
    rows = table_rows((DOCS / "configuration.md").read_text(), "book key")
    documented = {re.sub(r"`", "", r[0]): re.sub(r"`", "", r[1]) for r in rows}
    assert documented == BOOK_KEYS
