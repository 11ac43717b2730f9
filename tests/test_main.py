import subprocess
import sys

from graphattn.__main__ import main
from graphattn.catalog import default_rules, overview


def test_overview_lists_every_rule_with_counts(capsys):
    assert main(["--n", "64"]) == 0
    out = capsys.readouterr().out
    for name in default_rules(64):
        assert name in out
    assert "| band r=8 " in out


def test_overview_band_row_is_exact():
    row = next(line for line in overview(64).splitlines() if line.startswith("| band r=8 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # 64 tokens, radius 8: 64 * 17 - 2 * (8 * 9 / 2) edges
    assert cells[1:3] == ["64", str(64 * 17 - 72)]


def test_bad_n_exits_nonzero():
    proc = subprocess.run([sys.executable, "-m", "graphattn", "--n", "3"], capture_output=True, text=True)
    assert proc.returncode != 0 and "--n >= 16" in proc.stderr
