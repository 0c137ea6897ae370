"""The Vega bundle every chart page inlines is built once per vl-convert release, then read back."""

from pathlib import Path

import vl_convert

from lmpipe.report import page


def _fresh_bundle(monkeypatch, cache: Path) -> str:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    page.vega_bundle.cache_clear()  # the in-process memo would hide the disk
    try:
        return page.vega_bundle()
    finally:
        page.vega_bundle.cache_clear()


def test_the_bundle_is_vl_converts_then_comes_from_the_cache_file(monkeypatch, tmp_path):
    built = _fresh_bundle(monkeypatch, tmp_path)
    assert built == vl_convert.javascript_bundle(vl_version=page.VL_VERSION)
    path = page.bundle_cache_path()
    assert path.parent == tmp_path / "lmpipe" and vl_convert.__version__ in path.name
    assert path.read_text(encoding="utf-8") == built
    path.write_text("// marker: read from disk, not rebuilt\n", encoding="utf-8")
    assert _fresh_bundle(monkeypatch, tmp_path) == "// marker: read from disk, not rebuilt\n"


def test_an_unwritable_cache_still_gives_the_bundle(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    assert "window.vegaEmbed=" in _fresh_bundle(monkeypatch, blocker)
    assert blocker.is_file()
