import pytest
from PIL import Image

from results.collect import collect
from results.plots import ablation_bars, resolve_x, scaling_plot
from results_testdata import finished


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert w > 300 and h > 200


def assert_pdf(path):
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:] and b"/Page" in data


@pytest.fixture(scope="module")
def scaling_df(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling_runs")
    # loss falls with data and with model size; two seeds, two tasks
    for size, base in (("S", 3.0), ("B", 2.5), ("L", 2.0)):
        for n in (1_000, 10_000, 100_000):
            for task, off in (("in1k", 0.0), ("ade20k", 1.0)):
                for seed in (0, 1):
                    cfg = {"model": {"size": size}, "data": {"size": n}, "transfer": {"task": task}, "seed": seed}
                    loss = base + off - 0.3 * len(str(n)) + 0.01 * seed
                    finished(root, cfg, {"val_loss": loss})
    return collect(root).table


def test_scaling_plot_log_x_one_line_per_series(scaling_df, tmp_path):
    r = scaling_plot(scaling_df, x="data_size", y="avg_loss", series="model.size", out=tmp_path, name="scale")
    assert r.xscale == "log"  # 1e3..1e5
    assert len(r.data) == 9 and set(r.data["series"]) == {"S", "B", "L"}
    row = r.data[(r.data["series"] == "B") & (r.data["x"] == 10_000)].iloc[0]
    # avg over the two tasks of 2.5 - 1.5 (+1 for ade20k), seeds 0 and +0.01
    assert row["mean"] == pytest.approx((1.0 + 2.0) / 2 + 0.005)
    assert row["std"] == pytest.approx(0.01 / 2 ** 0.5) and row["n"] == 2
    assert_png(r.paths["png"])
    assert_pdf(r.paths["pdf"])


def test_scaling_plot_size_letters_on_x(scaling_df, tmp_path):
    r = scaling_plot(scaling_df, x="model_size", y="loss", series="data.size", tasks=["in1k"], out=tmp_path)
    assert r.xscale == "linear"
    assert list(r.data.sort_values("x_pos")["x"].drop_duplicates()) == ["S", "B", "L"]
    assert r.paths["png"].name == "scaling_model_size_loss.png"
    assert_png(r.paths["png"])


def test_scaling_plot_refuses_to_mix_series(scaling_df, tmp_path):
    with pytest.raises(ValueError, match=r"differ in \['model.size'\]"):
        scaling_plot(scaling_df, x="data_size", out=tmp_path)


def test_scaling_plot_accepts_a_key_that_only_covaries_with_x(tmp_path):
    """A per-size LR (one value per model size) is part of the size's recipe, not a hidden second variable."""
    for size, lr, loss in (("S", 0.04, 3.0), ("B", 0.02, 2.5)):
        finished(tmp_path / "runs", {"model": {"size": size}, "optim": {"blr": lr}, "seed": 0}, {"val/loss": loss})
    df = collect(tmp_path / "runs").table
    r = scaling_plot(df, x="model_size", y="val/loss", out=tmp_path, name="lr_by_size")
    assert list(r.data.sort_values("x_pos")["mean"]) == [3.0, 2.5]
    # a second LR at the same size is a hidden variable again
    finished(tmp_path / "runs", {"model": {"size": "B"}, "optim": {"blr": 0.04}, "seed": 0}, {"val/loss": 2.7})
    with pytest.raises(ValueError, match=r"differ in \['optim.blr'\]"):
        scaling_plot(collect(tmp_path / "runs").table, x="model_size", y="val/loss", out=tmp_path, name="mixed")


def test_resolve_x_error_names_candidates(scaling_df):
    assert resolve_x(scaling_df, "model_size") == "model.size"
    with pytest.raises(KeyError, match="pretrain.train_tokens"):
        resolve_x(scaling_df, "train_tokens")


def test_ablation_bars(ablation_root, tmp_path):
    r = ablation_bars(collect(ablation_root).table, out=tmp_path, name="bars")
    assert list(r.data["label"]) == ["alpha=0.2", "alpha=0.5", "alpha=1.0"]
    assert list(r.data["mean"].round(6)) == [1.575, 1.525, 1.405]
    assert_png(r.paths["png"])
    assert_pdf(r.paths["pdf"])
    assert not list(tmp_path.glob(".*tmp"))


def test_model_names_plot_in_size_order_not_alphabetically(tmp_path):
    """The demo's sizes: "nano" sorts before "pico" as text, but pico (32 wide) is the smaller model."""
    for name, loss in (("fm_nano_2e_2d_swiglu_nobias", 2.79), ("fm_pico_2e_2d_swiglu_nobias", 2.85)):
        finished(tmp_path / "runs", {"model": {"name": name}, "seed": 0}, {"val/loss": loss})
    r = scaling_plot(collect(tmp_path / "runs").table, x="model_size", y="val/loss", out=tmp_path, name="names")
    assert list(r.data.sort_values("x_pos")["mean"]) == [2.85, 2.79]  # pico, then nano
