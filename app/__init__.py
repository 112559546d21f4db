"""Thin web apps over `reid_core.engine.ReIDEngine`: Gradio (`python -m app`) and Streamlit
(`streamlit run app/streamlit_app.py`). No model logic lives here."""
