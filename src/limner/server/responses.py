"""The server's JSON response: orjson, since image bodies carry megabytes of base64."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from limner import codec

__all__ = ["FastJSONResponse"]


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return codec.json_dumps(content)
