"""Static (matplotlib) versions of the cards' charts, drawn from a synthetic run's tables."""
import io

import pytest
from matplotlib.patches import PathPatch, Rectangle
from test_cards import synthetic_run

from monollm.results import plots
from monollm.results.report import per_example


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_perplexity_bars_with_intervals():
    data = synthetic_run()
    fig = plots.perplexity(data.perplexity)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [b.get_height() for b in bars] == list(data.perplexity["perplexity"])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(data.perplexity["model"])
    assert png(fig).startswith(b"\x89PNG")


def test_loss_curves_per_arm():
    data = synthetic_run()
    ax = plots.losses(data.training).axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["baseline train", "baseline val", "monotonic train", "monotonic val"]
    val = data.training[data.training.arm == "monotonic"].dropna(subset=["val_loss"])
    assert list(ax.lines[3].get_ydata()) == list(val["val_loss"])


def test_dnll_boxes_per_condition_and_model():
    data = synthetic_run()
    fig = plots.dnll(data.attacks, "uat")
    ax = fig.axes[0]
    ex = per_example(data.attacks[data.attacks.attack == "uat"])
    groups = ex.groupby(["kind", "model"]).ngroups  # attack, control, transfer x baseline, monotonic
    assert len([p for p in ax.patches if isinstance(p, PathPatch)]) == groups == 6
    # each label on two lines (the condition, then what it is), so that neighbours do not overlap
    assert [t.get_text() for t in ax.get_xticklabels()] == ["attack\n(own)", "control\n(random)", "transfer\n(other's)"]
    assert png(fig).startswith(b"\x89PNG")


def test_compute_plot_draws_both_curves_bands_and_targets(tmp_path):
    """A planted curve table: two examples, three budget points; the lines are the means over examples
    on a log x axis, one dotted line per target, and the figure renders to a non-empty PNG file."""
    import pandas as pd

    rows = [("baseline", 0, 100, 0.0), ("baseline", 0, 200, 0.1), ("baseline", 0, 400, 0.2),
            ("baseline", 1, 100, 0.2), ("baseline", 1, 200, 0.3), ("baseline", 1, 400, 0.4),
            ("monotonic", 0, 100, 0.0), ("monotonic", 0, 200, 0.0), ("monotonic", 0, 400, 0.1),
            ("monotonic", 1, 100, 0.0), ("monotonic", 1, 200, 0.2), ("monotonic", 1, 400, 0.1)]
    curve = pd.DataFrame(rows, columns=["model", "example", "passes", "above_control"])
    fig = plots.compute_plot(curve, {"1/4": 0.075, "1/2": 0.15}, n_boot=100, seed=0, family="universal triggers")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    curves = {line.get_label(): line for line in ax.lines if line.get_label() in ("baseline", "monotonic")}
    assert list(curves["baseline"].get_xdata()) == [100, 200, 400]
    assert list(curves["baseline"].get_ydata()) == pytest.approx([0.1, 0.2, 0.3])  # means by hand
    assert list(curves["monotonic"].get_ydata()) == pytest.approx([0.0, 0.1, 0.1])
    targets = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == ":"]
    assert targets == [0.075, 0.15]
    assert len(ax.collections) == 2  # one band per model
    path = tmp_path / "compute.png"
    fig.savefig(path)
    assert path.stat().st_size > 0 and path.read_bytes().startswith(b"\x89PNG")
