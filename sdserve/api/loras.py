"""GET /v1/loras: the LoRAs installed on this server, for any dialect's `lora` field."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from sdserve.api.context import Caller, get_caller
from sdserve.api.errors import ErrorBody
from sdserve.api.openapi import AUTHENTICATED, ErrorDocs
from sdserve.loras import list_loras

router = APIRouter(tags=["loras"])


class Lora(BaseModel):
    name: str
    """What a request's `lora` field takes (the file name without `.safetensors`)."""


class LoraList(BaseModel):
    loras: list[Lora]


@router.get(
    "/v1/loras", response_model=LoraList, responses=ErrorDocs(ErrorBody).responses(*AUTHENTICATED)
)
def get_loras(caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """The installed LoRAs by name: the `.safetensors` files in the server's LoRA folder."""
    return {"loras": [{"name": name} for name in list_loras(caller.ctx.settings.loras_dir)]}
