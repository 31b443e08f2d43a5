"""The public surface: __all__ is complete, and the pure core does no I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

import arraycrypto

PACKAGE = Path(arraycrypto.__file__).parent
PURE = sorted(p.name for p in (PACKAGE / "core").glob("*.py"))
# No event loop, no sockets, no clock in the pure core (loading reads config files, nothing else).
FORBIDDEN = {
    "anyio",
    "asyncio",
    "trio",
    "socket",
    "ssl",
    "selectors",
    "time",
    "datetime",
    "threading",
    "h11",
    "httpx",
}
# websockets' Sans-I/O layer (framing, the HTTP upgrade, URIs, its exception classes)
# is pure and the core's connection objects wrap it; its I/O implementations are not.
WEBSOCKETS_SANS_IO = {
    "websockets.client",
    "websockets.datastructures",
    "websockets.exceptions",
    "websockets.frames",
    "websockets.http11",
    "websockets.protocol",
    "websockets.server",
    "websockets.uri",
}
PURE_SIBLINGS = {p.removesuffix(".py") for p in PURE}


def test_all_is_complete_and_exact() -> None:
    public = {
        name
        for name, value in vars(arraycrypto).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # the __future__ feature
    } | set(arraycrypto._LAZY)  # loaded on first use (PEP 562)
    assert set(arraycrypto.__all__) == public
    assert len(arraycrypto.__all__) == len(set(arraycrypto.__all__))
    for name in arraycrypto.__all__:
        assert getattr(arraycrypto, name).__doc__, f"{name} has no docstring"


def test_importing_the_package_loads_neither_client_nor_server() -> None:
    # `arraycrypto decrypt` and `inspect` start without websockets, the client or the
    # server; the names are still there, loaded on first use.
    code = (
        "import sys, arraycrypto\n"
        "heavy = {'arraycrypto.client', 'arraycrypto.server', 'websockets'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert arraycrypto.CryptoClient.__name__ == 'CryptoClient'\n"
        "assert 'arraycrypto.client' in sys.modules\n"
        "assert 'CryptoClient' in dir(arraycrypto)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    tree = ast.parse((PACKAGE / "core" / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a sibling: it must be pure too
                target = (node.module or "").split(".")[0]
                if target:
                    assert target in PURE_SIBLINGS, f"{module} imports non-pure .{target}"
                else:
                    for alias in node.names:
                        assert alias.name in PURE_SIBLINGS, f"{module} imports .{alias.name}"
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{module} imports {name}"
            if name.split(".")[0] == "websockets":
                assert name in WEBSOCKETS_SANS_IO, f"{module} imports {name}"


def test_exception_tree() -> None:
    for name in (
        "AuthenticationError",
        "SnapshotError",
        "ConfigError",
        "DecryptionError",
        "ProtocolError",
        "ExpiredError",
        "ArmorError",
    ):
        assert issubclass(getattr(arraycrypto, name), arraycrypto.CryptoError)
    assert issubclass(arraycrypto.ExpiredError, arraycrypto.SnapshotError)
    # the caller's mistake (no now_ms for an expiring ciphertext), like ttl without now_ms
    assert issubclass(arraycrypto.NowRequiredError, TypeError)


#: Which rooms of the package each room may import: the core none, the drivers the
#: core, and nothing imports upward (the CLI, at the top, may import everything).
LAYERS = {
    "core": set(),
    "net": {"core"},
    "streaming": {"core"},
    "server": {"core", "net"},
    "client": {"core", "net", "streaming"},
    "cli": {"core", "net", "server", "client", "streaming"},
}


@pytest.mark.parametrize("room", sorted(LAYERS))
def test_rooms_import_only_downward(room: str) -> None:
    module = PACKAGE / f"{room}.py"
    for path in [module] if module.exists() else sorted((PACKAGE / room).glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                targets = [(node.module or "").split(".")[0]]
                if not node.module:  # from .. import x, y
                    targets = [alias.name for alias in node.names]
                for target in targets:
                    assert target in LAYERS[room], f"{room}/{path.name} imports ..{target}"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "arraycrypto."
            ):
                target = (node.module or "").split(".")[1]
                assert target in LAYERS[room], f"{room}/{path.name} imports {node.module}"


def _imports(path: Path, module: str) -> set[str]:
    """The package's modules that ``module`` (at ``path``) imports, TYPE_CHECKING too."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.update([target, *(f"{target}.{alias.name}" for alias in node.names)])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_import_circles() -> None:
    # Every arrow between two modules runs one way (a room's layout reads top-down);
    # circles once ran between the envelopes, the keyring and streams, and between
    # `serve` and its supervisor.
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    arrows = {m: (_imports(p, m) & modules.keys()) - {m} for m, p in modules.items()}
    # A package importing its own children (re-exports) is no circle: drop those arrows.
    arrows = {m: {t for t in to if not t.startswith(m + ".")} for m, to in arrows.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError(" -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(arrows[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(arrows):
        visit(module, [])


@pytest.mark.parametrize("name", ["encrypt_message", "decrypt_message"])
def test_the_async_hot_paths_make_no_closure_cells(name: str) -> None:
    # A lambda for the rare offload to a thread captured the arguments, and a captured
    # variable is a cell made on every call, the hot path's included: four cells were
    # the 0.1-0.2 µs that encrypt_message had over version 1's.
    from arraycrypto.client import CryptoClient

    assert getattr(CryptoClient, name).__code__.co_cellvars == ()
