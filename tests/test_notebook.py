"""notebooks/explore.ipynb, executed for real (nbclient + ipykernel) against the micro run."""
import os

import pytest
from conftest import ROOT

from monollm import cards

pytestmark = pytest.mark.flow


def outputs(nb) -> tuple[str, list]:
    """All text the notebook printed or displayed, and its Vega-Lite specs."""
    text, charts = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", ""))
            data = out.get("data", {})
            text += [data.get("text/plain", ""), data.get("text/markdown", ""), data.get("text/html", "")]
            if "application/vnd.vegalite.v5+json" in data:
                charts.append(data["application/vnd.vegalite.v5+json"])
    return "\n".join(text), charts


def test_notebook_explores_the_run(micro_run, datastore_root, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MONOLLM_RUN_ID", micro_run.id)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "explore.ipynb"), as_version=4)
    # the kernel runs where the flow ran (cards and the local datastore live under ./.metaflow)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": datastore_root}}).execute()
    text, charts = outputs(nb)
    assert f"{micro_run.pathspec}: finished" in text
    for model in ("reference", "baseline", "monotonic_init", "monotonic"):
        assert model in text
    assert "Perplexity cost: the monotonic model's test perplexity" in text  # the findings in words
    assert "all 4 constrained matrices are >= 0" in text  # the loaded monotonic model, checked
    titles = [cards.chart_title(c) for c in charts]
    assert any("perplexity" in t for t in titles) and any("Recovery training" in t for t in titles)
    for attack in micro_run.data.resolved_config["attacks"]:  # one dNLL distribution per attack
        assert any(t.startswith(f"{attack}:") for t in titles)
    assert f"{micro_run.id} (seed 0)" in text  # the comparison across seeds
