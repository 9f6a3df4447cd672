"""A fuzz test of the command line (issue 28, "proof across the board"): hypothesis draws values for the options of
every command (NaN, ±inf, negatives, huge numbers, empty strings, missing paths, a file where a folder belongs,
wrong types, unknown YAML keys) and each run must end with exit status 0 or 2, and on 2 with one
`fewlabels: error:` line and no traceback. Training itself is replaced by a stop once a run reaches fit(), so the
test checks everything a user's input passes through before the first step, fast; what reaches training must hold
finite numbers only.

CI runs it with a fixed seed and a bounded number of examples; a longer run:
`FEWLABELS_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz_cli.py -q`.
"""

from __future__ import annotations

import contextlib
import io
import os
import typing
from pathlib import Path
from unittest import mock

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fewlabels.cli import main  # noqa: E402
from fewlabels.commands import COMMANDS  # noqa: E402
from fewlabels.config import _base_type  # noqa: E402

EXAMPLES = int(os.environ.get("FEWLABELS_FUZZ_EXAMPLES", "300"))
TRAINING = [f"fewlabels.methods.{m}.fit" for m in ("supervised", "selftrain", "transfer", "distill", "probes")]


class ReachedTraining(Exception):
    """fit() was called: the input passed every check."""


def _stop(*args, **kwargs):
    """In place of training: what reaches it must be sane (every number finite), then stop the run."""
    import math

    numbers = [v for a in (*args, *kwargs.values()) if hasattr(a, "asdict") for v in a.asdict().values()]
    numbers += [v for a in args if hasattr(a, "norm") for part in a.norm for v in part]
    numbers += [v for v in kwargs.values() if isinstance(v, float)]
    bad = [v for v in numbers if isinstance(v, float) and not math.isfinite(v)]
    assert not bad, f"a non-finite number reached training: {bad}"
    raise ReachedTraining


NASTY = ["nan", "inf", "-inf", "-1", "0", "1e308", "99999999999999999999", "", "none", "abc", "1,2,3", "-0.5",
         "true", "/nonexistent/path", "{FILE}", "{DIR}", "é€😀", "--", "0x10"]


def _values(decl) -> st.SearchStrategy[str]:
    base, _ = _base_type(decl.type)
    good = []
    if decl.choices:
        good += [str(c) for c in decl.choices]
    if decl.default is not None:
        good.append(",".join(map(str, decl.default)) if isinstance(decl.default, list) else str(decl.default))
    if base in (int, float) or isinstance(base, list):
        good += ["1", "2", "0.5", "10"]
    if typing.get_origin(base) is list:
        good += ["1", "a,b"]
    nasty = st.sampled_from(NASTY)
    if not good:
        return nasty
    numeric = base in (float,) or isinstance(base, list) or (typing.get_origin(base) is list and
                                                             typing.get_args(base)[0] is float)
    return st.one_of(st.sampled_from(good), st.sampled_from(good), nasty,
                     st.sampled_from(["nan", "inf", "1e400", "nan,1"]) if numeric else st.sampled_from(good))


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "a_file.txt").write_text("not an image folder")
    (root / "dir").mkdir()
    (root / "bad.yaml").write_text("not_an_option: 3\nepochs: [1, 2]\n")
    return root


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    """A run that would allocate without bound (a huge size or count) fails here as an allocation error, which the
    test reports as a traceback, instead of taking the machine's memory until the kernel kills the test."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    try:
        with open("/proc/self/statm") as f:
            vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - no /proc: run without the bound
        yield
        return
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vsz + (8 << 30), old[1]))  # what is mapped now + 8 GB
    yield
    resource.setrlimit(resource.RLIMIT_AS, old)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_every_command_line_ends_in_0_or_one_error_line(places, data):
    cmd = data.draw(st.sampled_from(COMMANDS), label="command")
    decls = [d for d in cmd.cls.options.values() if d.name not in ("out", "device", "cache_dir", "data_root")]
    chosen = data.draw(st.lists(st.sampled_from(decls), min_size=1, max_size=4, unique_by=lambda d: d.name),
                       label="options")
    argv = cmd.name.split()
    for d in chosen:
        v = data.draw(_values(d), label=d.name)
        v = v.replace("{FILE}", str(places / "a_file.txt")).replace("{DIR}", str(places / "dir"))
        argv.append(f"{d.flag}={v}")
    if data.draw(st.integers(0, 9), label="a bad YAML file 1 time in 10") == 0:
        argv.append(f"--config={places / 'bad.yaml'}")
    n = len(list(places.glob("out*")))
    if "out" in cmd.cls.options:
        default_out = cmd.cls.options["out"].default
        name = f"out{n}" + (Path(default_out).suffix if default_out else "")
        argv.append(f"--out={places / name}")
    if "device" in cmd.cls.options:
        argv.append("--device=cpu")
    if "cache_dir" in cmd.cls.options:
        argv.append(f"--cache-dir={places / 'cache'}")
    err = io.StringIO()
    with contextlib.ExitStack() as stack:
        for target in TRAINING:
            stack.enter_context(mock.patch(target, _stop))
        stack.enter_context(mock.patch.dict(os.environ, {"TQDM_DISABLE": "1"}))
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        try:
            code = main(argv)
        except ReachedTraining:
            code = 0
        except SystemExit as e:  # argparse: a flag this command does not take, or --help
            code = e.code
    text = err.getvalue()
    hypothesis.event("reached training or finished" if code == 0 else "refused with one line")
    assert code in (0, 2), (argv, code, text)
    assert "Traceback" not in text, (argv, text)
    if code == 2:
        last = text.strip().splitlines()[-1] if text.strip() else ""
        assert last.startswith("fewlabels: error:"), (argv, text)
