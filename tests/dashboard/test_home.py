"""Home in AppTest: each stage's preprocessing and why its backend was chosen (with what it fell back from), and a
TensorRT build that runs only on its button, with progress, only where TensorRT and a GPU are available."""

from __future__ import annotations

from tests.dashboard.conftest import assert_clean, click, open_app


def _captions(at) -> list[str]:
    return [c.value for c in at.caption]


def test_home_says_what_the_backend_fell_back_from(app_env):
    at = open_app()
    assert_clean(at)
    fell_back = [c for c in _captions(at) if c.startswith(":orange[Fell back from]")]
    assert len(fell_back) == 2 and all("TensorRT" in c for c in fell_back)  # no TensorRT on this host


def test_home_shows_each_stages_preprocessing(app_env):
    at = open_app()
    modes = [m.value for m in at.markdown if m.value.startswith("Preprocessing:")]
    assert len(modes) == 2 and all("resize" in m for m in modes)


def test_no_build_button_without_tensorrt_and_a_gpu(app_env):
    at = open_app()
    assert not any(b.label == "Build TensorRT engines" for b in at.button)


def test_engines_are_built_only_on_the_button_with_progress(app_env, monkeypatch):
    import dashboard.caches
    import engines.trt_build

    built: list[str] = []

    def fake_build(folder, progress=None, **_):
        progress("building", 0.5)
        built.append(str(folder))

    monkeypatch.setattr(dashboard.caches, "tensorrt_buildable", lambda: True)
    monkeypatch.setattr(engines.trt_build, "build_stage_engine", fake_build)
    at = open_app()
    assert_clean(at)
    assert any(b.label == "Build TensorRT engines" for b in at.button)
    assert built == []  # opening the page builds nothing
    at = click(at, "Build TensorRT engines")
    assert_clean(at)
    assert len(built) == 2 and built[0] != built[1]


def test_home_says_whether_calibration_is_on(app_env):
    at = open_app()
    config = next(c for c in _captions(at) if c.startswith("Config:"))
    assert "calibration off" in config
