"""What a run leaves for a person: its <command>.log (stages, progress lines with ETA, eval
lines, the summary, errors), unwrapped progress lines off a terminal, and `llmtune report`'s
HTML page, checked in a real headless browser when Chromium is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from llmtune.cli import main
from tests.e2e.helpers import FAST, TINY_GPT, write_jsonl

pytest.importorskip("matplotlib", reason="llmtune report needs the report extra (matplotlib)")

SHORT = ["train.max_steps=6", "train.eval_every=3", "train.save_every=3", "train.log_every=3"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    """A two-run sweep (two learning rates) of a tiny GPT, and what it printed."""
    from tests.conftest import make_documents

    root = tmp_path_factory.mktemp("report")
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": d} for d in make_documents(80)])
    sweep_dir = root / "sweep"
    args = ["pretrain", "-m", f"hydra.sweep.dir={sweep_dir}", "data=files"]
    main([*args, f"data.train={corpus}", *FAST, *TINY_GPT, *SHORT, "optim.lr=1e-3,5e-3"])
    return {
        "root": root,
        "dir": sweep_dir,
        "runs": sorted(p for p in sweep_dir.iterdir() if p.is_dir()),
    }


def test_the_run_log_keeps_stages_progress_evaluations_and_the_summary(sweep):
    log = (sweep["runs"][0] / "pretrain.log").read_text()
    assert re.search(r"^corpus: \d+ train / \d+ validation documents \([\d.]+s\)$", log, re.M)
    assert re.search(r"^tokenizer: (trained|reused the cached) bpe", log, re.M)
    assert "tokenization: " in log
    assert re.search(
        r"^step 3/6 \(50%\)  loss [\d.]+ .* elapsed \d+:\d\d  ETA \d+:\d\d$", log, re.M
    )
    assert "eval step 6/6" in log and "run summary" in log and "best step" in log
    assert "\x1b[" not in log  # no colour codes


def test_progress_lines_are_not_wrapped_off_a_terminal(tmp_path, sweep, capsys):
    corpus = sweep["root"] / "corpus.jsonl"
    run = ["pretrain", f"hydra.run.dir={tmp_path}", "data=files", f"data.train={corpus}"]
    main([*run, *FAST, *TINY_GPT, "train.max_steps=2", "train.log_every=1", "train.eval_every=2"])
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("step 1/2 (50%)")]
    assert len(steps) == 1 and len(steps[0]) > 80 and steps[0].split()[-2] == "ETA"


def test_a_user_error_is_kept_in_the_run_log(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", f"hydra.run.dir={tmp_path}", "data=files", "data.train=missing.txt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmtune: error:") and err in (tmp_path / "pretrain.log").read_text()


def _report(out: Path, *dirs: Path) -> Path:
    main(["report", *map(str, dirs), f"hydra.run.dir={out}"])
    return out / "report.html"


def test_report_of_one_run_plots_its_curves_and_marks_the_best_checkpoint(tmp_path, sweep):
    page = _report(tmp_path / "one", sweep["runs"][0]).read_text()
    pngs = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert {"loss.png", "lr.png", "tokens_per_s.png", "val_perplexity.png"} <= set(pngs)
    assert "val_clm_loss.png" not in pngs  # the same curve as the validation loss
    assert page.count("data:image/png;base64,") == len(pngs)  # self-contained
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere
    assert "best step" in page and "the best checkpoint" in page


def test_report_of_a_sweep_has_a_table_and_overlaid_curves(tmp_path, sweep):
    page = _report(tmp_path / "sweep", sweep["dir"]).read_text()
    assert page.count("<tr><td") == 2 and "optim.lr=0.001" in page and "optim.lr=0.005" in page
    assert 'class="sortable"' in page and "Curves of all runs" in page


def test_report_of_an_evaluation_draws_the_confusion_matrix(tmp_path):
    evaluated = tmp_path / "evaluate"
    evaluated.mkdir()
    results = {
        "task": "classification",
        "accuracy": 0.75,
        "f1_macro": 0.7,
        "n_examples": 8,
        "per_class": {"neg": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 4}},
        "confusion_matrix": {"labels": ["neg", "pos"], "matrix": [[2, 2], [0, 4]]},
    }
    (evaluated / "results.json").write_text(json.dumps(results))
    page = _report(tmp_path / "out", evaluated).read_text()
    assert (tmp_path / "out" / "confusion-evaluate.png").is_file()
    assert "Evaluations" in page and "per class" in page and "0.75" in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no run given"),
        (["/no/such/run"], "'/no/such/run' is not a directory"),
    ],
)
def test_report_errors_are_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", *args, f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and message in err


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--no-first-run"]
    flags.append(f"--user-data-dir={tmp_path / 'profile'}")
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_report_renders_in_a_browser_and_sorts_by_a_metric(tmp_path, sweep):
    import matplotlib.image

    page = _report(tmp_path / "out", sweep["dir"])
    shot = tmp_path / "page.png"
    _chromium(tmp_path, "--window-size=1280,1400", f"--screenshot={shot}", page.as_uri())
    pixels = matplotlib.image.imread(shot)[..., :3]
    # the figures were decoded and drawn: the first run's curve colour (#0072B2) is on screen
    blue = (abs(pixels[..., 0] - 0x00 / 255) < 0.1) & (abs(pixels[..., 2] - 0xB2 / 255) < 0.1)
    assert blue.sum() > 500
    # the page's script sorts the table by the metric the address names
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri() + "#sort=-loss").stdout
    losses = [
        float(v)
        for v in re.findall(
            r'<tr><td data-v="[^"]*">[^<]*</td>(?:<td[^>]*>[^<]*</td>){2}<td data-v="([\d.e+-]+)"',
            dom,
        )
    ]
    assert len(losses) == 2 and losses == sorted(losses, reverse=True)
    assert 'class="desc"' in dom
