"""Static (matplotlib) versions of the cards' charts, drawn from a synthetic run's tables."""
import io

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
