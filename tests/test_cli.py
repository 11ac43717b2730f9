import inspect
import subprocess
import sys

import pytest

import graphattn
from graphattn import rules
from graphattn.bench import attention as attention_bench
from graphattn.catalog import default_rules
from graphattn.cli import _option_type, _rule_parser, atlas_memory_estimate, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "graphattn", *args], capture_output=True, text=True)


def one_line_error(capsys, args, needle):
    """``main(args)`` is a user error: exit status 2, one stderr line naming it, nothing on stdout."""
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("graphattn: error: ")
    assert needle in lines[0]
    assert captured.out == ""
    return lines[0]


# ------------------------------------------------------------------------------------- atlas
def test_atlas_table_lists_every_rule(capsys):
    assert main(["atlas", "--n", "64"]) == 0
    out = capsys.readouterr().out
    for name in default_rules(64):
        assert f"| {name} " in out
    band = next(line for line in out.splitlines() if line.startswith("| band r=8 "))
    cells = [c.strip() for c in band.strip("|").split("|")]
    # 64 tokens, radius 8: 64 * 17 - 72 edges; hops to cover ceil(63 / 8) = 8; no star
    assert cells[1:3] == ["64", str(64 * 17 - 72)]
    assert cells[5] == "8" and cells[6] == "no"
    star = next(line for line in out.splitlines() if line.startswith("| global_tokens [0] "))
    assert [c.strip() for c in star.strip("|").split("|")][6] == "yes"


def test_atlas_bigbird_is_sparse_at_the_default_size():
    # 512 tokens in blocks of 64 would be 8 blocks: BigBird's 8 blocks per query are all of them
    name = next(k for k in default_rules(512) if k.startswith("bigbird "))
    g = default_rules(512)[name]()
    assert g.density() < 0.5


def test_default_command_is_atlas(capsys):
    assert main(["--n", "32"]) == 0
    assert "graphattn atlas" in capsys.readouterr().out


def test_atlas_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "new" / "dir"  # created
    assert main(["atlas", "--n", "32", "--out", str(out)]) == 0
    png = out / "atlas.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {png}" in capsys.readouterr().out


def test_atlas_refuses_at_once_what_would_not_fit(capsys, monkeypatch):
    monkeypatch.setenv("GRAPHATTN_MEMORY_LIMIT", "8G")
    line = one_line_error(capsys, ["atlas", "--n", "100000"], "more than the 8.0 GB budget")
    assert "full: 10,000,000,000 edges" in line and "try a smaller --n" in line


def test_atlas_memory_estimate_is_the_largest_variant():
    estimate, what = atlas_memory_estimate(1000)
    assert what == "full: 1,000,000 edges"
    assert estimate >= 1_000_000 * 17  # at least the full graph's own edge list and labels


def test_atlas_without_matplotlib_prints_the_install_hint(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    one_line_error(capsys, ["atlas", "--n", "32", "--out", str(tmp_path)], "pip install 'graphattn[plots]'")


def test_atlas_unusable_out_path(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    one_line_error(capsys, ["atlas", "--n", "32", "--out", str(blocker / "sub")], "cannot use --out")
    one_line_error(capsys, ["atlas", "--n", "32", "--out", str(blocker)], "cannot use --out")


# -------------------------------------------------------------------------------------- show
def test_show_rule_with_parameters(capsys):
    assert main(["show", "band", "--n", "5", "--radius", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:5] == ["##...", "###..", ".###.", "..###", "...##"]
    assert "num_edges=13" in out


def test_show_accepts_name_equals_value(capsys):
    assert main(["show", "band", "--n=5", "--radius=1"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["##...", "###.."]


@pytest.mark.parametrize("value", ["5", "5,"])
def test_show_one_element_list_parameter(capsys, value):
    assert main(["show", "longformer", "--n", "6", "--radius", "1", "--global-indices", value]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[5] == "######" and lines[0] == "##...#"  # row 5 global; every row attends 5


def test_show_list_and_bool_parameters(capsys):
    assert main(["show", "global_tokens", "--n", "4", "--global-indices", "0,3"]) == 0
    assert capsys.readouterr().out.splitlines()[:4] == ["####", "##.#", "#.##", "####"]
    assert main(["show", "band", "--n", "4", "--radius", "1", "--causal"]) == 0
    assert capsys.readouterr().out.splitlines()[:4] == ["#...", "##..", ".##.", "..##"]
    assert main(["show", "band", "--n", "3", "--radius", "1", "--causal", "false"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == ["##.", "###", ".##"]
    # int | Sequence[int]: one int for every head, or one per head
    assert main(["show", "longformer", "--n", "8", "--radius", "1", "--dilation", "1,2"]) == 0
    assert "heads=2)" in capsys.readouterr().out


def test_show_rule_help_lists_its_parameters(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["show", "bigbird", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--block-size", "--num-window-blocks", "--num-random-blocks", "--num-global-blocks", "--seed",
                 "--n", "--max-nodes"):
        assert flag in out


def test_every_rule_is_reachable_from_show():
    """A new rule whose required parameters the command line cannot give fails here."""
    for name in rules.RULES:
        fn = getattr(rules, name)
        _, names = _rule_parser(name, fn)
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty:
                assert p.name in names, f"{name}: required parameter {p.name} has no command-line form"


def test_list_parameters_read_from_the_signature():
    sig = inspect.signature(rules.longformer).parameters
    assert _option_type(sig["global_indices"])("5") == [5]
    assert _option_type(sig["dilation"])("3") == 3 and _option_type(sig["dilation"])("1,3") == [1, 3]
    assert _option_type(inspect.signature(rules.etc).parameters["segments"])("7") == [7]
    assert _option_type(inspect.signature(rules.global_tokens).parameters["global_indices"])("0") == [0]
    assert _option_type(inspect.signature(rules.erdos_renyi).parameters["p"])("0.5") == 0.5
    assert _option_type(inspect.signature(rules.kmeans).parameters["keys"]) is None  # a tensor


# ------------------------------------------------------------------------ every user mistake
@pytest.mark.parametrize("args,needle", [
    (["show", "banana"], "invalid choice: 'banana'"),
    (["show", "band", "--n", "8", "--radius", "1", "--width", "3"], "no parameter '--width'; its parameters: --radius"),
    (["show", "band", "--n", "8"], "required: --radius"),
    (["show", "band", "--n", "8", "--radius", "-1"], "expected radius >= 0, got -1"),
    (["show", "band", "--radius", "1", "--max-nodes", "0"], "--max-nodes: expected an int >= 1, got 0"),
    (["show", "band", "--n", "0", "--radius", "1"], "--n: expected an int >= 1, got 0"),
    (["show", "band", "--radius", "x"], "--radius: expected an int, got 'x'"),
    (["show", "band", "--radius", "1", "--causal", "maybe"], "expected true or false, got 'maybe'"),
    (["show", "global_tokens", "--global-indices", "a,b"], "expected comma-separated ints"),
    (["atlas", "--n", "3"], "--n: expected an int >= 16, got 3"),
    (["atlas", "--bogus"], "unrecognized arguments: --bogus"),
    (["study", "--tokens", "0"], "--tokens: expected an int >= 2, got 0"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["bench"], "required: SUITE"),
    (["bench", "nosuch"], "invalid choice: 'nosuch'"),
    (["bench", "attention", "--patterns", "foo"], "--patterns: invalid choice: 'foo'"),
    (["bench", "attention", "--methods", "nope"], "--methods: invalid choice: 'nope'"),
    (["bench", "attention", "--n", "0"], "--n: expected an int >= 1, got 0"),
    (["bench", "graphs", "--repeats", "0"], "--repeats: expected an int >= 1, got 0"),
    (["bench", "distributed", "--patterns", "band"], "invalid choice: 'band'"),
])
def test_user_errors_are_one_line(capsys, args, needle):
    one_line_error(capsys, args, needle)


def test_show_refuses_a_rule_beyond_the_memory_budget(capsys, monkeypatch):
    monkeypatch.setenv("GRAPHATTN_MEMORY_LIMIT", "64M")
    one_line_error(capsys, ["show", "full", "--n", "10000"], "more than the 64.0 MB budget")


@pytest.mark.parametrize("args,needle", [
    (["show", "band", "--n", "8", "--radius", "-1"], "expected radius >= 0, got -1"),
    (["bench", "attention", "--patterns", "foo"], "invalid choice: 'foo'"),
])
def test_user_errors_in_a_real_process(args, needle):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("graphattn: error: ") and needle in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------- help, version, bench
def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"graphattn {graphattn.__version__}"


def test_bench_help_shows_the_suites(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: graphattn bench")
    for suite in ("graphs", "attention", "distributed", "models", "gpu", "gpu-compile"):
        assert suite in out


def test_bench_progress_on_stderr_in_words_table_on_stdout(capsys, monkeypatch):
    def spawn(method, pattern, n, H, D, mode, repeats, timeout):
        return {"time_s": 0.5 if method == "graphattn" else 1.5, "peak_rss_gib": 0.25}

    monkeypatch.setattr(attention_bench, "_spawn", spawn)
    assert main(["bench", "attention", "--n", "64", "--patterns", "band", "--methods", "graphattn",
                 "dense_sdpa", "flex"]) == 0
    captured = capsys.readouterr()
    assert "| band    | 64 | dense_sdpa | fwd     | 1.500  | 0.25" in captured.out
    assert "3.0x" in captured.out
    progress = captured.err.rstrip().splitlines()
    assert len(progress) == 6 and not any("{" in line for line in progress)
    assert progress[0] == "  band     n=64     graphattn       fwd      0.500 s, peak RSS 0.25 GiB"


def test_describe_cell():
    from graphattn.bench._timing import describe_cell

    assert describe_cell({"skip": "no CPU backward"}) == "skipped: no CPU backward"
    assert describe_cell({"time_s": 0.1234, "setup_s": 2.0, "peak_rss_gib": 1.5, "extra": 3}) == (
        "0.123 s, one-time 2.00 s, peak RSS 1.50 GiB, extra 3")


def test_output_closed_early_is_no_traceback():
    # graphattn show ... | head: the reader goes away before the output is written
    proc = subprocess.Popen([sys.executable, "-m", "graphattn", "show", "band", "--n", "64", "--radius", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err
