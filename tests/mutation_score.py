"""Score table of a mutmut run (`make mutation`): per module, the mutants checked and how they ended.

    python tests/mutation_score.py            # after `mutmut run ...`, in the repository root

Reads `mutmut results --all true` (one `<mutant>: <status>` line per mutant). Killed = the tests
failed (or timed out) with the mutant in place. The score leaves out the survivors listed as
equivalent in docs/testing.md (a mutant no test can tell apart from the original). Not a test file
(no `test_` prefix): pytest never collects it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "testing.md"
KILLED = {"killed", "timeout"}


def results() -> list[tuple[str, str]]:
    out = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "results", "--all", "true"],
                         capture_output=True, text=True, check=True).stdout
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^\s*(\S+): (.+?)\s*$", out, re.M)]


def equivalent() -> set[str]:
    """Mutant names listed in docs/testing.md's equivalent-mutant table (`| \\`name\\` | why |`)."""
    if not DOC.is_file():
        return set()
    return set(re.findall(r"^\| `([^`]+__mutmut_\d+)` \|", DOC.read_text(), re.M))


def module_of(mutant: str) -> str:
    return mutant.split(".x")[0] if ".x" in mutant else mutant.rsplit(".", 1)[0]


def main() -> int:
    equiv = equivalent()
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for name, status in results():
        if status == "not checked":
            continue
        c = by_module[module_of(name)]
        c["checked"] += 1
        if status in KILLED:
            c["killed"] += 1
        elif status == "survived" and name in equiv:
            c["equivalent"] += 1
        else:
            c[status.replace(" ", "_")] += 1
            survivors.append((name, status))
    rows = [("module", "mutants", "killed", "equivalent", "survived", "no tests", "score")]
    total = Counter()
    for module, c in sorted(by_module.items()):
        total.update(c)
        rows.append((module, c["checked"], c["killed"], c["equivalent"], c["survived"], c["no_tests"],
                     _score(c)))
    rows.append(("all", total["checked"], total["killed"], total["equivalent"], total["survived"],
                 total["no_tests"], _score(total)))
    print("| " + " | ".join(str(x) for x in rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows[1:]:
        print("| " + " | ".join(str(x) for x in r) + " |")
    if survivors:
        print(f"\n{len(survivors)} not killed and not listed as equivalent (mutmut show <name>):")
        for name, status in survivors:
            print(f"  {name}: {status}")
    return 0


def _score(c: Counter) -> str:
    judged = c["checked"] - c["equivalent"]
    return f"{100 * c['killed'] / judged:.1f}%" if judged else "-"


if __name__ == "__main__":
    sys.exit(main())
