"""Memory stays flat: ten times the images, about the same peak RSS (streaming, bounded batches in flight)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import scoring_data

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


# Runs `clsloc ARGS...` and prints the process's own peak RSS (VmHWM: the memory high-water mark of this
# program since exec; getrusage's maxrss would include the pytest process it was forked from).
MEASURED = """
import re, sys
from clsloc.cli import main
code = main(sys.argv[1:])
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
sys.exit(code)
"""


def peak_rss_mb(*args: str) -> float:
    """Peak resident memory of ``clsloc ARGS`` in a child process, in MB."""
    done = subprocess.run([sys.executable, "-c", MEASURED, *args], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1]) / 1024


def test_peak_rss_of_2000_images_is_within_1_2x_of_200(oracle_dir, tmp_path):
    folder = tmp_path / "images"
    paths = scoring_data.write_images(folder, 200, size=(320, 240), fmt="JPEG")
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("\n".join(map(str, paths)))
    # the same 200 files behind 2,000 names (symbolic links: separate inputs, the same pixels)
    links = []
    for i in range(2000):
        link = tmp_path / "links" / f"{i:05d}.jpg"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(paths[i % len(paths)])
        links.append(link)
    large.write_text("\n".join(map(str, links)))
    rss = {}
    for name, listed in (("200", small), ("2000", large)):
        out = tmp_path / f"{name}.jsonl"
        rss[name] = peak_rss_mb("score", str(oracle_dir), str(listed), "--out", str(out), "--quiet")
        assert out.read_bytes().count(b"\n") == int(name)
    print(f"\npeak RSS: 200 images {rss['200']:.0f} MB, 2000 images {rss['2000']:.0f} MB")
    assert rss["2000"] <= 1.2 * rss["200"], rss
