"""The product and the bench stay apart, and the documentation's links resolve.

The product is the ``scsam_monai`` package (the wheel) and the Model Zoo bundle ``scripts/package_bundle.py``
writes; the bench is ``experiments/`` and ``benchmarks/`` at the repository root, run from there and shipped with
neither. Checked here: the wheel holds ``scsam_monai`` alone and no issue numbers in its code; no module of the
package imports the bench; the packaged bundle holds no bench code, none of the bench's profile overlays and no
issue numbers; every relative link of the repository's Markdown documentation names an existing file or folder.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "scsam_monai"
BENCH = ("experiments", "benchmarks")
ISSUE = re.compile(r"[Ii]ssues? ?#?\d+")
"""An issue reference ("issue 15", "Issue #3", "issues 12"): history that belongs in git, not in shipped files."""
BENCH_PROFILES = ("tiny.yaml", "small.yaml", "full.yaml", "mae_random.yaml")
"""The bench's own overlays (``experiments/configs``), which the bundle must not carry."""

# root-level paths never part of a build: the virtual environment, git, outputs, data, build leftovers
_NOT_SOURCE_AT_ROOT = {
    ".venv",
    ".git",
    "outputs",
    "data",
    "dist",
    "build",
    ".hypothesis",
    ".cache",
    ".pytest_cache",
    ".ruff_cache",
}


def _bench_imports(path: Path) -> list[str]:
    """The bench modules a Python file imports: ``import``/``from`` statements at any depth and
    ``importlib.import_module("...")`` / ``__import__("...")`` calls with a literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [name for name in names if name.split(".")[0] in BENCH]
    return found


# ---------------------------------------------------------------------------------------------------- the wheel


def _copy_source(src: Path, dst: Path) -> None:
    """The working tree as a build sees it (so that a build never writes ``build/`` or ``*.egg-info`` into it)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", ".pyc"))}
        if Path(folder).resolve() == src.resolve():
            skipped |= _NOT_SOURCE_AT_ROOT & set(names)
        return skipped

    shutil.copytree(src, dst, ignore=ignore)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of the project, built offline from a copy of the working tree (no index, no build isolation)."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    work = tmp_path_factory.mktemp("wheel")
    _copy_source(REPO_ROOT, work / "src")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(work / "out"),
            str(work / "src"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (built,) = (work / "out").glob("*.whl")
    return built


def test_wheel_holds_the_scsam_monai_package_alone(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {PACKAGE}, sorted(top - dist_info - {PACKAGE})
    assert not [n for n in names if n.split("/")[0] in BENCH]
    (info,) = dist_info
    top_level = zipfile.ZipFile(wheel).read(f"{info}/top_level.txt").decode().split()
    assert top_level == [PACKAGE]
    # and nothing of the package is lost on the way (e.g. a folder a package finder would skip)
    shipped = {n for n in names if n.endswith(".py")}
    source = {
        p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts
    }
    assert source <= shipped, sorted(source - shipped)


def test_wheel_code_names_no_issue_numbers(wheel):
    archive = zipfile.ZipFile(wheel)
    hits = []
    for name in archive.namelist():
        if name.endswith(".py"):
            for number, line in enumerate(archive.read(name).decode("utf-8").splitlines(), 1):
                if ISSUE.search(line):
                    hits.append(f"{name}:{number}: {line.strip()}")
    assert not hits, hits


# ------------------------------------------------------------------------------------------- the package's imports


def test_no_module_of_the_package_imports_the_bench():
    offending = []
    for path in sorted((REPO_ROOT / PACKAGE).rglob("*.py")):
        if "__pycache__" not in path.parts:
            offending += [f"{path.relative_to(REPO_ROOT)} imports {name}" for name in _bench_imports(path)]
    assert not offending, offending


def test_the_import_check_sees_every_form_of_import(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text(
        "import os, experiments.runner\nfrom benchmarks import cli\nimport importlib\n"
        "def f():\n    from experiments.report import x\n    return importlib.import_module('benchmarks.run')\n"
        "from scsam_monai.baselines import planning\nfrom . import experiments\n"
    )
    assert _bench_imports(module) == ["experiments.runner", "benchmarks", "experiments.report", "benchmarks.run"]


# ------------------------------------------------------------------------------------------ the packaged bundle


@pytest.fixture(scope="module")
def packaged_bundle(tmp_path_factory) -> Path:
    from scripts.package_bundle import package

    return package(REPO_ROOT / "bundle", tmp_path_factory.mktemp("zoo"))


def test_packaged_bundle_holds_the_product_and_no_bench(packaged_bundle):
    root = packaged_bundle
    assert {p.name for p in root.iterdir()} <= {"configs", "docs", "models", PACKAGE, "LICENSE", "large_files.yml"}
    files = [p for p in root.rglob("*") if p.is_file()]
    # no bench code: no file or folder of the bench's name anywhere, no Python file importing it
    bench_named = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.name.split(".")[0] in BENCH]
    assert not bench_named, bench_named
    importing = [
        f"{p.relative_to(root)}: {names}" for p in files if p.suffix == ".py" for names in [_bench_imports(p)] if names
    ]
    assert not importing, importing
    # the package inside is the repository's package, nothing more; the MONAI Label app's tasks stay out
    from scripts.package_bundle import LEFT_OUT

    packed = {p.relative_to(root).as_posix() for p in files if p.parts[len(root.parts)] == PACKAGE}
    source = {
        p.relative_to(REPO_ROOT).as_posix()
        for p in (REPO_ROOT / PACKAGE).rglob("*.py")
        if "__pycache__" not in p.parts and p.relative_to(REPO_ROOT / PACKAGE).parts[0] not in LEFT_OUT
    }
    assert packed == source, sorted(packed ^ source)
    assert not any("monailabel" in p.read_text() for p in files if p.suffix == ".py")


def test_packaged_bundle_has_no_bench_profile_overlays(packaged_bundle):
    bench_profiles = set(BENCH_PROFILES) | {p.name for p in (REPO_ROOT / "experiments" / "configs").glob("*")}
    configs = [p for p in (packaged_bundle / "configs").rglob("*") if p.is_file()]
    assert not [p.relative_to(packaged_bundle).as_posix() for p in configs if p.name in bench_profiles]
    # and no config value names a bench module (targets and expressions must resolve with the bundle alone;
    # comments may mention the repository's bench)
    bench_module = re.compile(r"(?<![\w/.])(?:experiments|benchmarks)\.[A-Za-z_]\w*")
    naming = [
        f"{p.relative_to(packaged_bundle)}: {m.group(0)}"
        for p in configs
        if p.suffix in (".yaml", ".yml", ".json")
        for text in _strings(yaml.safe_load(p.read_text(encoding="utf-8")))
        for m in bench_module.finditer(text)
    ]
    assert not naming, naming


def _strings(value) -> list[str]:
    """Every key and string value of a parsed config, nested ones included."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_packaged_bundle_names_no_issue_numbers(packaged_bundle):
    hits = []
    for path in sorted(packaged_bundle.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".json", ".md"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if ISSUE.search(line):
                    hits.append(f"{path.relative_to(packaged_bundle)}:{number}: {line.strip()}")
    assert not hits, hits


# ------------------------------------------------------------------------------------------ the Markdown links

DOCUMENTS = (
    "README.md",
    "docs/**/*.md",
    "bundle/docs/README.md",
    "bundle/models/README.md",
    "apps/scsam/README.md",
    "experiments/**/*.md",
    "benchmarks/**/*.md",
)
_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
_CODE = re.compile(r"(`+)[^`].*?\1", re.S)
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _documents() -> list[Path]:
    found = {p for pattern in DOCUMENTS for p in REPO_ROOT.glob(pattern) if p.is_file()}
    return sorted(found)


def broken_links(markdown: Path, root: Path = REPO_ROOT) -> list[str]:
    """The relative links of a Markdown file (inline, image and reference links; not in code) whose target is
    missing. A leading ``/`` is the repository root; anchors and queries are dropped; URLs are not checked."""
    text = _CODE.sub("", _FENCE.sub("", markdown.read_text(encoding="utf-8")))
    missing = []
    for match in [*_INLINE.finditer(text), *_REFERENCE.finditer(text)]:
        target = match.group(1).strip("<>")
        if not target or target.startswith("#") or _SCHEME.match(target):
            continue
        path = unquote(re.split(r"[#?]", target, maxsplit=1)[0])
        if not path:
            continue
        resolved = root / path.lstrip("/") if path.startswith("/") else markdown.parent / path
        if not resolved.exists():
            missing.append(f"{markdown.relative_to(root)}: {target}")
    return missing


def test_the_documents_checked_include_every_readme_and_doc():
    names = {p.relative_to(REPO_ROOT).as_posix() for p in _documents()}
    for required in (
        "README.md",
        "docs/mae.md",
        "docs/demo/README.md",
        "bundle/docs/README.md",
        "bundle/models/README.md",
        "apps/scsam/README.md",
        "experiments/README.md",
        "experiments/results/real_em.md",
        "benchmarks/README.md",
    ):
        assert required in names, required


def test_relative_links_of_the_documentation_resolve():
    missing = [line for doc in _documents() for line in broken_links(doc)]
    assert not missing, "links to missing files:\n" + "\n".join(missing)


def test_the_link_check_finds_a_missing_target_and_skips_code_and_urls(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "here.png").write_bytes(b"")
    doc = tmp_path / "sub" / "doc.md"
    doc.write_text(
        '[ok](../here.png) ![img](<../here.png> "title") [anchor](#x) [web](https://example.org/nothing)\n'
        "[gone](../docs/gone.md#part) [`code text`](missing_dir/)\n"
        "`[not a link](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n"
        "[ref]: /sub/absent.md\n[root](/here.png)\n"
    )
    assert broken_links(doc, tmp_path) == [
        "sub/doc.md: ../docs/gone.md#part",
        "sub/doc.md: missing_dir/",
        "sub/doc.md: /sub/absent.md",
    ]
