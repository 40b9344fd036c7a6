"""A corpus of malformed space files: each gives its one-line error and exit code 2, before Ray."""

from pathlib import Path

import pytest

from hpo import search

BAD = sorted((Path(__file__).parent / "bad_spaces").glob("*.yaml"))
DEMO = Path(__file__).parents[1] / "search_spaces" / "demo.yaml"


def test_corpus_is_large_enough():
    assert len(BAD) >= 12


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_malformed_space_is_one_line_and_exit_2(path, capsys):
    expected = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
    rc = search.main([str(path), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert expected in err


def test_cli_subprocess_has_no_traceback(tmp_path):
    import subprocess
    import sys

    bad = Path(__file__).parent / "bad_spaces" / "n3_above_channels.yaml"
    proc = subprocess.run([sys.executable, "-m", "hpo.search", str(bad)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "model.selection.n3" in proc.stderr and "Traceback" not in proc.stderr


def test_dry_run_samples_within_bounds(capsys):
    from hpo.tuning.space import load_space

    spec = load_space(DEMO)
    assert search.main([str(DEMO), "--dry-run"]) == 0
    out = capsys.readouterr().out
    samples = [ln for ln in out.splitlines() if ln.startswith("sample ")]
    assert len(samples) == 3
    # the paper's point is proposed first
    assert "model.selection.n3=11" in samples[0] and "model.selection.n5=32" in samples[0]
    for line in samples:
        for part in line.split(": ", 1)[1].split(", "):
            key, value = part.split("=")
            dist = spec.space[key]
            assert dist.low <= float(value) <= dist.high, (key, value)


def test_list_valued_categorical_round_trips():
    """A dilation grid is one categorical choice even though Optuna only holds scalars."""
    import optuna

    from hpo.config import apply_overrides, encode_choice
    from hpo.tuning.space import CategoricalDist

    grid = [[6, 12, 18], [6, 12, 18]]
    dist = optuna.distributions.CategoricalDistribution([encode_choice(grid), "paper9"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        t = study.ask({"model.metrocon.grid": dist})
        cfg = apply_overrides({"model": {"metrocon": {"grid": None}}}, t.params)
        value = cfg["model"]["metrocon"]["grid"]
        assert value in (grid, "paper9")
        seen.add(str(value))
        study.tell(t, 0.0)
    assert len(seen) == 2
    assert CategoricalDist(type="categorical", choices=[grid]).choices == [grid]


@pytest.mark.parametrize("flags, expected", [
    (["--name", "a b"], "error: --name (experiment.name: String should match pattern"),
    (["--num-samples", "0"], "error: --num-samples (search.num_samples: Input should be greater than or equal to 1"),
])
def test_command_line_overrides_are_validated_like_the_file(flags, expected, capsys):
    assert search.main([str(DEMO), *flags, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err


def test_resume_of_an_unknown_search_and_reusing_a_name_are_one_line_before_ray(tmp_path, capsys):
    """Both are refused before Ray starts or MLflow is touched: exit 2, one line saying what to do."""
    import json

    storage = tmp_path / "ray_results"
    common = ["--storage-path", str(storage), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert search.main([str(DEMO), "--name", "nosuch", "--resume", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --resume: no search named 'nosuch' under {storage} "
                   f"(looked for {storage / 'nosuch' / 'ctxtune_search.json'})"]
    (storage / "taken").mkdir(parents=True)
    (storage / "taken" / "ctxtune_search.json").write_text(json.dumps({"space": str(DEMO)}))
    assert search.main([str(DEMO), "--name", "taken", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: experiment.name: a search named 'taken' already exists under {storage}; "
                   "use --resume to continue it or --name to start another"]
    assert not (tmp_path / "mlflow.db").exists()
