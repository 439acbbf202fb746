"""Reading ``CLSLOC_*`` environment variables: one parser per kind, errors that name the variable.

``clsloc.serving.settings`` (the service) and ``clsloc.serving.engine`` (any program that
runs a model, e.g. ``CLSLOC_REQUIRE_GPU`` in a GPU check script) both read
their variables through these.
"""

from __future__ import annotations

from collections.abc import Mapping

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """A positive whole number (``5e6`` is allowed); ``default`` when unset or empty."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be positive")
    return value


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """On/off: 1/0, true/false, yes/no, on/off (any case); ``default`` when unset or empty."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise ValueError(f"environment variable {name}={raw!r} is not one of 1/0, true/false, yes/no, on/off")
