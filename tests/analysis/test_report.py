"""The run report (``mismatch-jax report``) checked at the DOM level, without a browser: the page is
self-contained (no script, image or style fetched from the network), its embedded data hold one
point per model on every Fig. 3 panel, each model's hover text names it, and bad run directories
fail with one line (exit 2) or give a report marked partial. tests/analysis/test_report_browser.py
opens the same pages in headless Chromium."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from report_runs import dataset_table, pets_table, write_run

from mismatch_jax import cli
from mismatch_jax.analysis import report_data
from mismatch_jax.analysis.report import sweep_report

pytestmark = pytest.mark.unit  # every test here is in the fast tier


class Page(HTMLParser):
    """The tags, attributes and script texts of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.scripts, self.text = [], [], []
        self._script = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = (dict(attrs), [])

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append((self._script[0], "".join(self._script[1])))
            self._script = None

    def handle_data(self, data):
        (self._script[1] if self._script is not None else self.text).append(data)

    def data(self) -> dict:
        [text] = [t for a, t in self.scripts if a.get("id") == "report-data"]
        return json.loads(text)


def _page(path) -> Page:
    return Page(path.read_text())


def _assert_offline(page: Page) -> None:
    for tag, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//")), f"<{tag} {name}={value}> needs the network"
    assert all("src" not in attrs for attrs, _ in page.scripts), "a script is not inlined"


def test_pets_population_report_holds_every_model_with_its_provenance(tmp_path):
    table = pets_table(num_models=30)
    run = write_run(tmp_path / "run", table)
    page = _page(sweep_report(run, table, num_bootstrap=50))
    _assert_offline(page)
    from plotly.offline import get_plotlyjs

    assert any(text == get_plotlyjs() for _, text in page.scripts)  # Plotly inlined whole
    data = page.data()
    ids = data["models"]["values"]["model_id"]
    assert ids == list(range(30))
    # The paper's panels, every model once on each (PETS population design).
    assert data["panels"]["design"] == "pets_population"
    assert [p["name"] for p in data["panels"]["panels"]] == ["expert", "on_policy", "grid"]
    last = table.loc[table.groupby("model_id")["epoch"].idxmax()].set_index("model_id")
    for panel in data["panels"]["panels"]:
        index = sorted(k for t in panel["traces"] for k in t["index"])
        assert index == list(range(30))
        for trace in panel["traces"]:
            assert trace["diverged"] == (trace["index"] == [4])
            assert trace["x"] == [last.loc[ids[k], f"ll_{panel['name']}"] for k in trace["index"]]
            assert trace["y"] == [last.loc[ids[k], "reward_mean"] for k in trace["index"]]
    hover = data["models"]["hover"]
    for k, model in enumerate(ids):
        row = last.loc[model]
        assert f"<b>model {model}</b> · {row.model_type} · trained on pets" in hover[k]
        assert f"PETS seed {row.pets_seed}, trial {row.pets_trial}, copy {row['copy']}" in hover[k]
        assert f"lr {row.learning_rate:.3g}" in hover[k] and f"train rows {row.train_rows}" in hover[k]
        assert "(trials " + ", ".join(f"{r:.4g}" for r in row.reward) + ")" in hover[k]
    # Several evaluated epochs: each model's curve; PETS's own models were evaluated once.
    curves = data["curves"]
    assert curves["epochs"] == [15, 30, 50]
    assert curves["series"]["reward_mean"][0] == [round(v, 6) for v in table[table.model_id == 0].reward_mean] + [None]
    assert curves["series"]["ll_grid"][2] == [None, None, round(float(last.loc[2, "ll_grid"]), 6)]
    # Competence, divergence and the PNG (its bytes inlined).
    text = "".join(page.text)
    assert "controller competence: pass" in text
    png = base64.b64encode((run / "fig3_ll_reward.png").read_bytes()).decode()
    assert any(attrs.get("src") == f"data:image/png;base64,{png}" for tag, attrs in page.tags if tag == "img")
    assert [d["diverged"] for d in report_data.divergence_counts(data["models"])] == [1, 0, 0]


def test_computed_correlations_equal_scipy_when_no_json_is_beside_the_table(tmp_path):
    table = pets_table(num_models=30)
    models = report_data.model_records(table)
    panels = report_data.scatter_panels(models)
    tables = report_data.correlation_tables(tmp_path, table, panels, num_bootstrap=20)
    assert tables["fig3_source"].startswith("computed")
    last = table.loc[table.groupby("model_id")["epoch"].idxmax()]
    kept = last[~last.diverged]
    for panel in tables["fig3"]["panels"]:
        for kind, stats in panel["per_type"].items():
            part = kept[kept.model_type == kind]
            x, y = part[f"ll_{panel['eval_dataset']}"], part["reward_mean"]
            assert stats["pearson"] == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
            assert stats["spearman"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
            assert stats["num_clusters"] == len(set(zip(part.pets_seed, part.pets_trial)))


def test_per_dataset_design_with_env_params_reads_the_json_beside_the_table(tmp_path):
    table = dataset_table()
    run = write_run(tmp_path / "run", table, competence=False)
    stats = {"n": 6, "pearson": 0.123, "pearson_ci": [0.01, 0.2], "spearman": -0.456, "spearman_ci": [-0.7, -0.3]}
    (run / "fig3_correlations.json").write_text(json.dumps({
        "design": "per_dataset", "panels": [{"train_dataset": "expert", "per_type": {"P": stats}}]}))
    page = _page(sweep_report(run, table, num_bootstrap=20))
    data = page.data()
    panels = data["panels"]["panels"]
    assert [p["name"] for p in panels] == ["expert", "grid"]
    train = data["models"]["values"]["train_dataset"]
    for panel in panels:  # the models trained on d, with their LL on d
        index = sorted(k for t in panel["traces"] for k in t["index"])
        assert index == [k for k, name in enumerate(train) if name == panel["name"]]
        assert not panel["symlog"]
    values = data["models"]["values"]
    for k, h in enumerate(data["models"]["hover"]):
        assert f"env setting {values['env_setting'][k]} · pole_length {values['env_pole_length'][k]}" in h
    text = "".join(page.text)
    assert "+0.12 [+0.01, +0.20]" in text and "-0.46 [-0.70, -0.30]" in text
    assert "source: fig3_correlations.json" in text
    assert "no competence.json" in text
    assert data["curves"] is None


def test_wide_ll_gets_a_symlog_axis_with_true_tick_labels():
    table = pets_table(num_models=9, epochs=(30,))
    table.loc[table.model_id == 0, "ll_grid"] = -5e4  # > 100 nats below the median: fig3's symlog
    panels = report_data.scatter_panels(report_data.model_records(table))["panels"]
    grid = next(p for p in panels if p["name"] == "grid")
    assert grid["symlog"] and not panels[0]["symlog"]
    x = dict(zip((k for t in grid["traces"] for k in t["index"]), (v for t in grid["traces"] for v in t["x"])))
    assert x[0] == -5e4  # the page draws sign(x) log10(1 + |x| / 10) and labels ticks by their LL
    assert grid["ticktext"][0] == "-100000" and "0" in grid["ticktext"]
    assert grid["tickvals"][0] == pytest.approx(-np.log10(1 + 1e5 / 10))
    # "expert" data that no PETS trial earned are named as fig3 names them.
    models = report_data.model_records(table)
    titles = [p["title"] for p in report_data.scatter_panels(models, {"expert": "below threshold"})["panels"]]
    assert titles[0] == "LL on best PETS trials (none above the expert threshold) data — all models"
    # Two epochs in the table (P / D at 30, PETS at 50) but one per model: no curves to draw.
    assert report_data.epoch_curves(table, list(range(9))) is None


def _report(argv, capsys):
    code = cli.main(["report", *argv])
    err = capsys.readouterr().err
    return code, err


def test_bad_run_directories_say_what_is_missing(tmp_path, capsys):
    code, err = _report([str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, err = _report([str(tmp_path / "empty")], capsys)
    assert code == 2 and "not a run directory" in err and "results.parquet" in err
    run = tmp_path / "started"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    code, err = _report([str(run)], capsys)
    assert code == 2 and "without results.parquet and without finished chunks (chunks/*.parquet)" in err
    (run / "results.parquet").write_bytes(b"not parquet")
    code, err = _report([str(run)], capsys)
    assert code == 2 and "not a readable Parquet table" in err and "Traceback" not in err


def test_a_partial_sweep_is_reported_from_its_chunks_and_marked_partial(tmp_path, capsys):
    table = pets_table(num_models=30, epochs=(30,))
    run = tmp_path / "run"
    (run / "chunks").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"num_models": 30}))
    for first, last in ((0, 9), (10, 19)):
        part = table[(table.model_id >= first) & (table.model_id <= last)]
        part.to_parquet(run / "chunks" / f"chunk_{first:08d}_{last:08d}.parquet", index=False)
    out = tmp_path / "page.html"
    code, err = _report([str(run), "--out", str(out), "--bootstrap", "20"], capsys)
    assert code == 0, err
    page = _page(out)
    assert "partial run: results.parquet is missing; 20 of 30 models from 2 finished chunk file(s)" in " ".join(
        "".join(page.text).split())
    assert page.data()["models"]["values"]["model_id"] == list(range(20))


def test_other_commands_runs_get_their_figures_and_json(tmp_path, capsys):
    run = write_run(tmp_path / "mbpo", pets_table(3), competence=False)
    (run / "results.parquet").unlink()
    (run / "manifest.json").unlink()
    (run / "fig3_ll_reward.png").rename(run / "mbpo_compare.png")
    (run / "mbpo_compare.json").write_text(json.dumps({"agents": {"mbpo": {"final_return": 123.5}}}))
    code, err = _report([str(run)], capsys)
    assert code == 0, err
    page = _page(run / "report.html")
    _assert_offline(page)
    text = "".join(page.text)
    assert "mismatch-jax mbpo report" in text and "mbpo_compare.json" in text and "123.5" in text
    assert [a["alt"] for t, a in page.tags if t == "img"] == ["mbpo_compare.png"]


def test_sweep_writes_its_report_unless_told_not_to():
    args = cli.build_parser().parse_args(["sweep", "--no-report"])
    assert args.no_report and not cli.build_parser().parse_args(["sweep"]).no_report
    assert "report.html" in cli.COMMANDS["sweep"].outputs
