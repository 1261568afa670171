"""Score `dlzoo diagnose` on the real runs of tests/data/runs/<set>/ (made by
benchmarks/diagnose_runs.py; the truth about each run is in its manifest.json).

A pathology is found when a finding of one of its accepted kinds starts within 10% of the run
length of its onset. A healthy run raises a false alarm with any medium or high finding. A
finding of a kind the manifest forbids for the run (one that would misname its cause, e.g.
lr-too-high for a forgotten zero_grad) is a misattribution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

RUNS = Path(__file__).parent / "data" / "runs"
ONSET_TOLERANCE = 0.10


@dataclass
class Score:
    pathologies: int = 0
    found: int = 0
    healthy: int = 0
    false_alarms: int = 0
    misattributions: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        return (
            f"{name}: {self.found}/{self.pathologies} pathologies found (onset within 10%), "
            f"{self.false_alarms}/{self.healthy} healthy runs with a medium/high finding, "
            f"{self.misattributions} misattributed cause(s)"
        )


def score(which: str, diagnose_file=None) -> Score:
    if diagnose_file is None:
        from dlzoo.agents.diagnose import diagnose_file
    manifest = json.loads((RUNS / which / "manifest.json").read_text())
    result = Score()
    for name, run in manifest.items():
        findings = diagnose_file(RUNS / which / run["file"])
        brief = [(f.kind, f.start_step, f.severity) for f in findings]
        tolerance = ONSET_TOLERANCE * run["steps"]
        if run["healthy"]:
            result.healthy += 1
            alarms = [b for b in brief if b[2] in ("medium", "high")]
            if alarms:
                result.false_alarms += 1
                result.failures.append(f"{name}: false alarm {alarms}")
        for expected in run["expected"]:
            result.pathologies += 1
            if any(f.kind in expected["kinds"] and abs(f.start_step - expected["onset"]) <= tolerance for f in findings):
                result.found += 1
            else:
                result.failures.append(f"{name}: missed {expected['kinds']} at {expected['onset']} (found {brief})")
        wrong = [b for b in brief if b[0] in run["forbidden"]]
        if wrong:
            result.misattributions += 1
            result.failures.append(f"{name}: misattributed {wrong}")
    return result


if __name__ == "__main__":
    import sys

    for which in sys.argv[1:] or ["tuning", "heldout"]:
        s = score(which)
        print(s.line(which))
        for failure in s.failures:
            print("   ", failure)
