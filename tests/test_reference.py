"""Every case of the reference fixture, through the same code path as scripts/check_reference.py."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_script
from tools.reference import TOLERANCE, CaseResult, ReferenceSuite


@pytest.fixture(scope="module")
def check_reference():
    """scripts/check_reference.py, imported as a module."""
    return load_script("scripts/check_reference.py")


# The whole FIFO runs of the fixture: the slowest cases, one test each so that pytest-xdist spreads
# them over its workers (each worker builds the suite once).
FIFO_RUNS = ["t2v", "t2v_TTqcache_attn1_vt0.9", "t2v_unilatent", "t2v_no_lookahead"]


@pytest.fixture(scope="module")
def suite(reference_dir) -> ReferenceSuite:
    return ReferenceSuite(reference_dir / "tiny_t2v")


@pytest.fixture(scope="module")
def results(suite):
    """Every case of the suite, the whole FIFO runs listed but not computed here: each is
    test_fifo_run_within_tolerance below (a placeholder with no error stands for it here)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            suite,
            "_fifo_run",
            lambda run, spec, data: CaseResult(f"fifo_run {run['name']}", 0.0, 0.0, "run in its own test"),
        )
        return list(suite.cases())


def test_every_file_of_the_fixture_is_checked(results) -> None:
    groups = {r.name.split()[0] for r in results}
    assert groups == {
        "weights",
        "text",
        "unet",
        "trace",
        "decode",
        "schedule",
        "sampler",
        "image_embed",
        "resampler",
        "fifo_run",
    }
    assert sum(r.name.startswith("unet ") for r in results) == 7  # every run in meta.json
    fifo_runs = [r for r in results if r.name.startswith("fifo_run ")]
    assert [r.name.split()[1] for r in fifo_runs] == FIFO_RUNS


def test_fixture_weights_hash_as_recorded(suite) -> None:
    """The fixture stores no weights: our recomputation of them (from the key names of our model)
    hashes to what the published model was given when the goldens were made."""
    assert not (suite.folder / "state_dict.safetensors").exists()
    recorded = suite.meta["weights"]["params_sha256"]
    assert len(recorded) == 64 and suite.weights_sha256 == recorded
    buffers = {name for name, _ in suite.model.named_buffers() if name in suite.model.state_dict()}
    assert sorted(buffers) == sorted(suite.meta["weights"]["buffers_kept"])
    assert len(suite.model.state_dict()) == suite.meta["weights"]["num_keys"]


def test_stored_parameters_are_still_read(suite) -> None:
    """Fixture folders that store the image tower or Resampler under ``param.`` (the older
    format) load those; without them the scheme's weights under the given prefix are used."""
    module = torch.nn.Linear(2, 3)
    stored = {"param.weight": torch.ones(3, 2), "param.bias": torch.zeros(3), "image": torch.zeros(1)}
    assert suite._module_weights(module, stored, "embedder.").keys() == {"weight", "bias"}
    assert torch.equal(suite._module_weights(module, stored, "embedder.")["weight"], torch.ones(3, 2))
    computed = suite._module_weights(module, {"image": torch.zeros(1)}, "embedder.")
    assert computed.keys() == {"weight", "bias"} and not torch.equal(computed["weight"], torch.ones(3, 2))


@pytest.mark.parametrize("name", FIFO_RUNS)
def test_fifo_run_within_tolerance(suite, name: str) -> None:
    spec = suite.meta["fifo_run"]
    run = next(r for r in spec["runs"] if r["name"] == name)
    with torch.no_grad():
        result = suite._fifo_run(run, spec, suite._file("fifo_run"))
    assert "12 frames, strict noise replay" in result.note
    assert result.passed and result.scaled_error < TOLERANCE, f"{result.scaled_error:.2e} {result.note}"


def test_every_case_within_tolerance(results) -> None:
    failures = [f"{r.name}: {r.scaled_error:.2e} {r.note}" for r in results if not r.passed]
    assert not failures, "\n".join(failures)
    assert max(r.scaled_error for r in results) < TOLERANCE


def test_check_reference_script_exits_zero(
    check_reference, reference_dir, results, capsys, monkeypatch
) -> None:
    """The script prints one line per case of the suite and exits 0; the cases' numbers are the
    ones computed above (the same ReferenceSuite code, not run twice)."""
    module = check_reference
    monkeypatch.setattr(module.ReferenceSuite, "cases", lambda self: iter(results))
    assert module.main([str(reference_dir / "tiny_t2v")]) == 0
    out = capsys.readouterr().out
    assert "all cases within" in out and "FAIL" not in out
    assert sum(line.startswith("ok   fifo_run ") for line in out.splitlines()) == 4


def test_check_reference_rejects_a_non_fixture_folder(check_reference, tmp_path) -> None:
    module = check_reference
    assert module.main([str(tmp_path)]) == 2


def test_fifo_run_replay_is_strict(suite) -> None:
    """A draw the loop makes that the recording did not (or one it leaves out) fails the case."""
    spec = suite.meta["fifo_run"]
    run = dict(spec["runs"][-1])  # no lookahead: the shortest run
    data = suite._file("fifo_run")
    first_ddim = next(i for i, d in enumerate(run["draws"]) if d[0] == "ddim")
    # The loop draws one frame's noise more than "recorded": the tail comes a draw too early.
    run["draws"] = [d for i, d in enumerate(run["draws"]) if i != first_ddim]
    broken = suite._fifo_run(run, spec, data)
    assert not broken.passed and "noise replay" in broken.note
    assert "asked for shape (1, 4, 1, 16, 16), the recording drew (1, 4, 16, 16)" in broken.note
    run = dict(spec["runs"][-1])
    run["draws"] = [*run["draws"][:3], ["queue_init", 3, None, [1, 4, 16, 16]], *run["draws"][4:]]
    broken = suite._fifo_run(run, spec, data)
    assert not broken.passed and "draw 3: asked for shape (1, 4, 1, 16, 16)" in broken.note
