"""notebooks/explore.ipynb, executed for real (nbclient + ipykernel) against the micro run, by
another user than the one who ran the flow (runs are found in the global namespace)."""
import base64
import os

import pytest
from conftest import ROOT

pytestmark = pytest.mark.flow


def outputs(nb) -> tuple[str, list, list]:
    """All text the notebook printed or displayed, its PNG images (bytes) and its stderr outputs."""
    text, images, stderr = [], [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                stderr.append(out.get("text", ""))
            text.append(out.get("text", ""))
            data = out.get("data", {})
            text += [data.get("text/plain", ""), data.get("text/markdown", ""), data.get("text/html", "")]
            if "image/png" in data:
                images.append(base64.b64decode(data["image/png"]))
    return "\n".join(text), images, stderr


def f_above(data) -> dict:
    """Each attack's own verdict above control (findings), with its "not_evidence" flags."""
    return data.findings.get("robustness_above_control", {})


def test_notebook_explores_the_run(micro_run, datastore_root, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    assert os.environ["USERNAME"] != "notebook-reader"
    monkeypatch.setenv("USERNAME", "notebook-reader")  # not the user the flow ran as
    monkeypatch.setenv("MONOLLM_RUN_ID", micro_run.id)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "explore.ipynb"), as_version=4)
    # the kernel runs where the flow ran (cards and the local datastore live under ./.metaflow)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": datastore_root}}).execute()
    text, images, stderr = outputs(nb)
    assert stderr == []  # no progress bars, warnings or notices in the outputs
    assert f"{micro_run.pathspec}: finished" in text
    for model in ("reference", "baseline", "monotonic_init", "monotonic"):
        assert model in text
    assert "Perplexity cost: the monotonic model's test perplexity" in text  # the findings in words
    # the answer first: the headline and the worst case, before any table or the findings in words
    from monollm.results import card_sections, headline, robustness_views

    data = micro_run.data
    answer = "**Answer.** " + " ".join(headline.headline(data.findings, card_sections.arms_differ(data.resolved_config)))
    assert answer in text and robustness_views.WORST_CASE_TITLE in text
    assert text.index(answer) < text.index(robustness_views.WORST_CASE_TITLE) \
        < text.index("Perplexity cost: the monotonic model's test perplexity")
    assert "all 4 constrained matrices are >= 0" in text  # the loaded monotonic model, checked
    # the micro profile only checks the pipeline: the notebook says so under the answer
    assert "**Profile 'micro' checks the pipeline: a 2-layer model built here and trained on generated text" in text
    # the key numbers read each attack's verdict as the answer does, flags included
    for attack, comp in f_above(data).items():
        if comp.get("not_evidence"):
            assert f"not evidence of robustness ({', '.join(comp['not_evidence'])})" in text
    # static charts: perplexity, training curves, one attack-compute picture per family, one dNLL distribution
    # per attack, order preservation; and each family's compute multiplier per target in words
    attacks = micro_run.data.resolved_config["attacks"]
    families = micro_run.data.compute_curve["family"].unique()
    assert len(families) == 2 and len(images) == 3 + len(families) + len(attacks)
    assert all(png.startswith(b"\x89PNG") for png in images)
    for family, entries in data.findings["compute"].items():
        assert all(f"{family}: " in text for _ in entries) and "the compute to reach" in text
    # the downstream tasks' cost and order preservation, as in the findings
    f = micro_run.data.findings
    for task in f["downstream"]:
        assert f"`{task}`:" in text
    assert f"monotonic minus baseline at layer {f['order_preservation']['layer']}: " in text
    assert "application/vnd.vegalite.v5+json" not in str(nb)
    assert f"seed 0 = {micro_run.pathspec}" in text  # the comparison across seeds
    assert "Verdicts (mean and 95% t-interval across runs" in text
