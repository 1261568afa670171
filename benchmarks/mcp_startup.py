"""Start-up of `dlzoo mcp`: how long a client waits before the server answers.

    python benchmarks/mcp_startup.py [--runs 5]

Each run launches `dlzoo mcp` as a client does (stdio), sends `initialize`, then `tools/list`,
then one light tool call (`explain adamw`), and times each answer from the launch. Reported: the
median and worst wall time over fresh processes, the child's CPU time (user + sys, steadier than
wall time on a shared machine), a bare `python -c pass` and `import mcp` for scale, and the
deep-learning frameworks the server had imported when it stopped (none is the contract).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HEAVY = ("torch", "jax", "flax", "keras", "tensorflow", "haiku", "equinox", "transformers")
# Runs the CLI's `mcp` command in-process and reports, on stderr at exit, which frameworks it imported.
PROBE = (
    "import atexit, sys\n"
    f"atexit.register(lambda: print('imported:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), "
    "file=sys.stderr))\n"
    "from dlzoo.cli import main\nsys.argv = ['dlzoo', 'mcp', '--root', sys.argv[1]]\nmain()\n"
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(root: str) -> dict:
    cpu0, start = _cpu(), time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )

    def request(id_: int, method: str, params: dict) -> float:
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}) + "\n")
        proc.stdin.flush()
        while True:
            message = json.loads(proc.stdout.readline())
            if message.get("id") == id_:
                assert "result" in message, message
                return time.perf_counter() - start

    times = {
        "initialize": request(
            1, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}
        )
    }
    proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
    times["tools/list"] = request(2, "tools/list", {})
    times["explain"] = request(3, "tools/call", {"name": "explain", "arguments": {"topic": "adamw"}})
    proc.stdin.close()
    stderr = proc.stderr.read()
    proc.wait(timeout=60)
    times["cpu"] = _cpu() - cpu0
    times["imported"] = next((line.split(":", 1)[1] for line in stderr.splitlines() if line.startswith("imported:")), "?")
    return times


def wall(args: list[str]) -> tuple[float, float]:
    cpu0, start = _cpu(), time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - start, _cpu() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    bare, sdk, server = [], [], []
    with tempfile.TemporaryDirectory() as root:
        for _ in range(runs):  # interleaved, so a burst of load hits every kind alike
            bare.append(wall([sys.executable, "-c", "pass"]))
            sdk.append(wall([sys.executable, "-c", "import mcp.server.lowlevel, mcp.server.stdio"]))
            server.append(one_run(root))
    print(f"{runs} fresh processes each; median (worst) seconds; load average {os.getloadavg()[0]:.1f}")
    print(
        f"  python -c pass                    wall {statistics.median(w for w, _ in bare):.2f}   "
        f"cpu {statistics.median(c for _, c in bare):.2f}"
    )
    print(
        f"  import mcp SDK (server parts)     wall {statistics.median(w for w, _ in sdk):.2f}   "
        f"cpu {statistics.median(c for _, c in sdk):.2f}"
    )
    for key in ("initialize", "tools/list", "explain"):
        values = [r[key] for r in server]
        print(f"  dlzoo mcp: {key:<22} wall {statistics.median(values):.2f} ({max(values):.2f})")
    print(f"  dlzoo mcp: whole session           cpu {statistics.median(r['cpu'] for r in server):.2f}")
    print(f"  frameworks imported by the server: {server[0]['imported'] or 'none'}")


if __name__ == "__main__":
    main()
