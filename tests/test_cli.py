"""The one console command `xlstm-flax`: its help starts without jax, transformers or ml_dtypes (each costs seconds),
--version, usage errors exit 2 and name the command, failures exit 1 in one line `xlstm-flax <sub>: error: ...`,
one `--set` option, one TOKENIZER_FILES list, the console script entry point."""

import importlib.metadata
import subprocess
import sys
import time

import pytest

from modeling_xlstm_flax import cli

HELP_ARGS = [["--help"], ["generate", "--help"], ["train", "--help"], ["convert", "--help"],
             ["convert", "from-orbax", "--help"], ["convert", "from-pytorch", "--help"],
             ["convert", "to-pytorch", "--help"], ["convert", "from-library", "--help"],
             ["convert", "to-library", "--help"], ["export-hub", "--help"]]


def _command(*args):
    """`python -m modeling_xlstm_flax.cli ARGS` with its import log (-X importtime): (process, imported modules)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "modeling_xlstm_flax.cli", *args],
                          capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    return proc, imported


@pytest.mark.parametrize("args", HELP_ARGS, ids=" ".join)
def test_help_imports_neither_jax_nor_transformers(args):
    start = time.perf_counter()
    proc, imported = _command(*args)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: xlstm-flax")
    heavy = {"jax", "transformers", "flax", "optax", "torch", "datasets", "ml_dtypes"} & imported
    assert not heavy, f"{' '.join(args)} imported {sorted(heavy)} ({seconds:.2f} s)"


def test_version_and_command_list(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == "xlstm-flax 0.1.0"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in ("generate", "train", "convert", "export-hub"):
        assert f"\n  {name} " in out


@pytest.mark.parametrize("args,message", [
    ([], "xlstm-flax: error: the following arguments are required: COMMAND"),
    (["nope"], "xlstm-flax: error: argument COMMAND: invalid choice: 'nope'"),
    (["convert", "from-tf"], "xlstm-flax convert: error: argument COMMAND: invalid choice: 'from-tf'"),
    (["generate", "--no-such-option"], "xlstm-flax generate: error: unrecognized arguments: --no-such-option"),
    (["convert", "to-pytorch", "only-input"], "xlstm-flax convert to-pytorch: error: the following arguments"),
])
def test_usage_errors_exit_2_naming_the_command(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_failures_are_one_line_exit_1(capsys, tmp_path):
    assert cli.main(["generate", "--max-new-tokens", "0"]) == 1
    assert capsys.readouterr().err.strip() == "xlstm-flax generate: error: --max-new-tokens must be positive, got 0"
    missing = tmp_path / "missing"
    assert cli.main(["convert", "from-pytorch", str(missing), str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("xlstm-flax convert from-pytorch: error: ") and str(missing) in err
    assert len(err.splitlines()) == 1


def test_one_set_option_everywhere():
    from modeling_xlstm_flax import training
    from modeling_xlstm_flax.convert_common import build_parser

    for name in ("from-orbax", "from-pytorch", "to-pytorch"):
        args = build_parser(name).parse_args(["in", "out", "--set", "scan_blocks=true", "--set", "eps=1e-6"])
        assert args.set == ["scan_blocks=true", "eps=1e-6"]
        with pytest.raises(SystemExit):
            build_parser(name).parse_args(["in", "out", "--override", "scan_blocks=true"])
    args = training.build_parser().parse_args(["--output-dir", "o", "--set", "num_blocks=1"])
    assert args.set == ["num_blocks=1"]


def test_one_tokenizer_file_list():
    from modeling_xlstm_flax import convert_common, hub

    assert convert_common.TOKENIZER_FILES is cli.TOKENIZER_FILES is hub.TOKENIZER_FILES
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
            "merges.txt"} <= set(cli.TOKENIZER_FILES)


def test_conversions_offer_exactly_what_their_function_takes(capsys):
    """One skeleton: each conversion's options are its convert function's keywords, so none is accepted and then
    ignored; the library conversion (no streaming writer, no --verify) refuses those options by name."""
    from modeling_xlstm_flax.convert_common import CONVERSIONS, _OPTIONS, build_parser, converter

    for name in CONVERSIONS:
        function, keywords = converter(name)
        flags = {o for a in build_parser(name)._actions for o in a.option_strings} - {"-h", "--help"}
        wanted = {f for k in keywords for f in (_OPTIONS[k][0] or ("--set",))}
        assert flags == wanted, name
    for option in ("--verify", "--max-shard-size", "-q"):
        with pytest.raises(SystemExit) as info:
            cli.main(["convert", "from-library", "in", "out", option, *(["1GB"] if option == "--max-shard-size" else [])])
        assert info.value.code == 2 and f"unrecognized arguments: {option}" in capsys.readouterr().err


def test_max_shard_size_help_does_not_contradict_itself():
    from modeling_xlstm_flax.convert_common import build_parser

    text = " ".join(build_parser("to-pytorch").format_help().split())
    assert "at most SIZE" not in text and "a tensor larger than SIZE gets a shard of its own" in text


def test_console_script_is_the_one_command():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.name.startswith("xlstm-flax")}
    if not scripts:
        pytest.skip("the package is not installed in this environment (only its source is on the path)")
    assert scripts == {"xlstm-flax": "modeling_xlstm_flax.cli:main"}
