"""Start the Streamlit app: ``python -m app.streamlit_server [--port P] [-- --weights W --gallery DIR]``.

Why a launcher instead of ``streamlit run`` alone: Streamlit 1.60 is the newest release that
installs beside mediapipe 0.10.14 (the last mediapipe whose wheel carries its pose model; it
pins protobuf < 5, Streamlit >= 1.61 needs protobuf >= 5.26). Its gzip middleware was written
for starlette < 1.4: with the starlette that Gradio needs (>= 1.6), a response whose type the
middleware leaves uncompressed (images: the favicon, every st.image file) has its body sent
before its headers, and uvicorn answers 500 ("Expected ASGI message 'http.response.start'").
`fix_streamlit_gzip` lets starlette handle the headers as it now expects, before the server
serves anything. ``streamlit run app/streamlit_app.py`` works too (the app applies the same fix
when it is first imported, so only requests made before the first session can miss it).
"""
from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).with_name("streamlit_app.py")


def fix_streamlit_gzip() -> bool:
    """Patch Streamlit's media-aware gzip responders for starlette >= 1.4; True if patched
    (False: nothing to fix in this Streamlit, or already patched)."""
    try:
        from streamlit.web.server.starlette import starlette_gzip_middleware as gz
    except ImportError:  # a Streamlit without the starlette server
        return False
    from starlette.datastructures import Headers
    from starlette.middleware.gzip import IdentityResponder

    if not hasattr(gz, "_handle_response_start") or getattr(gz, "_reid_fixed", False):
        return False
    excluded = tuple(gz._EXCLUDED_CONTENT_TYPES)

    async def send_with_compression(self, message) -> None:
        await IdentityResponder.send_with_compression(self, message)  # starlette's own handling
        if message["type"] != "http.response.start":
            return
        passthrough = (self.content_encoding_set or getattr(self, "partial_response", False)
                       or self.content_type_is_excluded)
        if not passthrough and Headers(raw=message["headers"]).get("content-type", "").startswith(excluded):
            # Streamlit also keeps audio/video uncompressed: headers go now, the body follows as is
            self.content_type_is_excluded = True
            await self.send(self.initial_message)

    gz._MediaAwareIdentityResponder.send_with_compression = send_with_compression
    gz._MediaAwareGZipResponder.send_with_compression = send_with_compression
    gz._reid_fixed = True
    return True


def main(argv: list[str] | None = None) -> int:
    """``streamlit run app/streamlit_app.py`` with the fix applied; arguments after ``--`` go
    to the app, the others to Streamlit (e.g. ``--server.port 8501``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from streamlit.web import cli
    fix_streamlit_gzip()
    return cli.main(["run", str(APP), *argv], standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
