"""Every ```python block of README.md runs verbatim, and the quick start keeps its two lines."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()

def _python_blocks() -> list[tuple[str, str]]:
    """``(section heading, code)`` of every ```python block, in order."""
    blocks, heading = [], "top"
    for m in re.finditer(r"^(##+ [^\n]*)$|^```python\n(.*?)^```", README, flags=re.S | re.M):
        if m.group(1):
            heading = m.group(1).lstrip("# ").strip()
        else:
            blocks.append((heading, m.group(2)))
    return blocks


BLOCKS = _python_blocks()
TORCHRUN = [code for _, code in BLOCKS if "init_process_group" in code]  # scripts for torchrun
IN_PROCESS = [(heading, code) for heading, code in BLOCKS if code not in TORCHRUN]


def test_readme_has_examples():
    assert len(IN_PROCESS) >= 4 and len(TORCHRUN) == 1


@pytest.mark.parametrize("block", [code for _, code in IN_PROCESS], ids=[h for h, _ in IN_PROCESS])
def test_python_block_runs(block):
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


@pytest.mark.slow
def test_distributed_block_runs_under_torchrun(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(TORCHRUN[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}/2: rows " in proc.stdout


def test_quick_start_contract():
    """.ci/run runs line 2 of the first ```bash block in a fresh environment."""
    first = re.search(r"^```bash\n(.*?)^```", README, flags=re.S | re.M).group(1).splitlines()
    assert len(first) == 2
    assert "graphattn atlas" in first[0] and first[0].startswith("pip install ")
    assert '".[test]"' in first[1] and first[1].endswith("python -m pytest -q")


def test_rule_table_uses_the_current_names():
    import inspect

    from graphattn import rules

    rows = re.findall(r"^\| `(\w+)\((.*?)\)` \|", README, flags=re.M)
    assert {name for name, _ in rows} == set(rules.RULES)  # every rule, and only rules
    for name, args in rows:
        params = inspect.signature(getattr(rules, name)).parameters
        for keyword in re.findall(r"(\w+)=", args):
            assert keyword in params, f"README rule table: {name} has no parameter {keyword!r}"
