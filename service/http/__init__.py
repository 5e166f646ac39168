"""The HTTP face of the service: the server (`server`), request context (`middleware`), who may
use the model and when (`access`), the routes (`v1`, `v2`, `ops`), and the one place errors
become responses (`error_handlers`). Routes parse and answer; the work between is
service/pipeline.py's.
"""
