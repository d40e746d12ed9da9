"""What this run of the app has open (config, cascade, dataset), or why not, and how a failure is shown.

Each part that fails (a config, a model folder, a dataset) is recorded with its exception, reported where a page needs
it, with what to do about it, and the rest of the app keeps working. The cached loaders are in ``dashboard.caches``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import streamlit as st

from cascade.config import CascadeConfig, load_config
from cascade.dataset import DatasetIndex, Item
from cascade.errors import CascadeError, CheckpointError, ConfigError
from cascade.pipeline import Cascade
from dashboard.caches import cascade_token, open_cascade_cached, open_index_cached
from dashboard.components.text import escape_markdown
from dashboard.state import ROOT, Sources, sources

DEMO_MODELS = ROOT / "models" / "demo"
CONTEXT_KEY = "_app_context"


def _guidance(exc: Exception) -> str:
    """What the user can do about a failure, by kind."""
    if isinstance(exc, CheckpointError):
        return "Point the config at model folders that hold `model_best.pth.tar` and `labels.txt`."
    if isinstance(exc, ConfigError):
        return "Choose another path under **Models and data** in the sidebar."
    if type(exc).__name__ == "BackendError":
        return "Choose another backend under **Models and data** in the sidebar."
    return "Fix the input and try again; the rest of the app still works."


def show_error(what: str, exc: Exception) -> None:
    """One clear message for a failed part of the page, never a traceback (file names in it shown as text).

    ``what`` and the exception are escaped here: callers pass them unescaped.
    """
    st.error(f"**{escape_markdown(what)}**: {escape_markdown(exc)}\n\n{_guidance(exc)}", icon=":material/error:")


@contextmanager
def failing_part(what: str, stop: bool = True) -> Iterator[None]:
    """Show an expected failure inside the block as a message; ``stop`` ends the page there."""
    try:
        yield
    except CascadeError as exc:
        show_error(what, exc)
        if stop:
            st.stop()


def is_demo(cfg: CascadeConfig) -> bool:
    """True when a stage is one of the synthetic demo models shipped in ``models/demo``."""
    demo = DEMO_MODELS.resolve()
    return any(d.resolve() == demo or demo in d.resolve().parents for d in (cfg.stage1_dir, cfg.stage2_dir))


@dataclass
class AppContext:
    """What this run has open, or why not: pages ask for the part they need and stop with a message if it failed."""

    sources: Sources
    config: CascadeConfig | None = None
    cascade: Cascade | None = None
    index: DatasetIndex | None = None
    errors: dict[str, tuple[str, Exception]] = field(default_factory=dict)
    cascade_token: str = ""

    def need_config(self) -> CascadeConfig:
        return self._need("config", self.config)

    def need_cascade(self) -> Cascade:
        return self._need("cascade", self.cascade)

    def need_index(self) -> DatasetIndex:
        return self._need("index", self.index)

    def _need(self, part: str, value):
        if value is None:
            what, exc = self.errors.get(part) or self.errors.get(
                "config", ("Cascade config", ConfigError("not loaded"))
            )
            show_error(what, exc)
            st.stop()
        return value

    @cached_property
    def items_by_rel(self) -> dict[str, Item]:
        """Dataset items by their path relative to the root (built once per run)."""
        return {} if self.index is None else {it.rel: it for it in self.index.items}


def build_context(src: Sources | None = None) -> AppContext:
    """Open config, cascade and dataset for this run, recording each failure instead of raising it."""
    ctx = AppContext(src or sources())
    try:
        ctx.config = load_config(ctx.sources.config_path)
    except CascadeError as exc:
        ctx.errors["config"] = ("Cascade config", exc)
    if ctx.config is not None:
        try:
            t1, t2 = ctx.config.temperatures  # per-image caches below are keyed by the token: calibration included
            ctx.cascade_token = f"{cascade_token(ctx.config, ctx.sources.backend)}|T={t1!r},{t2!r}"
            ctx.cascade = open_cascade_cached(ctx.config, ctx.sources.backend)
        except CascadeError as exc:
            ctx.errors["cascade"] = ("Models", exc)
    try:
        ctx.index = open_index_cached(ctx.sources.data_path)
    except CascadeError as exc:
        ctx.errors["index"] = ("Dataset", exc)
    return ctx


def app_context() -> AppContext:
    """The context built by the entry point for this run (built here when a page runs alone)."""
    ctx = st.session_state.get(CONTEXT_KEY)
    if ctx is None:
        ctx = build_context()
        st.session_state[CONTEXT_KEY] = ctx
    return ctx
