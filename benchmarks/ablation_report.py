"""Assemble the data ablation's results (benchmarks/ablation.sh) and state the verdict.

    python -m benchmarks.ablation_report --results benchmarks/results/ablation \\
        --out benchmarks/results/ablation.json --plots benchmarks/results
    python -m benchmarks.ablation_report --datasets OUT-longctx OUT-baseline --results DIR

The second form (run by ablation.sh after the pipelines) records what each preparation holds in
``DIR/datasets.json`` and fails when the two do not hold out the same validation documents.

The first reads ``DIR/<arm>-s<seed>/eval.json`` (``train.evaluate``) and ``train_log.json``
(``benchmarks.ablation_train``) and writes ``--out`` in the layout of CONTRACTS.md section 5:
``{"arms": {"longctx": {"settings", "seeds": [{"seed", "per_position_loss", "context_gain",
"key_token_loss", "passkey", "order_signal", ...}]}, "baseline": {...}}, "device", "date"}``
plus the stage-1 run, the budgets, the corpus and the verdict numbers; and two plots in
``--plots``: loss by position and context gain, per arm and seed.

Verdict (issue 15's targets), with the seed spread of a figure = its largest range (max - min)
over the seeds of one arm:
- training effect: longctx's context gain (loss with the last C tokens of context minus loss
  with the full context, smallest C) and key-token loss beat baseline's by more than the seed
  spread, and the difference is not a uniform offset: the arms' far-position loss difference
  must exceed their difference at positions 0-127 by more than the spread;
- data effect: ``order_signal`` (far-position loss on the baseline preparation minus on the
  project's, same model and documents) is positive beyond its seed spread, for every model;
  reported beside it, the same difference per position bucket (``order_signal_by_bucket``) and
  whether it is positive at every bucket from position 1024 on.

Runs in ``<arm>-s<seed>-<tag>`` folders (``ABLATION_TAG``: a follow-up with one change) are
reported under ``followups`` and drawn in the loss plot, never mixed into the seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ARMS = {
    "longctx": {
        "preparation": "pipeline defaults",
        "file_order": "dependency",
        "packing": "related",
        "window_boundaries": "chapter",
        "attention": "per-document",
    },
    "baseline": {
        "preparation": "--file-order shuffled --packing plain --window-boundaries none",
        "file_order": "shuffled",
        "packing": "plain",
        "window_boundaries": "none",
        "attention": "stream",
    },
}
CONFIG_KEYS = (
    "seq_len",
    "file_order",
    "packing",
    "window_boundaries",
    "eval_fraction",
    "seed",
    "boundary_slack",
    "overlap",
)


# ---------------------------------------------------------------- datasets


def held_out(manifest: dict) -> list[str]:
    for key in ("validation_doc_ids", "held_out_doc_ids", "eval_doc_ids"):
        if key in manifest:
            return sorted(manifest[key])
    for key in ("validation", "split", "eval"):
        v = manifest.get(key)
        if isinstance(v, dict):
            for k in ("doc_ids", "held_out_doc_ids", "validation_doc_ids"):
                if k in v:
                    return sorted(v[k])
    return []


def summarize_dataset(out_dir: str) -> dict:
    m = json.loads((Path(out_dir) / "manifest.json").read_text())
    config = m.get("config") or m.get("configuration") or {}
    splits: dict[str, dict] = {}
    for s in m.get("shards", []):
        name = s.get("split") or (
            "validation" if Path(s["path"]).name.startswith("validation-") else "train"
        )
        d = splits.setdefault(name, {"shards": 0, "rows": 0, "tokens": 0})
        d["shards"] += 1
        d["rows"] += int(s.get("rows", 0))
        d["tokens"] += int(s.get("tokens", 0))
    ids = held_out(m)
    return {
        "output": str(out_dir),
        "config": {k: config.get(k) for k in CONFIG_KEYS if k in config},
        "counts": {k: v for k, v in (m.get("counts") or {}).items() if not isinstance(v, dict)},
        "fill_rate": m.get("fill_rate"),
        "splits": splits,
        "validation_documents": len(ids),
        "validation_doc_ids": ids,
        "packing": m.get("packing"),
    }


def write_datasets(paths: list[str], results: Path) -> int:
    sums = {
        name: summarize_dataset(p) for name, p in zip(("longctx", "baseline"), paths, strict=True)
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "datasets.json").write_text(json.dumps(sums, indent=1) + "\n")
    a, b = (sums[k]["validation_doc_ids"] for k in ("longctx", "baseline"))
    for name, s in sums.items():
        v = s["splits"].get("validation", {})
        print(
            f"{name}: train {s['splits'].get('train', {}).get('tokens', 0):,} tokens, "
            f"validation {v.get('tokens', 0):,} tokens in {s['validation_documents']} documents, "
            f"fill rate {s['fill_rate']}"
        )
    if not a or a != b:
        print(
            "error: the two preparations do not hold out the same validation documents "
            f"({len(a)} vs {len(b)}; same --eval-fraction and --seed needed)",
            file=sys.stderr,
        )
        return 1
    return 0


# ---------------------------------------------------------------- results


def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def bucket_loss(rows: list[dict], lo: int, hi: int | None = None) -> float | None:
    """Token-weighted mean loss of the buckets starting in [lo, hi)."""
    num = den = 0.0
    for r in rows:
        if r["loss"] is None or r["start"] < lo or (hi is not None and r["start"] >= hi):
            continue
        num += r["loss"] * r["tokens"]
        den += r["tokens"]
    return num / den if den else None


def seed_figures(ev: dict) -> dict:
    """The figures the verdict compares, from one eval.json."""
    seq = ev["seq_len"]
    gains = sorted(ev.get("context_gain") or [], key=lambda r: r["context"])
    g = gains[0] if gains else None
    key = ev.get("key_token_loss") or {}
    order = ev.get("order_signal") or {}
    pk = ev.get("passkey") or []
    trials = sum(r["trials"] for r in pk)
    return {
        "loss_first_bucket": bucket_loss(ev["per_position_loss"], 0, 128),
        "loss_far": bucket_loss(ev["per_position_loss"], seq // 2),
        "context_gain": (g["loss_truncated"] - g["loss_full"])
        if g and g["loss_full"] is not None and g["loss_truncated"] is not None
        else None,
        "context_gain_at": g["context"] if g else None,
        "key_token_share": key.get("share"),
        "key_token_loss": key.get("loss_full"),
        "order_signal": order.get("difference"),
        "passkey_accuracy": (sum(r["accuracy"] * r["trials"] for r in pk) / trials)
        if trials
        else None,
    }


def order_by_bucket(evals: list[dict]) -> list[dict]:
    """Mean over models of (loss on the baseline preparation - loss on the project's) per
    position bucket: a difference that helps far tokens only where the project's order puts
    useful context before them should be positive at every far bucket, not only at one."""
    out = []
    for i, r in enumerate(evals[0]["per_position_loss"]):
        diffs = []
        for ev in evals:
            p = ev["per_position_loss"][i]
            b = (ev.get("order_signal") or {}).get("per_position_loss_baseline", [])
            if i < len(b) and p["loss"] is not None and b[i]["loss"] is not None:
                diffs.append(b[i]["loss"] - p["loss"])
        out.append(
            {"start": r["start"], "end": r["end"], "difference": mean(diffs), "models": len(diffs)}
        )
    return out


def spread(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return max(v) - min(v) if len(v) >= 2 else None


def mean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def verdict(figs: dict[str, list[dict]]) -> dict:
    """Differences longctx - baseline of the seed means, against the seed spreads."""
    names = (
        "loss_first_bucket",
        "loss_far",
        "context_gain",
        "key_token_share",
        "key_token_loss",
        "order_signal",
        "passkey_accuracy",
    )
    out: dict = {"figures": {}}
    for n in names:
        per_arm = {arm: [f[n] for f in figs.get(arm, [])] for arm in ARMS}
        spreads = [spread(v) for v in per_arm.values()]
        sp = max((s for s in spreads if s is not None), default=None)
        means = {arm: mean(v) for arm, v in per_arm.items()}
        diff = (
            means["longctx"] - means["baseline"]
            if None not in (means["longctx"], means["baseline"])
            else None
        )
        out["figures"][n] = {"mean": means, "seed_spread": sp, "longctx_minus_baseline": diff}
    f = out["figures"]
    sp_gain = f["context_gain"]["seed_spread"]
    d_gain = f["context_gain"]["longctx_minus_baseline"]
    d_key = f["key_token_loss"]["longctx_minus_baseline"]
    sp_key = f["key_token_loss"]["seed_spread"]
    d_far = f["loss_far"]["longctx_minus_baseline"]
    d_first = f["loss_first_bucket"]["longctx_minus_baseline"]
    sp_far = max(
        (x for x in (f["loss_far"]["seed_spread"], f["loss_first_bucket"]["seed_spread"]) if x),
        default=None,
    )
    known = None not in (d_gain, sp_gain, d_key, sp_key, d_far, d_first, sp_far)
    out["training_effect"] = {
        "context_gain_beats_spread": known and d_gain > sp_gain,
        "key_token_loss_beats_spread": known and -d_key > sp_key,
        "far_minus_first_bucket_difference": (d_far - d_first) if known else None,
        "not_a_uniform_offset": known and (d_first - d_far) > sp_far,
        "met": bool(known and d_gain > sp_gain and -d_key > sp_key and (d_first - d_far) > sp_far),
    }
    orders = [x["order_signal"] for arm in ARMS for x in figs.get(arm, [])]
    sp_order = f["order_signal"]["seed_spread"]
    out["data_effect"] = {
        "order_signal_all": orders,
        "order_signal_mean": mean(orders),
        "order_signal_min": min((o for o in orders if o is not None), default=None),
        "seed_spread": sp_order,
        "met": bool(
            orders
            and None not in orders
            and sp_order is not None
            and min(orders) > 0
            and mean(orders) > sp_order
        ),
    }
    return out


def plot(arms: dict, out_dir: Path, followups: dict | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    colors = {"longctx": "tab:blue", "baseline": "tab:orange"}
    styles = ["-", "--", ":", "-."]
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, d in arms.items():
        for i, s in enumerate(d["seeds"]):
            pts = [
                ((r["start"] + r["end"]) / 2, r["loss"])
                for r in s["per_position_loss"]
                if r["loss"] is not None
            ]
            ax.plot(
                [x for x, _ in pts],
                [y for _, y in pts],
                marker="o",
                ms=3,
                color=colors[arm],
                ls=styles[i % len(styles)],
                label=f"{arm} seed {s['seed']}",
            )
    for tag, f in (followups or {}).items():
        for arm, seeds in f["arms"].items():
            for s in seeds:
                rows = s["per_position_loss"]
                pts = [
                    ((r["start"] + r["end"]) / 2, r["loss"]) for r in rows if r["loss"] is not None
                ]
                ax.plot(
                    [x for x, _ in pts],
                    [y for _, y in pts],
                    marker="s",
                    ms=3,
                    color=colors[arm],
                    alpha=0.6,
                    label=f"{arm} seed {s['seed']}, {tag}",
                )
    ax.set_xscale("log", base=2)
    ax.set(xlabel="position in the document (token)", ylabel="mean loss (nats)")
    ax.set_title("Validation loss by position (longctx validation split)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    name = "ablation_loss_by_position.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    written.append(name)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels, values, cols = [], [], []
    for arm, d in arms.items():
        for s in d["seeds"]:
            for g in s["context_gain"]:
                if g["loss_full"] is None or g["loss_truncated"] is None:
                    continue
                labels.append(f"{arm[:4]} s{s['seed']}\nC={g['context']}")
                values.append(g["loss_truncated"] - g["loss_full"])
                cols.append(colors[arm])
    ax.bar(range(len(values)), values, color=cols)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set(ylabel="loss(last C tokens of context) - loss(full)")
    ax.set_title("Context gain on the last K tokens of each window")
    ax.axhline(0, color="k", lw=0.8)
    fig.tight_layout()
    name = "ablation_context_gain.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    written.append(name)
    return written


def dd_buckets(v: dict) -> list[dict]:
    return v["data_effect"].get("order_signal_by_bucket", [])


def fmt(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


SEED_DIR = re.compile(r"^(?P<arm>[a-z]+)-s(?P<seed>\d+)(?P<tag>-.+)?$")


def seed_record(d: Path, ev: dict, tl: dict, seed: int) -> dict:
    rec = {
        "seed": seed,
        "per_position_loss": ev["per_position_loss"],
        "context_gain": ev["context_gain"],
        "key_token_loss": ev["key_token_loss"],
        "passkey": ev["passkey"],
        "order_signal": ev.get("order_signal"),
        "validation_tokens_scored": ev.get("tokens_scored"),
        "validation_documents": ev.get("documents"),
        "evaluation_seconds": ev.get("elapsed_s"),
        "train": {
            k: tl.get(k)
            for k in ("tokens_seen", "total_steps", "train_seconds", "final_loss", "parameters")
        },
    }
    ints = (tl.get("intervals") or [])[1:]  # the first interval holds the start-up
    if ints:
        rec["train"]["tok_s_median"] = sorted(r["tok_s"] for r in ints)[len(ints) // 2]
    if tl.get("settings"):
        rec["train"]["attn_impl"] = tl["settings"].get("attn_impl")
    if order := rec["order_signal"]:  # the layout's numbers; the baseline curves stay in eval.json
        rec["order_signal"] = {
            k: order[k]
            for k in (
                "far_loss_project",
                "far_loss_baseline",
                "difference",
                "far_from",
                "documents",
            )
            if k in order
        }
    return rec


def collect(results: Path) -> tuple[dict, dict]:
    """{tag: {arm: [(seed, eval, train_log)]}}, tag "" for the main runs."""
    runs: dict = {}
    for d in sorted(results.iterdir()):
        m = SEED_DIR.match(d.name)
        if not m or m["arm"] not in ARMS or not (d / "eval.json").is_file():
            continue
        ev = load_json(d / "eval.json")
        tl = load_json(d / "train_log.json") or {}
        runs.setdefault(m["tag"] or "", {}).setdefault(m["arm"], []).append(
            (int(m["seed"]), d, ev, tl)
        )
    for arms in runs.values():
        for v in arms.values():
            v.sort(key=lambda x: x[0])
    return runs.pop("", {}), runs


def report(results: Path, out: Path, plots: Path | None) -> int:
    main_runs, followups = collect(results)
    if not main_runs:
        print(f"error: no {results}/<arm>-s<seed>/eval.json yet", file=sys.stderr)
        return 1
    arms: dict = {}
    figs: dict[str, list[dict]] = {}
    device = date = None
    for arm, settings in ARMS.items():
        seeds = []
        for seed, d, ev, tl in main_runs.get(arm, []):
            device = device or tl.get("device") or ev.get("device")
            date = date or tl.get("date") or ev.get("date")
            seeds.append(seed_record(d, ev, tl, seed))
            figs.setdefault(arm, []).append(seed_figures(ev))
        first = main_runs.get(arm, [(0, None, None, {})])[0][3]
        arms[arm] = {"settings": {**settings, "stage2": first.get("settings")}, "seeds": seeds}
    all_evals = [ev for runs in main_runs.values() for _, _, ev, _ in runs]
    extra = {}
    for tag, runs in sorted(followups.items()):
        f_arms, f_figs = {}, {}
        for arm in ARMS:
            f_arms[arm] = [seed_record(d, ev, tl, seed) for seed, d, ev, tl in runs.get(arm, [])]
            f_figs[arm] = [seed_figures(ev) for _, _, ev, _ in runs.get(arm, [])]
        tl0 = next(iter(runs.values()))[0][3]
        extra[tag.lstrip("-")] = {
            "stage2": tl0.get("settings"),
            "arms": f_arms,
            "figures": {arm: v for arm, v in f_figs.items()},
            "order_signal_by_bucket": order_by_bucket(
                [ev for r in runs.values() for _, _, ev, _ in r]
            ),
        }
    stage1 = load_json(results / "stage1-train_log.json") or {}
    corpus = load_json(results / "corpus.json") or {}
    corpus.pop("repository_bytes", None)
    datasets = load_json(results / "datasets.json") or {}
    for d in datasets.values():
        d.pop("validation_doc_ids", None)
    doc = {
        "issue": 15,
        "command": "bash benchmarks/ablation.sh",
        "device": device,
        "date": date,
        "arms": arms,
        "stage1": {
            k: stage1.get(k)
            for k in (
                "settings",
                "parameters",
                "tokens_seen",
                "total_steps",
                "train_seconds",
                "final_loss",
            )
        },
        "budget": load_json(results / "budget.json"),
        "speed": load_json(results / "speed.json"),
        "corpus": corpus,
        "datasets": datasets,
        "verdict": verdict(figs),
        "followups": extra,
    }
    buckets = order_by_bucket(all_evals)
    doc["verdict"]["data_effect"]["order_signal_by_bucket"] = buckets
    # the project's order helping far tokens should lower their loss at every far bucket, not
    # at one: a sign change between buckets says the figure follows which tokens sit where
    doc["verdict"]["data_effect"]["positive_at_every_bucket_from_1024"] = all(
        r["difference"] is not None and r["difference"] > 0 for r in buckets if r["start"] >= 1024
    )
    if plots:
        doc["plots"] = [str(plots / n) for n in plot(arms, plots, extra)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")

    print(f"ablation: {device}, {date}; {out}")
    head = (
        "arm       seed  loss0-128  loss_far  ctx_gain  key_share key_loss  passkey  order_signal"
    )
    print(head)
    for arm in ARMS:
        for s, f in zip(arms[arm]["seeds"], figs.get(arm, []), strict=True):
            print(
                f"{arm:9} {s['seed']:4}  {fmt(f['loss_first_bucket']):>9} {fmt(f['loss_far']):>9} "
                f"{fmt(f['context_gain'], 4):>9} {fmt(f['key_token_share'], 4):>9} "
                f"{fmt(f['key_token_loss']):>8} {fmt(f['passkey_accuracy'], 2):>8} "
                f"{fmt(f['order_signal'], 4):>12}"
            )
    v = doc["verdict"]
    print("longctx - baseline (seed means) vs seed spread:")
    for n, d in v["figures"].items():
        print(
            f"  {n:18} {fmt(d['longctx_minus_baseline'], 4):>8}   spread {fmt(d['seed_spread'], 4)}"
        )
    print(
        "order_signal by bucket (baseline order - project order, mean of the models): "
        + ", ".join(f"{r['start']}-{r['end']}: {fmt(r['difference'], 4)}" for r in dd_buckets(v))
    )
    for tag, f in extra.items():
        for arm in ARMS:
            for s, fg in zip(f["arms"][arm], f["figures"][arm], strict=True):
                print(
                    f"{tag}: {arm:9} seed {s['seed']}  loss0-128 {fmt(fg['loss_first_bucket'])} "
                    f"far {fmt(fg['loss_far'])} ctx_gain {fmt(fg['context_gain'], 4)} "
                    f"key {fmt(fg['key_token_share'], 4)}/{fmt(fg['key_token_loss'])} "
                    f"order_signal {fmt(fg['order_signal'], 4)}"
                )
    t, dd = v["training_effect"], v["data_effect"]
    print(
        f"training effect met: {t['met']} (context gain beats spread {t['context_gain_beats_spread']}, "
        f"key-token loss beats spread {t['key_token_loss_beats_spread']}, "
        f"not a uniform offset {t['not_a_uniform_offset']}: far minus first-bucket difference "
        f"{fmt(t['far_minus_first_bucket_difference'], 4)})"
    )
    print(
        f"data effect met: {dd['met']} (order_signal mean {fmt(dd['order_signal_mean'], 4)}, "
        f"min {fmt(dd['order_signal_min'], 4)}, seed spread {fmt(dd['seed_spread'], 4)}; "
        f"positive at every bucket from 1024: {dd['positive_at_every_bucket_from_1024']})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation_report", description=__doc__)
    p.add_argument("--results", required=True, help="benchmarks/ablation.sh's results folder")
    p.add_argument("--out", help="ablation.json to write")
    p.add_argument("--plots", help="folder for the PNG plots")
    p.add_argument("--datasets", nargs=2, metavar=("LONGCTX", "BASELINE"))
    a = p.parse_args(argv)
    if a.datasets:
        return write_datasets(a.datasets, Path(a.results))
    if not a.out:
        p.error("--out is required")
    return report(Path(a.results), Path(a.out), Path(a.plots) if a.plots else None)


if __name__ == "__main__":
    sys.exit(main())
