"""The LoRA registry: a folder of `.safetensors` files, each LoRA named by its file stem."""

from __future__ import annotations

from pathlib import Path

LORA_SUFFIX = ".safetensors"


class UnknownLora(ValueError):
    """A request named a LoRA that is not installed; the message lists those that are."""

    def __init__(self, name: str, installed: list[str]) -> None:
        super().__init__(f"unknown LoRA {name!r}; installed: {', '.join(installed) or 'none'}")
        self.installed = installed


def list_loras(folder: Path) -> list[str]:
    """Names of the LoRAs installed in `folder`, sorted; none if the folder does not exist."""
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        p.stem
        for p in entries
        # Hidden files are editors' and downloaders' leftovers, not LoRAs.
        if p.suffix == LORA_SUFFIX and not p.name.startswith(".") and p.is_file()
    )


def find_lora(folder: Path, name: str) -> Path:
    """The file of installed LoRA `name`; raises UnknownLora for any other name."""
    # Looked up among the listed names, never joined blindly: "../x" cannot leave the folder.
    installed = list_loras(folder)
    if name not in installed:
        raise UnknownLora(name, installed)
    return folder / f"{name}{LORA_SUFFIX}"
