"""Find the mapping a configuration names.

``mapping = "mypkg.mymapping:MAPPING"`` imports ``mypkg.mymapping`` and takes its ``MAPPING``
attribute, which must be a :class:`~transforms.api.MappingSet`.
``mapping = "identity:public.item,public.tag"`` copies those tables as they are (bare names are
taken as ``public.<name>``).
"""

from __future__ import annotations

import importlib

from replicator.errors import ConfigError
from transforms.api import MappingSet
from transforms.identity import identity_mapping

_EXAMPLE = 'mapping = "transforms.mcp_manager:MAPPING" or mapping = "identity:public.item"'


def load_mapping(spec: str) -> MappingSet:
    """The :class:`MappingSet` that ``spec`` names; :class:`ConfigError` says why not."""
    spec = spec.strip()
    if spec.startswith("identity:"):
        return _identity(spec.removeprefix("identity:"))
    module_name, sep, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"mapping {spec!r} is not of the form 'package.module:ATTRIBUTE'", hint=_EXAMPLE
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(
                f"mapping {spec!r}: no module named {e.name!r}",
                hint="check the spelling, and that the package is installed in this environment"
                " or its folder is on PYTHONPATH",
            ) from e
        raise ConfigError(
            f"mapping {spec!r}: importing {module_name} failed: it needs {e.name!r},"
            " which is not installed",
            hint=f"install {e.name} in the replicator's environment",
        ) from e
    except Exception as e:
        raise ConfigError(
            f"mapping {spec!r}: importing {module_name} failed: {type(e).__name__}: {e}"
        ) from e
    try:
        value = getattr(module, attr)
    except AttributeError:
        found = sorted(n for n, v in vars(module).items() if isinstance(v, MappingSet))
        where = f"; it defines {', '.join(found)}" if found else "; it defines no MappingSet"
        raise ConfigError(
            f"mapping {spec!r}: module {module_name} has no attribute {attr!r}{where}",
            hint=_EXAMPLE,
        ) from None
    if not isinstance(value, MappingSet):
        what = type(value).__name__
        hint = "export the MappingSet itself, e.g. MAPPING = MappingSet(...)"
        if callable(value):
            hint = f"{attr} is callable: call it in {module_name} and export the result"
        raise ConfigError(
            f"mapping {spec!r}: {module_name}.{attr} is a {what}, not a MappingSet", hint=hint
        )
    return value


def _identity(tables_spec: str) -> MappingSet:
    tables = [t.strip() for t in tables_spec.split(",") if t.strip()]
    if not tables:
        raise ConfigError(
            "mapping 'identity:' names no table", hint='e.g. mapping = "identity:public.item"'
        )
    qualified = [t if "." in t else f"public.{t}" for t in tables]
    dupes = sorted({t for t in qualified if qualified.count(t) > 1})
    if dupes:
        raise ConfigError(f"mapping 'identity:{tables_spec}' names {', '.join(dupes)} twice")
    return identity_mapping(qualified)
