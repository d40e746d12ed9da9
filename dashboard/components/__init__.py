"""Pure building blocks of the pages (diagram, charts, narrative): no Streamlit calls, so they are unit-tested."""
