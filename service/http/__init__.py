"""The HTTP face of the service: the server (`server`), request context (`middleware`), who may
use the model and when (`access`), reading bodies (`inputs`) and parameters and deadlines
(`params`), the routes (`v1`, `v2`, `ops`), and the one place errors become responses
(`error_handlers`). A route reads its request, calls service/pipeline.py's `compute` once, and
writes its answer.
"""
