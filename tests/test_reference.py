"""Every case of the reference fixture, through the same code path as scripts/check_reference.py."""

from __future__ import annotations

import pytest

from tools.reference import TOLERANCE, ReferenceSuite


@pytest.fixture(scope="module")
def check_reference():
    """scripts/check_reference.py, imported as a module."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("check_reference", REPO / "scripts" / "check_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(reference_dir):
    return list(ReferenceSuite(reference_dir / "tiny_t2v").cases())


def test_every_file_of_the_fixture_is_checked(results) -> None:
    groups = {r.name.split()[0] for r in results}
    assert groups == {"text", "unet", "trace", "decode", "schedule", "sampler", "image_embed", "resampler"}
    assert sum(r.name.startswith("unet ") for r in results) == 7  # every run in meta.json


def test_every_case_within_tolerance(results) -> None:
    failures = [f"{r.name}: {r.scaled_error:.2e} {r.note}" for r in results if not r.passed]
    assert not failures, "\n".join(failures)
    assert max(r.scaled_error for r in results) < TOLERANCE


def test_check_reference_script_exits_zero(check_reference, reference_dir, capsys) -> None:
    module = check_reference
    assert module.main([str(reference_dir / "tiny_t2v")]) == 0
    out = capsys.readouterr().out
    assert "all cases within" in out and "FAIL" not in out


def test_check_reference_rejects_a_non_fixture_folder(check_reference, tmp_path) -> None:
    module = check_reference
    assert module.main([str(tmp_path)]) == 2
