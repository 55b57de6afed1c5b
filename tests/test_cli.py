"""The command line a user meets first: fast help, quiet start, helpful errors, versions."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from tfmetric import choices, cli
from tfmetric.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"tensorflow", "keras", "jax", "torch", "matplotlib"}
# absl's C++ log format: severity and date, time, thread, file:line].
C_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:. ]+ *\d+ [\w.]+:\d+\]")


def _environment(**changes):
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    return {**environment, **changes}


@pytest.mark.parametrize("arguments", [[], ["--help"], ["demo", "--help"], ["compare", "--help"]])
def test_help_answers_at_once_without_importing_tensorflow(tmp_path, arguments):
    # As pip's console script `tfmetric` does, and as `python -m tfmetric`.
    script = tmp_path / "tfmetric"
    script.write_text("import sys\nfrom tfmetric.__main__ import main\nsys.exit(main())\n")
    for command in ([str(script)], ["-m", "tfmetric"]):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-X", "importtime", *command, *arguments],
            capture_output=True,
            text=True,
            env=_environment(),
            timeout=60,
        )
        elapsed = time.perf_counter() - start
        assert result.returncode == 0, result.stderr[-2000:]
        assert "usage: tfmetric" in result.stdout
        imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
        assert "tfmetric" in imported and not imported & HEAVY, imported & HEAVY
        assert elapsed < 3, f"{command} {arguments} took {elapsed:.1f} s"


def test_demo_help_lists_every_loss_with_its_summary_and_the_default(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["demo", "--help"])
    assert exit.value.code == 0
    shown = capsys.readouterr().out
    assert "(default: batch_hard)" in shown and "(default: digits)" in shown
    for choice in (*choices.LOSSES, *choices.PROXY_LOSSES):
        assert re.search(rf"^  {choice.key} +{re.escape(choice.summary)}$", shown, re.MULTILINE), choice.key


@pytest.mark.parametrize(
    "arguments, answer",
    [
        (["demo", "--loss", "n_pairs"], "invalid choice: 'n_pairs' (did you mean 'npairs'?); the losses are: batch_"),
        (["demo", "--dataset", "fashion"], "(did you mean 'fashion_mnist'?); the datasets are: digits, mnist"),
        (["compare", "--protocol", "opne"], "(did you mean 'open'?); the protocols are: open, closed"),
        (
            ["compare", "--methods", "softmax", "semi hard triplet"],
            "invalid choice: 'semi hard triplet' (did you mean 'semi-hard triplet'?); the methods are: raw pixels",
        ),
        (["demo", "--loss", "zzz"], "invalid choice: 'zzz'; the losses are: batch_hard"),
    ],
)
def test_an_unknown_name_gets_the_closest_one_and_the_list(capsys, arguments, answer):
    with pytest.raises(SystemExit) as exit:
        main(arguments)
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert answer in error
    names = choices.METHODS if arguments[0] == "compare" and "--methods" in arguments else ()
    assert all(name in error for name in names)


def test_the_registry_follows_the_plain_list():
    # The registry takes its keys' titles from `choices`: every key has an entry, in the same order.
    from tfmetric import compare
    from tfmetric.losses.registry import LOSSES, PROXY_LOSSES

    def rows(entries):
        return [(entry.key, entry.title, getattr(entry, "variant", False)) for entry in entries]

    assert rows(choices.LOSSES) == rows(LOSSES.values())
    assert rows(choices.PROXY_LOSSES) == rows(PROXY_LOSSES.values())
    assert choices.LOSS_KEYS == (*LOSSES, *PROXY_LOSSES)
    # Every method the command line offers is one the comparison trains, in its order.
    assert tuple(compare.TRAINERS) == choices.METHODS == compare.METHODS
    assert all(choice.summary for choice in (*choices.LOSSES, *choices.PROXY_LOSSES))


def test_version_names_what_a_bug_report_needs(capsys):
    import tensorflow as tf

    assert main(["--version"]) == 0
    printed = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert printed["keras"] == keras.__version__ and printed["tensorflow"] == tf.__version__
    assert printed["backend"] == keras.backend.backend() and re.fullmatch(r"\d+\.\d+.*", printed["tfmetric"])


def test_tensorflow_chatter_is_dropped_and_the_rest_passed_on(capfd):
    with cli._tensorflow_log_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796247491.674983   18949 cudart_stub.cc:31] Could not find cuda drivers on your ")
        os.write(2, b"machine, GPU will not be used.\n")
        os.write(2, b"E0000 00:00:1796247779.403032   27857 cuda_platform.cc:52] failed call to cuInit: INTERNAL: ")
        os.write(2, b"CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
        os.write(2, b"E0000 00:00:1796289071.712634    4981 util.cc:131] oneDNN supports DT_INT32 only on platforms ")
        os.write(2, b"with AVX-512. Falling back to the default Eigen-based implementation if present.\n")
        os.write(2, b"E0000 00:00:1796247779.403032   27857 cuda_dnn.cc:52] a real error\n")
        os.write(2, b"something the user must see\n")
    assert capfd.readouterr().err.splitlines() == [
        "E0000 00:00:1796247779.403032   27857 cuda_dnn.cc:52] a real error",
        "something the user must see",
    ]


def test_the_log_level_is_set_unless_verbose_or_set_by_the_user(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    with cli._quiet(verbose=True):
        pass
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    with cli._quiet(verbose=False):
        pass
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    for level in ("0", "3"):
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
        with cli._quiet(verbose=False):
            pass
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == level
    parser = cli.build_parser()
    assert parser.parse_args(["demo", "-v"]).verbose and parser.parse_args(["-v", "demo"]).verbose
    assert not parser.parse_args(["demo"]).verbose


@pytest.mark.tensorflow_only  # P×K batches are tf.data
@pytest.mark.slow
def test_the_demo_prints_only_what_the_user_asked_for(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tfmetric", "demo", "--epochs", "1", "--log-dir", str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        env=_environment(),
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = (result.stdout + result.stderr).splitlines()
    unasked = [line for line in printed if "warning" in line.lower() or C_LOG_LINE.match(line)]
    assert not unasked, "\n".join(unasked)
    assert not result.stderr.strip(), result.stderr[-3000:]
    assert "1-NN accuracy" in result.stdout and f"tensorboard --logdir {tmp_path / 'logs'}" in result.stdout
