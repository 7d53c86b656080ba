"""RESULTS.md's headline table of the peer comparison, rendered from compare_peer.py's JSON, so
every cell quotes the run it came from:

    python benchmarks/peer_results_table.py benchmarks/results/peer_all_default_session11.json

Prints Markdown: a header line (command, wall, load at start / end, the jnp.dot and torch.mm
references) and one table row per question — ours, each peer form as median (min–max), the
best form in bold, and our ratio against it (training and CEM: speed-up, > 1 is ours faster;
seeds: the one program's seconds over the best baseline's, < 1 is ours faster).
"""

from __future__ import annotations

import json
import sys

TRAIN_FORMS = (("peer_batched", "1 process, batched `GaussianMLP(ensemble_size=N)`"),
               ("peer_sequential", "1 process, sequential"),
               ("peer_workers_batched", "P workers, batched `GaussianMLP(ensemble_size=N/P)`"),
               ("peer_workers_sequential", "P workers, sequential"))
CEM_FORMS = (("peer_s", "1 process `agent.act`"), ("peer_workers_s", "P workers, one start state each (wall / P)"))
SEEDS_FORMS = (("sequential_s", "sequential, one device"), ("sequential_streams_s", "P streams at once, one per device"))


def num(v, decimals=None):
    """A figure as RESULTS.md writes it: whole numbers from 100, else 3 significant digits."""
    if decimals is None:
        decimals = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2 if abs(v) >= 1 else 3
    return f"{v:.{decimals}f}"


def cell(summary, decimals=None):
    """'median (min–max)' of a summary, '—' when absent."""
    if not summary:
        return "—"
    return (f"{num(summary['median'], decimals)} ({num(summary['min'], decimals)}–"
            f"{num(summary['max'], decimals)})")


def forms_cell(entry, forms, best):
    """Every form of the peer, the best in bold."""
    parts = []
    for key, label in forms:
        text = f"{label} {cell(entry.get(key))}"
        parts.append(f"**{text}**" if key == best else text)
    return "; ".join(parts)


def ratio_cell(value):
    """A ratio with two decimals, '—' when absent."""
    return "—" if value is None else f"**{value:.2f}×**"


def render(report) -> str:
    """The Markdown header line and table of one compare_peer.py report."""
    g, mm, mm1 = (report.get(k) for k in ("gemm_gflops", "torch_mm_gflops", "torch_mm_gflops_1thread"))
    head = (f"`{report.get('command', 'compare_peer.py')}` ({report.get('wall_s', 0):.0f} s; load "
            f"{report['loadavg_start'][0]:.2f} → {report['loadavg_end'][0]:.2f}; {report.get('num_devices')} host "
            f"devices; P = {report['config']['peer_workers']} peer workers; reps {report['config']['reps']}; "
            f"2048² GFLOP/s at start: `jnp.dot` {cell(g)}, `torch.mm` {cell(mm)}, `torch.mm` 1 thread "
            f"{cell(mm1)}; at the end: `jnp.dot` {cell(report.get('gemm_gflops_end'))}, `torch.mm` "
            f"{cell(report.get('torch_mm_gflops_end'))})")
    rows = ["| question | ours | mbrl-lib 0.2.0 forms (best in bold) | ratio vs the best |",
            "| --- | --- | --- | --- |"]
    for name, e in report.get("train", {}).items():
        hidden, n = name.split("_")
        rows.append(f"| training, {e['layers']} × {hidden}, N = {n}, model-steps/s (`train[\"{name}\"]`) | "
                    f"{cell(e['ours'])}; gemm_fraction {cell(e.get('gemm_fraction'), 2)} | "
                    f"{forms_cell(e, TRAIN_FORMS, e.get('peer_best_form'))} | {ratio_cell(e.get('speedup_vs_peer_best'))} |")
    for name, e in report.get("cem", {}).items():
        rows.append(f"| CEM `{name}`, s per call (`cem[\"{name}\"]`; ours on {e.get('ours_candidate_devices')} "
                    f"device(s)) | {cell(e['ours_s'])} | {forms_cell(e, CEM_FORMS, e.get('peer_best_form'))} | "
                    f"{ratio_cell(e.get('speedup_vs_peer_best'))} |")
    if "seeds" in report:
        e = report["seeds"]
        rows.append(f"| MBPO, {e['num_seeds']} seeds in one program (over {e['one_program_devices']} devices), s "
                    f"(`seeds`) | {cell(e['one_program_s'])} | "
                    f"{forms_cell(e, SEEDS_FORMS, e.get('baseline_best_form'))} | "
                    f"{ratio_cell(e.get('one_program_over_best_baseline'))} of the best |")
    return head + "\n\n" + "\n".join(rows) + "\n"


def main(argv=None):
    """Print the table of the JSON file named on the command line."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python benchmarks/peer_results_table.py REPORT.json")
    with open(argv[0]) as f:
        print(render(json.load(f)), end="")


if __name__ == "__main__":
    main()
