"""The server is one package per layer, each importing only the layers below it: the rule that
keeps `server/` readable as a map (README.md). Read from the source: every import statement
of every module, wherever it stands in the module (function bodies included)."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parent.parent / "server"
# Lowest first. A module may import its own package and those listed before it.
LAYERS = ("core", "wire", "db", "cluster", "documents", "workspaces", "transport", "http", "app", "tools")
TOP_MODULES = {
    "app": "app",
    "health": "app",
    "welcome": "app",
    "listen": "app",
    "__main__": "tools",
    "__init__": "core",
}


def layer_of(module: str) -> str | None:
    """The layer of `server.<...>` (None: not a server module)."""
    parts = module.split(".")
    if parts[0] != "server":
        return None
    if len(parts) == 1:
        return "core"
    return TOP_MODULES.get(parts[1], parts[1])


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            if node.module == "server":  # from server import app
                found += [f"server.{alias.name}" for alias in node.names]
    return found


def test_every_server_module_lives_in_a_layer_package() -> None:
    loose = sorted(p.name for p in SERVER.glob("*.py") if p.stem not in TOP_MODULES)
    assert loose == [], f"modules outside a layer package: {loose}"
    packages = sorted(p.name for p in SERVER.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert packages == sorted(layer for layer in LAYERS if layer != "app")


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for path in sorted(SERVER.rglob("*.py")):
        module = ".".join(path.relative_to(SERVER.parent).with_suffix("").parts)
        own = layer_of(module)
        assert own in LAYERS, module
        for target in imports(path):
            other = layer_of(target)
            if other is not None and other != "core" and LAYERS.index(other) > LAYERS.index(own):
                wrong.append(f"{module} ({own}) imports {target} ({other})")
    assert wrong == [], "\n".join(wrong)


def test_the_document_model_imports_no_server_code() -> None:
    crdt = SERVER.parent / "crdt"
    wrong = [f"{p.name}: {t}" for p in sorted(crdt.rglob("*.py")) for t in imports(p) if layer_of(t) is not None]
    assert wrong == []


def test_the_http_api_sits_beside_transport_and_imports_none_of_it() -> None:
    http = SERVER / "http"
    wrong = [f"{p.name}: {t}" for p in sorted(http.rglob("*.py")) for t in imports(p) if layer_of(t) == "transport"]
    assert wrong == []
