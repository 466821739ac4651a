"""Random overrides never end in a traceback: they validate, or fail with one line and exit 2."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmtune.commands.pretrain as pretrain_command
from llmtune.cli import main
from llmtune.config.build import section_fields
from llmtune.config.schema import RunConfig


def schema_keys() -> list[str]:
    keys = []
    for name, kind in section_fields(RunConfig).items():
        if dataclasses.is_dataclass(kind):
            keys += [f"{name}.{field}" for field in section_fields(kind)]
        else:
            keys.append(name)
    return keys


KEYS = st.one_of(
    st.sampled_from(schema_keys()),
    st.sampled_from(["model", "objective", "data", "optim", "tokenizer", "hardware"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=20),
)
VALUES = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.booleans().map(str),
    st.sampled_from(
        [
            "bert-tiny",
            "gpt-tiny",
            "mlm",
            "clm",
            "auto",
            "null",
            "",
            "[1,2]",
            "${oops}",
            "${model.d_model}",
            "'quoted'",
            "a,b",
            "{x: 1}",
            "1e-3",
        ]
    ),
    st.text(alphabet="abcxyz019.-_/$:{}[]'\" ", max_size=12),
)
OVERRIDES = st.lists(st.tuples(KEYS, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=4)


@pytest.mark.slow
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(overrides=OVERRIDES)
def test_random_overrides_validate_or_fail_cleanly(overrides, tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(pretrain_command, "run", lambda config, run_dir: ran.append(config))
    try:
        main(["pretrain", f"hydra.run.dir={tmp_path}", *overrides])
    except SystemExit as exc:
        err = capsys.readouterr().err.strip()
        assert exc.code == 2, (overrides, exc.code, err)
        assert len(err.splitlines()) == 1 and err.startswith("llmtune: error: "), err
        return
    capsys.readouterr()
    assert len(ran) == 1 and isinstance(ran[0], RunConfig)


@pytest.mark.parametrize("value", ["${oops}", "[1,2]", "nan", "{x: 1}"])
def test_odd_values_for_a_number_are_one_line(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", f"hydra.run.dir={tmp_path}", f"optim.lr={value}"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
