"""Outputs of a fine-tuning run: metrics.json, loss-curve PNGs and the comparison table.

A "row" is one model's summary: its name, parameter counts, final answer loss, held-out exact match
(overall and per task) and training throughput. The table is Markdown, printed at the end of
``examples/finetune.py`` and written next to the metrics.
"""
from __future__ import annotations

import json
from pathlib import Path


def write_json(path, data) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def plot_losses(curves: dict[str, list[dict]], path, title: str = "answer loss") -> Path:
    """One line per run: per-step answer loss (thin) and its moving average (thick), log-scaled y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for (name, history), color in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
        steps = [h["step"] for h in history]
        losses = [h["loss"] for h in history]
        window = max(1, len(losses) // 20)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, losses, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, smooth, color=color, linewidth=1.8, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy on answer tokens")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _count(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def comparison_table(rows: list[dict]) -> str:
    """Markdown: trainable params, final loss, held-out exact match and tokens/s per model."""
    lines = ["| model | trainable params | trainable used / token | final answer loss | held-out exact match "
             "| train tokens/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        loss = f"{row['final_loss']:.3f}" if row.get("final_loss") is not None else "-"
        speed = f"{row['tokens_per_s']:.0f}" if row.get("tokens_per_s") is not None else "-"
        heldout = row["heldout"]
        lines.append(f"| {row['name']} | {_count(row.get('trainable'))} | {_count(row.get('trainable_per_token'))} "
                     f"| {loss} | {100 * heldout['exact_match']:.1f}% ({heldout['n']}) | {speed} |")
    return "\n".join(lines)


def per_task_table(rows: list[dict]) -> str:
    """Markdown: held-out exact match per task (columns) for each model (rows)."""
    tasks = sorted({task for row in rows for task in row["heldout"]["per_task"]})
    lines = ["| model | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for row in rows:
        per_task = row["heldout"]["per_task"]
        cells = [f"{100 * per_task[t]:.0f}%" if t in per_task else "-" for t in tasks]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
