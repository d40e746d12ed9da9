"""Cached loaders: CAM work shared between sessions gives each the maps it would get alone; errors are recorded."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cascade.models import feature_layer
from cascade.preprocess import preprocess_batch
from dashboard.caches import fit_within, stage_explainer
from dashboard.context import build_context
from dashboard.state import Sources
from tests.conftest import make_knee_like


def test_two_sessions_computing_heatmaps_get_the_maps_each_gets_alone(tiny_config, tiny_dataset):
    ctx = build_context(Sources(str(tiny_config), str(tiny_dataset), "torch"))
    ex = stage_explainer(ctx, 2).torch_explainer()
    assert stage_explainer(ctx, 2).torch_explainer() is ex  # one per process: shared by every session
    res = ctx.cascade.spec2.resolution
    batches = [preprocess_batch([make_knee_like(seed)], res, "jetson") for seed in (1, 2)]
    alone = [ex.explain(b, "gradcam++", 1).maps for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [pool.submit(ex.explain, batches[i % 2], "gradcam++", 1) for i in range(6)]
        together = [j.result().maps for j in jobs]
    for i, maps in enumerate(together):
        np.testing.assert_allclose(maps, alone[i % 2], atol=1e-5)
    served = ctx.cascade.backend2.model  # the model that serves predictions never carries CAM hooks
    assert not feature_layer(served)._forward_hooks


def test_failures_are_recorded_not_raised(tmp_path, tiny_dataset):
    ctx = build_context(Sources(str(tmp_path / "missing.toml"), str(tmp_path / "nowhere"), "auto"))
    assert ctx.config is None and ctx.cascade is None and ctx.index is None
    assert set(ctx.errors) == {"config", "index"}
    assert "does not exist" in str(ctx.errors["config"][1])


def test_fit_within_keeps_aspect_and_never_enlarges():
    img = np.zeros((300, 150), np.uint8)
    assert fit_within(img, 100).shape == (100, 50)
    assert fit_within(img, 1000).shape == (300, 150)


def test_evicted_cascade_closes_its_backends(tiny_config, tiny_dataset, monkeypatch):
    import streamlit as st

    from engines.torch_backend import TorchBackend

    closed = []
    monkeypatch.setattr(TorchBackend, "close", lambda self: closed.append(self))
    ctx = build_context(Sources(str(tiny_config), str(tiny_dataset), "torch"))
    st.cache_resource.clear()  # what the sidebar's reload does; max_entries evictions call the same hook
    assert ctx.cascade.backend1 in closed and ctx.cascade.backend2 in closed


def test_dataset_images_are_read_inside_the_dataset_root(tmp_path, tiny_dataset):
    """A file swapped for a symlink that leaves the dataset after indexing is refused (read_item), by the page's
    image and by its thumbnail alike."""
    import shutil

    import pytest

    from cascade.dataset import index_dataset
    from cascade.errors import ImageReadError
    from dashboard.caches import dataset_image, thumbnail

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset / "test", root / "test")
    item = index_dataset(root).select("test")[0]
    assert dataset_image(item)[0].ndim == 2 and not isinstance(thumbnail(item), str)
    outside = tmp_path / "outside.png"
    shutil.copy(item.path, outside)
    item.path.unlink()
    item.path.symlink_to(outside)
    with pytest.raises(ImageReadError, match="outside"):
        dataset_image(item)
    assert "outside" in thumbnail(item)


def test_a_recomputed_cache_entry_says_so():
    """``Predictions.notice`` (an invalid cached entry was recomputed) is shown where the predictions are fetched."""
    from streamlit.testing.v1 import AppTest

    def page():
        import numpy as np

        from cascade.predcache import Predictions
        from dashboard.widgets import _with_notice

        empty = np.zeros((0, 3), np.float32)
        notice = "The cached predictions 'x_*.npz' were discarded and recomputed: bad."
        _with_notice(Predictions(empty, empty, np.zeros(0, np.int64), (), ("a", "b", "c"), "test", notice=notice))
        _with_notice(Predictions(empty, empty, np.zeros(0, np.int64), (), ("a", "b", "c"), "test"))

    from dashboard.components.text import escape_markdown

    at = AppTest.from_function(page).run()
    assert not at.exception
    notice = "The cached predictions 'x_*.npz' were discarded and recomputed: bad."
    assert [i.value for i in at.info] == [escape_markdown(notice)]  # once, for the entry that has one; as text
