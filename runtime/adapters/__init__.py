"""LoRA adapters served on a shared base model (issue #29): reading and checking an adapter's PEFT files
(``runtime.adapters.files``) and which adapters hold the device's slots (``runtime.adapters.residency``). The torch
engine computes with them (``runtime.torch_engine.lora``, ``runtime.torch_engine.adapters``)."""
