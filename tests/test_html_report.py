"""html_report.py: ``--report`` writes one self-contained page that a real browser shows in full."""

import base64
import html
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from occupy_dask.api import run_map
from occupy_dask.report import limits
from occupy_dask.settings import RunOptions


@pytest.fixture(scope="module")
def report(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("report")
    result = run_map(data_dir / "emd_1832.map", RunOptions(output_dir=out, report=True), amplify=True, attenuate=True)
    return result.outputs["report"], result


def test_the_report_is_one_self_contained_file(report):
    path, result = report
    page = path.read_text(encoding="utf-8")
    assert path.name == "report_emd_1832.html"
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)  # every image and script inline
    assert "<link" not in page and "@import" not in page and "url(" not in page
    frames = re.findall(r'data-frames="([^"]+)"', page)
    assert len(frames) == 3 * 5  # three axes x (input, scale, confidence, amplified, attenuated)
    for slider in frames:
        uris = slider.split()
        assert len(uris) == 9  # nine slices per axis behind the slider
        for uri in uris:
            assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for name, _, value in limits(result.estimate):  # every number of the log, with its meaning
        assert html.escape(name) in page and html.escape(value) in page
    assert "scale at which the confidence reaches 0.5" in page


def _browser():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("required in CI: chromium (Debian package chromium)")
        pytest.skip("no chromium on this machine")
    return found


def test_a_browser_decodes_every_image_and_shows_the_page(report, tmp_path):
    from PIL import Image

    path, _ = report
    browser = _browser()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-decoded="all"' in body, body
    assert int(re.search(r'data-images="(\d+)"', body).group(1)) >= 3 * 5 + 2  # slices of five maps on three axes, and the plots
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1400,2000", f"--screenshot={shot}", path.as_uri()], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20 and (pixels < 50).mean() > 0.05  # not blank: dark slices on a light page
