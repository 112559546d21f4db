"""Entry point for a Hugging Face Space (sdk: gradio, app_file: app.py): the Gradio app on weights/.

Set REID_WEIGHTS to a folder or a Hub model repo id to serve other weights.
"""
import os

from app.gradio_app import launch

if __name__ == "__main__":
    launch(host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), port=int(os.environ.get("PORT", 7860)))
