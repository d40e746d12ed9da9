from dashboard.components.pages import PAGES
from dashboard.deeplinks import index_html, page_routes


def test_the_index_tells_the_frontend_the_base_url_before_its_bundle_runs():
    for base, expected in (("", '"/"'), ("x", '"/x/"'), ("/a/b/", '"/a/b/"')):
        html = index_html(base)
        hook = html.index(f"BACKEND_BASE_URL: window.location.origin + {expected}")
        assert hook < html.index('<script type="module"')  # set before Streamlit's module script reads it


def test_a_route_for_every_page_but_the_root():
    paths = [r.path for r in page_routes()]
    assert paths == [f"/{p.url_path}" for p in PAGES if not p.default]
    assert "/" not in paths
