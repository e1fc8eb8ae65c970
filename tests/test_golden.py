"""The golden-fixture loader: a missing fixture skips the test on a user's clone, but fails it when
``DETR_REQUIRE_GOLDEN`` is set, which ``.ci/run`` does, so CI cannot pass without the parity checks."""

from pathlib import Path

import golden
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_missing_fixture_skips_by_default(monkeypatch, tmp_path):
    monkeypatch.setattr(golden, "GOLDEN_DIR", tmp_path)
    for value in (None, "", "0"):
        if value is None:
            monkeypatch.delenv(golden.REQUIRE_GOLDEN, raising=False)
        else:
            monkeypatch.setenv(golden.REQUIRE_GOLDEN, value)
        with pytest.raises(pytest.skip.Exception, match="not present"):
            golden.load_golden("detr_tiny.pt")


def test_missing_fixture_fails_when_required(monkeypatch, tmp_path):
    monkeypatch.setattr(golden, "GOLDEN_DIR", tmp_path)
    monkeypatch.setenv(golden.REQUIRE_GOLDEN, "1")
    with pytest.raises(pytest.fail.Exception, match="DETR_REQUIRE_GOLDEN requires the fidelity checks") as e:
        golden.load_golden("detr_tiny.pt")
    assert str(tmp_path / "detr_tiny.pt") in str(e.value)


def test_present_fixture_loads_when_required(monkeypatch, tmp_path):
    import torch

    torch.save({"kind": "detr"}, tmp_path / "detr_tiny.pt")
    monkeypatch.setattr(golden, "GOLDEN_DIR", tmp_path)
    monkeypatch.setenv(golden.REQUIRE_GOLDEN, "1")
    assert golden.load_golden("detr_tiny.pt") == {"kind": "detr"}


def test_ci_requires_the_golden_fixtures():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    require = lines.index("export DETR_REQUIRE_GOLDEN=1")
    assert require < lines.index("make test")
