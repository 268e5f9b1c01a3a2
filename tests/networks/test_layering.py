"""The package's layering: modules under ``scsam_monai/networks`` import nothing from the layers above them."""

from __future__ import annotations

import ast
from pathlib import Path

import scsam_monai.networks

NETWORKS = Path(scsam_monai.networks.__file__).parent
ABOVE = (
    "engines",
    "label",
    "startup_checks",
    "baselines",
    "export",
    "mae",
    "cli",
    "data",
    "io",
    "preparation",
    "synthetic",
    "palette",
    "model",
    "bundle_command",
)


def _imported_modules(path: Path) -> list[str]:
    """Absolute names of the ``scsam_monai`` modules a networks/ file imports (relative imports resolved)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.append(node.module or "")
            else:  # networks/x.py: level 1 is scsam_monai.networks, level 2 is scsam_monai
                base = ["scsam_monai", "networks"][: 3 - node.level]
                names.append(".".join([*base, *([node.module] if node.module else [])]))
                if not node.module:
                    names += [".".join([*base, alias.name]) for alias in node.names]
    return [n for n in names if n.startswith("scsam_monai")]


def test_networks_import_no_module_of_a_layer_above():
    offending = []
    for path in sorted(NETWORKS.glob("*.py")):
        for name in _imported_modules(path):
            parts = name.split(".")
            if len(parts) > 1 and parts[1] in ABOVE:
                offending.append(f"{path.name} imports {name}")
    assert not offending, offending


def test_the_layering_check_sees_relative_and_absolute_imports(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text(
        "from ..engines.checkpoint import x\nfrom .. import startup_checks\nimport scsam_monai.label.app\n"
    )
    assert _imported_modules(module) == [
        "scsam_monai.engines.checkpoint",
        "scsam_monai",
        "scsam_monai.startup_checks",
        "scsam_monai.label.app",
    ]
