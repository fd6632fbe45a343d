"""GET /v1/loras: the LoRAs installed on this server, for any dialect's `lora` field."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from sdserve.api.context import Caller, get_caller
from sdserve.loras import list_loras

router = APIRouter(tags=["loras"])


@router.get("/v1/loras")
def get_loras(caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """The installed LoRAs by name: the `.safetensors` files in the server's LoRA folder."""
    return {"loras": [{"name": name} for name in list_loras(caller.ctx.settings.loras_dir)]}
