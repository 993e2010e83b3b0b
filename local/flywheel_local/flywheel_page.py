"""The Flywheel's page of the local report (`report/flywheel.html`): the whole flywheel at a glance.

The trajectory from the Flywheel's status (each generation's parent, traffic window, decision, measured lift with
its interval, offline win rate and the policy deployed after it), the climb of the deployed policy by the
simulator's oracle, and, generation by generation, whether the oracle agrees with the decision (a promoted
candidate should be truly better, a blocked one should not). The per-generation detail stays in index.html.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from flywheel_operator.api.flywheel import FlywheelStatus, TrajectoryEntry

from flywheel_local.flywheel import FLYWHEEL_FILE, read_flywheel_status
from flywheel_local.report import GenerationRow, collect

PAGE = "flywheel.html"
PLOT = "flywheel-lifts.png"


def oracle_agrees(entry: TrajectoryEntry, row: GenerationRow | None) -> bool | None:
    """Whether the oracle agrees with the decision: promoted and truly better, or not promoted and truly worse
    (None while undecided, without an oracle verdict, or on a tie: either decision is fine then)."""
    if row is None or row.truly_better is None or entry.decision is None:
        return None
    return (entry.phase == "Promoted") == row.truly_better


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1%}"


def _rows(status: FlywheelStatus, rows: dict[str, GenerationRow]) -> str:
    out = []
    for e in status.trajectory:
        row = rows.get(e.name)
        interval = f" [{_pct(e.lift_interval[0])}, {_pct(e.lift_interval[1])}]" if e.lift_interval else ""
        window = f"{e.window[0]} … {e.window[1]}" if e.window else "—"
        verdict = (row.oracle_verdict if row is not None else None) or "—"
        agrees = {True: "yes", False: "<b>no</b>", None: "tie" if verdict == "tie" else "—"}[oracle_agrees(e, row)]
        cells = [e.number, e.name, e.parent or "basePolicy", window, f"{e.phase} ({e.decision or '…'})",
                 _pct(e.lift) + interval, _pct(e.depth_lift),
                 "—" if e.offline_win_rate is None else f"{e.offline_win_rate:.3f}", e.deployed_policy or "—",
                 verdict]
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + f"<td>{agrees}</td>"
                   f"<td>{html.escape(e.reason or '')}</td></tr>")
    return "\n".join(out)


def _plot(status: FlywheelStatus, out: Path) -> bool:
    entries = [e for e in status.trajectory if e.lift is not None]
    if not entries:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    colours = {"Promoted": "tab:green", "RolledBack": "tab:red", "Failed": "tab:grey"}
    for i, e in enumerate(entries):
        lower, upper = e.lift_interval or (e.lift, e.lift)
        ax.errorbar([i], [e.lift], yerr=[[e.lift - lower], [upper - e.lift]], fmt="o", capsize=4,
                    color=colours.get(e.phase, "tab:blue"))
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(range(len(entries)), [e.name for e in entries], fontsize=8)
    ax.set_ylabel("breadth lift (canary)")
    ax.set_title("Each generation's measured lift and its always-valid interval (green: promoted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / PLOT, dpi=110)
    plt.close(fig)
    return True


def write_flywheel_page(run_dir: Path, out: Path) -> Path | None:
    """Write `out/flywheel.html` when `run_dir` holds a Flywheel (None otherwise); returns its path."""
    status = read_flywheel_status(run_dir)
    if status is None:
        return None
    rows = {r.name: r for r in collect(run_dir)}
    out.mkdir(parents=True, exist_ok=True)
    plotted = _plot(status, out)
    document = json.loads((run_dir / FLYWHEEL_FILE).read_text())
    name = html.escape(document.get("metadata", {}).get("name") or run_dir.name)
    agreements = [a for e in status.trajectory if (a := oracle_agrees(e, rows.get(e.name))) is not None]
    ties = sum(1 for e in status.trajectory if e.decision is not None and e.name in rows
               and rows[e.name].oracle_verdict == "tie")
    summary = "No oracle verdict yet." if not agreements and not ties else (
        f"The oracle agrees with {sum(agreements)} of {len(agreements)} decisions"
        + (f"; {ties} tie(s) (the oracle's 95 % interval holds 0) counted apart." if ties else "."))
    conditions = "".join(f"<li><b>{html.escape(c.type)}</b> {c.status}: {html.escape(c.reason)} "
                         f"{html.escape(c.message)}</li>" for c in status.conditions)
    climb = '<figure><img src="climb.png" alt="the climb"><figcaption>The deployed policy by the oracle after ' \
            'each generation</figcaption></figure>' if (out / "climb.png").is_file() else ""
    lifts = f'<figure><img src="{PLOT}" alt="lifts"></figure>' if plotted else ""
    headers: list[Any] = ["#", "generation", "parent", "traffic window", "decision", "breadth lift [interval]",
                          "depth lift", "offline win rate", "deployed after", "oracle", "oracle agrees",
                          "reason"]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Flywheel {name}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}img{{max-width:100%}}</style>
</head><body>
<h1>Flywheel <code>{name}</code>: {html.escape(status.phase)}</h1>
<p>{html.escape(status.message or "")}. Deployed now: <code>{html.escape(status.last_promoted or "the base policy")}
</code> ({html.escape(status.streak or "no streak")}). {summary}
Per-generation detail (reward models, gates, style): <a href="index.html">index.html</a>.</p>
<ul>{conditions}</ul>
{climb}
{lifts}
<h2>Trajectory</h2>
<table><tr>{"".join(f"<th>{h}</th>" for h in headers)}</tr>
{_rows(status, rows)}
</table>
</body></html>
"""
    path = out / PAGE
    path.write_text(page, encoding="utf-8")
    return path
