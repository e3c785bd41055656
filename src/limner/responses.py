"""A JSON response rendered with orjson, for the server and the emulators alike: their bodies
carry megabytes of base64, which the standard library takes milliseconds to write."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from limner import codec

__all__ = ["FastJSONResponse"]


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return codec.json_dumps(content)
