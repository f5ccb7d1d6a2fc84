"""The same-stack floor for the cache-hit benchmark: FastAPI + uvicorn, started the way
``kiisrv serve`` starts, with a handler that only reads and parses the body."""

from __future__ import annotations

import json
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


@app.post("/")
async def parse_only(request: Request) -> JSONResponse:
    json.loads(await request.body())
    return JSONResponse({"filename": "./tmp/KType-Standard-0.zip", "success": True})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
