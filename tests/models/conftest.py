import sys
from pathlib import Path

here = Path(__file__).parent
for p in (here, here.parent / "nn"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
