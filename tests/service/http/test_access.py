"""service/http/access.py: API keys: one 401 whatever failed, the probes open, and the schema
saying which routes need a key. (Admission while not ready: tests/service/http/test_ops.py and
tests/service/test_lifecycle.py.)"""

from __future__ import annotations

from tests.images import encode, gradient
from tests.service.http.test_v1 import error_of
from tests.service.servers import serve, tiny_settings

PNG = encode(gradient(), "PNG")


async def test_api_keys() -> None:
    async with serve(tiny_settings(api_keys="k1,k2")) as (_, c):
        post = {"content": PNG, "headers": {"content-type": "image/png"}}
        missing = await c.post("/v1/classify", **post)
        wrong = await c.post(
            "/v1/classify", content=PNG, headers={"content-type": "image/png", "authorization": "Bearer nope"}
        )
        scheme = await c.post(
            "/v1/classify", content=PNG, headers={"content-type": "image/png", "authorization": "Basic k1"}
        )
        for r in (missing, wrong, scheme):
            assert error_of(r) == (401, "unauthorized")
            assert r.json() == missing.json()  # never says which part failed
        assert missing.headers["www-authenticate"] == "Bearer"
        ok = await c.post(
            "/v1/classify", content=PNG, headers={"content-type": "image/png", "authorization": "Bearer k2"}
        )
        assert ok.status_code == 200
        assert (await c.get("/v1/models")).status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.get(open_path)).status_code == 200
        schema = (await c.get("/openapi.json")).json()  # the schema says which routes need a key, and how
        assert schema["components"]["securitySchemes"]["bearer"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "one of VIT_API_KEYS, when set",
        }
        assert schema["paths"]["/v1/classify"]["post"]["security"] == [{"bearer": []}]
        assert "security" not in schema["paths"]["/healthz"]["get"]
