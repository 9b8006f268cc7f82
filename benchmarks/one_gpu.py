"""The report of ``benchmarks/one_gpu.sh`` (issue 20, part 4): the longest context of the 8B
shape on one GPU through ``train.launch``, its step time against bare Unsloth, and the planner's
GPU estimate against each measured peak.

    python benchmarks/one_gpu.py --results benchmarks/results/one_gpu --out benchmarks/results/one_gpu.json

Reads the run results that ``benchmarks/gpu_runs.sh`` recorded (``MODE-SHAPE-CONTEXT.json``:
``train.launch``'s summary, or ``benchmarks/bare_unsloth.py``'s result line) and writes, from
those alone (what did not run is null): one row per run, ``longest_context`` (the longest
``train.launch`` run that fit), ``launcher_over_bare_step_time`` at each context both ran, and a
markdown table. Each ``train.launch`` row has two estimates: the one the run planned with
(``estimated_peak_gib``, from its summary: the planner of the commit that ran) and this
checkout's planner on the same run (``planner_now_gib``: ``--preset max-context``, 4-bit QLoRA
r32 with the tiled MLP, plus the checkpoint layers the run kept on the GPU), each with its error
against the measured peak. A one-step run's step time is its whole training time, compilation included,
for both paths alike.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import commit as git_commit  # noqa: E402
from benchmarks.multi_gpu import planner_peak_gib  # noqa: E402

NAME = re.compile(r"^(?P<mode>[a-z0-9]+)-(?P<shape>[a-z0-9]+)-(?P<context>\d+)$")
TARGET = 500_000


def step_seconds(r: dict) -> float | None:
    """Seconds of a one-step run: the launcher's training runtime, bare Unsloth's first step."""
    if r.get("status") != "fit":
        return None
    if r.get("step_s"):
        return float(r["step_s"][0])
    return r.get("runtime_s")


def rows(results: Path) -> list[dict]:
    out = []
    for f in sorted(results.glob("*.json")):
        m = NAME.match(f.stem)
        if not m:
            continue
        r = json.loads(f.read_text())
        est, peak = r.get("estimated_peak_gib"), r.get("peak_gib")
        config = results / f"config-{m['shape']}"
        now = None
        if m["mode"] != "bare" and r.get("status") == "fit" and config.is_dir():
            kept = r.get("checkpoint_layers_on_gpu") or 0
            now = planner_peak_gib(str(config), "qlora1t", int(m["context"]), kept)
        out.append(
            {
                "name": f.stem,
                "mode": m["mode"],
                "shape": m["shape"],
                "context": int(m["context"]),
                "status": r.get("status"),
                "path": "bare Unsloth" if m["mode"] == "bare" else "train.launch",
                "step_s": step_seconds(r),
                "peak_gib": peak,
                "estimated_peak_gib": est,
                "planner_error": round(est / peak - 1, 4) if est and peak else None,
                "planner_now_gib": now,
                "planner_now_error": round(now / peak - 1, 4) if now and peak else None,
                "host_peak_rss_gib": r.get("host_peak_rss_gib"),
                "checkpoint_layers_on_gpu": r.get("checkpoint_layers_on_gpu"),
                # forwards through a kept layer: 0 with layers planned means they were lost
                "resident_checkpoint_calls": r.get("resident_checkpoint_calls"),
                "first_loss": r.get("first_loss") or (r.get("losses") or [None])[0],
                "recorded": r.get("recorded"),
            }
        )
    return sorted(out, key=lambda r: (r["shape"], r["context"], r["mode"]))


def markdown(table: list[dict]) -> str:
    head = (
        "| run | path | context | status | step s | GPU peak GiB | planned GiB (error) | "
        "planner now GiB (error) | host peak RSS GiB | layers kept on GPU |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )

    def cell(x, spec=""):
        return "" if x is None else format(x, spec)

    lines = []
    for r in table:
        err = f" ({r['planner_error']:+.1%})" if r["planner_error"] is not None else ""
        err_now = f" ({r['planner_now_error']:+.1%})" if r["planner_now_error"] is not None else ""
        lines.append(
            f"| {r['name']} | {r['path']} | {r['context']:,} | {r['status']} | "
            f"{cell(r['step_s'], '.0f')} | {cell(r['peak_gib'])} | "
            f"{cell(r['estimated_peak_gib'])}{err} | {cell(r['planner_now_gib'])}{err_now} | "
            f"{cell(r['host_peak_rss_gib'])} | "
            f"{cell(r['checkpoint_layers_on_gpu'])} |"
        )
    return head + "\n".join(lines) + "\n"


def report(results: Path, out: Path) -> dict:
    table = rows(results)
    fit = [r for r in table if r["status"] == "fit" and r["path"] == "train.launch"]
    longest = max(fit, key=lambda r: r["context"], default=None)
    ratios = {}
    for bare in (r for r in table if r["mode"] == "bare" and r["step_s"]):
        same = [r for r in fit if r["context"] == bare["context"] and r["shape"] == bare["shape"]]
        for r in same:
            ratios[r["name"]] = round(r["step_s"] / bare["step_s"], 3)
    device = results / "device.txt"
    commit = git_commit()
    data = {
        "title": "The longest context on one GPU through train.launch (issue 20, part 4)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit if commit not in ("", "?") else None,
        "device": device.read_text().strip() if device.is_file() else None,
        "command": "bash benchmarks/one_gpu.sh (device: nvidia-h200)",
        "longest_context": longest["context"] if longest else None,
        "longest_context_run": longest["name"] if longest else None,
        "target_tokens": TARGET,
        "target_met": bool(longest and longest["context"] >= TARGET),
        "launcher_over_bare_step_time": ratios,
        "runs": table,
        "markdown": markdown(table),
    }
    out.write_text(json.dumps(data, indent=1) + "\n")
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/one_gpu.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    data = report(Path(a.results), Path(a.out))
    print(data["markdown"])
    print(
        json.dumps(
            {k: data[k] for k in ("longest_context", "target_met", "launcher_over_bare_step_time")}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
