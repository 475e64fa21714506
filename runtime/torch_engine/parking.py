"""Parking a loaded model's weights in host memory and waking them onto the device again (a pool runtime's models).

``park`` copies every parameter into its own host tensor (page-locked on CUDA, so the way back is a DMA copy at
full H2D bandwidth without a bounce through pageable memory) and replaces the parameter's data with an empty tensor
on the device, so its device memory is given back (``torch.cuda.empty_cache`` returns it to the driver). ``wake``
allocates each parameter on the device again and copies the host tensor into it (``non_blocking`` from pinned
memory: all copies are queued on the current stream and waited for once at the end), then drops the host copy.

The weight reader (``runtime.weights.reader``) stages disk reads through a few reused pinned buffers because its
source is a file; a parked model's source already is pinned memory, so waking copies straight from it and needs no
staging. On CPU the "device" is host memory too: the same two copies run, parked weights live in a separate
tensor and the model's own are freed, so the path the GPU takes is the one the tests run.

Buffers (rotary ``inv_freq``: a few KB) stay where they are. Parameters shared by two modules (tied embeddings)
are one ``Parameter`` object and are parked once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ParkedWeights", "parameter_bytes", "park"]


@dataclass
class ParkedWeights:
    """The host copies of a parked model's parameters, each beside the parameter it belongs to."""

    copies: list[tuple[nn.Parameter, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(host.nbytes for _, host in self.copies)

    def wake(self, device: torch.device) -> int:
        """Copy every parameter back onto ``device``; return the bytes copied. The host copies are dropped."""
        pinned = device.type == "cuda"
        moved = 0
        with torch.no_grad():
            for parameter, host in self.copies:
                on_device = torch.empty(host.shape, dtype=host.dtype, device=device)
                on_device.copy_(host, non_blocking=pinned)
                parameter.data = on_device
                moved += host.nbytes
        if pinned:
            torch.cuda.synchronize(device)  # every copy has landed before the host copies go
        self.copies.clear()
        return moved


def parameter_bytes(model: Any) -> int:
    """Bytes of ``model``'s parameters, each shared one counted once."""
    return sum(int(p.nbytes) for p in model.parameters())


def park(model: Any, device: torch.device) -> ParkedWeights:
    """Move ``model``'s parameters into host copies and free their memory on ``device``."""
    pinned = device.type == "cuda"
    copies: list[tuple[nn.Parameter, torch.Tensor]] = []
    with torch.no_grad():
        for parameter in model.parameters():  # a shared parameter is listed once
            host = torch.empty(parameter.shape, dtype=parameter.dtype, device="cpu", pin_memory=pinned)
            host.copy_(parameter.data)
            parameter.data = torch.empty(0, dtype=parameter.dtype, device=device)
            copies.append((parameter, host))
    if pinned:
        torch.cuda.empty_cache()  # hand the freed blocks back to the driver, so others can have them
    return ParkedWeights(copies)
