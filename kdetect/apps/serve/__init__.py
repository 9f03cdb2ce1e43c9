"""``kdetect serve``: a web page and a JSON API over a trained detector (FastAPI + uvicorn).

    from kdetect.apps.serve import create_app, serve
    app = create_app("runs/demo")            # an ASGI app; run it with any ASGI server
    serve("runs/demo", port=5000)            # or let kdetect run uvicorn

See docs/deploy.md for the API.
"""

from kdetect.apps.serve.app import Limits, Predictor, create_app, serve

__all__ = ["Limits", "Predictor", "create_app", "serve"]
