"""Service settings from the environment: defaults, overrides, clear errors."""

from __future__ import annotations

import pytest

from clsloc.serving.settings import Settings


def test_defaults():
    settings = Settings.from_env({})
    assert settings.max_bytes == 20 * 1024 * 1024 and settings.api_key is None and settings.workers == 1
    assert settings.max_batch is None and settings.access_log is True and settings.max_queue == 32  # None: by device
    assert settings.max_request_bytes > settings.max_bytes  # room for the multipart envelope


def test_overrides():
    settings = Settings.from_env(
        {
            "CLSLOC_MODEL": " m:1 ",
            "CLSLOC_MAX_BYTES": "1000",
            "CLSLOC_API_KEY": "k",
            "CLSLOC_THREADS": "3",
            "CLSLOC_WORKERS": "2",
            "CLSLOC_MAX_PIXELS": "5e6",
            "CLSLOC_MAX_BATCH": "4",
            "CLSLOC_ACCESS_LOG": "off",
            "CLSLOC_MAX_QUEUE": "5",
        }
    )
    assert settings.access_log is False and settings.max_queue == 5
    assert (
        settings.model,
        settings.max_bytes,
        settings.api_key,
        settings.threads,
        settings.workers,
        settings.max_pixels,
        settings.max_batch,
    ) == ("m:1", 1000, "k", 3, 2, 5_000_000, 4)


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("CLSLOC_MAX_BYTES", "lots", "is not a number"),
        ("CLSLOC_WORKERS", "0", "must be positive"),
        ("CLSLOC_MAX_BATCH", "0", "must be positive"),
        ("CLSLOC_MAX_QUEUE", "-1", "must be positive"),
        ("CLSLOC_ACCESS_LOG", "maybe", "is not one of"),
    ],
)
def test_bad_values_name_the_variable(name, value, message):
    with pytest.raises(ValueError, match=f"{name}={value!r} {message}"):
        Settings.from_env({name: value})


def test_engine_reads_its_variables_with_the_same_parsers(monkeypatch):
    """CLSLOC_REQUIRE_GPU and CLSLOC_THREADS, read by the engine outside the service, accept and refuse the same
    values as the service settings (``on`` used to mean off to the engine)."""
    from clsloc.serving.engine import default_threads, require_gpu_from_env

    for value, expected in [("on", True), ("YES", True), ("1", True), ("off", False), ("", False)]:
        monkeypatch.setenv("CLSLOC_REQUIRE_GPU", value)
        assert require_gpu_from_env() is expected
    monkeypatch.setenv("CLSLOC_REQUIRE_GPU", "maybe")
    with pytest.raises(ValueError, match="CLSLOC_REQUIRE_GPU='maybe' is not one of"):
        require_gpu_from_env()
    monkeypatch.setenv("CLSLOC_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("CLSLOC_THREADS", "many")
    with pytest.raises(ValueError, match="CLSLOC_THREADS='many' is not a number"):
        default_threads()
