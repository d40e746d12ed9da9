"""The dashboard's pages, listed once: the app's navigation and the tests that visit every page read this table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PageInfo:
    file: str  # relative to dashboard/
    title: str
    icon: str
    default: bool = False

    @property
    def url_path(self) -> str:
        """The page's path in the URL, as Streamlit derives it (the default page lives at the root)."""
        return "" if self.default else Path(self.file).stem


PAGES = (
    PageInfo("views/home.py", "Home", ":material/home:", default=True),
    PageInfo("views/explain.py", "Explain an image", ":material/image_search:"),
    PageInfo("views/gradcam.py", "Grad-CAM", ":material/local_fire_department:"),
    PageInfo("views/dataset.py", "Dataset", ":material/grid_view:"),
    PageInfo("views/gate_tuning.py", "Gate tuning", ":material/tune:"),
)
