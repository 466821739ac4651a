"""The run's log file (everything printed, without colour codes; errors with tracebacks),
third-party noise kept off the console unless verbose, unwrapped lines and timed stages."""

from __future__ import annotations

import io
import logging
import sys
import warnings

import pytest

from llmtune import console, runlog


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tee_strips_colour_codes_for_the_log():
    screen, log = io.StringIO(), io.StringIO()
    tee = runlog.Tee(screen, log)
    tee.write("\x1b[1;32mloss\x1b[0m 3.2\r\n")
    assert screen.getvalue() == "\x1b[1;32mloss\x1b[0m 3.2\r\n"
    assert log.getvalue() == "loss 3.2\n"


def test_capture_keeps_prints_and_errors_in_the_log(tmp_path):
    log = tmp_path / "pretrain.log"
    with runlog.capture(log, verbose=False):
        print("step 10/100 (10%)  loss 3.2")
        print("llmtune: error: data.train: no such file", file=sys.stderr)
    with pytest.raises(RuntimeError), runlog.capture(log, verbose=False):
        raise RuntimeError("a bug")
    text = log.read_text()
    assert "step 10/100 (10%)" in text and "llmtune: error: data.train" in text
    assert "Traceback" in text and "RuntimeError: a bug" in text
    assert not isinstance(sys.stdout, runlog.Tee)  # restored


@pytest.fixture
def hydra_like_logging(tmp_path):
    """Handlers as Hydra's job logging sets them: the console and <run dir>/<job>.log."""
    root = logging.getLogger()
    screen = io.StringIO()
    handlers = [logging.StreamHandler(screen), logging.FileHandler(tmp_path / "job.log")]
    saved = root.level, root.handlers[:]
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
    yield screen, tmp_path / "job.log"
    handlers[1].close()
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_info_and_warnings_stay_off_the_console_unless_verbose(
    hydra_like_logging, verbose
):
    screen, job_log = hydra_like_logging
    assert runlog.hydra_log_file() == job_log
    with runlog.capture(None, verbose=verbose):
        logging.getLogger("onnxscript.optimizer").info("Skipping constant folding")
        logging.getLogger("llmtune.data").info("ours")
        warnings.warn("torch.jit.trace is deprecated", FutureWarning, stacklevel=1)
    shown = screen.getvalue()
    assert "ours" in shown
    assert ("Skipping constant folding" in shown) == verbose
    kept = job_log.read_text()
    assert "Skipping constant folding" in kept  # the log keeps what the console hides
    if not verbose:  # (verbose leaves warnings to Python's usual display)
        assert "deprecated" not in shown and "deprecated" in kept


def test_off_a_terminal_long_lines_are_not_wrapped(capsys):
    line = "step 120/2000 (6%)  " + "  ".join(f"metric_{i} 0.1234" for i in range(12))
    assert len(line) > 150
    console.console().print(line)
    assert line in capsys.readouterr().out


def test_a_stage_says_what_it_found_and_how_long_it_took(capsys):
    with console.stage("tokenizer", "bpe for gpt"):
        console.note("reused the cached bpe tokenizer")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tokenizer: bpe for gpt ..."  # off a terminal: a start line
    assert out[1].startswith("tokenizer: reused the cached bpe tokenizer (")
    assert out[1].endswith("s)")


def test_live_output_goes_above_the_display_and_into_the_log(tmp_path):
    from rich.console import Console

    log = tmp_path / "x.log"
    screen = _Terminal()
    with runlog.capture(log, verbose=False):
        sys.stdout = runlog.Tee(screen, sys.stdout.log)  # a terminal under the tee
        shown = Console(file=runlog.terminal(), force_terminal=True)
        with runlog.live(shown):
            print("eval step 20/60  loss 6.61")
        runlog.log_only("step 20/60 (33%)  ETA 0:42")
    assert "eval step 20/60" in screen.getvalue()
    assert "eval step 20/60  loss 6.61" in log.read_text()
    assert "step 20/60 (33%)  ETA 0:42" in log.read_text()
    assert "ETA 0:42" not in screen.getvalue()
