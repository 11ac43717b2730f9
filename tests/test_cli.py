import subprocess
import sys

import pytest

from graphattn.catalog import default_rules
from graphattn.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "graphattn", *args], capture_output=True, text=True)


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


def test_default_command_is_atlas(capsys):
    assert main(["--n", "32"]) == 0
    assert "graphattn atlas" in capsys.readouterr().out


def test_atlas_png(tmp_path):
    pytest.importorskip("matplotlib")
    assert main(["atlas", "--n", "32", "--out", str(tmp_path)]) == 0
    png = tmp_path / "atlas.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_show_rule_with_parameters(capsys):
    assert main(["show", "band", "--n", "5", "--radius", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:5] == ["##...", "###..", ".###.", "..###", "...##"]
    assert "num_edges=13" in out


def test_show_list_parameter(capsys):
    assert main(["show", "longformer", "--n", "6", "--radius", "1", "--global-indices", "0,"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "######"


@pytest.mark.parametrize("args,needle", [
    (["show", "banana"], "valid rules: band"),
    (["show", "band", "--n", "8", "--width", "3"], "valid parameters: radius"),
    (["show", "band", "--n", "8", "--radius", "-1"], "expected radius >= 0, got -1"),
    (["atlas", "--n", "3"], "expected --n >= 16"),
])
def test_user_errors_are_one_line_without_traceback(args, needle):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
