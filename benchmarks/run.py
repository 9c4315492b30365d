"""Benchmark driver: ``python -m benchmarks.run [--quick] [--targets a,b] [--scenarios S1,S3]``.

For each target (websockets, picows, node-ws peers and pcclog itself) and each scenario,
start the server on a free port pinned to core 0, drive it from this process pinned to
core 1, stop it; then print the tables, save the raw rows as JSON under
``benchmarks/results/`` (gitignored) and, for a full run, rewrite the results section of
``benchmarks/README.md`` between its markers (only after a full run of every target and
scenario, unless ``--readme``).

A target that cannot run here (``import pcclog_server.cli`` fails, no ``node``...) is
recorded as "not available" and skipped. S5 (core only, no sockets) runs
``run_core_bench`` from ``benchmarks/core_bench.py`` when that file exists:
``run_core_bench(quick: bool = False)`` or ``run_core_bench(duration: float = ...)`` (given
0.3 s under ``--quick``) returning a ``dict`` or a ``list[dict]``, each dict one flat row.

The run is bounded: every scenario has its own timeouts, and a scenario whose estimated
time no longer fits in ``--budget`` seconds is skipped (recorded as such).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .loadgen import raise_nofile
from .scenarios import Params, Row, all_scenarios, machine_busy_seconds
from .targets import (
    BENCH_DIR,
    RESULTS_DIR,
    Target,
    TargetUnavailable,
    all_targets,
    cpu_count,
    pin_client,
)

README = BENCH_DIR / "README.md"
START = "<!-- bench-results:start -->"
END = "<!-- bench-results:end -->"
PEERS = ("websockets", "picows", "node-ws")
NOISY_PCT = 25.0  # other processes' CPU (% of a core) above which a result is flagged

# Headline metrics: (scenario key prefix, field, label, higher_is_better)
HEADLINE: list[tuple[str, str, str, bool]] = [
    ("S1", "deliveries_per_s", "deliveries/s", True),
    ("S2", "p50_ms", "p50 ms", False),
    ("S2", "p99_ms", "p99 ms", False),
    ("S3", "kib_per_conn", "KiB/conn", False),
    ("S3", "us_per_ping", "µs/ping", False),
    ("S4", "fast_p99_ms", "fast p99 ms", False),
    ("S4", "rss_growth_mb", "RSS growth MB", False),
]


# -- machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "none"
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "nproc": cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node_version(),
    }


def background_load(seconds: float = 1.0) -> float:
    """Busy CPU on the machine while we do nothing, % of one core."""
    t0, b0 = time.monotonic(), machine_busy_seconds()
    time.sleep(seconds)
    return 100 * (machine_busy_seconds() - b0) / (time.monotonic() - t0)


# -- S5 hook ------------------------------------------------------------------------------


def run_core(quick: bool) -> list[Row] | None:
    """S5: ``benchmarks/core_bench.py``'s ``run_core_bench`` if the file exists."""
    if not (BENCH_DIR / "core_bench.py").exists():
        return None
    try:
        module = importlib.import_module("benchmarks.core_bench")
        fn = module.run_core_bench
        params = inspect.signature(fn).parameters
        kwargs: dict[str, Any] = {}
        if "quick" in params:
            kwargs["quick"] = quick
        elif quick and "duration" in params:
            kwargs["duration"] = 0.3
        result = fn(**kwargs)
    except Exception as exc:  # the hook must not sink the whole run
        return [
            {"target": "pcclog_core", "scenario": "S5", "error": f"{type(exc).__name__}: {exc}"}
        ]
    rows = [result] if isinstance(result, dict) else list(result)
    return [{"target": "pcclog_core", "scenario": "S5", **row} for row in rows]


def run_memory(quick: bool) -> list[Row]:
    """S6: pcclog's RSS under the memory attacks, against the bound's formula."""
    try:
        module = importlib.import_module("benchmarks.memory_bench")
        row = module.run_memory_bench(quick=quick)
    except Exception as exc:  # the hook must not sink the whole run
        return [{"target": "pcclog", "scenario": "S6", "error": f"{type(exc).__name__}: {exc}"}]
    return [{"target": "pcclog", **row}]


# -- formatting ---------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return "→".join(fmt(v) for v in value)
    return str(value)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
    return "\n".join(lines)


def scenario_tables(rows: list[Row]) -> str:
    """One markdown table per scenario, columns = the union of the rows' fields."""
    out = []
    for key in dict.fromkeys(r["scenario"] for r in rows):
        group = [r for r in rows if r["scenario"] == key]
        cols: list[str] = []
        for r in group:
            cols += [k for k in r if k not in cols and k != "scenario"]
        out.append(
            f"**{key}**\n\n" + markdown_table(cols, [[fmt(r.get(c)) for c in cols] for r in group])
        )
    return "\n\n".join(out)


def _row(rows: list[Row], target: str, key: str) -> Row | None:
    for r in rows:
        if r["target"] == target and r["scenario"] == key:
            return r
    return None


def _value(rows: list[Row], target: str, key: str, field: str) -> float | None:
    r = _row(rows, target, key)
    if r is None or "error" in r:
        return None
    v = r.get(field)
    if isinstance(v, int | float) and not math.isnan(v):
        return float(v)
    return None


def _cell(rows: list[Row], target: str, key: str, field: str) -> str:
    r = _row(rows, target, key)
    if r is None:
        return "—"
    if "error" in r:
        return "error"
    if "skipped" in r:
        return "skipped"
    text = fmt(_value(rows, target, key, field))
    if (r.get("other_cpu_pct") or 0) > NOISY_PCT:
        text += " *"
    return text


def headline_columns(rows: list[Row]) -> list[tuple[str, str, str, bool]]:
    """(scenario key, field, label, higher_is_better) for the keys present in ``rows``."""
    keys = list(dict.fromkeys(r["scenario"] for r in rows))
    cols = []
    for prefix, field, label, higher in HEADLINE:
        for key in keys:
            if key == prefix or key.startswith(prefix + "-"):
                cols.append((key, field, f"{key} {label}", higher))
    return cols


def summary_table(rows: list[Row], targets: list[str], status: dict[str, str]) -> str:
    cols = headline_columns(rows)
    body = []
    for t in targets:
        if status.get(t, "ok") != "ok":
            body.append([t, *(["n/a"] * len(cols))])
            continue
        body.append([t, *(_cell(rows, t, k, f) for k, f, _, _ in cols)])
    table = markdown_table(["target", *(label for _, _, label, _ in cols)], body)
    if any((r.get("other_cpu_pct") or 0) > NOISY_PCT for r in rows):
        table += (
            f"\n\n\\* other processes used more than {NOISY_PCT:.0f}% of a core during "
            "that measurement (`other_cpu_pct`): the machine was shared, treat it as noisy."
        )
    return table


def ratio_table(rows: list[Row], targets: list[str], status: dict[str, str]) -> str:
    """target ÷ peer for each headline metric; ▲ marks where the target is better."""
    peers = [p for p in PEERS if status.get(p) == "ok"]
    body = []
    for t in targets:
        if status.get(t) != "ok":
            continue
        for key, field, label, higher in headline_columns(rows):
            mine = _value(rows, t, key, field)
            if mine is None:
                continue
            cells = []
            for p in peers:
                theirs = _value(rows, p, key, field)
                if p == t:
                    cells.append("—")
                elif theirs is None or theirs == 0:
                    cells.append("n/a")
                else:
                    ratio = mine / theirs
                    better = ratio > 1 if higher else ratio < 1
                    cells.append(f"{ratio:.2f}x{' ▲' if better and abs(ratio - 1) > 0.05 else ''}")
            body.append([t, label, *cells])
    return markdown_table(["target", "metric", *(f"÷ {p}" for p in peers)], body)


def results_markdown(
    rows: list[Row],
    targets: list[str],
    status: dict[str, str],
    machine: dict[str, Any],
    meta: dict[str, Any],
) -> str:
    parts = [
        f"_Run {meta['date']} · `{meta['command']}` · {machine['nproc']} CPUs "
        f"({machine['cpu']}) · Linux {machine['kernel']} · Python {machine['python']} · "
        f"Node {machine['node']} · background load before the run "
        f"{meta['background_pct']:.0f}% of a core · total {meta['elapsed_s']:.0f} s._",
        "",
        summary_table(rows, targets, status),
    ]
    missing = [f"* **{t}**: {s}" for t, s in status.items() if s != "ok"]
    if missing:
        parts += ["", *missing]
    redact = [
        (key, _value(rows, "pcclog", key, "deliveries_per_s"),
         _value(rows, "pcclog-redact-off", key, "deliveries_per_s"))
        for key in dict.fromkeys(r["scenario"] for r in rows if r["scenario"].startswith("S1"))
    ]  # fmt: skip
    redact = [(k, on, off) for k, on, off in redact if on and off]
    if redact:
        parts += [
            "",
            "Redaction's cost (SPEC §8), S1 deliveries/s with `REDACT=on` ÷ `REDACT=off`, same "
            "run: " + ", ".join(f"{k}: **{on / off:.2f}**" for k, on, off in redact) + ".",
        ]
    core = [r for r in rows if r["scenario"] == "S5"]
    if core:
        parts += ["", "S5, the sans-IO core alone (no sockets):", "", scenario_tables(core)]
    memory = [r for r in rows if r["scenario"] == "S6"]
    if memory:
        parts += [
            "",
            "S6, pcclog's memory under attack (two view clients that never read: `*` since 0"
            " twice over the whole history, and a flood of list/subscribe/ping/bad messages"
            " under the rate limit), against the bound `connections x (CONNECTION_BUFFER +"
            " MAX_MESSAGE_SIZE + 320 KiB)` (benchmarks/memory_bench.py):",
            "",
            scenario_tables(memory),
        ]
    parts += [
        "",
        "Ratios, target ÷ peer (deliveries/s: higher is better; everything else: lower is "
        "better; ▲ = the target is more than 5% better):",
        "",
        ratio_table(rows, targets, status),
        "",
        "<details><summary>All rows</summary>",
        "",
        scenario_tables(rows),
        "",
        "</details>",
    ]
    return "\n".join(parts)


def update_readme(block: str) -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    section = f"{START}\n{block}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + section + "\n"
    README.write_text(text)


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [t.name for t in all_targets()]
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="every scenario ~1 s, small counts")
    ap.add_argument("--targets", default=",".join(names), help=f"comma list of {names}")
    ap.add_argument("--scenarios", default="S1,S2,S3,S4,S5,S6", help="comma list, e.g. S1,S3")
    ap.add_argument("--duration", type=float, help="S1/S2 measured seconds (default 5)")
    ap.add_argument("--idle-conns", type=int, help="S3 connections (default 10000)")
    ap.add_argument("--slow-duration", type=float, help="S4 seconds (default 60)")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for S1-S4 (default 540)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    ap.add_argument(
        "--readme",
        action="store_true",
        help="rewrite README.md even after --quick or a subset of targets/scenarios",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    params = Params.quick() if args.quick else Params()
    if args.duration is not None:
        params = params.with_(s1_duration=args.duration, s2_duration=args.duration)
    if args.idle_conns is not None:
        params = params.with_(s3_conns=args.idle_conns)
    if args.slow_duration is not None:
        params = params.with_(s4_duration=args.slow_duration)

    wanted = [n.strip() for n in args.targets.split(",") if n.strip()]
    known = {t.name: t for t in all_targets()}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        print(f"unknown target(s): {unknown}; known: {list(known)}", file=sys.stderr)
        return 2
    targets: list[Target] = [known[n] for n in wanted]
    chosen = {s.strip().upper() for s in args.scenarios.split(",") if s.strip()}
    scenarios = [s for s in all_scenarios(params) if s.key.split("-")[0] in chosen]

    machine = machine_info()  # before pinning: nproc is the affinity mask's size
    pin_client()
    # The server processes inherit this limit (S3 opens s3_conns sockets on each side).
    raise_nofile(params.s3_conns + 4096)
    background = background_load()
    print(
        f"machine: {machine['nproc']} CPUs, {machine['cpu']}; background load "
        f"{background:.0f}% of a core{' (numbers will be noisy)' if background > 10 else ''}"
    )

    rows: list[Row] = []
    status: dict[str, str] = {}
    for target in targets:
        try:
            if target.prepare is not None:
                target.prepare()
            status[target.name] = "ok"
        except TargetUnavailable as exc:
            status[target.name] = f"not available ({exc})"
            print(f"[{target.name}] not available: {exc}")
            continue
        for sc in scenarios:
            if target.scenarios is not None and sc.key.split("-")[0] not in target.scenarios:
                continue
            left = args.budget - (time.monotonic() - t_start)
            if sc.estimate(params) > left:
                row: Row = {"skipped": f"time budget ({left:.0f} s left)"}
            else:
                print(f"[{target.name}] {sc.title} ...", flush=True)
                try:
                    row = sc.run(target, params.with_(deadline=t_start + args.budget))
                except Exception as exc:
                    row = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            row = {"target": target.name, "scenario": sc.key, **row}
            rows.append(row)
            print("   ", {k: v for k, v in row.items() if k not in ("target", "scenario")})

    if "S5" in chosen:
        core = run_core(args.quick)
        if core is None:
            print("S5 core-only: benchmarks/core_bench.py not present, skipped")
        else:
            rows += core
    if "S6" in chosen and "pcclog" in wanted:
        print("[pcclog] S6 memory under attack ...", flush=True)
        rows += run_memory(args.quick)

    elapsed = time.monotonic() - t_start
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.run" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "background_pct": background,
        "elapsed_s": elapsed,
        "quick": args.quick,
    }
    names = [t.name for t in targets]
    block = results_markdown(rows, names, status, machine, meta)
    print()
    print(block)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = RESULTS_DIR / f"run-{stamp}{'-quick' if args.quick else ''}.json"
    with contextlib.suppress(OSError):
        out.write_text(
            json.dumps(
                {
                    "meta": meta,
                    "machine": machine,
                    "status": status,
                    "params": repr(params),
                    "rows": rows,
                },
                indent=1,
                default=str,
            )
        )
        print(
            f"\nraw rows: {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}"
        )
    # Only a full, default run replaces the README's table, unless asked.
    complete = not args.quick and args.targets == ",".join(known) and {"S5", "S6"} <= chosen
    complete = complete and len(scenarios) == len(all_scenarios(params))
    if (complete or args.readme) and not args.no_readme:
        update_readme(block)
        print(f"updated {README}")
    print(f"total {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
